//! Multiple-choice scoring: the choices' log-likelihoods → each metric's pick, the choices'
//! probabilities, and the calibration measures over them (Brier score, expected calibration error).

/// Result of scoring one multiple-choice item.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScore {
    /// Index with the highest summed log-likelihood.
    pub pred: usize,
    /// Index with the highest log-likelihood per character of the choice (lm-eval's `acc_norm`).
    pub pred_norm: usize,
    /// Index with the highest log-likelihood per UTF-8 byte of the choice (lm-eval's `acc_bytes`).
    pub pred_bytes: usize,
    /// Index with the highest calibrated probability (when content-free scores were given).
    pub pred_calibrated: Option<usize>,
    /// Index with the highest log-likelihood minus unconditional log-likelihood (when given).
    pub pred_pmi: Option<usize>,
    /// Index with the highest log-likelihood minus that after an empty context (when given).
    pub pred_mutual_info: Option<usize>,
    /// The log-likelihoods renormalised over the choices, as probabilities (for `brier_score`).
    pub probs: Vec<f64>,
}

/// Log-probabilities renormalised over the choices (a softmax of summed log-likelihoods).
pub fn normalize_over_choices(logprobs: &[f64]) -> Vec<f64> {
    let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_z = max + logprobs.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    logprobs.iter().map(|l| l - log_z).collect()
}

/// Contextual calibration's prior: each content-free input's distribution over the choices
/// (renormalised), averaged in probability space, as log-probabilities (Zhao et al. 2021, §5).
pub fn content_free_prior(content_free: &[Vec<f64>]) -> Vec<f64> {
    let n = content_free.first().map_or(0, Vec::len);
    let mut mean = vec![0.0; n];
    for lps in content_free {
        for (m, lp) in mean.iter_mut().zip(normalize_over_choices(lps)) {
            *m += lp.exp() / content_free.len() as f64;
        }
    }
    mean.into_iter().map(f64::ln).collect()
}

/// First index of the maximum (ties go to the earlier choice, like `argmax`).
pub fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    xs.enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

/// Picks the answers for `acc`, `acc_norm` and `acc_bytes`. The normalisers are lm-eval's: the
/// choice text's length (without the target delimiter) in characters for `acc_norm` (Python's
/// `len(str)`), in UTF-8 bytes for `acc_bytes`; both keep scores tokenizer-independent.
///
/// `prior` (from [`content_free_prior`]) enables `acc_calibrated`: with W = diag(1 / p_cf) and no
/// bias, the calibrated probability of choice i is p_i / p_cf,i, so its argmax is that of
/// log p_i − log p_cf,i. `unconditional` enables `acc_pmi`: log p_i − log p(choice i | neutral prefix).
pub fn score_choices(
    logprobs: &[f64],
    choices: &[String],
    prior: Option<&[f64]>,
    unconditional: Option<&[f64]>,
) -> ChoiceScore {
    let pred = argmax(logprobs.iter().copied());
    let minus = |other: &[f64]| argmax(logprobs.iter().zip(other).map(|(a, b)| a - b));
    let per = |len: fn(&String) -> usize| {
        argmax(
            logprobs
                .iter()
                .zip(choices)
                .map(|(lp, c)| lp / len(c).max(1) as f64),
        )
    };
    ChoiceScore {
        pred,
        pred_norm: per(|c| c.chars().count()),
        pred_bytes: per(String::len),
        pred_calibrated: prior.map(minus),
        pred_pmi: unconditional.map(minus),
        pred_mutual_info: None,
        probs: normalize_over_choices(logprobs)
            .into_iter()
            .map(f64::exp)
            .collect(),
    }
}

/// `acc_mutual_info`'s pick: the highest log-likelihood minus the log-likelihood of the same
/// continuation after an empty context.
pub fn pred_mutual_info(logprobs: &[f64], empty_context: &[f64]) -> usize {
    argmax(logprobs.iter().zip(empty_context).map(|(a, b)| a - b))
}

