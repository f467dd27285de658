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

use super::decoder::{CacheOut, Decoder, KvCache, Segment};

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
        let job = Job { ids, cuts, end };
        let (start, cache) = self
            .prepare(model, std::slice::from_ref(&job))?
            .pop()
            .expect("one job in, one out");
        self.computed_tokens += (end - start) as u64;
        model.forward(&ids[start..end], &cache)
    }

    /// Every chunk of each job's prefix but the last, as [`PrefixCache::run`] computes them:
    /// returns, per job, where its last chunk starts and the cache before it. The caller runs
    /// (and counts) the last chunks, alone or packed with others.
    ///
    /// The jobs advance together, a chunk each per pass: their next chunks run packed in one
    /// forward pass (which changes no bit, see [`Decoder::forward_packed`]), so a batch of
    /// prompts with their own demonstrations costs a few long passes instead of a short pass
    /// per chunk and prompt. A chunk another job computed earlier comes from the cache, and
    /// identical chunks in one pass are computed once, as running the jobs in order would.
    pub fn prepare(&mut self, model: &Decoder, jobs: &[Job<'_>]) -> Result<Vec<(usize, KvCache)>> {
        let cuts: Vec<Vec<usize>> = jobs
            .iter()
            .map(|j| {
                j.cuts
                    .iter()
                    .copied()
                    .filter(|&c| c > 0 && c < j.end)
                    .collect()
            })
            .collect();
        let mut state: Vec<(usize, KvCache)> = Vec::with_capacity(jobs.len());
        for (job, cuts) in jobs.iter().zip(&cuts) {
            // The longest cached prefix among the cut points.
            let mut at = (0, model.empty_cache());
            for &c in cuts.iter().rev() {
                if let Some(hit) = self.get(&job.ids[..c]) {
                    self.reused_tokens += c as u64;
                    at = (c, hit);
                    break;
                }
            }
            state.push(at);
        }
        loop {
            // (job, the cut its next chunk ends at, the job whose pass computes it).
            let mut next: Vec<(usize, usize, usize)> = Vec::new();
            let mut computing: HashMap<&[u32], usize> = HashMap::new();
            let mut runs: Vec<(usize, usize)> = Vec::new();
            let mut pending = false;
            for (i, cuts) in cuts.iter().enumerate() {
                let start = state[i].0;
                let Some(&c) = cuts.iter().find(|&&c| c > start) else {
                    continue;
                };
                pending = true;
                let key = &jobs[i].ids[..c];
                if self.budget > 0 {
                    if let Some(hit) = self.get(key) {
                        self.reused_tokens += (c - start) as u64;
                        state[i] = (c, hit);
                        continue;
                    }
                    if let Some(&r) = computing.get(key) {
                        next.push((i, c, r));
                        continue;
                    }
                    computing.insert(key, runs.len());
                }
                next.push((i, c, runs.len()));
                runs.push((i, c));
            }
            if !pending {
                break;
            }
            if runs.is_empty() {
                // Every job advanced from the cache this round.
                continue;
            }
            let segments: Vec<Segment<'_>> = runs
                .iter()
                .map(|&(i, c)| Segment {
                    ids: &jobs[i].ids[state[i].0..c],
                    past: vec![&state[i].1],
                })
                .collect();
            let done: Vec<KvCache> = model
                .forward_in_passes(&segments, CacheOut::Full)?
                .into_iter()
                .map(|(_, cache)| cache)
                .collect();
            drop(segments);
            for (&(i, c), cache) in runs.iter().zip(&done) {
                self.computed_tokens += (c - state[i].0) as u64;
                if self.budget > 0 {
                    self.put(jobs[i].ids[..c].to_vec(), cache.clone());
                }
            }
            for (i, c, r) in next {
                if runs[r].0 != i {
                    self.reused_tokens += (c - state[i].0) as u64;
                }
                state[i] = (c, done[r].clone());
            }
        }
        Ok(state)
    }
}

/// A prompt prefix to compute: `ids[..end]`, in chunks split at `cuts`.
pub struct Job<'a> {
    /// The prompt's tokens (at least `end`).
    pub ids: &'a [u32],
    /// Token positions of its demonstration boundaries, ascending.
    pub cuts: &'a [usize],
    /// Where the prefix ends.
    pub end: usize,
}
