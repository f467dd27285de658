//! Run outputs people read: summary tables (CSV, Markdown, LaTeX), charts, the HTML report, and
//! comparisons of runs. Everything here works from run records, so a report can be rebuilt from
//! finished run folders (`icl-eval report`) as well as at the end of a run.

pub mod chart;
pub mod compare;
pub mod groups;
pub mod html;
pub mod labels;
pub mod latex;
pub mod reliability;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use polars::prelude::{CsvWriter, DataFrame, SerWriter};

use crate::backend::ModelInfo;
use crate::record::{Example, RunData, RunRecord, Sample, TaskRecord};
use crate::task::discover::Group;
use crate::task::{OutputType, Reported, Task};
use labels::LabelShares;

/// What reports need to know about a task.
#[derive(Debug, Clone)]
pub struct TaskMeta {
    pub name: String,
    pub output_type: OutputType,
    /// The first is the headline of charts.
    pub metrics: Vec<Reported>,
    /// Accuracy of a uniform random guess, for multiple-choice tasks.
    pub chance: Option<f64>,
    /// The label set of a classification task (every doc has the same choices).
    pub labels: Option<Vec<String>>,
    /// Python aggregations of corpus metrics: metric name → `FILE.py:function`.
    pub aggregations: std::collections::BTreeMap<String, String>,
}

impl TaskMeta {
    /// From a recorded task.
    pub fn from_record(r: &TaskRecord) -> Result<Self> {
        Ok(Self {
            name: r.name.clone(),
            output_type: r.output_type,
            metrics: r.metric_list()?,
            chance: r.chance,
            labels: r.labels.clone(),
            aggregations: r.aggregations.clone(),
        })
    }

    /// From a loaded task.
    pub fn of(t: &Task) -> Self {
        Self {
            name: t.name.clone(),
            output_type: t.output_type,
            metrics: t.reported(),
            chance: crate::record::chance(t),
            labels: crate::record::labels(t),
            aggregations: t.aggregations.clone(),
        }
    }

    /// The headline metric.
    pub fn primary_metric(&self) -> &Reported {
        &self.metrics[0]
    }
}

/// Everything a report is drawn from: one run, or several merged.
#[derive(Debug, Clone)]
pub struct ReportInput {
    pub tasks: Vec<TaskMeta>,
    pub models: Vec<ModelInfo>,
    pub samples: Vec<Sample>,
    pub examples: Vec<Example>,
    /// The runs it came from (folder, configuration).
    pub runs: Vec<(PathBuf, RunRecord)>,
    /// Differences between merged runs a reader should know of (seed, limit, weights).
    pub notes: Vec<String>,
    /// Groups of tasks (tags named on `--tasks`) reported as means besides their tasks.
    pub groups: Vec<Group>,
    /// The Python that runs tasks' aggregation hooks (`--allow-python`); without it those
    /// metrics stay empty, with a note.
    pub python: Option<PathBuf>,
}

impl ReportInput {
    /// A single run's report.
    pub fn of_run(run: &RunData) -> Result<Self> {
        merge(std::slice::from_ref(run), false)
    }
}

/// Merges run folders into one report. Refuses a task name recorded with different task hashes
/// (different YAML, template or data) unless `allow_mixed`, a model name with different weights, and
/// a (task, model, K) cell present in two runs — each error names the runs involved.
pub fn merge(runs: &[RunData], allow_mixed: bool) -> Result<ReportInput> {
    let (tasks, models) = distinct_tasks_and_models(runs, allow_mixed)?;
    let samples = samples_of_distinct_cells(runs)?;
    let notes = setting_notes(runs);
    let mut groups: Vec<Group> = Vec::new();
    for g in runs.iter().flat_map(|r| &r.record.groups) {
        if !groups.iter().any(|x| x.name == g.name) {
            groups.push(g.clone());
        }
    }
    let mut examples: Vec<Example> = Vec::new();
    for run in runs {
        for e in &run.examples {
            if !examples.iter().any(|x| x.task == e.task && x.k == e.k) {
                examples.push(e.clone());
            }
        }
    }
    Ok(ReportInput {
        tasks: tasks
            .iter()
            .map(|(t, _)| TaskMeta::from_record(t))
            .collect::<Result<_>>()?,
        models: models.into_iter().map(|(m, _)| m).collect(),
        samples,
        examples,
        runs: runs
            .iter()
            .map(|r| (r.dir.clone(), r.record.clone()))
            .collect(),
        notes,
        // `icl-eval report`/`merge` set it from --allow-python.
        python: None,
        groups,
    })
}

