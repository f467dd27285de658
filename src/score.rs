//! Generated answers against targets (`exact_match` under a task's options), and the mean ± standard
//! error of per-doc values. Choice scoring and every metric's definition live in `metric`.

use crate::task::ExactMatch;

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
