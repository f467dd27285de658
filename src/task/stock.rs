//! lm-eval helper functions icl-eval recognizes by their source and computes itself, so a task
//! file whose only Python is such a helper needs no Python at all. A helper is recognized only
//! when its `def` block matches the known source line for line (whitespace aside) and its module
//! imports what the body calls, or when the module imports it from lm-eval's own library (lm-eval
//! ships `lm_eval.utils.weighted_f1_score`, and 61 task modules re-export it); anything else stays
//! Python (`--allow-python`).

use std::path::Path;

/// A recognized helper: the icl-eval metric computing the same thing.
struct Stock {
    function: &'static str,
    /// The `def` block, one statement per line.
    body: &'static [&'static str],
    /// A top-level import the body relies on.
    import: &'static str,
    /// The import that makes the function lm-eval's own.
    reexport: &'static str,
    /// The icl-eval metric.
    metric: &'static str,
}

const STOCK: &[Stock] = &[Stock {
    // afrixnli, afrimmlu, afrobench, …: scikit-learn's support-weighted F1 of (gold, pred) pairs.
    function: "weighted_f1_score",
    body: &[
        "def weighted_f1_score(items):",
        "unzipped_list = list(zip(*items))",
        "golds = unzipped_list[0]",
        "preds = unzipped_list[1]",
        "fscore = f1_score(golds, preds, average=\"weighted\")",
        "return fscore",
    ],
    import: "from sklearn.metrics import f1_score",
    reexport: "from lm_eval.utils import weighted_f1_score",
    metric: "f1_weighted",
}];

/// The icl-eval metric that computes `function` of the Python file `file`, when that function is
/// a recognized lm-eval helper.
pub fn metric_of(file: &Path, function: &str) -> Option<&'static str> {
    let stock = STOCK.iter().find(|s| s.function == function)?;
    let source = std::fs::read_to_string(file).ok()?;
    let lines: Vec<&str> = source.lines().collect();
    let code = |l: &str| l.split('#').next().unwrap_or("").trim_end().to_string();
    if lines.iter().any(|l| code(l) == stock.reexport) {
        return Some(stock.metric);
    }
    if !lines.iter().any(|l| l.trim_end() == stock.import) {
        return None;
    }
    let start = lines.iter().position(|l| l.trim_end() == stock.body[0])?;
    // The block: the `def` line and every following indented or blank line.
    let block: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.starts_with(char::is_whitespace))
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    (block == stock.body[1..]).then_some(stock.metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_is_recognized_only_by_its_exact_source() {
        let d = std::env::temp_dir().join(format!("icl-stock-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let good = "from sklearn.metrics import f1_score\n\n\ndef weighted_f1_score(items):\n    \
                    unzipped_list = list(zip(*items))\n    golds = unzipped_list[0]\n    \
                    preds = unzipped_list[1]\n    fscore = f1_score(golds, preds, average=\"weighted\")\n    \
                    return fscore\n\n\ndef other():\n    pass\n";
        std::fs::write(d.join("utils.py"), good).unwrap();
        assert_eq!(
            metric_of(&d.join("utils.py"), "weighted_f1_score"),
            Some("f1_weighted")
        );
        assert_eq!(metric_of(&d.join("utils.py"), "other"), None);
        // lm-eval's own function, imported from its library.
        std::fs::write(
            d.join("utils.py"),
            "from lm_eval.utils import weighted_f1_score  # noqa: F401\n",
        )
        .unwrap();
        assert_eq!(
            metric_of(&d.join("utils.py"), "weighted_f1_score"),
            Some("f1_weighted")
        );
        // Changed average, or f1_score not scikit-learn's: Python, not recognized.
        for bad in [
            good.replace("\"weighted\"", "\"macro\""),
            good.replace(
                "from sklearn.metrics import f1_score",
                "from mine import f1_score",
            ),
        ] {
            std::fs::write(d.join("utils.py"), bad).unwrap();
            assert_eq!(metric_of(&d.join("utils.py"), "weighted_f1_score"), None);
        }
    }
}
