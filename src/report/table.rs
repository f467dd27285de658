//! Samples → summary table (polars): one row per task × model × K × metric.

use anyhow::Result;
use polars::prelude::*;

use super::TaskMeta;
use crate::backend::ModelInfo;
use crate::record::Sample;

/// Aggregates samples into one row per task × model × sampler × label study × K × metric.
///
/// Within each (seed, ordering) draw: mean, per-doc standard error, docs scored and skipped. Across
/// orderings of one seed: their standard deviation (`perm_std`). Across seeds: the mean (`value`)
/// and standard deviation (`seed_std`, n − 1). `stderr` is the mean per-draw standard error, so
/// doc sampling noise and demonstration noise are reported apart.
///
/// Corpus metrics (`corpus/`) are scored per draw from their docs' statistics together; one
/// with a Python aggregation (`TaskMeta::aggregations`) is scored by it with `python`, and left
/// empty without it.
pub fn summarize(
    samples: &[Sample],
    tasks: &[TaskMeta],
    models: &[ModelInfo],
    python: Option<&std::path::Path>,
) -> Result<DataFrame> {
    let (long, corpus) = long_rows(samples, tasks, models)?;
    let cell = [
        col("task"),
        col("model"),
        col("parameters"),
        col("sampler"),
        col("format"),
        col("demo_labels"),
        col("k"),
        col("metric"),
    ];
    let with = |extra: &[&str]| {
        let mut v = cell.to_vec();
        v.extend(extra.iter().map(|c| col(*c)));
        v
    };
    let per_draw = long
        .lazy()
        .group_by_stable(with(&["seed", "permutation"]))
        .agg([
            col("value").mean().alias("value"),
            (std_of("value") / col("value").count().cast(DataType::Float64).sqrt()).alias("stderr"),
            col("value").count().cast(DataType::UInt32).alias("n"),
            (len() - col("value").count())
                .cast(DataType::UInt32)
                .alias("skipped"),
            col("k_effective").mean().alias("mean_k_effective"),
        ]);
    // Metrics the summary shows as exp(−mean) of their per-doc values (perplexity), not a mean
    // of per-doc values; the standard error by the delta method, exp(−m) · se(m).
    let exp_neg: Vec<String> = crate::metric::SPECS
        .iter()
        .filter(|s| matches!(s.summary, crate::metric::Summary::ExpNegMean))
        .map(|s| s.name.to_string())
        .collect();
    let exp_neg = || {
        exp_neg.iter().fold(lit(false), |any, name| {
            any.or(col("metric").eq(lit(name.as_str())))
        })
    };
    let summary = concat(
        [per_draw, corpus.frame(python)?.lazy()],
        UnionArgs::default(),
    )?
    .with_columns([
        when(exp_neg())
            .then(lit(std::f64::consts::E).pow(lit(0.0) - col("value")))
            .otherwise(col("value"))
            .alias("value"),
        when(exp_neg())
            .then(lit(std::f64::consts::E).pow(lit(0.0) - col("value")) * col("stderr"))
            .otherwise(col("stderr"))
            .alias("stderr"),
    ])
    .group_by_stable(with(&["seed"]))
    .agg([
        mean_of("value").alias("value"),
        std_of("value").alias("perm_std"),
        col("permutation")
            .count()
            .cast(DataType::UInt32)
            .alias("permutations"),
        col("stderr").mean(),
        col("n").max(),
        col("skipped").max(),
        col("mean_k_effective").mean(),
    ])
    .group_by_stable(cell)
    .agg([
        mean_of("value").alias("value"),
        mean_of("stderr").alias("stderr"),
        std_of("value").alias("seed_std"),
        mean_of("perm_std").alias("perm_std"),
        col("seed").count().cast(DataType::UInt32).alias("seeds"),
        col("permutations").max(),
        col("n").max(),
        col("skipped").max(),
        col("mean_k_effective").mean(),
    ])
    .sort(
        [
            "task",
            "metric",
            "parameters",
            "model",
            "sampler",
            "format",
            "demo_labels",
            "k",
        ],
        SortMultipleOptions::default(),
    )
    .collect()?;
    Ok(summary)
}

