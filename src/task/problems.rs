//! The problems collector of one task file's load: every problem names the file, and similar
//! ones are capped so a broken 10k-doc file stays readable.

use std::path::{Path, PathBuf};

use sha2::Sha256;

/// Problems stop reporting after this many per kind.
pub(super) const MAX_DOC_PROBLEMS: usize = 5;

/// One task file being read: its problems so far and the hash of everything it reads.
pub(super) struct Ctx<'a> {
    /// The YAML file, as problems name it.
    pub file: String,
    /// Its folder: relative data and `prompts/` are found from here.
    pub base: PathBuf,
    pub data_dir: Option<&'a Path>,
    pub problems: Vec<String>,
    /// sha256 of the YAML (with includes), templates and data, in reading order.
    pub hasher: Sha256,
    /// The missing data directory is reported once, not once per file.
    pub missing_data_dir_reported: bool,
    /// Where Hub datasets come from.
    pub hub: crate::hub::HubOptions,
    /// The data files read so far.
    pub data: Vec<super::DataFile>,
}

impl Ctx<'_> {
    /// Hashes a data file's bytes into the task hash and records where it came from.
    pub fn read_data(&mut self, source: String, bytes: &[u8]) {
        use sha2::Digest;
        self.hasher.update(bytes);
        self.data.push(super::DataFile {
            source,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
        });
    }
}

impl Ctx<'_> {
    /// Records a problem, prefixed with the file.
    pub fn problem(&mut self, msg: impl std::fmt::Display) {
        self.problems.push(format!("{}: {msg}", self.file));
    }

    /// The first few of many similar problems, then how many more `what` (e.g. "lines") fail.
    pub fn problems_capped(&mut self, errs: Vec<String>, what: &str) {
        let n = errs.len();
        for e in errs.into_iter().take(MAX_DOC_PROBLEMS) {
            self.problem(e);
        }
        if n > MAX_DOC_PROBLEMS {
            self.problem(format!(
                "{what}: {} more fail the same way",
                n - MAX_DOC_PROBLEMS
            ));
        }
    }
}
