//! Corpus-level metrics, lm-eval's `bleu`, `chrf`, `ter`, `f1` and `mcc`: a cell's score is not a mean of
//! per-doc values but a function of the whole set of (answer, reference) pairs. Each doc records
//! its sufficient statistics (sacreBLEU's n-gram counts, or the gold and predicted choice); a cell's
//! score is computed from its docs' statistics together, and its standard error by a seeded
//! bootstrap over docs (lm-eval bootstraps these too).
//!
//! BLEU and chrF follow sacreBLEU 2.x's `corpus_bleu` and `corpus_chrf` with their defaults (as
//! lm-eval calls them): BLEU-4 over the `13a` tokenization with `exp` smoothing; chrF with
//! character n-grams up to 6, β = 2, whitespace removed; TER in `ter.rs`. `f1` is scikit-learn's binary F1 of
//! choice 1 (lm-eval's `f1_score`), `mcc` its Matthews correlation over any number of choices.
//! `loglikelihood_rolling`'s `word_perplexity`, `byte_perplexity` and `bits_per_byte` are lm-eval's
//! weighted perplexities: Σ log-likelihood over Σ words or bytes, not a mean of per-document ones.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

mod ter;

/// BLEU's n-gram orders.
const BLEU_ORDER: usize = 4;
/// chrF's character n-gram orders.
const CHRF_ORDER: usize = 6;
/// chrF's β: recall weighs β² times precision.
const CHRF_BETA: f64 = 2.0;
/// Bootstrap resamples for a cell's standard error.
const BOOTSTRAP: usize = 1000;

pub use self::ter::ter_stats;

/// A rolling document's statistics for `word_perplexity`: its log-likelihood and its length in
/// words (lm-eval's `len(re.split(r"\s+", text))`; Python's `re.split` keeps empty pieces at
/// either end, so "a b " counts 3).
pub fn word_stats(loglikelihood: f64, text: &str) -> Vec<f64> {
    vec![loglikelihood, WHITESPACE.split(text).count() as f64]
}

/// A rolling document's statistics for `byte_perplexity` and `bits_per_byte`: its
/// log-likelihood and its length in UTF-8 bytes.
pub fn byte_stats(loglikelihood: f64, text: &str) -> Vec<f64> {
    vec![loglikelihood, text.len() as f64]
}

static WHITESPACE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s+").expect("pattern"));

/// A multiple-choice doc's statistics for `f1` and `mcc`: its gold and predicted choice.
pub fn choice_stats(gold: usize, pred: usize) -> Vec<f64> {
    vec![gold as f64, pred as f64]
}

// A set of docs scored from their statistics (an empty set scores 0). BLEU, chrF and TER are on
// the accuracies' scale, 0–1 (TER may pass 1) (sacreBLEU's and lm-eval's points divided by 100),
// so reports show them as percentages like every other metric.

/// sacreBLEU's corpus BLEU, 0–1.
pub fn bleu(stats: &[&[f64]]) -> f64 {
    bleu_score(&sum(stats, 2 + 2 * BLEU_ORDER)) / 100.0
}

/// sacreBLEU's corpus chrF, 0–1.
pub fn chrf(stats: &[&[f64]]) -> f64 {
    chrf_score(&sum(stats, 3 * CHRF_ORDER)) / 100.0
}

/// sacreBLEU's corpus TER, edits per reference word.
pub fn ter(stats: &[&[f64]]) -> f64 {
    ter::ter_score(&sum(stats, 2)) / 100.0
}

/// exp(−Σ log-likelihood / Σ length).
pub fn weighted_perplexity(stats: &[&[f64]]) -> f64 {
    let s = sum(stats, 2);
    (-s[0] / s[1]).exp()
}

/// −Σ log-likelihood / Σ bytes / ln 2.
pub fn bits_per_byte(stats: &[&[f64]]) -> f64 {
    let s = sum(stats, 2);
    -s[0] / s[1] / std::f64::consts::LN_2
}

