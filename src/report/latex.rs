//! The summary as a LaTeX table (`summary.tex`, booktabs), ready for `\input` in a paper.

use std::path::Path;

use anyhow::Result;
use polars::prelude::DataFrame;

use super::table::SummaryColumns;

/// Escapes the characters LaTeX treats specially in text.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            _ => out.push(c),
        }
    }
    out
}

/// The summary as a `tabular`: one row per cell, value ± standard error in percent (± standard
/// deviation over seeds when the run had several); perplexities and bits per byte as they are.
pub fn table(summary: &DataFrame) -> Result<String> {
    let c = SummaryColumns::of(summary)?;
    let mut out = String::from(if c.has_seeds() {
        "% Value ± standard deviation over seeds.\n"
    } else {
        "% Value ± standard error over docs.\n"
    });
    out.push_str(
        "% Written by icl-eval; needs \\usepackage{booktabs}. Perplexities and bits per byte are\n\
         % not in percent.\n\
         \\begin{tabular}{lllrrr}\n\\toprule\n\
         Task & Model & Metric & $K$ & Value (\\%) & $n$ \\\\\n\\midrule\n",
    );
    let mut last_task = None;
    for i in 0..summary.height() {
        let task = c.task.get(i).unwrap_or("");
        if last_task.is_some_and(|t| t != task) {
            out.push_str("\\midrule\n");
        }
        last_task = Some(task);
        // Perplexities and bits per byte are not shares: shown as they are.
        let metric = c.metric.get(i).unwrap_or("");
        // Metrics that are not shares of docs are written as they are, not in percent.
        let raw = crate::metric::of_reported(metric).is_some_and(|m| !m.is_share());
        let scale = if raw { 1.0 } else { 100.0 };
        let value = match (c.value.get(i), c.error(i)) {
            (Some(v), Some(s)) if v.is_finite() && s.is_finite() => {
                format!("{:.1} $\\pm$ {:.1}", scale * v, scale * s)
            }
            (Some(v), _) if v.is_finite() => format!("{:.1}", scale * v),
            _ => "--".to_string(),
        };
        out.push_str(&format!(
            "{} & {} & {} & {} & {} & {} \\\\\n",
            escape(task),
            escape(&c.series[i]),
            escape(c.metric.get(i).unwrap_or("")),
            c.k.get(i).unwrap_or(0),
            value,
            c.n.get(i).unwrap_or(0),
        ));
    }
    out.push_str("\\bottomrule\n\\end{tabular}\n");
    Ok(out)
}

/// Writes `summary.tex`.
pub fn write(dir: &Path, summary: &DataFrame) -> Result<()> {
    let path = dir.join("summary.tex");
    crate::record::write_atomic(&path, table(summary)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn escapes_and_formats_percent_with_stderr() {
        assert_eq!(escape("en_fr 100% & #1"), "en\\_fr 100\\% \\& \\#1");
        let df = df!(
            "task" => ["two_digit_addition", "two_digit_addition", "z", "z"],
            "model" => ["m", "m", "m", "m"],
            "parameters" => [1u64, 1, 1, 1],
            "sampler" => ["random"; 4],
            "format" => ["cloze"; 4],
            "demo_labels" => ["gold"; 4],
            "k" => [0u32, 1, 0, 0],
            "metric" => ["exact_match", "exact_match", "acc", "perplexity"],
            "value" => [0.5, 0.25, f64::NAN, 58.65],
            "stderr" => [0.1, f64::NAN, f64::NAN, 26.0],
            "seed_std" => [f64::NAN; 4],
            "perm_std" => [f64::NAN; 4],
            "seeds" => [1u32; 4],
            "permutations" => [1u32; 4],
            "n" => [4u32, 4, 0, 40],
            "skipped" => [0u32, 0, 4, 0],
            "mean_k_effective" => [0.0, 1.0, f64::NAN, 0.0],
        )
        .unwrap();
        let t = table(&df).unwrap();
        assert!(
            t.contains(
                "two\\_digit\\_addition & m & exact\\_match & 0 & 50.0 $\\pm$ 10.0 & 4 \\\\"
            ),
            "{t}"
        );
        assert!(t.contains("& 1 & 25.0 & 4 \\\\"), "{t}");
        assert!(
            t.contains("\\midrule\nz & m & acc & 0 & -- & 0 \\\\"),
            "{t}"
        );
        // A perplexity is no share: as it is, not ×100.
        assert!(
            t.contains("z & m & perplexity & 0 & 58.6 $\\pm$ 26.0 & 40 \\\\"),
            "{t}"
        );
        assert!(t.ends_with("\\bottomrule\n\\end{tabular}\n"));
    }
}