/// Each task and model once, in run order; a task that differs between runs refuses unless
/// `allow_mixed`, a model name with other weights always.
#[allow(clippy::type_complexity)]
fn distinct_tasks_and_models(
    runs: &[RunData],
    allow_mixed: bool,
) -> Result<(Vec<(TaskRecord, PathBuf)>, Vec<(ModelInfo, PathBuf)>)> {
    let mut tasks: Vec<(TaskRecord, PathBuf)> = Vec::new();
    let mut models: Vec<(ModelInfo, PathBuf)> = Vec::new();
    let mut mixed = Vec::new();
    for run in runs {
        for t in &run.record.tasks {
            match tasks.iter().find(|(x, _)| x.name == t.name) {
                Some((x, from)) if x.hash != t.hash => mixed.push(format!(
                    "task `{}` differs between {} (hash {}) and {} (hash {})",
                    t.name,
                    from.display(),
                    &x.hash[..x.hash.len().min(12)],
                    run.dir.display(),
                    &t.hash[..t.hash.len().min(12)]
                )),
                Some(_) => {}
                None => tasks.push((t.clone(), run.dir.clone())),
            }
        }
        for m in &run.record.models {
            match models.iter().find(|(x, _)| x.name == m.name) {
                Some((x, from)) if x.sha256 != m.sha256 => bail!(
                    "model `{}` has different weights in {} and {}; rename one to compare them",
                    m.name,
                    from.display(),
                    run.dir.display()
                ),
                Some(_) => {}
                None => models.push((m.clone(), run.dir.clone())),
            }
        }
    }
    if !mixed.is_empty() && !allow_mixed {
        bail!(
            "{}; these cells are not comparable (pass --allow-mixed to merge them anyway)",
            mixed.join("; ")
        );
    }
    Ok((tasks, models))
}

/// Every run's samples; a cell two runs both hold refuses.
fn samples_of_distinct_cells(runs: &[RunData]) -> Result<Vec<crate::record::Sample>> {
    type Cell = (
        String,
        String,
        &'static str,
        &'static str,
        &'static str,
        usize,
    );
    let mut cells: Vec<(Cell, &Path)> = Vec::new();
    let mut samples = Vec::new();
    for run in runs {
        let mut own: Vec<Cell> = run
            .samples
            .iter()
            .map(|s| {
                (
                    s.task.clone(),
                    s.model.clone(),
                    s.sampler.name(),
                    s.demo_labels.name(),
                    s.format.name(),
                    s.k,
                )
            })
            .collect();
        own.sort();
        own.dedup();
        for c in own {
            if let Some((_, other)) = cells.iter().find(|(x, _)| *x == c) {
                bail!(
                    "cell (task {}, model {}, sampler {}, {} labels, {}, K = {}) is in both {} and \
                     {}; report them separately",
                    c.0,
                    c.1,
                    c.2,
                    c.3,
                    c.4,
                    c.5,
                    other.display(),
                    run.dir.display()
                );
            }
            cells.push((c, &run.dir));
        }
        samples.extend(run.samples.iter().cloned());
    }
    Ok(samples)
}

/// A note for each run whose settings differ from the first's: seed, limit, weights, and any
/// field of the recorded protocol (compared generically, field by field).
fn setting_notes(runs: &[RunData]) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(first) = runs.first() {
        let r0 = &first.record;
        for run in &runs[1..] {
            let r = &run.record;
            let mut differ = Vec::new();
            if r.seed != r0.seed {
                differ.push(format!("seed {} vs {}", r0.seed, r.seed));
            }
            if r.limit != r0.limit {
                differ.push(format!("limit {:?} vs {:?}", r0.limit, r.limit));
            }
            if r.weights != r0.weights {
                differ.push(format!("weights {} vs {}", r0.weights, r.weights));
            }
            differ.extend(protocol_differences(&r0.protocol, &r.protocol));
            if !differ.is_empty() {
                notes.push(format!(
                    "{} and {} differ in {}: their cells use other demonstrations, docs or precision",
                    first.dir.display(),
                    run.dir.display(),
                    differ.join(", ")
                ));
            }
        }
    }
    notes
}