/// The bootstrap standard error of `score`: its standard deviation over resamples of the docs
/// drawn with replacement, seeded by `seed` so a report is the same every time.
pub fn bootstrap_stderr(score: fn(&[&[f64]]) -> f64, stats: &[&[f64]], seed: u64) -> f64 {
    if stats.len() < 2 {
        return f64::NAN;
    }
    let mut rng = crate::seed::SeededRng::new(seed);
    let last = stats.len() as u64 - 1;
    let mut draw: Vec<&[f64]> = Vec::with_capacity(stats.len());
    let scores: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| {
            draw.clear();
            draw.extend((0..stats.len()).map(|_| stats[rng.range(0, last) as usize]));
            score(&draw)
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    (scores.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (scores.len() - 1) as f64).sqrt()
}

fn sum(stats: &[&[f64]], width: usize) -> Vec<f64> {
    let mut total = vec![0.0; width];
    for s in stats {
        for (t, x) in total.iter_mut().zip(s.iter()) {
            *t += x;
        }
    }
    total
}

/// sacreBLEU's `13a` tokenization (mteval-v13a, as WMT uses it).
fn tokenize_13a(line: &str) -> String {
    static RULES: LazyLock<[(Regex, &str); 4]> = LazyLock::new(|| {
        let re = |p: &str| Regex::new(p).expect("13a pattern");
        [
            // Punctuation and symbols: {-~, [-`, space-&, (-+, :-@ and /.
            (re(r"([{-~\[-` -&(-+:-@/])"), " $1 "),
            // Period and comma unless preceded by a digit ...
            (re(r"([^0-9])([.,])"), "$1 $2 "),
            // ... or followed by one.
            (re(r"([.,])([^0-9])"), " $1 $2"),
            // A dash after a digit.
            (re(r"([0-9])(-)"), "$1 $2 "),
        ]
    });
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, with) in RULES.iter() {
        line = re.replace_all(&line, *with).into_owned();
    }
    python_split(&line).collect::<Vec<_>>().join(" ")
}

/// Python's `str.split()`: Unicode whitespace and the separators U+001C–U+001F, which Rust's
/// `split_whitespace` keeps inside words.
pub(crate) fn python_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
        .filter(|w| !w.is_empty())
}

fn word_ngrams(tokens: &[&str]) -> HashMap<Vec<String>, usize> {
    let mut out = HashMap::new();
    for n in 1..=BLEU_ORDER {
        for w in tokens.windows(n) {
            *out.entry(w.iter().map(|t| t.to_string()).collect())
                .or_default() += 1;
        }
    }
    out
}

/// `[hypothesis length, reference length, correct n-grams × 4, total n-grams × 4]`.
pub fn bleu_stats(hypothesis: &str, reference: &str) -> Vec<f64> {
    let hyp = tokenize_13a(hypothesis.trim_end());
    let reference = tokenize_13a(reference.trim_end());
    let hyp: Vec<&str> = python_split(&hyp).collect();
    let reference: Vec<&str> = python_split(&reference).collect();
    let ref_ngrams = word_ngrams(&reference);
    let mut correct = [0.0; BLEU_ORDER];
    let mut total = [0.0; BLEU_ORDER];
    for (gram, count) in word_ngrams(&hyp) {
        let n = gram.len() - 1;
        total[n] += count as f64;
        if let Some(&r) = ref_ngrams.get(&gram) {
            correct[n] += count.min(r) as f64;
        }
    }
    let mut out = vec![hyp.len() as f64, reference.len() as f64];
    out.extend(correct);
    out.extend(total);
    out
}

/// sacreBLEU's `compute_bleu` with `exp` smoothing and no effective order, on summed statistics.
fn bleu_score(s: &[f64]) -> f64 {
    let (sys_len, ref_len) = (s[0], s[1]);
    let correct = &s[2..2 + BLEU_ORDER];
    let total = &s[2 + BLEU_ORDER..];
    if correct.iter().all(|&c| c == 0.0) {
        return 0.0;
    }
    let bp = if sys_len < ref_len {
        if sys_len > 0.0 {
            (1.0 - ref_len / sys_len).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0; BLEU_ORDER];
    let mut smooth = 1.0;
    for n in 0..BLEU_ORDER {
        if total[n] == 0.0 {
            break;
        }
        precisions[n] = if correct[n] == 0.0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n])
        } else {
            100.0 * correct[n] / total[n]
        };
    }
    // sacreBLEU's log of 0 is −9,999,999,999, so a missing order zeroes the score.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / BLEU_ORDER as f64).exp()
}

