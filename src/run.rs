//! A run: tasks × models × shot counts → samples, summary, charts in a run folder.
//!
//! Samples stream to `samples.jsonl.partial` as they finish and are renamed only when the run is
//! complete, so an interrupted run never leaves a result that looks whole.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::candle::{CandleBackend, WeightsChoice};
use crate::backend::{Backend, ModelInfo};
use crate::models::{HubOptions, ModelsFile, ResolvedModel};
use crate::record::{self, Example, RunRecord, TaskRecord};
use crate::report::{ReportInput, TaskMeta};
use crate::task::{Answer, Task};
use crate::{fewshot, prompt, report, score};

/// Everything a run needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub tasks: Vec<PathBuf>,
    /// Model references (`.gguf` path, checkpoint folder, models-file name, `hf:ORG/REPO[/FILE]`).
    pub models: Vec<String>,
    /// The models file names resolve through.
    pub models_file: Option<ModelsFile>,
    pub hub: HubOptions,
    pub shots: Vec<usize>,
    pub limit: Option<usize>,
    pub seed: u64,
    pub threads: Option<usize>,
    pub output: Option<PathBuf>,
    pub results_root: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub weights: WeightsChoice,
}

/// One scored (doc, K, model) — a row of `samples.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub model: String,
    pub task: String,
    pub doc_id: usize,
    /// Demonstrations requested.
    pub k: usize,
    /// Demonstrations used after fitting the context (absent when the doc was skipped).
    pub k_effective: Option<usize>,
    /// First 16 hex digits of the prompt's sha256.
    pub prompt_hash: Option<String>,
    /// Prompt tokens plus the longest continuation or the generation budget.
    pub tokens: Option<usize>,
    /// Multiple choice: each choice's summed log-likelihood (nats), in choice order.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub logprobs: Option<Vec<f64>>,
    /// Generation: the text generated (cut at the stop sequence).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generated: Option<String>,
    /// The answer picked by the headline metric (choice text or generated text, trimmed).
    pub prediction: Option<String>,
    pub gold: String,
    /// Whether the headline metric counts the doc as correct.
    pub correct: Option<bool>,
    /// Metric name → 1.0 / 0.0.
    pub metrics: BTreeMap<String, f64>,
    /// Why the doc was not scored (e.g. even its 0-shot prompt exceeds the context).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skipped: Option<String>,
}

#[cfg(test)]
impl Sample {
    /// A sample of task `t` scored with `acc` (or skipped when `acc` is `None`), for unit tests.
    pub(crate) fn for_tests(model: &str, doc_id: usize, k: usize, acc: Option<f64>) -> Sample {
        Sample {
            model: model.into(),
            task: "t".into(),
            doc_id,
            k,
            k_effective: acc.map(|_| k),
            prompt_hash: None,
            tokens: None,
            logprobs: None,
            generated: None,
            prediction: None,
            gold: "x".into(),
            correct: acc.map(|a| a > 0.5),
            metrics: acc
                .map(|a| BTreeMap::from([("acc".to_string(), a)]))
                .unwrap_or_default(),
            skipped: acc.is_none().then(|| "too long".into()),
        }
    }
}

/// What a finished run leaves behind.
pub struct RunOutcome {
    pub dir: PathBuf,
    pub summary: polars::prelude::DataFrame,
    pub summary_markdown: String,
    /// File stems of the charts written (`accuracy_vs_shots`, ...).
    pub charts: Vec<&'static str>,
}

