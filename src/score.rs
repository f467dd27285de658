//! Turning model outputs into metric values, and aggregating them per cell.

use std::collections::BTreeMap;

use crate::task::{ExactMatch, Metric};

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

/// Metric values of a multiple-choice item (1.0 correct, 0.0 wrong).
pub fn choice_metrics(metrics: &[Metric], s: &ChoiceScore, gold: usize) -> BTreeMap<Metric, f64> {
    metrics
        .iter()
        .map(|&m| {
            if m == Metric::BrierScore {
                return (m, brier(&s.probs, gold));
            }
            let hit = s.pred_for(m) == Some(gold);
            (m, f64::from(u8::from(hit)))
        })
        .collect()
}

impl ChoiceScore {
    /// The choice `metric` picks (`None` for a metric this score was not computed for).
    pub fn pred_for(&self, metric: Metric) -> Option<usize> {
        match metric {
            Metric::Acc => Some(self.pred),
            Metric::AccNorm => Some(self.pred_norm),
            Metric::AccBytes => Some(self.pred_bytes),
            Metric::AccCalibrated => self.pred_calibrated,
            Metric::AccPmi => self.pred_pmi,
            Metric::AccMutualInfo => self.pred_mutual_info,
            // Corpus metrics score `acc`'s predictions (lm-eval's `argmax(lls)`).
            Metric::F1 | Metric::F1Weighted | Metric::Mcc => Some(self.pred),
            Metric::ExactMatch
            | Metric::BrierScore
            | Metric::Perplexity
            | Metric::Bleu
            | Metric::Chrf
            | Metric::Ter
            | Metric::WordPerplexity
            | Metric::BytePerplexity
            | Metric::BitsPerByte => None,
        }
    }
}

/// `text` as `exact_match` under `opts` compares it.
fn normalize(opts: &ExactMatch, text: &str) -> String {
    let mut t = text.to_string();
    for re in &opts.regexes_to_ignore {
        t = re.replace_all(&t, "").into_owned();
    }
    if opts.ignore_case {
        t = t.to_lowercase();
    }
    if opts.ignore_punctuation {
        // Python's `string.punctuation`: the ASCII punctuation characters.
        t.retain(|c| !c.is_ascii_punctuation());
    }
    t
}

/// `exact_match` under the task's options: 1.0 when the generation equals the target after the
/// options and trimming surrounding whitespace, else 0.0.
pub fn exact_match_with(opts: &ExactMatch, generated: &str, target: &str) -> f64 {
    let (g, t) = (normalize(opts, generated), normalize(opts, target));
    f64::from(u8::from(g.trim() == t.trim()))
}

/// `exact_match` of a generation without options: equal after trimming surrounding whitespace.
pub fn exact_match(generated: &str, target: &str) -> f64 {
    exact_match_with(&ExactMatch::default(), generated, target)
}

/// Mean and standard error of the mean (sample standard deviation with n−1, over √n).
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn stderr_matches_the_closed_form() {
        // [1,1,0,0]: mean .5, sample var 1/3, stderr sqrt(1/12).
        let (m, se) = mean_stderr(&[1.0, 1.0, 0.0, 0.0]);
        assert_eq!(m, 0.5);
        assert!((se - (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert!(mean_stderr(&[1.0]).1.is_nan());
        assert_eq!(exact_match(" 124 ", "124"), 1.0);
        // gsm8k's options: the answer after "#### ", commas, dollar signs and a final period
        // ignored, case and punctuation folded.
        let gsm = ExactMatch {
            regexes_to_ignore: [",", "\\$", "(?s).*#### ", "\\.$"]
                .iter()
                .map(|r| fancy_regex::Regex::new(r).unwrap())
                .collect(),
            ignore_case: true,
            ignore_punctuation: false,
        };
        assert_eq!(
            exact_match_with(&gsm, "so the total is #### $1,234.", "1234"),
            1.0
        );
        assert_eq!(exact_match_with(&gsm, "#### 1,235", "1234"), 0.0);
        let punct = ExactMatch {
            ignore_punctuation: true,
            ignore_case: true,
            ..Default::default()
        };
        assert_eq!(exact_match_with(&punct, "Paris!", "paris"), 1.0);
        assert_eq!(exact_match("Paris!", "paris"), 0.0);
        assert_eq!(exact_match("12", "124"), 0.0);
    }
}