fn char_ngrams(chars: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut out = HashMap::new();
    for w in chars.windows(n) {
        *out.entry(w).or_default() += 1;
    }
    out
}

/// `[hypothesis n-grams, reference n-grams, matches]` for each character order 1–6.
pub fn chrf_stats(hypothesis: &str, reference: &str) -> Vec<f64> {
    let hyp: Vec<char> = hypothesis.chars().filter(|c| !c.is_whitespace()).collect();
    let reference: Vec<char> = reference.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::with_capacity(3 * CHRF_ORDER);
    for n in 1..=CHRF_ORDER {
        let h = char_ngrams(&hyp, n);
        let r = char_ngrams(&reference, n);
        let (mut hyp_count, mut matches) = (0, 0);
        for (gram, count) in &h {
            hyp_count += count;
            if let Some(&rc) = r.get(gram) {
                matches += (*count).min(rc);
            }
        }
        // sacreBLEU counts no hypothesis n-grams of an order the reference lacks.
        let hyp_count = if r.is_empty() { 0 } else { hyp_count };
        out.extend([
            hyp_count as f64,
            r.values().sum::<usize>() as f64,
            matches as f64,
        ]);
    }
    out
}

/// sacreBLEU's chrF from summed statistics: precision and recall averaged over the orders both
/// sides have, then their F-β.
fn chrf_score(s: &[f64]) -> f64 {
    let factor = CHRF_BETA * CHRF_BETA;
    let (mut prec, mut rec, mut orders) = (0.0, 0.0, 0.0);
    for n in 0..CHRF_ORDER {
        let (hyp, reference, matches) = (s[3 * n], s[3 * n + 1], s[3 * n + 2]);
        if hyp > 0.0 && reference > 0.0 {
            prec += matches / hyp;
            rec += matches / reference;
            orders += 1.0;
        }
    }
    if orders == 0.0 {
        return 0.0;
    }
    let (prec, rec) = (prec / orders, rec / orders);
    if prec + rec == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * prec * rec / (factor * prec + rec)
}

/// scikit-learn's binary F1 of choice 1 (0 when it is never predicted nor gold).
pub fn f1(stats: &[&[f64]]) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for s in stats {
        match (s[0] == 1.0, s[1] == 1.0) {
            (true, true) => tp += 1.0,
            (false, true) => fp += 1.0,
            (true, false) => fn_ += 1.0,
            (false, false) => {}
        }
    }
    if tp == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fn_)
}

/// How many choices (gold, predicted) pairs span: one past the largest index.
fn classes(stats: &[&[f64]]) -> usize {
    stats
        .iter()
        .map(|s| s[0].max(s[1]) as usize + 1)
        .max()
        .unwrap_or(0)
}

/// scikit-learn's `f1_score(average="weighted")`: each label's F1 (0 where undefined) weighted by
/// its count among the golds, over the labels golds and predictions use.
pub fn f1_weighted(stats: &[&[f64]]) -> f64 {
    let classes = classes(stats);
    let (mut tp, mut fp, mut fn_) = (vec![0.0; classes], vec![0.0; classes], vec![0.0; classes]);
    for s in stats {
        let (g, p) = (s[0] as usize, s[1] as usize);
        if g == p {
            tp[g] += 1.0;
        } else {
            fp[p] += 1.0;
            fn_[g] += 1.0;
        }
    }
    let support: f64 = (0..classes).map(|c| tp[c] + fn_[c]).sum();
    if support == 0.0 {
        return 0.0;
    }
    (0..classes)
        .map(|c| {
            let denom = 2.0 * tp[c] + fp[c] + fn_[c];
            let f1 = if denom > 0.0 {
                2.0 * tp[c] / denom
            } else {
                0.0
            };
            f1 * (tp[c] + fn_[c])
        })
        .sum::<f64>()
        / support
}