/// lm-eval's Brier score of one doc: Σᵢ (pᵢ − 1[i = gold])².
pub fn brier(probs: &[f64], gold: usize) -> f64 {
    probs
        .iter()
        .enumerate()
        .map(|(i, p)| (p - f64::from(u8::from(i == gold))).powi(2))
        .sum()
}

/// 1.0 for a hit, 0.0 for a miss.
pub fn hit(yes: bool) -> f64 {
    f64::from(u8::from(yes))
}

/// A doc's statistics for [`ece`]: the model's confidence (its top choice's probability,
/// renormalised over the choices) and whether that choice is gold.
pub fn confidence_stats(s: &ChoiceScore, gold: usize) -> Vec<f64> {
    let top = s.probs.get(s.pred).copied().unwrap_or(f64::NAN);
    vec![top, hit(s.pred == gold)]
}

/// A doc's statistics for [`batch_calibrated_acc`]: its gold index, then its probabilities
/// over the choices (renormalised).
pub fn gold_and_probs(s: &ChoiceScore, gold: usize) -> Vec<f64> {
    std::iter::once(gold as f64)
        .chain(s.probs.iter().copied())
        .collect()
}

/// Batch calibration (Zhou et al., ICLR 2024): the contextual prior p̂(y | C) is the mean of the
/// docs' probabilities over the choices (no content-free inputs, no labels); each doc's pick is
/// argmax log p(y | x, C) − log p̂(y | C); the value is the share of picks that are gold. Docs
/// are the cell's (one prior per cell, as the paper's batch of test inputs). NaN when the docs'
/// choice counts differ (the loader refuses such a task).
pub fn batch_calibrated_acc(stats: &[&[f64]]) -> f64 {
    let Some(first) = stats.first() else {
        return f64::NAN;
    };
    let n = first.len() - 1;
    if stats.iter().any(|s| s.len() != n + 1) {
        return f64::NAN;
    }
    let mut prior = vec![0.0; n];
    for s in stats {
        for (p, x) in prior.iter_mut().zip(&s[1..]) {
            *p += x / stats.len() as f64;
        }
    }
    let hits = stats
        .iter()
        .filter(|s| {
            let pick = argmax(s[1..].iter().zip(&prior).map(|(p, q)| p.ln() - q.ln()));
            pick == s[0] as usize
        })
        .count();
    hits as f64 / stats.len() as f64
}

/// Bins of [`ece`].
const ECE_BINS: usize = 10;

/// One bin of [`ece_bins`]: docs, their mean confidence and their accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bin {
    pub docs: usize,
    pub confidence: f64,
    pub accuracy: f64,
}

/// HELM's bins (the `calibration` package's `get_ece_em`, 10 bins): docs sorted by confidence
/// and split into bins of equal mass (numpy's `array_split`: the first `n mod 10` bins one doc
/// larger); a bin's upper edge is the midpoint between its last confidence and the next bin's
/// first, the last edge 1, equal edges merged; each doc falls in the first bin whose edge is ≥
/// its confidence. Empty bins are left out. `stats` as [`confidence_stats`] writes them.
pub fn ece_bins(stats: &[&[f64]]) -> Vec<Bin> {
    let n = stats.len();
    if n == 0 {
        return Vec::new();
    }
    let mut conf: Vec<f64> = stats.iter().map(|s| s[0]).collect();
    conf.sort_by(f64::total_cmp);
    let parts = ECE_BINS.min(n);
    let (base, extra) = (n / parts, n % parts);
    let mut edges = Vec::with_capacity(parts);
    let mut end = 0;
    for p in 0..parts - 1 {
        end += base + usize::from(p < extra);
        edges.push((conf[end - 1] + conf[end]) / 2.0);
    }
    edges.push(1.0);
    edges.sort_by(f64::total_cmp);
    edges.dedup();
    // Per bin: docs, Σ confidence, Σ correct.
    let mut bins = vec![(0usize, 0.0f64, 0.0f64); edges.len()];
    for s in stats {
        let b = edges.partition_point(|&e| e < s[0]).min(edges.len() - 1);
        bins[b].0 += 1;
        bins[b].1 += s[0];
        bins[b].2 += s[1];
    }
    bins.into_iter()
        .filter(|b| b.0 > 0)
        .map(|(docs, conf, correct)| Bin {
            docs,
            confidence: conf / docs as f64,
            accuracy: correct / docs as f64,
        })
        .collect()
}

