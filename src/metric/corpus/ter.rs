//! Translation Edit Rate as sacreBLEU 2.x computes it (`corpus_ter` with its defaults, as lm-eval
//! calls it): lower-cased, whitespace-split words; the fewest edits (insertions, deletions,
//! substitutions, and shifts of a run of words as one edit) turning the hypothesis into the
//! reference, found by Tercom's greedy shift search over a beam edit distance.
//!
//! The search's heuristics (beam width, shift sizes and distances, candidate order and cap) are
//! sacreBLEU's `lib_ter.py`, kept exactly: TER is defined by them, not by the true minimum.

/// Longest run of words one shift moves.
const MAX_SHIFT_SIZE: usize = 10;
/// Farthest a shifted run's start may lie from its match in the reference.
const MAX_SHIFT_DIST: usize = 50;
/// Half-width of the edit-distance band around the (length-scaled) diagonal.
const BEAM_WIDTH: usize = 25;
/// Shift candidates evaluated per sentence before the search stops.
const MAX_SHIFT_CANDIDATES: usize = 1000;

/// One edit-distance step, as the trace records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Nop,
    Sub,
    /// A reference word the hypothesis lacks (sacreBLEU's trace reads it from the reference's
    /// side, see [`trace`]).
    Ins,
    Del,
    Undef,
}

/// `[edits, reference words]` of one sentence: the statistics sacreBLEU sums over a corpus.
pub fn ter_stats(hypothesis: &str, reference: &str) -> Vec<f64> {
    let hyp = words(hypothesis);
    let reference = words(reference);
    let (edits, len) = edit_rate(&hyp, &reference);
    vec![edits as f64, len as f64]
}

/// TER in points from summed statistics: 100 · edits / reference words (an empty reference
/// scores 100 against any words, 0 against none).
pub fn ter_score(s: &[f64]) -> f64 {
    let (edits, len) = (s[0], s[1]);
    if len > 0.0 {
        100.0 * edits / len
    } else if edits > 0.0 {
        100.0
    } else {
        0.0
    }
}

/// sacreBLEU's `TercomTokenizer` with its defaults: lower-cased, split as Python splits.
fn words(text: &str) -> Vec<String> {
    super::python_split(&text.to_lowercase())
        .map(str::to_string)
        .collect()
}

/// (edits, reference length): shifts that lower the edit distance, greedily, then the distance.
fn edit_rate(hyp: &[String], reference: &[String]) -> (usize, usize) {
    if reference.is_empty() {
        return (hyp.len(), 0);
    }
    let ed = BeamEditDistance { reference };
    let mut shifts = 0;
    let mut words = hyp.to_vec();
    let mut checked = 0;
    loop {
        let (delta, shifted) = best_shift(&words, reference, &ed, &mut checked);
        if checked >= MAX_SHIFT_CANDIDATES || delta <= 0 {
            break;
        }
        shifts += 1;
        words = shifted;
    }
    (shifts + ed.distance(&words).0, reference.len())
}

/// The shift lowering the edit distance most (ties: the longest run, then the earliest in the
/// hypothesis, then the earliest target), as (gain, shifted words); gain 0 when none helps.
fn best_shift(
    hyp: &[String],
    reference: &[String],
    ed: &BeamEditDistance,
    checked: &mut usize,
) -> (i64, Vec<String>) {
    let (pre_score, trace) = ed.distance(hyp);
    // The trace rewrites the reference into the hypothesis; flipped, it reads the other way.
    let flipped: Vec<Op> = trace
        .iter()
        .map(|op| match op {
            Op::Ins => Op::Del,
            Op::Del => Op::Ins,
            other => *other,
        })
        .collect();
    let (align, ref_err, hyp_err) = alignment(&flipped);
    type Candidate = ((i64, usize, i64, i64), Vec<String>);
    let mut best: Option<Candidate> = None;
    for (start_h, start_r, len) in shifted_pairs(hyp, reference) {
        // Only runs with errors on both sides, not already aligned in place.
        if hyp_err[start_h..start_h + len].iter().all(|&e| !e)
            || ref_err[start_r..start_r + len].iter().all(|&e| !e)
        {
            continue;
        }
        if align
            .get(start_r)
            .is_some_and(|&a| (start_h as i64..(start_h + len) as i64).contains(&a))
        {
            continue;
        }
        let mut prev: Option<usize> = None;
        for offset in -1..len as i64 {
            let at = start_r as i64 + offset;
            let idx = if at == -1 {
                0
            } else {
                match align.get(at as usize) {
                    Some(&a) => (a + 1) as usize,
                    None => break,
                }
            };
            if prev == Some(idx) {
                continue;
            }
            prev = Some(idx);
            let shifted = perform_shift(hyp, start_h, len, idx);
            let gain = pre_score as i64 - ed.distance(&shifted).0 as i64;
            let key = (gain, len, -(start_h as i64), -(idx as i64));
            *checked += 1;
            if best.as_ref().is_none_or(|(b, _)| key > *b) {
                best = Some((key, shifted));
            }
        }
        if *checked >= MAX_SHIFT_CANDIDATES {
            break;
        }
    }
    match best {
        Some(((gain, ..), shifted)) => (gain, shifted),
        None => (0, hyp.to_vec()),
    }
}