/// One row per (sample, per-doc metric) with its cell columns, seed and ordering; the corpus
/// metrics' samples gathered per draw instead.
fn long_rows(
    samples: &[Sample],
    tasks: &[TaskMeta],
    models: &[ModelInfo],
) -> Result<(DataFrame, CorpusDraws)> {
    let mut task = Vec::new();
    let mut model = Vec::new();
    let mut params = Vec::new();
    let mut sampler = Vec::new();
    let mut format = Vec::new();
    let mut labels = Vec::new();
    let mut k = Vec::new();
    let mut metric = Vec::new();
    let mut seed = Vec::new();
    let mut perm = Vec::new();
    let mut value: Vec<Option<f64>> = Vec::new();
    let mut k_eff: Vec<Option<f64>> = Vec::new();
    let mut corpus = CorpusDraws::default();
    for s in samples {
        let Some(t) = tasks.iter().find(|t| t.name == s.task) else {
            continue;
        };
        let p = models
            .iter()
            .find(|m| m.name == s.model)
            .map_or(0, |m| m.parameters);
        for m in &t.metrics {
            if m.metric.is_corpus() {
                corpus.add(s, p, m, t.aggregations.get(m.name()));
                continue;
            }
            task.push(s.task.clone());
            model.push(s.model.clone());
            params.push(p);
            sampler.push(s.sampler.name());
            format.push(s.format.name());
            labels.push(s.demo_labels.name());
            k.push(s.k as u32);
            metric.push(m.name().to_string());
            seed.push(s.seed);
            perm.push(s.permutation as u32);
            value.push(s.metrics.get(m.name()).copied());
            k_eff.push(s.k_effective.map(|x| x as f64));
        }
    }
    let long = df!(
        "task" => task,
        "model" => model,
        "parameters" => params,
        "sampler" => sampler,
        "format" => format,
        "demo_labels" => labels,
        "k" => k,
        "metric" => metric,
        "seed" => seed,
        "permutation" => perm,
        "value" => value,
        "k_effective" => k_eff,
    )?;
    Ok((long, corpus))
}

/// The docs of each draw (cell, seed, ordering) of a corpus metric, scored together: the draw's
/// value from their statistics and its bootstrap standard error, rows shaped as the per-draw
/// means of the other metrics.
#[derive(Default)]
struct CorpusDraws {
    draws: std::collections::BTreeMap<DrawKey, Draw>,
}

/// One draw of a corpus metric: the summary's cell columns, seed and ordering.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct DrawKey {
    task: String,
    model: String,
    parameters: u64,
    sampler: String,
    format: String,
    demo_labels: String,
    k: u32,
    metric: String,
    seed: u64,
    permutation: u32,
}

/// A draw's docs: each one's statistics (`None`: skipped) and effective K, and the Python
/// aggregation that scores them, if the task has one.
struct Draw {
    metric: crate::task::Metric,
    hook: Option<String>,
    docs: Vec<(Option<Vec<f64>>, Option<f64>)>,
}

impl CorpusDraws {
    fn add(
        &mut self,
        s: &Sample,
        parameters: u64,
        m: &crate::task::Reported,
        hook: Option<&String>,
    ) {
        let key = DrawKey {
            task: s.task.clone(),
            model: s.model.clone(),
            parameters,
            sampler: s.sampler.name().to_string(),
            format: s.format.name().to_string(),
            demo_labels: s.demo_labels.name().to_string(),
            k: s.k as u32,
            metric: m.name().to_string(),
            seed: s.seed,
            permutation: s.permutation as u32,
        };
        self.draws
            .entry(key)
            .or_insert_with(|| Draw {
                metric: m.metric,
                hook: hook.cloned(),
                docs: Vec::new(),
            })
            .docs
            .push((
                s.stats.get(m.name()).cloned(),
                s.k_effective.map(|x| x as f64),
            ));
    }

