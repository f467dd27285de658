//! Prompt prefixes computed once: KV caches at demonstration boundaries, reused by every later
//! prompt that starts with the same tokens (the next K of a sweep, the next doc under a shared
//! demonstration set, the content-free prompts of calibration).
//!
//! A prompt is always run in the same chunks — split at the token positions of its demonstration
//! boundaries — whether or not a chunk comes from the cache, so reuse never changes a number:
//! results are bit for bit those of the same chunks computed afresh.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::Tensor;

use super::decoder::{Decoder, KvCache};

/// Least-recently-used KV caches keyed by the exact token prefix they hold, within a byte budget.
pub struct PrefixCache {
    entries: HashMap<Vec<u32>, (KvCache, u64)>,
    bytes: usize,
    budget: usize,
    clock: u64,
    /// Tokens taken from the cache and tokens computed, for benchmarks and tests.
    pub reused_tokens: u64,
    pub computed_tokens: u64,
}

impl PrefixCache {
    /// An empty cache holding at most `budget` bytes of keys and values.
    pub fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            budget,
            clock: 0,
            reused_tokens: 0,
            computed_tokens: 0,
        }
    }

    /// Changes the budget (0 disables reuse), evicting as needed.
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        self.evict();
    }

    fn get(&mut self, key: &[u32]) -> Option<KvCache> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|(c, used)| {
            *used = now;
            c.clone()
        })
    }

    fn put(&mut self, key: Vec<u32>, cache: KvCache) {
        let size = cache.bytes();
        if size > self.budget || self.entries.contains_key(&key) {
            return;
        }
        self.clock += 1;
        self.bytes += size;
        self.entries.insert(key, (cache, self.clock));
        self.evict();
    }

    fn evict(&mut self) {
        while self.bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((c, _)) = self.entries.remove(&oldest) {
                self.bytes -= c.bytes();
            }
        }
    }

    /// Runs `ids[..end]` in chunks split at `cuts` (token positions, ascending, each < `end`),
    /// taking every chunk that ends at a cut from the cache when present and caching it otherwise.
    /// Returns the hidden states of the last chunk and the cache after `end` tokens.
    pub fn run(
        &mut self,
        model: &Decoder,
        ids: &[u32],
        cuts: &[usize],
        end: usize,
    ) -> Result<(Tensor, KvCache)> {
        let (start, cache) = self.prepare(model, ids, cuts, end)?;
        self.computed_tokens += (end - start) as u64;
        model.forward(&ids[start..end], &cache)
    }

    /// Every chunk of `ids[..end]` but the last, as [`PrefixCache::run`] computes them: returns
    /// where the last chunk starts and the cache before it. The caller runs (and counts) the
    /// last chunk, alone or packed with others.
    pub fn prepare(
        &mut self,
        model: &Decoder,
        ids: &[u32],
        cuts: &[usize],
        end: usize,
    ) -> Result<(usize, KvCache)> {
        let cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c > 0 && c < end).collect();
        // The longest cached prefix among the cut points.
        let mut start = 0;
        let mut cache = model.empty_cache();
        for &c in cuts.iter().rev() {
            if let Some(hit) = self.get(&ids[..c]) {
                start = c;
                cache = hit;
                self.reused_tokens += c as u64;
                break;
            }
        }
        let first = start;
        for &c in cuts.iter().filter(|&&c| c > first) {
            let (_, next) = model.forward(&ids[start..c], &cache)?;
            self.computed_tokens += (c - start) as u64;
            if self.budget > 0 {
                self.put(ids[..c].to_vec(), next.clone());
            }
            cache = next;
            start = c;
        }
        Ok((start, cache))
    }
}
