//! Comparing two runs (or two models of one run) cell by cell, with a paired test on shared items.
//!
//! The test is McNemar's exact test: on the docs both sides scored, only the discordant ones (right in
//! one, wrong in the other) carry information about a difference, and under the null hypothesis each
//! is equally likely to go either way, so their split is Binomial(b + c, 1/2).

use std::collections::BTreeMap;

use crate::sampler::DemoLabels;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, bail};
use polars::prelude::*;

use crate::record::RunData;

/// Significance level of the verdict column.
pub const ALPHA: f64 = 0.05;

/// One (task, K) cell scored by both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub task: String,
    pub k: usize,
    pub metric: String,
    /// Docs both sides scored.
    pub n: usize,
    pub value_a: f64,
    pub value_b: f64,
    /// Docs only A got right.
    pub a_only: usize,
    /// Docs only B got right.
    pub b_only: usize,
    /// Two-sided exact McNemar p-value.
    pub p: f64,
}

impl Row {
    /// B − A.
    pub fn diff(&self) -> f64 {
        self.value_b - self.value_a
    }

    /// `A better`, `B better` or `no significant difference` at [`ALPHA`].
    pub fn verdict(&self) -> &'static str {
        if self.p >= ALPHA {
            "no significant difference"
        } else if self.b_only > self.a_only {
            "B better"
        } else {
            "A better"
        }
    }
}

/// The result of `icl-eval compare`.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// `model (run folder)` of each side.
    pub a: String,
    pub b: String,
    pub rows: Vec<Row>,
    /// Cells or tasks left out, and why.
    pub notes: Vec<String>,
}