    fn frame(self, python: Option<&std::path::Path>) -> Result<DataFrame> {
        // Every hooked draw goes to Python at once; lm-eval gives such scores no stderr.
        // A draw whose docs were all skipped has no pairs: it stays empty, unsent.
        let hooked: Vec<(String, Vec<(usize, usize)>)> = self
            .draws
            .values()
            .filter_map(|d| {
                let pairs: Vec<(usize, usize)> = d
                    .docs
                    .iter()
                    .filter_map(|(st, _)| st.as_ref().map(|v| (v[0] as usize, v[1] as usize)))
                    .collect();
                Some((d.hook.clone()?, pairs))
            })
            .filter(|(_, pairs)| !pairs.is_empty())
            .collect();
        let mut hooked_values = match python {
            Some(py) if !hooked.is_empty() => crate::task::hooks::aggregate(py, &hooked)
                .map_err(|e| anyhow::anyhow!("a task's Python aggregation: {e}"))?,
            _ => vec![f64::NAN; hooked.len()],
        }
        .into_iter();
        let (mut task, mut model, mut params, mut sampler, mut format, mut labels) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut k, mut metric, mut seed, mut perm) = (vec![], vec![], vec![], vec![]);
        let (mut value, mut stderr, mut n, mut skipped, mut k_eff) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (key, draw) in self.draws {
            let stats: Vec<&[f64]> = draw.docs.iter().filter_map(|d| d.0.as_deref()).collect();
            let draw_seed = crate::seed::combine(&[
                crate::seed::hash_str(&key.task),
                crate::seed::hash_str(&key.model),
                crate::seed::hash_str(&key.metric),
                u64::from(key.k),
                key.seed,
                u64::from(key.permutation),
            ]);
            let m = draw.metric;
            if draw.hook.is_some() {
                let v = if stats.is_empty() {
                    f64::NAN
                } else {
                    hooked_values.next().unwrap_or(f64::NAN)
                };
                value.push(Some(v).filter(|x| x.is_finite()));
                stderr.push(None);
            } else {
                value.push(
                    Some(m.corpus_score(&stats)).filter(|v| !stats.is_empty() && v.is_finite()),
                );
                stderr.push(Some(m.bootstrap_stderr(&stats, draw_seed)).filter(|x| x.is_finite()));
            }
            n.push(stats.len() as u32);
            skipped.push((draw.docs.len() - stats.len()) as u32);
            let ks: Vec<f64> = draw.docs.iter().filter_map(|d| d.1).collect();
            k_eff.push((!ks.is_empty()).then(|| ks.iter().sum::<f64>() / ks.len() as f64));
            task.push(key.task);
            model.push(key.model);
            params.push(key.parameters);
            sampler.push(key.sampler);
            format.push(key.format);
            labels.push(key.demo_labels);
            k.push(key.k);
            metric.push(key.metric);
            seed.push(key.seed);
            perm.push(key.permutation);
        }
        Ok(df!(
            "task" => task,
            "model" => model,
            "parameters" => params,
            "sampler" => sampler,
            "format" => format,
            "demo_labels" => labels,
            "k" => k,
            "metric" => metric,
            "seed" => seed,
            "permutation" => perm,
            "value" => value,
            "stderr" => stderr,
            "n" => n,
            "skipped" => skipped,
            "mean_k_effective" => k_eff,
        )?)
    }
}

/// The mean of a column's non-null values in a group, as sum / count; null when there are none.
///
/// polars' own `std` gave the same group different last digits from one process to the next
/// (its algorithm depends on how the groups were formed); a summary must not. Sums over the few
/// values of a group in stable row order are reproducible.
fn mean_of(name: &str) -> Expr {
    let n = col(name).count().cast(DataType::Float64);
    when(n.clone().gt(lit(0.0)))
        .then(col(name).sum() / n)
        .otherwise(lit(NULL).cast(DataType::Float64))
}

/// The sample standard deviation (n − 1) of a column's non-null values in a group, two-pass;
/// null with fewer than two values.
fn std_of(name: &str) -> Expr {
    let n = col(name).count().cast(DataType::Float64);
    let var = (col(name) - mean_of(name)).pow(2).sum() / (n.clone() - lit(1.0));
    when(n.gt(lit(1.0)))
        .then(var.sqrt())
        .otherwise(lit(NULL).cast(DataType::Float64))
}

