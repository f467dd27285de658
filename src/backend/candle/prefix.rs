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
/// The caches of nested prefixes share their keys and values (see [`KvCache`]): the budget counts
/// what they hold together, each piece once.
pub struct PrefixCache {
    entries: HashMap<Vec<u32>, (KvCache, u64)>,
    held: Shared<candle_core::TensorId>,
    budget: usize,
    clock: u64,
    /// Tokens taken from the cache and tokens computed, for benchmarks and tests.
    pub reused_tokens: u64,
    pub computed_tokens: u64,
    /// Whether a prefix too large for the budget was already reported.
    warned: bool,
}

impl PrefixCache {
    /// An empty cache holding at most `budget` bytes of keys and values.
    pub fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            held: Shared::default(),
            budget,
            clock: 0,
            reused_tokens: 0,
            computed_tokens: 0,
            warned: false,
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
        if size > self.budget {
            if !self.warned {
                self.warned = true;
                eprintln!("{}", too_large(key.len(), size, self.budget));
            }
            return;
        }
        if self.entries.contains_key(&key) {
            return;
        }
        self.clock += 1;
        self.held.add(cache.pieces());
        self.entries.insert(key, (cache, self.clock));
        self.evict();
    }

    fn evict(&mut self) {
        while self.held.bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((c, _)) = self.entries.remove(&oldest) {
                self.held.remove(c.pieces());
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
    ///
    /// A stretch between two cuts longer than [`MAX_CHUNK`] tokens runs in pieces of that
    /// length counted from its cut (the last chunk too), so a many-shot prefix never needs a
    /// pass's activations over tens of thousands of tokens; the pieces depend only on the cuts,
    /// never on the cache, and only chunks ending at a cut are cached.
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
        let stops: Vec<Vec<Stop>> = jobs
            .iter()
            .zip(&cuts)
            .map(|(j, cuts)| stops(cuts, j.end, MAX_CHUNK))
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
            // (job, the stop its next chunk ends at, the job whose pass computes it).
            let mut next: Vec<(usize, usize, usize)> = Vec::new();
            let mut computing: HashMap<(usize, &[u32]), usize> = HashMap::new();
            let mut runs: Vec<(usize, Stop)> = Vec::new();
            let mut pending = false;
            for (i, stops) in stops.iter().enumerate() {
                let start = state[i].0;
                let Some(&stop) = stops.iter().find(|s| s.at > start) else {
                    continue;
                };
                pending = true;
                let c = stop.at;
                let key = &jobs[i].ids[..c];
                if self.budget > 0 {
                    if stop.cut
                        && let Some(hit) = self.get(key)
                    {
                        self.reused_tokens += (c - start) as u64;
                        state[i] = (c, hit);
                        continue;
                    }
                    if let Some(&r) = computing.get(&(start, key)) {
                        next.push((i, c, r));
                        continue;
                    }
                    computing.insert((start, key), runs.len());
                }
                next.push((i, c, runs.len()));
                runs.push((i, stop));
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
                .map(|&(i, stop)| Segment {
                    ids: &jobs[i].ids[state[i].0..stop.at],
                    past: vec![&state[i].1],
                })
                .collect();
            let done: Vec<KvCache> = model
                .forward_in_passes(&segments, CacheOut::Full)?
                .into_iter()
                .map(|(_, cache)| cache)
                .collect();
            drop(segments);
            for (&(i, stop), cache) in runs.iter().zip(&done) {
                self.computed_tokens += (stop.at - state[i].0) as u64;
                if self.budget > 0 && stop.cut {
                    self.put(jobs[i].ids[..stop.at].to_vec(), cache.clone());
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

/// Pieces of memory held by several entries, each counted once: (bytes, entries holding it) by id.
struct Shared<I> {
    held: HashMap<I, (usize, usize)>,
    bytes: usize,
}

impl<I> Default for Shared<I> {
    fn default() -> Self {
        Self {
            held: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<I: std::hash::Hash + Eq> Shared<I> {
    /// An entry holding `pieces` arrives: the pieces no other entry holds add their bytes.
    fn add(&mut self, pieces: impl Iterator<Item = (I, usize)>) {
        for (id, size) in pieces {
            let e = self.held.entry(id).or_insert((size, 0));
            if e.1 == 0 {
                self.bytes += size;
            }
            e.1 += 1;
        }
    }

    /// An entry holding `pieces` leaves: the pieces no other entry holds free their bytes.
    fn remove(&mut self, pieces: impl Iterator<Item = (I, usize)>) {
        for (id, _) in pieces {
            if let Some(e) = self.held.get_mut(&id) {
                e.1 -= 1;
                if e.1 == 0 {
                    self.bytes -= e.0;
                    self.held.remove(&id);
                }
            }
        }
    }
}

/// Most tokens of one prompt in one forward pass: longer stretches between cuts run in pieces
/// of this length, which bounds a pass's activations (about 50 MB for Gemma 3 270M) whatever K.
pub const MAX_CHUNK: usize = 2048;

/// A point a prompt's chunk ends at before its last chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stop {
    at: usize,
    /// A demonstration boundary, whose cache is kept; else a piece of a long stretch.
    cut: bool,
}

/// The chunk ends of a prefix of `end` tokens cut at `cuts` (ascending, in `(0, end)`): each cut,
/// and within each stretch from a cut (or 0) to the next cut (or `end`) a piece end every `max`
/// tokens, so no chunk, the last included, is longer than `max`.
fn stops(cuts: &[usize], end: usize, max: usize) -> Vec<Stop> {
    let mut out = Vec::with_capacity(cuts.len());
    let mut from = 0;
    for (to, cut) in cuts.iter().map(|&c| (c, true)).chain([(end, false)]) {
        let mut at = from + max;
        while at < to {
            out.push(Stop { at, cut: false });
            at += max;
        }
        if cut {
            out.push(Stop { at: to, cut: true });
        }
        from = to;
    }
    out
}

/// The one-time warning for a shared prefix the budget cannot keep: every prompt after it
/// recomputes it, which turns a sweep over K quadratic.
fn too_large(tokens: usize, bytes: usize, budget: usize) -> String {
    let mib = |b: usize| b.div_ceil(1 << 20);
    // Room for the prefix and the smaller ones of the same sweep beside it.
    format!(
        "warning: a shared prompt prefix of {tokens} tokens needs {} MiB of keys and values, more \
         than the prefix cache's {} MiB: prompts that share it compute it again each time; pass \
         --kv-cache-mb {} to keep it",
        mib(bytes),
        mib(budget),
        mib(bytes * 2)
    )
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

#[cfg(test)]
mod tests {
    use super::{Shared, Stop, stops};

    /// Nested prefixes share pieces: the budget sees each piece once, and frees it only when the
    /// last entry holding it goes.
    #[test]
    fn shared_pieces_count_once() {
        let mut s = Shared::default();
        let short = [(1, 100), (2, 100)];
        let long = [(1, 100), (2, 100), (3, 50), (4, 50)];
        s.add(short.into_iter());
        assert_eq!(s.bytes, 200);
        s.add(long.into_iter());
        assert_eq!(s.bytes, 300, "the longer prefix adds only its own pieces");
        s.remove(short.into_iter());
        assert_eq!(
            s.bytes, 300,
            "the longer prefix still holds the shared ones"
        );
        s.remove(long.into_iter());
        assert_eq!(s.bytes, 0);
        assert!(s.held.is_empty());
    }

    #[test]
    fn long_stretches_run_in_pieces_counted_from_their_cut() {
        let at = |v: Vec<Stop>| v.iter().map(|s| (s.at, s.cut)).collect::<Vec<_>>();
        assert_eq!(at(stops(&[3, 7], 9, 4)), vec![(3, true), (7, true)]);
        assert_eq!(
            at(stops(&[10], 21, 4)),
            vec![(4, false), (8, false), (10, true), (14, false), (18, false)]
        );
        // A stretch of exactly `max` needs no piece; the last chunk is at most `max` long.
        assert_eq!(at(stops(&[4], 8, 4)), vec![(4, true)]);
        assert_eq!(at(stops(&[], 9, 4)), vec![(4, false), (8, false)]);
        assert!(stops(&[], 0, 4).is_empty());
    }
    #[test]
    fn the_warning_names_the_budget_to_pass() {
        let w = super::too_large(30_000, 300 << 20, 256 << 20);
        assert!(w.contains("30000 tokens needs 300 MiB"), "{w}");
        assert!(w.contains("--kv-cache-mb 600"), "{w}");
    }
}
