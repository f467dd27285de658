//! Stable, platform-independent hashing for seeds: results must not depend on Rust's `Hash` or on
//! the order in which items are processed.

/// One step of SplitMix64: a well-mixed 64-bit value from any 64-bit input.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a of a string, then mixed: a stable 64-bit key for names.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    splitmix64(h)
}

/// Combines keys into one well-mixed value.
pub fn combine(keys: &[u64]) -> u64 {
    keys.iter().fold(0x243F_6A88_85A3_08D3, |acc, &k| {
        splitmix64(acc ^ splitmix64(k))
    })
}

/// A tiny deterministic generator for built-in data (SplitMix64 sequence).
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.0)
    }

    /// Uniform integer in `lo..=hi` (negligible modulo bias for small ranges).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_across_versions() {
        // Pinned values: changing them changes every demonstration draw, so it must be deliberate.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(hash_str(""), splitmix64(0xCBF2_9CE4_8422_2325));
        assert_ne!(combine(&[1, 2]), combine(&[2, 1]));
    }

    #[test]
    fn rng_range_is_inclusive_and_deterministic() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        for _ in 0..1000 {
            let x = a.range(10, 99);
            assert!((10..=99).contains(&x));
            assert_eq!(x, b.range(10, 99));
        }
    }
}
