//! Samples → summary table (polars): one row per task × model × K × metric.

use std::fs::{self, File};
use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::*;

use super::TaskMeta;
use crate::backend::ModelInfo;
use crate::run::Sample;

/// Aggregates samples: mean, standard error, n (scored docs), skipped docs and mean effective K.
pub fn summarize(
    samples: &[Sample],
    tasks: &[TaskMeta],
    models: &[ModelInfo],
) -> Result<DataFrame> {
    let mut task = Vec::new();
    let mut model = Vec::new();
    let mut params = Vec::new();
    let mut k = Vec::new();
    let mut metric = Vec::new();
    let mut value: Vec<Option<f64>> = Vec::new();
    let mut k_eff: Vec<Option<f64>> = Vec::new();
    for s in samples {
        let Some(t) = tasks.iter().find(|t| t.name == s.task) else {
            continue;
        };
        let p = models
            .iter()
            .find(|m| m.name == s.model)
            .map_or(0, |m| m.parameters);
        for m in &t.metrics {
            task.push(s.task.clone());
            model.push(s.model.clone());
            params.push(p);
            k.push(s.k as u32);
            metric.push(m.name().to_string());
            value.push(s.metrics.get(m.name()).copied());
            k_eff.push(s.k_effective.map(|x| x as f64));
        }
    }
    let long = df!(
        "task" => task,
        "model" => model,
        "parameters" => params,
        "k" => k,
        "metric" => metric,
        "value" => value,
        "k_effective" => k_eff,
    )?;
    let summary = long
        .lazy()
        .group_by([
            col("task"),
            col("model"),
            col("parameters"),
            col("k"),
            col("metric"),
        ])
        .agg([
            col("value").mean().alias("value"),
            (col("value").std(1) / col("value").count().cast(DataType::Float64).sqrt())
                .alias("stderr"),
            col("value").count().cast(DataType::UInt32).alias("n"),
            (len() - col("value").count())
                .cast(DataType::UInt32)
                .alias("skipped"),
            col("k_effective").mean().alias("mean_k_effective"),
        ])
        .sort(
            ["task", "metric", "parameters", "model", "k"],
            SortMultipleOptions::default(),
        )
        .collect()?;
    Ok(summary)
}

/// Typed views of the summary's columns, for readers of the table.
pub struct SummaryColumns<'a> {
    pub task: &'a StringChunked,
    pub model: &'a StringChunked,
    pub parameters: &'a UInt64Chunked,
    pub k: &'a UInt32Chunked,
    pub metric: &'a StringChunked,
    pub value: &'a Float64Chunked,
    pub stderr: &'a Float64Chunked,
    pub n: &'a UInt32Chunked,
    pub skipped: &'a UInt32Chunked,
    pub mean_k_effective: &'a Float64Chunked,
}

impl<'a> SummaryColumns<'a> {
    /// Borrows the columns `summarize` produces.
    pub fn of(df: &'a DataFrame) -> Result<Self> {
        Ok(Self {
            task: df.column("task")?.str()?,
            model: df.column("model")?.str()?,
            parameters: df.column("parameters")?.u64()?,
            k: df.column("k")?.u32()?,
            metric: df.column("metric")?.str()?,
            value: df.column("value")?.f64()?,
            stderr: df.column("stderr")?.f64()?,
            n: df.column("n")?.u32()?,
            skipped: df.column("skipped")?.u32()?,
            mean_k_effective: df.column("mean_k_effective")?.f64()?,
        })
    }
}

/// Writes `summary.csv` and `summary.md`; returns the Markdown.
pub fn write_all(dir: &Path, summary: &DataFrame) -> Result<String> {
    let csv = dir.join("summary.csv");
    let mut f = File::create(&csv).with_context(|| format!("cannot write {}", csv.display()))?;
    CsvWriter::new(&mut f)
        .include_header(true)
        .finish(&mut summary.clone())?;
    let md = markdown(summary)?;
    fs::write(dir.join("summary.md"), &md)?;
    Ok(md)
}

/// The summary as a Markdown table: value ± stderr with n, one row per cell.
pub fn markdown(summary: &DataFrame) -> Result<String> {
    let SummaryColumns {
        task,
        model,
        k,
        metric,
        value,
        stderr: se,
        n,
        skipped,
        mean_k_effective: keff,
        ..
    } = SummaryColumns::of(summary)?;
    let mut out = String::from(
        "| task | model | K | metric | value | ± stderr | n | mean K used | skipped |\n",
    );
    out.push_str("|---|---|---:|---|---:|---:|---:|---:|---:|\n");
    let fmt = |x: Option<f64>, p: usize| {
        x.filter(|v| v.is_finite())
            .map_or("–".to_string(), |v| format!("{v:.p$}"))
    };
    for i in 0..summary.height() {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            task.get(i).unwrap_or(""),
            model.get(i).unwrap_or(""),
            k.get(i).unwrap_or(0),
            metric.get(i).unwrap_or(""),
            fmt(value.get(i), 4),
            fmt(se.get(i), 4),
            n.get(i).unwrap_or(0),
            fmt(keff.get(i), 1),
            skipped.get(i).unwrap_or(0),
        ));
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
        let s = summarize(&samples, &[TaskMeta::of(&task)], &[]).unwrap();
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
}