/// `words` with the run `start..start + len` moved to before position `target`.
fn perform_shift(words: &[String], start: usize, len: usize, target: usize) -> Vec<String> {
    let run = &words[start..start + len];
    let mut out = Vec::with_capacity(words.len());
    if target < start {
        out.extend_from_slice(&words[..target]);
        out.extend_from_slice(run);
        out.extend_from_slice(&words[target..start]);
        out.extend_from_slice(&words[start + len..]);
    } else if target > start + len {
        out.extend_from_slice(&words[..start]);
        out.extend_from_slice(&words[start + len..target]);
        out.extend_from_slice(run);
        out.extend_from_slice(&words[target..]);
    } else {
        // A target inside the run: Python's slices stop at the end of the list.
        let end = (len + target).min(words.len());
        out.extend_from_slice(&words[..start]);
        out.extend_from_slice(&words[start + len..end]);
        out.extend_from_slice(run);
        out.extend_from_slice(&words[end..]);
    }
    out
}

/// Every (hypothesis start, reference start, length) of equal runs, lengths 1 to
/// [`MAX_SHIFT_SIZE`] from each pair of starts at most [`MAX_SHIFT_DIST`] apart, in sacreBLEU's
/// order.
fn shifted_pairs(hyp: &[String], reference: &[String]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for start_h in 0..hyp.len() {
        for start_r in 0..reference.len() {
            if start_r.abs_diff(start_h) > MAX_SHIFT_DIST {
                continue;
            }
            let mut len = 0;
            while hyp[start_h + len] == reference[start_r + len] && len < MAX_SHIFT_SIZE {
                len += 1;
                out.push((start_h, start_r, len));
                if hyp.len() == start_h + len || reference.len() == start_r + len {
                    break;
                }
            }
        }
    }
    out
}

/// From a trace: each reference position's aligned hypothesis position (−1 before the first),
/// and which reference and hypothesis words are errors.
fn alignment(trace: &[Op]) -> (Vec<i64>, Vec<bool>, Vec<bool>) {
    let (mut pos_h, mut pos_r) = (-1i64, -1i64);
    let (mut align, mut ref_err, mut hyp_err) = (Vec::new(), Vec::new(), Vec::new());
    for op in trace {
        match op {
            Op::Nop | Op::Sub => {
                pos_h += 1;
                pos_r += 1;
                debug_assert_eq!(align.len() as i64, pos_r);
                align.push(pos_h);
                hyp_err.push(*op == Op::Sub);
                ref_err.push(*op == Op::Sub);
            }
            Op::Ins => {
                pos_h += 1;
                hyp_err.push(true);
            }
            Op::Del => {
                pos_r += 1;
                align.push(pos_h);
                ref_err.push(true);
            }
            Op::Undef => {}
        }
    }
    (align, ref_err, hyp_err)
}

/// The edit distance to one reference within a band around the diagonal (sacreBLEU's
/// `BeamEditDistance`, without its cache, which only saves recomputing equal prefixes).
struct BeamEditDistance<'r> {
    reference: &'r [String],
}