/// The protocol fields two runs set differently, as `field a vs b`.
fn protocol_differences(a: &crate::record::Protocol, b: &crate::record::Protocol) -> Vec<String> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    flatten(&format!("{prefix}{k}."), x, out);
                }
            }
            other => out.push((prefix.trim_end_matches('.').to_string(), other.to_string())),
        }
    }
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    flatten("", &serde_json::to_value(a).unwrap_or_default(), &mut fa);
    flatten("", &serde_json::to_value(b).unwrap_or_default(), &mut fb);
    fa.iter()
        .zip(&fb)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, y)| format!("{} {} vs {}", x.0, x.1, y.1))
        .collect()
}

/// What [`write_report`] produced.
pub struct Report {
    pub summary: polars::prelude::DataFrame,
    pub markdown: String,
    /// File stems of the charts written, in display order.
    pub charts: Vec<&'static str>,
}

/// Writes the summary (CSV, Markdown, LaTeX), the charts and `report.html` into `dir`.
pub fn write_report(dir: &Path, input: &ReportInput) -> Result<Report> {
    if input.python.is_none() {
        for t in &input.tasks {
            for (metric, hook) in &t.aggregations {
                eprintln!(
                    "note: `{metric}` of task `{}` is aggregated by Python ({hook}), which runs \
                     only with --allow-python: left empty",
                    t.name
                );
            }
        }
    }
    let summary = table::summarize(
        &input.samples,
        &input.tasks,
        &input.models,
        input.python.as_deref(),
    )?;
    let shares = labels::shares(&input.samples, &input.tasks);
    let group_rows = groups::summarize(&summary, &input.groups)?;
    let markdown = write_tables(dir, &summary, &shares, &group_rows)?;
    latex::write(dir, &summary)?;
    let colors = chart::model_colors(&input.models);
    let mut charts: Vec<(&'static str, &'static str)> = Vec::new();
    if chart::accuracy_vs_shots(dir, &summary, &input.tasks, &colors)? {
        charts.push((
            "accuracy_vs_shots",
            "Accuracy against the number of demonstrations",
        ));
    }
    if chart::calibration(dir, &summary, &input.tasks)? {
        charts.push((
            "calibration",
            "Accuracy with and without calibration against the number of demonstrations",
        ));
    }
    let model_names: Vec<String> = input.models.iter().map(|m| m.name.clone()).collect();
    if reliability::reliability(dir, &input.samples, &input.tasks, &model_names)? {
        charts.push((
            "reliability",
            "Reliability: accuracy against confidence, per model and K (the bins of `ece`)",
        ));
    }
    if chart::accuracy_vs_model_size(dir, &summary, &input.tasks, &input.models)? {
        charts.push(("accuracy_vs_model_size", "Accuracy against model size"));
    }
    if chart::effective_k(dir, &summary, &input.tasks, &colors)? {
        charts.push((
            "effective_k",
            "Demonstrations used (fewer than asked when the context or the few-shot pool is too small)",
        ));
    }
    html::write(dir, input, &summary, &charts)?;
    Ok(Report {
        summary,
        markdown,
        charts: charts.into_iter().map(|(stem, _)| stem).collect(),
    })
}

