//! `--shard I/N` runs a deterministic 1/N of each task's test docs; `merge::merge` puts the
//! shard folders back together into the folder the unsharded run would have written.
//!
//! Every doc's demonstrations and scores depend only on (task, seed, doc), never on which other
//! docs are evaluated, so the union of the shards is exactly the unsharded run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Shard `index` (1-based) of `count`: the docs at positions `p` with `p mod count = index - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether the doc at `position` (0-based, in test-split order) belongs to this shard.
    pub fn holds(&self, position: usize) -> bool {
        position % self.count == self.index - 1
    }

    /// How many of the first `n` docs belong to this shard.
    pub fn share(&self, n: usize) -> usize {
        (0..n).filter(|&p| self.holds(p)).count()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not I/N with 1 ≤ I ≤ N (e.g. 2/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_docs() {
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for p in 0..10 {
            assert_eq!(shards.iter().filter(|s| s.holds(p)).count(), 1);
        }
        assert_eq!(
            shards.iter().map(|s| s.share(10)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
    }

    #[test]
    fn bad_shards_are_refused() {
        for s in ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"] {
            assert!(s.parse::<Shard>().is_err(), "{s}");
        }
        assert_eq!(" 2 / 4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
    }
}
