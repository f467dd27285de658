//! Turning model outputs into metric values, and aggregating them per cell.

use std::collections::BTreeMap;

use crate::task::Metric;

/// Result of scoring one multiple-choice item.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScore {
    /// Index with the highest summed log-likelihood.
    pub pred: usize,
    /// Index with the highest log-likelihood per UTF-8 byte of the choice.
    pub pred_norm: usize,
}

/// First index of the maximum (ties go to the earlier choice, like `argmax`).
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    xs.enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

/// Picks the answers for `acc` and `acc_norm`. The normaliser is the byte length of the choice text
/// (without the target delimiter), as lm-eval's `acc_bytes`; it keeps scores tokenizer-independent.
pub fn score_choices(logprobs: &[f64], choices: &[String]) -> ChoiceScore {
    let pred = argmax(logprobs.iter().copied());
    let pred_norm = argmax(
        logprobs
            .iter()
            .zip(choices)
            .map(|(lp, c)| lp / c.len().max(1) as f64),
    );
    ChoiceScore { pred, pred_norm }
}

/// Metric values of a multiple-choice item (1.0 correct, 0.0 wrong).
pub fn choice_metrics(metrics: &[Metric], s: &ChoiceScore, gold: usize) -> BTreeMap<Metric, f64> {
    metrics
        .iter()
        .map(|&m| {
            let hit = match m {
                Metric::Acc => s.pred == gold,
                Metric::AccNorm => s.pred_norm == gold,
                Metric::ExactMatch => false,
            };
            (m, f64::from(u8::from(hit)))
        })
        .collect()
}

/// `exact_match` of a generation: equal after trimming surrounding whitespace.
pub fn exact_match(generated: &str, target: &str) -> f64 {
    f64::from(u8::from(generated.trim() == target.trim()))
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
        let s = score_choices(&[-2.4, -3.0], &choices);
        assert_eq!(
            s,
            ChoiceScore {
                pred: 0,
                pred_norm: 1
            }
        );
        let m = choice_metrics(&[Metric::Acc, Metric::AccNorm], &s, 1);
        assert_eq!(m[&Metric::Acc], 0.0);
        assert_eq!(m[&Metric::AccNorm], 1.0);
    }

    #[test]
    fn byte_length_not_char_length() {
        // "été" is 3 characters but 5 bytes: -4.0/5 = -0.8 beats -2.7/3 = -0.9.
        let choices = vec!["été".to_string(), "abc".to_string()];
        assert_eq!(score_choices(&[-4.0, -2.7], &choices).pred_norm, 0);
    }

    #[test]
    fn ties_go_to_the_first_choice() {
        let choices = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            score_choices(&[-1.0, -1.0], &choices),
            ChoiceScore {
                pred: 0,
                pred_norm: 0
            }
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
        assert_eq!(exact_match("12", "124"), 0.0);
    }
}