/// HELM's `ece_10_bin`: over [`ece_bins`], Σ (docs in bin / n) · |mean confidence − accuracy|.
/// Lower is better.
pub fn ece(stats: &[&[f64]]) -> f64 {
    if stats.is_empty() {
        return f64::NAN;
    }
    ece_bins(stats)
        .iter()
        .map(|b| b.docs as f64 / stats.len() as f64 * (b.confidence - b.accuracy).abs())
        .sum()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metric::Metric;

    /// Each metric's value of a doc, as `evaluate` records them.
    fn choice_metrics(metrics: &[Metric], s: &ChoiceScore, gold: usize) -> BTreeMap<Metric, f64> {
        metrics
            .iter()
            .map(|&m| (m, m.choice_value(s, gold).unwrap()))
            .collect()
    }

    #[test]
    fn acc_and_acc_norm_disagree_on_a_hand_computed_case() {
        // " yes" (3 bytes): -2.4 → -0.8 per byte; " absolutely" (10 bytes): -3.0 → -0.3 per byte.
        // acc picks the shorter, more likely choice; acc_norm picks the longer one.
        let choices = vec!["yes".to_string(), "absolutely".to_string()];
        let s = score_choices(&[-2.4, -3.0], &choices, None, None);
        assert_eq!((s.pred, s.pred_norm, s.pred_calibrated), (0, 1, None));
        let m = choice_metrics(&[Metric::Acc, Metric::AccNorm], &s, 1);
        assert_eq!(m[&Metric::Acc], 0.0);
        assert_eq!(m[&Metric::AccNorm], 1.0);
    }

    #[test]
    fn acc_norm_counts_characters_and_acc_bytes_bytes() {
        // "été" is 3 characters but 5 bytes. Per character: -4.0/3 = -1.33 loses to -2.7/3 = -0.9;
        // per byte: -4.0/5 = -0.8 beats -0.9 (lm-eval's acc_norm and acc_bytes).
        let choices = vec!["été".to_string(), "abc".to_string()];
        let s = score_choices(&[-4.0, -2.7], &choices, None, None);
        assert_eq!((s.pred_norm, s.pred_bytes), (1, 0));
        let m = choice_metrics(&[Metric::AccNorm, Metric::AccBytes], &s, 0);
        assert_eq!((m[&Metric::AccNorm], m[&Metric::AccBytes]), (0.0, 1.0));
    }

    #[test]
    fn ties_go_to_the_first_choice() {
        let choices = vec!["a".to_string(), "b".to_string()];
        let s = score_choices(&[-1.0, -1.0], &choices, Some(&[-1.0, -1.0]), None);
        assert_eq!((s.pred, s.pred_norm, s.pred_calibrated), (0, 0, Some(0)));
    }

    #[test]
    fn contextual_calibration_on_a_hand_computed_three_label_case() {
        let ln = f64::ln;
        // Content-free inputs, as probabilities over (A, B, C) after renormalising:
        //   "N/A": summed logprobs ln(.2), ln(.1), ln(.1) → .5, .25, .25
        //   "":    ln(.6), ln(.2), ln(.2)               → .6, .2, .2
        //   "[MASK]": ln(.7), ln(.2), ln(.1)            → .7, .2, .1
        // p_cf = (.6, .65/3, .55/3).
        let cf = vec![
            vec![ln(0.2), ln(0.1), ln(0.1)],
            vec![ln(0.6), ln(0.2), ln(0.2)],
            vec![ln(0.7), ln(0.2), ln(0.1)],
        ];
        let prior = content_free_prior(&cf);
        let want = [0.6, 0.65 / 3.0, 0.55 / 3.0];
        for (p, w) in prior.iter().zip(want) {
            assert!((p.exp() - w).abs() < 1e-12, "{prior:?}");
        }
        // The test input: p = (.5, .3, .2) → p / p_cf = (.833, 1.385, 1.091): B wins,
        // although A is the most likely label.
        let choices: Vec<String> = ["A", "B", "C"].iter().map(|s| s.to_string()).collect();
        let s = score_choices(&[ln(0.5), ln(0.3), ln(0.2)], &choices, Some(&prior), None);
        assert_eq!((s.pred, s.pred_calibrated), (0, Some(1)));
        let m = choice_metrics(&[Metric::Acc, Metric::AccCalibrated], &s, 1);
        assert_eq!((m[&Metric::Acc], m[&Metric::AccCalibrated]), (0.0, 1.0));
        // Unnormalised logprobs give the same answer: the softmax only shifts every score.
        let s2 = score_choices(
            &[ln(0.05), ln(0.03), ln(0.02)],
            &choices,
            Some(&prior),
            None,
        );
        assert_eq!(s2.pred_calibrated, Some(1));
    }

    #[test]
    fn pmi_subtracts_the_unconditional_likelihood() {
        // Conditional: A -2.0, B -2.5. Unconditional: A -1.0, B -3.0 → PMI: A -1.0, B 0.5.
        let choices: Vec<String> = ["A", "B"].iter().map(|s| s.to_string()).collect();
        let s = score_choices(&[-2.0, -2.5], &choices, None, Some(&[-1.0, -3.0]));
        assert_eq!((s.pred, s.pred_pmi), (0, Some(1)));
        assert_eq!(
            choice_metrics(&[Metric::AccPmi], &s, 1)[&Metric::AccPmi],
            1.0
        );
    }

    #[test]
    fn batch_calibration_divides_out_the_mean_probability_of_the_cell() {
        // Three docs over (A, B), probabilities after renormalising:
        //   doc 0: (.9, .1) gold A    doc 1: (.7, .3) gold B    doc 2: (.85, .15) gold A
        // p̂ = (2.45/3, .55/3) = (.817, .183). Calibrated ratios p / p̂:
        //   doc 0: (1.10, .55) → A ✓   doc 1: (.86, 1.64) → B ✓   doc 2: (1.04, .82) → A ✓
        // acc picks A every time: 2/3; batch-calibrated: 3/3.
        let docs: Vec<Vec<f64>> = vec![
            vec![0.0, 0.9, 0.1],
            vec![1.0, 0.7, 0.3],
            vec![0.0, 0.85, 0.15],
        ];
        let stats: Vec<&[f64]> = docs.iter().map(Vec::as_slice).collect();
        assert_eq!(batch_calibrated_acc(&stats), 1.0);
        // A doc alone is its own prior: every choice ties, the first wins.
        assert_eq!(batch_calibrated_acc(&stats[1..2]), 0.0);
        assert_eq!(batch_calibrated_acc(&stats[..1]), 1.0);
        // Docs with other numbers of choices cannot share a prior.
        let mixed: Vec<&[f64]> = vec![&docs[0], &[0.0, 0.5, 0.3, 0.2]];
        assert!(batch_calibrated_acc(&mixed).is_nan());
        // The statistics: gold, then the softmaxed choice probabilities.
        let choices = vec!["a".to_string(), "b".to_string()];
        let s = score_choices(&[0.25f64.ln(), 0.75f64.ln()], &choices, None, None);
        let st = gold_and_probs(&s, 1);
        assert!(st[0] == 1.0 && (st[1] - 0.25).abs() < 1e-12 && (st[2] - 0.75).abs() < 1e-12);
    }

    #[test]
    fn ece_matches_helms_equal_mass_bins_on_a_hand_computed_case() {
        // 20 docs → 10 bins of 2. Confidences 0.5, 0.55, …, 0.95 each twice; in each pair one
        // doc is right, except the two most confident (both right) and the two least (both
        // wrong). Bin i holds the pair at 0.5 + 0.05 i (edges are the midpoints between pairs):
        //   bin 0: conf 0.50, acc 0   → |0.50 − 0| = 0.50
        //   bins 1–8: conf c, acc 0.5 → |c − 0.5| = 0.05 · i
        //   bin 9: conf 0.95, acc 1   → 0.05
        // ECE = (0.50 + 0.05 · (1 + … + 8) + 0.05) / 10 = (0.5 + 1.8 + 0.05) / 10 = 0.235.
        let mut docs = Vec::new();
        for i in 0..10 {
            let c = 0.5 + 0.05 * i as f64;
            let (a, b) = match i {
                0 => (0.0, 0.0),
                9 => (1.0, 1.0),
                _ => (1.0, 0.0),
            };
            docs.push(vec![c, a]);
            docs.push(vec![c, b]);
        }
        let stats: Vec<&[f64]> = docs.iter().map(Vec::as_slice).collect();
        assert!((ece(&stats) - 0.235).abs() < 1e-12, "{}", ece(&stats));
        // Order does not matter; a perfectly calibrated set scores 0.
        let mut rev = stats.clone();
        rev.reverse();
        assert_eq!(ece(&rev), ece(&stats));
        let calibrated: Vec<Vec<f64>> = (0..4).map(|i| vec![0.5, f64::from(i % 2)]).collect();
        let c: Vec<&[f64]> = calibrated.iter().map(Vec::as_slice).collect();
        assert_eq!(ece(&c), 0.0);
        // Fewer docs than bins: one bin per doc (numpy's array_split into n parts). Three docs
        // at 0.9 right, 0.8 wrong, 0.6 right: (0.1 + 0.8 + 0.4) / 3.
        let few: Vec<Vec<f64>> = vec![vec![0.9, 1.0], vec![0.8, 0.0], vec![0.6, 1.0]];
        let f: Vec<&[f64]> = few.iter().map(Vec::as_slice).collect();
        assert!((ece(&f) - 1.3 / 3.0).abs() < 1e-12);
        // Ties spanning bins: equal confidences share an edge and land in the lower bin, as
        // `bisect_left` puts them. Four docs at 0.7 (2 right) and two at 0.9 (both right), 6 docs
        // in 6 parts: edges 0.7, 0.8, 0.9, 1 after dedup; the 0.7s in bin 0 (|0.7 − 0.5| · 4/6),
        // the 0.9s in bin 2 (|0.9 − 1| · 2/6).
        let tied: Vec<Vec<f64>> = [
            (0.7, 1.0),
            (0.7, 0.0),
            (0.7, 1.0),
            (0.7, 0.0),
            (0.9, 1.0),
            (0.9, 1.0),
        ]
        .iter()
        .map(|&(c, a)| vec![c, a])
        .collect();
        let t: Vec<&[f64]> = tied.iter().map(Vec::as_slice).collect();
        assert!(
            (ece(&t) - (0.2 * 4.0 / 6.0 + 0.1 * 2.0 / 6.0)).abs() < 1e-12,
            "{}",
            ece(&t)
        );
        // A doc's statistics: the top choice's renormalised probability and whether it is gold.
        let choices = vec!["a".to_string(), "b".to_string()];
        let s = score_choices(&[0.75f64.ln(), 0.25f64.ln()], &choices, None, None);
        let st = confidence_stats(&s, 1);
        assert!((st[0] - 0.75).abs() < 1e-12 && st[1] == 0.0, "{st:?}");
    }
}