/// Loads every task first (so a bad task fails before any model loads), then runs each model.
pub fn run(cfg: &RunConfig) -> Result<RunOutcome> {
    if cfg.shots.is_empty() {
        bail!("--shots: give at least one shot count, e.g. --shots 0,1,32");
    }
    if cfg.models.is_empty() {
        bail!(
            "--models: give at least one model (a .gguf file, checkpoint folder, name or hf:ORG/REPO)"
        );
    }
    let mut shots = cfg.shots.clone();
    shots.sort_unstable();
    shots.dedup();
    let tasks: Vec<Task> = cfg
        .tasks
        .iter()
        .map(|p| crate::task::load_task(p, cfg.data_dir.as_deref()))
        .collect::<Result<_>>()?;
    for (i, t) in tasks.iter().enumerate() {
        if let Some(other) = tasks[..i].iter().find(|o| o.name == t.name) {
            bail!(
                "--tasks: {} and {} are both named `{}`; results are keyed by task name",
                other.source.display(),
                t.source.display(),
                t.name
            );
        }
    }
    // Every reference resolves (and downloads) before any work starts.
    let resolved: Vec<ResolvedModel> = cfg
        .models
        .iter()
        .map(|m| crate::models::resolve(m, cfg.models_file.as_ref(), &cfg.hub))
        .collect::<Result<_>>()
        .context("--models")?;
    for (i, m) in resolved.iter().enumerate() {
        if let Some(other) = resolved[..i].iter().find(|o| o.name() == m.name()) {
            bail!(
                "--models: {} and {} are both named `{}`; results are keyed by model name, so \
                 rename one (or give it a display_name in models.yaml)",
                other.reference,
                m.reference,
                m.name()
            );
        }
    }
    let started = chrono::Utc::now();
    let dir = match &cfg.output {
        Some(d) => d.clone(),
        None => cfg.results_root.join(format!(
            "{}-{}",
            started.format("%Y%m%d-%H%M%S"),
            short_hash(&run_key(cfg, &tasks, &shots))
        )),
    };
    fs::create_dir_all(&dir)
        .with_context(|| format!("--output: cannot create {}", dir.display()))?;
    if dir.join("samples.jsonl").exists() {
        bail!(
            "--output: {} already holds a finished run; choose another folder",
            dir.display()
        );
    }

    let n_docs: usize = tasks
        .iter()
        .map(|t| cfg.limit.map_or(t.test.len(), |l| l.min(t.test.len())))
        .sum();
    let total = (n_docs * shots.len() * cfg.models.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:30} [{bar:30}] {pos}/{len} samples, {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );

    let mut record = RunRecord {
        complete: false,
        tasks: tasks.iter().map(TaskRecord::of).collect(),
        models: Vec::new(),
        shots: shots.clone(),
        seed: cfg.seed,
        limit: cfg.limit,
        threads: cfg.threads,
        weights: cfg.weights.to_possible_value().map_or_else(
            || format!("{:?}", cfg.weights),
            |v| v.get_name().to_string(),
        ),
        data_dir: cfg.data_dir.clone(),
        icl_eval_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: option_env!("ICL_EVAL_GIT_COMMIT")
            .unwrap_or("unknown")
            .to_string(),
        started: started.to_rfc3339(),
        wall_seconds: None,
    };
    record::write_config(&dir, &record)?;
    let examples = examples(&tasks, &shots, cfg.seed);
    record::write_examples(&dir, &examples)?;

    let partial = dir.join("samples.jsonl.partial");
    let mut out = BufWriter::new(
        File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?,
    );
    let mut samples = Vec::new();
    let mut models: Vec<ModelInfo> = Vec::new();
    let clock = Instant::now();
    for m in &resolved {
        bar.set_message(format!("loading {}", m.name()));
        let loaded = CandleBackend::load_verified(&m.path, cfg.weights, m.sha256.as_deref());
        // Errors name the path; a name or hub reference is worth adding.
        let loaded = if Path::new(&m.reference) == m.path {
            loaded
        } else {
            loaded.with_context(|| format!("--models {}", m.reference))
        };
        let mut backend = loaded?.named(&m.name(), &m.reference);
        models.push(backend.info().clone());
        record.models = models.clone();
        record::write_config(&dir, &record)?;
        for task in &tasks {
            bar.set_message(format!("{} / {}", backend.info().name, task.name));
            for s in evaluate_task(&mut backend, task, &shots, cfg.seed, cfg.limit, &|| {
                bar.inc(1)
            })? {
                serde_json::to_writer(&mut out, &s)?;
                out.write_all(b"\n")?;
                samples.push(s);
            }
            out.flush()?;
        }
    }
    bar.finish_and_clear();
    // The samples are on disk under their final name before config.json says the run is complete,
    // and both before the report, so a failing report never costs the scored samples.
    out.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, dir.join("samples.jsonl"))?;
    record.wall_seconds = Some(clock.elapsed().as_secs_f64());
    record.complete = true;
    record::write_config(&dir, &record)?;
    let input = ReportInput {
        tasks: tasks.iter().map(TaskMeta::of).collect(),
        models,
        samples,
        examples,
        runs: vec![(dir.clone(), record.clone())],
        notes: Vec::new(),
    };
    let report = report::write_report(&dir, &input).with_context(|| {
        format!(
            "the run finished and its samples are in {}/samples.jsonl, but its report could not \
             be written; fix the cause and rebuild it with `icl-eval report {}`",
            dir.display(),
            dir.display()
        )
    })?;
    Ok(RunOutcome {
        dir,
        summary: report.summary,
        summary_markdown: report.markdown,
        charts: report.charts,
    })
}