impl BeamEditDistance<'_> {
    /// The distance from `hyp` to the reference and the trace of operations (rewriting the
    /// reference into the hypothesis).
    fn distance(&self, hyp: &[String]) -> (usize, Vec<Op>) {
        const INF: usize = 10_000_000_000_000_000;
        let (n_h, n_r) = (hyp.len(), self.reference.len());
        let mut dist = vec![vec![(INF, Op::Undef); n_r + 1]; n_h + 1];
        for (j, cell) in dist[0].iter_mut().enumerate() {
            *cell = (j, Op::Ins);
        }
        let ratio = if n_h > 0 {
            n_r as f64 / n_h as f64
        } else {
            1.0
        };
        let beam = if (BEAM_WIDTH as f64) < ratio / 2.0 {
            (ratio / 2.0 + BEAM_WIDTH as f64).ceil() as usize
        } else {
            BEAM_WIDTH
        };
        for i in 1..=n_h {
            let diag = (i as f64 * ratio).floor() as usize;
            let min_j = diag.saturating_sub(beam);
            let max_j = if i == n_h {
                n_r + 1
            } else {
                (n_r + 1).min(diag + beam)
            };
            for j in min_j..max_j {
                if j == 0 {
                    dist[i][0] = (dist[i - 1][0].0 + 1, Op::Del);
                    continue;
                }
                let (sub_cost, sub_op) = if hyp[i - 1] == self.reference[j - 1] {
                    (0, Op::Nop)
                } else {
                    (1, Op::Sub)
                };
                for (cost, op) in [
                    (dist[i - 1][j - 1].0 + sub_cost, sub_op),
                    (dist[i - 1][j].0 + 1, Op::Del),
                    (dist[i][j - 1].0 + 1, Op::Ins),
                ] {
                    if dist[i][j].0 > cost {
                        dist[i][j] = (cost, op);
                    }
                }
            }
        }
        let mut trace = Vec::new();
        let (mut i, mut j) = (n_h, n_r);
        while i > 0 || j > 0 {
            let op = dist[i][j].1;
            trace.push(op);
            match op {
                Op::Sub | Op::Nop => {
                    i -= 1;
                    j -= 1;
                }
                Op::Ins => j -= 1,
                Op::Del => i -= 1,
                // Outside the band: sacreBLEU raises; the band always reaches the corner.
                Op::Undef => break,
            }
        }
        trace.reverse();
        (dist[n_h][n_r].0, trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(h: &str, r: &str) -> (f64, f64) {
        let s = ter_stats(h, r);
        (s[0], s[1])
    }

    /// Values from sacreBLEU 2.6.0's `TER().corpus_score([h], [[r]])`.
    #[test]
    fn sentences_match_sacrebleu() {
        for (h, r, want_edits, want_len, want_score) in [
            (
                "The cat sat on the mat.",
                "The cat is sitting on the mat.",
                2.0,
                7.0,
                28.57142857142857,
            ),
            (
                "Il pleut des cordes, dit-il (2-3 fois).",
                "Il pleut à verse, dit-il (deux fois).",
                3.0,
                7.0,
                42.857142857142854,
            ),
            ("", "Nothing here", 2.0, 2.0, 100.0),
            ("a b c d e f", "A B C D E F", 0.0, 6.0, 0.0),
            // One shift moves a run of words as one edit.
            ("d e f a b c", "a b c d e f", 1.0, 6.0, 16.666666666666664),
            (
                "the quick brown fox jumps over the lazy dog",
                "over the lazy dog the quick brown fox jumps",
                1.0,
                9.0,
                11.11111111111111,
            ),
            ("Nothing", "", 1.0, 0.0, 100.0),
            // Python's split separates words at U+001C–U+001F too.
            ("a\x1fb", "a b", 0.0, 2.0, 0.0),
            ("", "", 0.0, 0.0, 0.0),
        ] {
            assert_eq!(edits(h, r), (want_edits, want_len), "{h:?} / {r:?}");
            let score = ter_score(&ter_stats(h, r));
            assert!((score - want_score).abs() < 1e-9, "{h:?}: {score}");
        }
    }

    /// 40 random sentences over a ten-word vocabulary, with words dropped, inserted and runs
    /// moved, so the shift search, its tie-breaks and the band all matter: every sentence's
    /// edits equal sacreBLEU's, and the corpus score (163 edits over 1,477 words).
    #[test]
    fn shift_heavy_sentences_match_sacrebleu() {
        let cases = include_str!("../../../tests/fixtures/ter_sacrebleu.tsv");
        let mut total = [0.0, 0.0];
        for (i, line) in cases.lines().enumerate() {
            let mut parts = line.split('\t');
            let (h, r) = (parts.next().unwrap(), parts.next().unwrap());
            let want: f64 = parts.next().unwrap().parse().unwrap();
            let s = ter_stats(h, r);
            assert_eq!(s[0], want, "line {}: {h} / {r}", i + 1);
            total[0] += s[0];
            total[1] += s[1];
        }
        assert_eq!(total, [163.0, 1477.0]);
        assert!((ter_score(&total) - 11.03588354773189).abs() < 1e-9);
    }
}