/// Two-sided exact McNemar p-value for `b` and `c` discordant pairs: twice the smaller binomial tail,
/// capped at 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    // ln C(n, i) built up incrementally keeps large n finite.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_binom = 0.0f64;
    let mut tail = 0.0f64;
    for i in 0..=b.min(c) {
        if i > 0 {
            ln_binom += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_binom + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// p-values to 4 decimals, tiny ones in scientific notation so they do not read as zero.
fn format_p(p: f64) -> String {
    if p >= 1e-4 {
        format!("{p:.4}")
    } else {
        format!("{p:.1e}")
    }
}

/// Which model of `run` a side compares: the one named, or the run's only model.
fn pick_model(run: &RunData, wanted: Option<&str>, flag: &str) -> Result<String> {
    let names: Vec<&str> = run.record.models.iter().map(|m| m.name.as_str()).collect();
    match wanted {
        Some(w) if names.contains(&w) => Ok(w.to_string()),
        Some(w) => bail!(
            "{flag} {w}: {} has no model of that name (it has: {})",
            run.dir.display(),
            names.join(", ")
        ),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => bail!(
            "{} has {} models ({}); choose one with {flag}",
            run.dir.display(),
            names.len(),
            names.join(", ")
        ),
    }
}

/// Compares model `model_a` of run `a` with `model_b` of run `b` on every (task, K) cell both have,
/// using each task's headline metric on the docs both scored.
pub fn compare(
    a: &RunData,
    model_a: Option<&str>,
    b: &RunData,
    model_b: Option<&str>,
) -> Result<Comparison> {
    let ma = pick_model(a, model_a, "--model-a")?;
    let mb = pick_model(b, model_b, "--model-b")?;
    if a.dir == b.dir && ma == mb {
        bail!(
            "both sides are model {ma} of {}; give two runs or two models (--model-a, --model-b)",
            a.dir.display()
        );
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (side, run) in [("A", a), ("B", b)] {
        let r = &run.record;
        if r.seeds.len() > 1 || r.permutations > 1 || r.demo_labels.len() > 1 {
            notes.push(format!(
                "{side} has several seeds, orderings or label studies; compared: seed {}, the \
                 sampler's ordering, one label study (McNemar's test pairs each doc once)",
                r.seed
            ));
        }
    }
    for ta in &a.record.tasks {
        let Some(tb) = b.record.tasks.iter().find(|t| t.name == ta.name) else {
            notes.push(format!("task {} is only in A", ta.name));
            continue;
        };
        if ta.hash != tb.hash {
            notes.push(format!(
                "task {} left out: its YAML, template or data differ between the runs (hash {} vs {})",
                ta.name,
                &ta.hash[..ta.hash.len().min(12)],
                &tb.hash[..tb.hash.len().min(12)]
            ));
            continue;
        }
        let metric = ta.metric_list()?[0].name().to_string();
        // (K, doc) → correct, for each side. McNemar's test needs one pair per doc, so a run with
        // several seeds, orderings or label studies contributes its first seed, the sampler's own
        // ordering and gold labels (or its first label study).
        let scores = |run: &RunData, model: &str| -> BTreeMap<(usize, usize), bool> {
            let labels = if run.record.demo_labels.contains(&DemoLabels::Gold) {
                DemoLabels::Gold
            } else {
                run.record.demo_labels.first().copied().unwrap_or_default()
            };
            run.samples
                .iter()
                .filter(|s| s.task == ta.name && s.model == model)
                .filter(|s| {
                    s.seed == run.record.seed && s.permutation == 0 && s.demo_labels == labels
                })
                .filter_map(|s| Some(((s.k, s.doc_id), *s.metrics.get(&metric)? > 0.5)))
                .collect()
        };
        let (sa, sb) = (scores(a, &ma), scores(b, &mb));
        let mut cells: BTreeMap<usize, (usize, usize, usize, usize)> = BTreeMap::new();
        for (key, &ra) in &sa {
            let Some(&rb) = sb.get(key) else { continue };
            let e = cells.entry(key.0).or_default();
            e.0 += 1;
            match (ra, rb) {
                (true, true) => e.1 += 1,
                (true, false) => e.2 += 1,
                (false, true) => e.3 += 1,
                (false, false) => {}
            }
        }
        let ks = |m: &BTreeMap<(usize, usize), bool>| {
            m.keys()
                .map(|(k, _)| *k)
                .collect::<std::collections::BTreeSet<_>>()
        };
        for k in ks(&sa).symmetric_difference(&ks(&sb)) {
            notes.push(format!(
                "task {}, K = {k}: scored by only one side",
                ta.name
            ));
        }
        for (k, (n, both, a_only, b_only)) in cells {
            rows.push(Row {
                task: ta.name.clone(),
                k,
                metric: metric.clone(),
                n,
                value_a: (both + a_only) as f64 / n as f64,
                value_b: (both + b_only) as f64 / n as f64,
                a_only,
                b_only,
                p: mcnemar_exact(a_only, b_only),
            });
        }
    }
    for tb in &b.record.tasks {
        if !a.record.tasks.iter().any(|t| t.name == tb.name) {
            notes.push(format!("task {} is only in B", tb.name));
        }
    }
    if rows.is_empty() {
        bail!(
            "the runs share no scored (task, K) cell{}",
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            }
        );
    }
    Ok(Comparison {
        a: format!("{ma} ({})", a.dir.display()),
        b: format!("{mb} ({})", b.dir.display()),
        rows,
        notes,
    })
}

impl Comparison {
    /// The comparison as Markdown: which side is which, the table, the test, the notes.
    pub fn markdown(&self) -> String {
        let mut out = format!("A = {}\nB = {}\n\n", self.a, self.b);
        out.push_str(
            "| task | K | metric | n shared | A | B | B − A | only A right | only B right | p | verdict |\n\
             |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.4} | {:.4} | {:+.4} | {} | {} | {} | {} |\n",
                r.task,
                r.k,
                r.metric,
                r.n,
                r.value_a,
                r.value_b,
                r.diff(),
                r.a_only,
                r.b_only,
                format_p(r.p),
                r.verdict()
            ));
        }
        out.push_str(&format!(
            "\np: McNemar's exact test (two-sided) on the docs both sides scored; verdict at α = {ALPHA}, \
             not corrected for multiple comparisons ({} cells tested).\n",
            self.rows.len()
        ));
        for n in &self.notes {
            out.push_str(&format!("Note: {n}\n"));
        }
        out
    }

    /// The rows as a table.
    pub fn frame(&self) -> Result<DataFrame> {
        let r = &self.rows;
        Ok(df!(
            "task" => r.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
            "k" => r.iter().map(|r| r.k as u32).collect::<Vec<_>>(),
            "metric" => r.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>(),
            "n_shared" => r.iter().map(|r| r.n as u32).collect::<Vec<_>>(),
            "value_a" => r.iter().map(|r| r.value_a).collect::<Vec<_>>(),
            "value_b" => r.iter().map(|r| r.value_b).collect::<Vec<_>>(),
            "diff" => r.iter().map(Row::diff).collect::<Vec<_>>(),
            "only_a_right" => r.iter().map(|r| r.a_only as u32).collect::<Vec<_>>(),
            "only_b_right" => r.iter().map(|r| r.b_only as u32).collect::<Vec<_>>(),
            "p_mcnemar_exact" => r.iter().map(|r| r.p).collect::<Vec<_>>(),
            "verdict" => r.iter().map(Row::verdict).collect::<Vec<_>>(),
        )?)
    }

    /// Writes the rows as CSV.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let mut f = File::create(path)
            .with_context(|| format!("--csv: cannot write {}", path.display()))?;
        CsvWriter::new(&mut f)
            .include_header(true)
            .finish(&mut self.frame()?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_exact_matches_hand_computation() {
        // b = 1, c = 6: P(X ≤ 1) for X ~ Bin(7, 1/2) = (1 + 7) / 128; two-sided = 16 / 128.
        assert!((mcnemar_exact(1, 6) - 0.125).abs() < 1e-12);
        assert!((mcnemar_exact(6, 1) - 0.125).abs() < 1e-12);
        // b = 0, c = 5: 2 / 32.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Large n stays finite: 400 vs 600 discordant pairs is far beyond chance.
        let p = mcnemar_exact(400, 600);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }

    #[test]
    fn verdict_needs_significance_and_names_the_better_side() {
        let row = |a_only, b_only| Row {
            task: "t".into(),
            k: 0,
            metric: "acc".into(),
            n: 100,
            value_a: 0.0,
            value_b: 0.0,
            a_only,
            b_only,
            p: mcnemar_exact(a_only, b_only),
        };
        assert_eq!(row(1, 6).verdict(), "no significant difference");
        assert_eq!(row(0, 10).verdict(), "B better");
        assert_eq!(row(10, 0).verdict(), "A better");
    }
}