/// The prompt of each task's first test doc at each K, as reports show it (before fitting to a
/// model's context, which may drop demonstrations).
fn examples(tasks: &[Task], shots: &[usize], seed: u64) -> Vec<Example> {
    let k_max = shots.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for t in tasks {
        let Some(item) = t.test.first() else { continue };
        let draw = fewshot::draw(t, item, seed, k_max);
        for &k in shots {
            out.push(Example {
                task: t.name.clone(),
                k,
                doc_id: item.id,
                prompt: prompt::build(t, item, &draw[..k.min(draw.len())]),
            });
        }
    }
    out
}

/// Scores the first `limit` test docs of `task` at every K, calling `tick` after each sample.
pub fn evaluate_task(
    backend: &mut dyn Backend,
    task: &Task,
    shots: &[usize],
    seed: u64,
    limit: Option<usize>,
    tick: &dyn Fn(),
) -> Result<Vec<Sample>> {
    let k_max = shots.iter().copied().max().unwrap_or(0);
    let n = limit.map_or(task.test.len(), |l| l.min(task.test.len()));
    let ctx_len = backend.info().context_length;
    let mut samples = Vec::with_capacity(n * shots.len());
    for item in &task.test[..n] {
        let draw = fewshot::draw(task, item, seed, k_max);
        for &k in shots {
            let demos = &draw[..k.min(draw.len())];
            let fitted = prompt::fit(task, item, demos, ctx_len, &|s| backend.count_tokens(s))?;
            let mut s = Sample {
                model: backend.info().name.clone(),
                task: task.name.clone(),
                doc_id: item.id,
                k,
                k_effective: None,
                prompt_hash: None,
                tokens: None,
                logprobs: None,
                generated: None,
                prediction: None,
                gold: item.target_text().to_string(),
                correct: None,
                metrics: BTreeMap::new(),
                skipped: None,
            };
            match fitted {
                None => {
                    s.skipped = Some(format!(
                        "the 0-shot prompt does not fit the context of {ctx_len} tokens"
                    ))
                }
                Some(f) => {
                    s.k_effective = Some(f.k);
                    s.prompt_hash = Some(short_hash(&f.prompt));
                    s.tokens = Some(f.tokens);
                    score_item(backend, task, item, &f.prompt, &mut s).with_context(|| {
                        format!("task {}, doc {}, {k}-shot", task.name, item.id)
                    })?;
                }
            }
            samples.push(s);
            tick();
        }
    }
    Ok(samples)
}

fn score_item(
    backend: &mut dyn Backend,
    task: &Task,
    item: &crate::task::Item,
    prompt: &str,
    s: &mut Sample,
) -> Result<()> {
    let primary = task.primary_metric();
    match &item.answer {
        Answer::Choice { choices, gold } => {
            let lls = backend.loglikelihood(prompt, &prompt::continuations(task, item))?;
            let logprobs: Vec<f64> = lls.iter().map(|l| l.logprob).collect();
            let cs = score::score_choices(&logprobs, choices);
            let metrics = score::choice_metrics(&task.metrics, &cs, *gold);
            let pred = if primary == crate::task::Metric::AccNorm {
                cs.pred_norm
            } else {
                cs.pred
            };
            s.prediction = Some(choices[pred].clone());
            s.correct = Some(metrics[&primary] > 0.5);
            s.metrics = metrics
                .into_iter()
                .map(|(m, v)| (m.name().to_string(), v))
                .collect();
            s.logprobs = Some(logprobs);
        }
        Answer::Text(target) => {
            let text = backend.generate_until(prompt, &task.until, task.max_tokens)?;
            let em = score::exact_match(&text, target);
            s.prediction = Some(text.trim().to_string());
            s.correct = Some(em > 0.5);
            s.metrics = BTreeMap::from([("exact_match".to_string(), em)]);
            s.generated = Some(text);
        }
    }
    Ok(())
}

/// First 16 hex digits of the sha256 of `s`.
pub fn short_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..16].to_string()
}

fn run_key(cfg: &RunConfig, tasks: &[Task], shots: &[usize]) -> String {
    let t: Vec<&str> = tasks.iter().map(|t| t.hash.as_str()).collect();
    format!(
        "{t:?}|{:?}|{shots:?}|{}|{:?}|{:?}",
        cfg.models, cfg.seed, cfg.limit, cfg.weights
    )
}
