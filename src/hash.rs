//! sha256 helpers shared by every layer that names things by their content: model weights, run
//! ids, prompt hashes, server fingerprints.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Streaming sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of a string, lower-case hex.
pub fn sha256_str(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// First 16 hex digits of the sha256 of `s` (prompt hashes, run ids).
pub fn short_hash(s: &str) -> String {
    sha256_str(s)[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_hex() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_str("abc"), abc);
        assert_eq!(short_hash("abc"), &abc[..16]);
        let dir = std::env::temp_dir().join(format!("icl-eval-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("abc.txt");
        std::fs::write(&f, "abc").unwrap();
        assert_eq!(sha256_file(&f).unwrap(), abc);
        let err = sha256_file(&dir.join("missing")).unwrap_err().to_string();
        assert!(
            err.contains("missing") && err.contains("cannot open"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