/// The distinct values of a string column, sorted.
pub fn distinct(c: &StringChunked) -> Vec<&str> {
    let mut v: Vec<&str> = (0..c.len()).filter_map(|i| c.get(i)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Typed views of the summary's columns, for readers of the table.
pub struct SummaryColumns<'a> {
    pub task: &'a StringChunked,
    pub model: &'a StringChunked,
    pub parameters: &'a UInt64Chunked,
    pub sampler: &'a StringChunked,
    /// How multiple-choice tasks asked (`cloze`, `mcqa`).
    pub format: &'a StringChunked,
    pub demo_labels: &'a StringChunked,
    pub k: &'a UInt32Chunked,
    pub metric: &'a StringChunked,
    pub value: &'a Float64Chunked,
    pub stderr: &'a Float64Chunked,
    pub seed_std: &'a Float64Chunked,
    pub perm_std: &'a Float64Chunked,
    pub seeds: &'a UInt32Chunked,
    pub permutations: &'a UInt32Chunked,
    pub n: &'a UInt32Chunked,
    pub skipped: &'a UInt32Chunked,
    pub mean_k_effective: &'a Float64Chunked,
    /// What a chart line stands for: the model, plus the sampler, formulation and label study
    /// when the summary holds more than one of them.
    pub series: Vec<String>,
    /// Whether any cell averages several seeds.
    many_seeds: bool,
}

impl<'a> SummaryColumns<'a> {
    /// Borrows the columns `summarize` produces.
    pub fn of(df: &'a DataFrame) -> Result<Self> {
        let model = df.column("model")?.str()?;
        let sampler = df.column("sampler")?.str()?;
        let demo_labels = df.column("demo_labels")?.str()?;
        let format = df.column("format")?.str()?;
        let (many_samplers, many_labels, many_formats) = (
            distinct(sampler).len() > 1,
            distinct(demo_labels).len() > 1,
            distinct(format).len() > 1,
        );
        let series = (0..df.height())
            .map(|i| {
                let mut s = model.get(i).unwrap_or("").to_string();
                if many_samplers {
                    s.push_str(&format!(" · {}", sampler.get(i).unwrap_or("")));
                }
                if many_formats {
                    s.push_str(&format!(" · {}", format.get(i).unwrap_or("")));
                }
                if many_labels {
                    s.push_str(&format!(" · {} labels", demo_labels.get(i).unwrap_or("")));
                }
                s
            })
            .collect();
        let seeds = df.column("seeds")?.u32()?;
        let many_seeds = (0..seeds.len()).any(|i| seeds.get(i).is_some_and(|s| s > 1));
        Ok(Self {
            task: df.column("task")?.str()?,
            model,
            parameters: df.column("parameters")?.u64()?,
            sampler,
            format,
            demo_labels,
            k: df.column("k")?.u32()?,
            metric: df.column("metric")?.str()?,
            value: df.column("value")?.f64()?,
            stderr: df.column("stderr")?.f64()?,
            seed_std: df.column("seed_std")?.f64()?,
            perm_std: df.column("perm_std")?.f64()?,
            seeds,
            permutations: df.column("permutations")?.u32()?,
            n: df.column("n")?.u32()?,
            skipped: df.column("skipped")?.u32()?,
            mean_k_effective: df.column("mean_k_effective")?.f64()?,
            series,
            many_seeds,
        })
    }

    /// Whether any cell averages several seeds (then charts show the spread across seeds).
    pub fn has_seeds(&self) -> bool {
        self.many_seeds
    }

    /// The error bar of row `i`: standard deviation across seeds when there are several, else the
    /// per-doc standard error.
    pub fn error(&self, i: usize) -> Option<f64> {
        if self.has_seeds() {
            self.seed_std.get(i)
        } else {
            self.stderr.get(i)
        }
    }
}

/// The summary as a Markdown table: value ± stderr with n, one row per cell; columns for the
/// sampler, label study, seed and ordering spread appear when the run varied them.
pub fn markdown(summary: &DataFrame) -> Result<String> {
    let c = SummaryColumns::of(summary)?;
    let samplers = distinct(c.sampler);
    let labels = distinct(c.demo_labels);
    let show_sampler = samplers != ["random"];
    let show_format = distinct(c.format) != ["cloze"];
    let show_labels = labels != ["gold"];
    let show_seeds = c.has_seeds();
    let show_perms =
        (0..c.permutations.len()).any(|i| c.permutations.get(i).is_some_and(|p| p > 1));
    let mut head = vec!["task", "model"];
    let mut align = vec!["---", "---"];
    if show_sampler {
        head.push("sampler");
        align.push("---");
    }
    if show_format {
        head.push("format");
        align.push("---");
    }
    if show_labels {
        head.push("labels");
        align.push("---");
    }
    head.extend(["K", "metric", "value", "± stderr"]);
    align.extend(["---:", "---", "---:", "---:"]);
    if show_seeds {
        head.push("± std over seeds (seeds)");
        align.push("---:");
    }
    if show_perms {
        head.push("± std over orderings");
        align.push("---:");
    }
    head.extend(["n", "mean K used", "skipped"]);
    align.extend(["---:", "---:", "---:"]);
    let mut out = format!("| {} |\n|{}|\n", head.join(" | "), align.join("|"));
    let fmt = |x: Option<f64>, p: usize| {
        x.filter(|v| v.is_finite())
            .map_or("–".to_string(), |v| format!("{v:.p$}"))
    };
    for i in 0..summary.height() {
        let mut row = vec![
            c.task.get(i).unwrap_or("").to_string(),
            c.model.get(i).unwrap_or("").to_string(),
        ];
        if show_sampler {
            row.push(c.sampler.get(i).unwrap_or("").to_string());
        }
        if show_format {
            row.push(c.format.get(i).unwrap_or("").to_string());
        }
        if show_labels {
            row.push(c.demo_labels.get(i).unwrap_or("").to_string());
        }
        row.extend([
            c.k.get(i).unwrap_or(0).to_string(),
            c.metric.get(i).unwrap_or("").to_string(),
            fmt(c.value.get(i), 4),
            fmt(c.stderr.get(i), 4),
        ]);
        if show_seeds {
            row.push(format!(
                "{} ({})",
                fmt(c.seed_std.get(i), 4),
                c.seeds.get(i).unwrap_or(0)
            ));
        }
        if show_perms {
            row.push(fmt(c.perm_std.get(i), 4));
        }
        row.extend([
            c.n.get(i).unwrap_or(0).to_string(),
            fmt(c.mean_k_effective.get(i), 1),
            c.skipped.get(i).unwrap_or(0).to_string(),
        ]);
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Item, Metric, OutputType, Task};

    fn sample(k: usize, acc: Option<f64>) -> Sample {
        Sample::for_tests("m", 0, k, acc)
    }

    /// `perplexity` is exp(−mean log-likelihood) over a cell's docs, with the delta-method stderr;
    /// `acc` beside it stays a mean.
    #[test]
    fn perplexity_is_the_exponent_of_the_mean_log_likelihood() {
        let task = Task::for_tests(
            OutputType::Loglikelihood,
            vec![Metric::Acc, Metric::Perplexity],
            vec![Item::blank(0)],
        );
        let samples: Vec<Sample> = [(-1.0, 1.0), (-3.0, 0.0)]
            .into_iter()
            .map(|(ll, acc)| {
                let mut s = sample(0, Some(acc));
                s.metrics.insert("perplexity".into(), ll);
                s
            })
            .collect();
        let s = summarize(&samples, &[TaskMeta::of(&task)], &[], None).unwrap();
        let c = SummaryColumns::of(&s).unwrap();
        let row = |m: &str| {
            (0..s.height())
                .find(|&i| c.metric.get(i) == Some(m))
                .unwrap()
        };
        let (p, acc) = (row("perplexity"), row("acc"));
        // mean −2 → e²; se of the mean log-likelihood √2 / √2 = 1 → e² · 1.
        assert!((c.value.get(p).unwrap() - 2f64.exp()).abs() < 1e-9);
        assert!((c.stderr.get(p).unwrap() - 2f64.exp()).abs() < 1e-9);
        assert_eq!(c.value.get(acc), Some(0.5));
    }

    /// A corpus metric's cell is scored from its docs' statistics together (F1 of 2 of 3 docs
    /// right is 2/3 here, their per-doc mean 1/3 would be wrong), per seed then averaged; a doc
    /// without statistics counts as skipped.
    #[test]
    fn corpus_metrics_score_each_draws_docs_together() {
        let task = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc, Metric::F1],
            vec![Item::blank(0)],
        );
        // (seed, gold, pred): seed 1 has tp 1, fp 1, fn 0 → F1 2/3; seed 2 has tp 1 → F1 1.
        let rows = [(1, 1, 1), (1, 0, 1), (1, 0, 0), (2, 1, 1), (2, 0, 0)];
        let mut samples: Vec<Sample> = rows
            .iter()
            .map(|&(seed, g, p)| {
                let mut s = sample(0, Some(f64::from(u8::from(g == p))));
                s.seed = seed;
                s.metrics.insert("f1".into(), f64::from(u8::from(g == p)));
                s.stats
                    .insert("f1".into(), crate::metric::corpus::choice_stats(g, p));
                s
            })
            .collect();
        let mut skipped = sample(0, None);
        skipped.seed = 2;
        samples.push(skipped);
        let s = summarize(&samples, &[TaskMeta::of(&task)], &[], None).unwrap();
        let c = SummaryColumns::of(&s).unwrap();
        let f1 = (0..s.height())
            .find(|&i| c.metric.get(i) == Some("f1"))
            .unwrap();
        assert!((c.value.get(f1).unwrap() - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(s.column("seeds").unwrap().u32().unwrap().get(f1), Some(2));
        assert_eq!(s.column("skipped").unwrap().u32().unwrap().get(f1), Some(1));
        assert!(c.stderr.get(f1).unwrap().is_finite());
    }

    #[test]
    fn summary_counts_means_stderr_and_skips() {
        let task = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc],
            vec![Item::blank(0)],
        );
        let samples = vec![
            sample(0, Some(1.0)),
            sample(0, Some(0.0)),
            sample(0, Some(1.0)),
            sample(0, Some(0.0)),
            sample(1, None),
        ];
        let s = summarize(&samples, &[TaskMeta::of(&task)], &[], None).unwrap();
        assert_eq!(s.height(), 2);
        assert_eq!(s.column("value").unwrap().f64().unwrap().get(0), Some(0.5));
        let se = s.column("stderr").unwrap().f64().unwrap().get(0).unwrap();
        assert!((se - (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.column("n").unwrap().u32().unwrap().get(0), Some(4));
        assert_eq!(s.column("skipped").unwrap().u32().unwrap().get(1), Some(1));
        let md = markdown(&s).unwrap();
        assert!(
            md.contains("| t | m | 0 | acc | 0.5000 | 0.2887 | 4 | 0.0 | 0 |"),
            "{md}"
        );
    }

    #[test]
    fn seeds_and_orderings_are_averaged_apart_from_docs() {
        let task = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc],
            vec![Item::blank(0)],
        );
        // Seed 1: orderings with accuracy 1.0 and 0.5; seed 2: 0.0 and 0.5 (two docs each).
        let mut samples = Vec::new();
        for (seed, perm, accs) in [
            (1, 0, [1.0, 1.0]),
            (1, 1, [1.0, 0.0]),
            (2, 0, [0.0, 0.0]),
            (2, 1, [1.0, 0.0]),
        ] {
            for (doc, a) in accs.into_iter().enumerate() {
                let mut s = Sample::for_tests("m", doc, 1, Some(a));
                s.seed = seed;
                s.permutation = perm;
                samples.push(s);
            }
        }
        let s = summarize(&samples, &[TaskMeta::of(&task)], &[], None).unwrap();
        assert_eq!(s.height(), 1);
        let c = SummaryColumns::of(&s).unwrap();
        // Seed means 0.75 and 0.25: mean 0.5, std sqrt(0.125).
        assert_eq!(c.value.get(0), Some(0.5));
        assert!((c.seed_std.get(0).unwrap() - 0.125f64.sqrt()).abs() < 1e-12);
        // Within each seed the orderings differ by 0.5: std sqrt(0.125) in both.
        assert!((c.perm_std.get(0).unwrap() - 0.125f64.sqrt()).abs() < 1e-12);
        // Per-draw stderr: 0 for [1,1] and [0,0], 0.5 for [1,0]: mean 0.25.
        assert!((c.stderr.get(0).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(
            (c.seeds.get(0), c.permutations.get(0), c.n.get(0)),
            (Some(2), Some(2), Some(2))
        );
        assert!(c.has_seeds());
        let md = markdown(&s).unwrap();
        assert!(md.contains("± std over seeds (seeds)"), "{md}");
        assert!(md.contains("| 0.3536 (2) | 0.3536 |"), "{md}");
    }
}