/// Writes `summary.csv`, `summary.md` (with the predicted-label shares after the table) and
/// `labels.csv`; returns the Markdown.
fn write_tables(
    dir: &Path,
    summary: &DataFrame,
    shares: &[LabelShares],
    group_rows: &[groups::GroupRow],
) -> Result<String> {
    let mut csv = Vec::new();
    CsvWriter::new(&mut csv)
        .include_header(true)
        .finish(&mut summary.clone())?;
    crate::record::write_atomic(&dir.join("summary.csv"), &csv)?;
    let mut md = table::markdown(summary)?;
    if !group_rows.is_empty() {
        md.push_str(&groups::markdown(group_rows));
        groups::write_csv(&dir.join("groups.csv"), group_rows)?;
    }
    if !shares.is_empty() {
        md.push_str(&labels::markdown(shares));
        labels::write_csv(&dir.join("labels.csv"), shares)?;
    }
    crate::record::write_atomic(&dir.join("summary.md"), md.as_bytes())?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_compared_field_by_field() {
        let a = crate::record::Protocol::default();
        let mut b = a.clone();
        b.seeds = 3;
        b.flags.demo_order = Some(crate::sampler::DemoOrder::ByLabel);
        assert_eq!(
            protocol_differences(&a, &b),
            ["flags.demo_order null vs \"by_label\"", "seeds 1 vs 3"]
        );
        assert!(protocol_differences(&a, &a).is_empty());
    }
    use crate::task::{Item, Metric};

    fn run(dir: &str, hash: &str, model: &str, samples: Vec<Sample>) -> RunData {
        let task = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc],
            vec![Item::blank(0)],
        );
        let mut t = TaskRecord::of(&task, Default::default(), Default::default());
        t.hash = hash.into();
        RunData {
            dir: PathBuf::from(dir),
            record: RunRecord {
                complete: true,
                run_id: String::new(),
                shard: None,
                resumed: Vec::new(),
                groups: Vec::new(),
                tasks: vec![t],
                models: vec![ModelInfo::for_tests(model, 1000)],
                shots: vec![0],
                task_shots: false,
                seed: 1,
                seeds: vec![1],
                permutations: 1,
                demo_labels: vec![Default::default()],
                chat: None,
                protocol: Default::default(),
                prompt_tokens: Vec::new(),
                limit: None,
                threads: None,
                weights: "f32".into(),
                device: "cpu".into(),
                data_dir: None,
                icl_eval_version: "0".into(),
                git_commit: "unknown".into(),
                started: "2026-11-28T00:00:00Z".into(),
                wall_seconds: Some(1.0),
            },
            samples,
            examples: vec![Example {
                task: "t".into(),
                k: 0,
                doc_id: 0,
                prompt: "Review: <b>great</b> & cheap\nSentiment:".into(),
            }],
        }
    }

    fn samples(model: &str, n: usize) -> Vec<Sample> {
        (0..n)
            .map(|d| Sample::for_tests(model, d, 0, Some(f64::from(u8::from(d % 3 == 0)))))
            .collect()
    }

    #[test]
    fn merge_keeps_both_runs_and_refuses_overlaps_and_mixed_tasks() {
        let a = run("runs/a", "h1", "small", samples("small", 3));
        let b = run("runs/b", "h1", "large", samples("large", 3));
        let m = merge(&[a.clone(), b.clone()], false).unwrap();
        assert!(m.notes.is_empty());
        assert_eq!(m.samples.len(), 6);
        let mut reseeded = b.clone();
        reseeded.record.seed = 2;
        let notes = merge(&[a.clone(), reseeded], false).unwrap().notes;
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("runs/a and runs/b differ in seed 1 vs 2"),
            "{notes:?}"
        );
        assert_eq!(m.models.len(), 2);
        assert_eq!(m.tasks.len(), 1);

        let e = merge(&[a.clone(), a.clone()], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "(task t, model small, sampler random, gold labels, cloze, K = 0) is in both runs/a and runs/a"
            ),
            "{e}"
        );

        let changed = run("runs/c", "h2", "large", samples("large", 3));
        let e = merge(&[a.clone(), changed.clone()], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("task `t` differs between runs/a (hash h1) and runs/c (hash h2)")
                && e.contains("--allow-mixed"),
            "{e}"
        );
        assert_eq!(merge(&[a, changed], true).unwrap().samples.len(), 6);
    }

    #[test]
    fn html_report_escapes_text_and_caps_items_per_cell() {
        let mut many = samples("small", 250);
        many[0].prediction = Some("<b>bold</b>".into());
        let r = run("runs/a", "h1", "small", many);
        let input = ReportInput::of_run(&r).unwrap();
        let dir = std::env::temp_dir().join(format!("icl-eval-html-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = write_report(&dir, &input).unwrap();
        assert_eq!(
            out.charts,
            vec!["accuracy_vs_shots"],
            "one model: no size chart"
        );
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(
            html.contains("&lt;b&gt;bold&lt;&#x2f;b&gt;")
                || html.contains("&lt;b&gt;bold&lt;/b&gt;")
        );
        assert!(!html.contains("<b>bold</b>") && !html.contains("<b>great</b>"));
        assert_eq!(
            html.matches("<tr class=\"right\">").count()
                + html.matches("<tr class=\"wrong\">").count(),
            ITEMS
        );
        assert!(html.contains("50 more are in"), "cut count shown");
        assert_eq!(html.matches("<svg").count(), 1);
        assert!(!html.contains("<?xml"));
        assert!(
            std::fs::read_to_string(dir.join("summary.tex"))
                .unwrap()
                .contains("\\toprule")
        );
    }

    const ITEMS: usize = html::ITEMS_PER_CELL;
}