/// scikit-learn's `matthews_corrcoef` for any number of classes (0 when undefined).
pub fn mcc(stats: &[&[f64]]) -> f64 {
    let classes = classes(stats);
    let (mut t, mut p) = (vec![0.0; classes], vec![0.0; classes]);
    let mut agree = 0.0;
    for s in stats {
        let (g, q) = (s[0] as usize, s[1] as usize);
        t[g] += 1.0;
        p[q] += 1.0;
        if g == q {
            agree += 1.0;
        }
    }
    let n = stats.len() as f64;
    let tp: f64 = t.iter().zip(&p).map(|(a, b)| a * b).sum();
    let cov_ytyp = agree * n - tp;
    let cov_ypyp = n * n - p.iter().map(|x| x * x).sum::<f64>();
    let cov_ytyt = n * n - t.iter().map(|x| x * x).sum::<f64>();
    if cov_ypyp * cov_ytyt == 0.0 {
        return 0.0;
    }
    cov_ytyp / (cov_ytyt * cov_ypyp).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Metric;

    fn text_stats(m: Metric, h: &str, r: &str) -> Vec<f64> {
        match m.spec().per_doc {
            crate::metric::PerDoc::TextStats(f) => f(h, r),
            _ => unreachable!(),
        }
    }

    fn document_stats(m: Metric, ll: f64, t: &str) -> Vec<f64> {
        match m.spec().per_doc {
            crate::metric::PerDoc::DocumentStats(f) => f(ll, t),
            _ => unreachable!(),
        }
    }

    fn score(m: Metric, stats: &[&[f64]]) -> f64 {
        m.corpus_score(stats)
    }

    /// Hypotheses and references with punctuation, entities, digits, an empty answer and a
    /// perfect one; the expected values are sacreBLEU 2.6.0's and scikit-learn's own.
    const PAIRS: [(&str, &str); 5] = [
        ("The cat sat on the mat.", "The cat is sitting on the mat."),
        (
            "Il pleut des cordes, dit-il (2-3 fois).",
            "Il pleut à verse, dit-il (deux fois).",
        ),
        ("", "Nothing here"),
        ("a b c d e f", "a b c d e f"),
        (
            "Price: $1,000.50 & 3-4 days",
            "Price: $1,000.50 &amp; 3-4 days!",
        ),
    ];

    fn corpus(metric: Metric, pairs: &[(&str, &str)]) -> f64 {
        let stats: Vec<Vec<f64>> = pairs
            .iter()
            .map(|(h, r)| text_stats(metric, h, r))
            .collect();
        100.0 * score(metric, &stats.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    #[test]
    fn tokenization_is_sacrebleus_13a() {
        for (line, want) in [
            (
                "Price: $1,000.50 &amp; 3-4 days!",
                "Price : $ 1,000.50 & 3 - 4 days !",
            ),
            (
                "Il pleut des cordes, dit-il (2-3 fois).",
                "Il pleut des cordes , dit-il ( 2 - 3 fois ) .",
            ),
            ("a.b,c 1.5 x-1 {q}", "a . b , c 1.5 x-1 { q }"),
        ] {
            assert_eq!(tokenize_13a(line), want);
        }
    }

    #[test]
    fn bleu_and_chrf_match_sacrebleu_per_sentence_and_over_the_corpus() {
        let bleu = [
            42.38365628278778,
            21.97281387499715,
            0.0,
            100.0,
            89.483931681437,
        ];
        let chrf = [
            49.6485170311433,
            49.02518677130777,
            0.0,
            100.0,
            72.85202087539798,
        ];
        for (i, pair) in PAIRS.iter().enumerate() {
            let b = corpus(Metric::Bleu, &[*pair]);
            let c = corpus(Metric::Chrf, &[*pair]);
            assert!((b - bleu[i]).abs() < 1e-9, "bleu {i}: {b}");
            assert!((c - chrf[i]).abs() < 1e-9, "chrf {i}: {c}");
        }
        // The corpus score is not the mean of the sentence scores.
        let b = corpus(Metric::Bleu, &PAIRS);
        let c = corpus(Metric::Chrf, &PAIRS);
        assert!((b - 57.98034861942202).abs() < 1e-9, "{b}");
        assert!((c - 53.87425407541184).abs() < 1e-9, "{c}");
    }

    #[test]
    fn f1_and_mcc_match_scikit_learn() {
        let pairs = |g: &[usize], p: &[usize]| -> Vec<Vec<f64>> {
            g.iter().zip(p).map(|(&g, &p)| choice_stats(g, p)).collect()
        };
        let two = pairs(&[0, 1, 1, 0, 1, 1, 0, 0], &[0, 1, 0, 0, 1, 1, 1, 0]);
        let two: Vec<&[f64]> = two.iter().map(Vec::as_slice).collect();
        assert!((score(Metric::F1, &two) - 0.75).abs() < 1e-12);
        assert!((score(Metric::Mcc, &two) - 0.5).abs() < 1e-12);
        let three = pairs(&[0, 1, 2, 2, 1, 0, 2, 1], &[0, 2, 2, 2, 1, 0, 1, 1]);
        let three: Vec<&[f64]> = three.iter().map(Vec::as_slice).collect();
        assert!((score(Metric::Mcc, &three) - 0.6190476190476191).abs() < 1e-12);
        assert!((score(Metric::F1Weighted, &three) - 0.75).abs() < 1e-12);
        let extra = pairs(&[0, 1, 1, 0, 1, 1, 0, 0], &[0, 1, 0, 0, 1, 1, 1, 2]);
        let extra: Vec<&[f64]> = extra.iter().map(Vec::as_slice).collect();
        assert!((score(Metric::F1Weighted, &extra) - 0.6607142857142857).abs() < 1e-12);
        // One class only: undefined, 0 as scikit-learn gives.
        let same = pairs(&[1, 1], &[1, 1]);
        let same: Vec<&[f64]> = same.iter().map(Vec::as_slice).collect();
        assert_eq!(score(Metric::Mcc, &same), 0.0);
    }

    #[test]
    fn the_bootstrap_is_seeded_and_grows_with_disagreement() {
        let stats: Vec<Vec<f64>> = PAIRS
            .iter()
            .map(|(h, r)| text_stats(Metric::Bleu, h, r))
            .collect();
        let stats: Vec<&[f64]> = stats.iter().map(Vec::as_slice).collect();
        let a = Metric::Bleu.bootstrap_stderr(&stats, 7);
        assert_eq!(a, Metric::Bleu.bootstrap_stderr(&stats, 7));
        assert!(a > 0.01 && a < 0.6, "{a}");
        let perfect = text_stats(Metric::Bleu, "a b c d e", "a b c d e");
        let same = vec![perfect.as_slice(); 5];
        assert!(Metric::Bleu.bootstrap_stderr(&same, 7) < 1e-9);
    }

    /// Word and byte perplexities weigh documents by their length (Σ log-likelihood / Σ count),
    /// words counted as Python's `re.split(r"\s+", …)` counts them.
    #[test]
    fn rolling_metrics_are_weighted_by_words_and_bytes() {
        let docs = [(-10.0, "one two three"), (-2.0, " héllo ")];
        let stats = |m| -> Vec<Vec<f64>> {
            docs.iter()
                .map(|(ll, t)| document_stats(m, *ll, t))
                .collect()
        };
        let words = stats(Metric::WordPerplexity);
        // " héllo " splits into ["", "héllo", ""]: 3 pieces, as in Python.
        assert_eq!(words[1][1], 3.0);
        fn all(v: &[Vec<f64>]) -> Vec<&[f64]> {
            v.iter().map(Vec::as_slice).collect()
        }
        assert!((score(Metric::WordPerplexity, &all(&words)) - 2f64.exp()).abs() < 1e-12);
        let bytes = stats(Metric::BytePerplexity);
        assert_eq!(bytes[1][1], 8.0, "é is two bytes");
        assert!(
            (score(Metric::BytePerplexity, &all(&bytes)) - (12.0f64 / 21.0).exp()).abs() < 1e-12
        );
        let bpb = stats(Metric::BitsPerByte);
        assert!(
            (score(Metric::BitsPerByte, &all(&bpb)) - 12.0 / 21.0 / std::f64::consts::LN_2).abs()
                < 1e-12
        );
    }
}
