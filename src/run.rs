//! A run: tasks × models × shot counts → samples, summary, charts in a run folder.
//!
//! Samples stream to `samples.jsonl.partial` as they finish and are renamed only when the run is
//! complete, so an interrupted run never leaves a result that looks whole, and the same command
//! started again resumes it (`resume.rs`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::candle::{CandleBackend, DeviceChoice, WeightsChoice};
use crate::backend::openai::{self, Endpoint, OpenAiBackend};
use crate::backend::{Backend, ModelInfo};
use crate::cache::{Cached, RequestCache};
use crate::evaluate::{Plan, doc_count, evaluate_task};
use crate::models::{HubOptions, ModelsFile, ResolvedModel};
use crate::record::{self, Example, ResumePoint, RunRecord, TaskRecord};
use crate::report::{ReportInput, TaskMeta};
use crate::resume::{self, Done};
use crate::sampler::{DemoLabels, DemoOrder, Sampler, Selector};
use crate::shard::Shard;
use crate::task::Task;
use crate::{prompt, report, sampler};

/// Where a model runs: in process, or behind an OpenAI-compatible server.
enum Source {
    Local(ResolvedModel),
    Server(Endpoint),
}

impl Source {
    /// The name tables and charts use.
    fn name(&self) -> String {
        match self {
            Source::Local(m) => m.name(),
            Source::Server(e) => e.model.clone(),
        }
    }
}

/// Everything a run needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub tasks: Vec<PathBuf>,
    /// Tags named on `--tasks`, reported as group means besides their tasks.
    pub groups: Vec<crate::task::load::Group>,
    /// Model references (`.gguf` path, checkpoint folder, models-file name, `hf:ORG/REPO[/FILE]`).
    pub models: Vec<String>,
    /// The models file names resolve through.
    pub models_file: Option<ModelsFile>,
    pub hub: HubOptions,
    pub shots: Vec<usize>,
    pub limit: Option<usize>,
    /// The first seed; `--seeds N` runs seeds `seed .. seed + N`.
    pub seed: u64,
    /// The demonstration protocol besides the first seed.
    pub protocol: Protocol,
    /// Budget of the prompt-prefix KV cache in MiB.
    pub kv_cache_mb: usize,
    /// Docs scored together by in-process models.
    pub batch_docs: usize,
    /// Sentence-encoder folder for `knn` (default `models/all-minilm-l6-v2`).
    pub encoder: Option<PathBuf>,
    pub threads: Option<usize>,
    pub output: Option<PathBuf>,
    pub results_root: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub weights: WeightsChoice,
    /// Where in-process models run.
    pub device: DeviceChoice,
    /// `--shard I/N`: evaluate only that share of each task's docs.
    pub shard: Option<Shard>,
    /// The persistent request cache (`None`: `--no-cache`).
    pub cache: Option<PathBuf>,
    /// How to talk to `openai:` servers.
    pub server: openai::Options,
    /// Set (by Ctrl-C) to stop after the sample being scored, keeping everything finished.
    pub stop: Option<Arc<AtomicBool>>,
}

/// The run stopped on request; its finished samples are kept for a resume.
#[derive(Debug)]
pub struct Interrupted {
    pub dir: PathBuf,
    pub samples: usize,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted: {} finished samples are kept in {}; run the same command again to \
             resume",
            self.samples,
            self.dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// How demonstrations vary within a run: seeds, orderings, label studies, sampler overrides.
#[derive(Debug, Clone)]
pub struct Protocol {
    /// Independent demonstration draws (`--seeds N`), at least 1.
    pub seeds: usize,
    /// Orderings of each demonstration set (`--permutations N`), at least 1; the first is the
    /// sampler's own order.
    pub permutations: usize,
    /// Label studies (`--demo-labels`), at least one.
    pub demo_labels: Vec<DemoLabels>,
    /// `--sampler`, overriding each task's `fewshot.sampler`.
    pub sampler: Option<Sampler>,
    /// `--demo-order`, overriding each task's `fewshot.order`.
    pub demo_order: Option<DemoOrder>,
    /// `--chat-template`: render prompts through each model's chat template.
    pub chat: Option<ChatMode>,
}

/// How demonstrations enter a chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatMode {
    /// Description, demonstrations and query in one user turn.
    Folded,
    /// Each demonstration a user turn and an assistant turn (`--fewshot-as-multiturn`).
    Multiturn,
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            seeds: 1,
            permutations: 1,
            demo_labels: vec![DemoLabels::Gold],
            sampler: None,
            demo_order: None,
            chat: None,
        }
    }
}

impl Protocol {
    /// The seeds of a run starting at `first`.
    pub fn seed_list(&self, first: u64) -> Vec<u64> {
        (0..self.seeds as u64)
            .map(|i| first.wrapping_add(i))
            .collect()
    }

    /// Rejects settings that cannot run.
    pub fn check(&self) -> Result<()> {
        if self.seeds == 0 {
            bail!("--seeds: must be at least 1 (the number of independent demonstration draws)");
        }
        if self.permutations == 0 {
            bail!("--permutations: must be at least 1 (1 keeps the sampler's order)");
        }
        if self.demo_labels.is_empty() {
            bail!("--demo-labels: give at least one of gold, random, flipped, none");
        }
        Ok(())
    }
}

/// One scored (doc, K, model) — a row of `samples.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub model: String,
    pub task: String,
    pub doc_id: usize,
    /// Demonstrations requested.
    pub k: usize,
    /// How the demonstrations were chosen.
    #[serde(default)]
    pub sampler: Sampler,
    /// Seed of the demonstration draw.
    #[serde(default)]
    pub seed: u64,
    /// Ordering of the demonstration set (0 = the sampler's own order).
    #[serde(default)]
    pub permutation: usize,
    /// What answers the demonstrations showed.
    #[serde(default)]
    pub demo_labels: DemoLabels,
    /// Demonstrations used after fitting the context (absent when the doc was skipped).
    pub k_effective: Option<usize>,
    /// First 16 hex digits of the prompt's sha256.
    pub prompt_hash: Option<String>,
    /// Prompt tokens plus the longest continuation or the generation budget.
    pub tokens: Option<usize>,
    /// Multiple choice: each choice's summed log-likelihood (nats), in choice order.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub logprobs: Option<Vec<f64>>,
    /// `acc_calibrated`: log p_cf of each choice, the content-free prior (Zhao et al. 2021).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub calibration: Option<Vec<f64>>,
    /// `acc_pmi`: each choice's log-likelihood after the neutral prefix alone.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unconditional: Option<Vec<f64>>,
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
        let mut s = Sample::unscored(model, "t", doc_id, k, "x");
        s.k_effective = acc.map(|_| k);
        s.correct = acc.map(|a| a > 0.5);
        s.metrics = acc
            .map(|a| BTreeMap::from([("acc".to_string(), a)]))
            .unwrap_or_default();
        s.skipped = acc.is_none().then(|| "too long".into());
        s
    }
}

impl Sample {
    /// A sample of the default protocol (random sampler, gold labels) with nothing scored yet.
    pub fn unscored(model: &str, task: &str, doc_id: usize, k: usize, gold: &str) -> Sample {
        Sample {
            model: model.into(),
            task: task.into(),
            doc_id,
            k,
            sampler: Sampler::Random,
            seed: 0,
            permutation: 0,
            demo_labels: DemoLabels::Gold,
            k_effective: None,
            prompt_hash: None,
            tokens: None,
            logprobs: None,
            calibration: None,
            unconditional: None,
            generated: None,
            prediction: None,
            gold: gold.into(),
            correct: None,
            metrics: BTreeMap::new(),
            skipped: None,
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
    cfg.protocol.check()?;
    let mut shots = cfg.shots.clone();
    shots.sort_unstable();
    shots.dedup();
    let tasks: Vec<Task> = cfg
        .tasks
        .iter()
        .map(|p| crate::task::load_task(p, cfg.data_dir.as_deref()))
        .collect::<Result<_>>()?;
    let selectors = selectors(&tasks, &cfg.protocol, cfg.encoder.as_deref(), cfg.limit)?;
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
    let resolved: Vec<Source> = cfg
        .models
        .iter()
        .map(|m| match m.starts_with("openai:") {
            true => Endpoint::parse(m).map(Source::Server),
            false => {
                crate::models::resolve(m, cfg.models_file.as_ref(), &cfg.hub).map(Source::Local)
            }
        })
        .collect::<Result<_>>()
        .context("--models")?;
    for (i, m) in cfg.models.iter().enumerate() {
        let name = resolved[i].name();
        if let Some(j) = (0..i).find(|&j| resolved[j].name() == name) {
            bail!(
                "--models: {} and {m} are both named `{name}`; results are keyed by model name, so \
                 rename one (or give it a display_name in models.yaml)",
                cfg.models[j],
            );
        }
    }
    let now = chrono::Utc::now();
    let run_id = short_hash(&run_key(cfg, &tasks, &shots));
    let unfinished = resume::locate(cfg.output.as_deref(), &cfg.results_root, &run_id, cfg.shard)?;
    let dir = match (&unfinished, &cfg.output) {
        (Some(u), _) => u.dir.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => cfg.results_root.join(format!(
            "{}-{}{}",
            now.format("%Y%m%d-%H%M%S"),
            run_id,
            cfg.shard
                .map_or(String::new(), |s| format!("-shard{}of{}", s.index, s.count))
        )),
    };
    fs::create_dir_all(&dir)
        .with_context(|| format!("--output: cannot create {}", dir.display()))?;

    let n_docs: usize = tasks
        .iter()
        .map(|t| doc_count(t, cfg.limit, cfg.shard))
        .sum();
    let p = &cfg.protocol;
    let per_doc = shots.len() * p.seeds * p.permutations * p.demo_labels.len();
    let per_model = n_docs * per_doc;
    let total = (per_model * cfg.models.len()) as u64;
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
        run_id: run_id.clone(),
        shard: cfg.shard,
        resumed: Vec::new(),
        groups: cfg.groups.clone(),
        tasks: tasks
            .iter()
            .zip(&selectors)
            .map(|(t, s)| TaskRecord::of(t, s.sampler()))
            .collect(),
        models: Vec::new(),
        shots: shots.clone(),
        seed: cfg.seed,
        seeds: p.seed_list(cfg.seed),
        permutations: p.permutations,
        demo_labels: p.demo_labels.clone(),
        chat: p.chat,
        prompt_tokens: Vec::new(),
        limit: cfg.limit,
        threads: cfg.threads,
        weights: cfg.weights.to_possible_value().map_or_else(
            || format!("{:?}", cfg.weights),
            |v| v.get_name().to_string(),
        ),
        device: cfg.device.to_string(),
        data_dir: cfg.data_dir.clone(),
        icl_eval_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: option_env!("ICL_EVAL_GIT_COMMIT")
            .unwrap_or("unknown")
            .to_string(),
        started: now.to_rfc3339(),
        wall_seconds: None,
    };
    let partial = dir.join(resume::PARTIAL);
    // Models scored in an earlier session keep their records; their work is not repeated.
    let (mut samples, earlier_models) = match unfinished {
        Some(u) => {
            record.started = u.record.started;
            record.resumed = u.record.resumed;
            record.resumed.push(ResumePoint {
                at: now.to_rfc3339(),
                samples: u.samples.len(),
            });
            record.wall_seconds = u.record.wall_seconds;
            record.prompt_tokens = u.record.prompt_tokens;
            eprintln!(
                "Resuming {}: {} of {total} samples already finished",
                dir.display(),
                u.samples.len()
            );
            (u.samples, u.record.models)
        }
        None => {
            // A fresh start: nothing of an older partial file may survive.
            File::create(&partial)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            (Vec::new(), Vec::new())
        }
    };
    record::write_config(&dir, &record)?;
    let examples = examples(&tasks, &selectors, &shots, cfg.seed);
    record::write_examples(&dir, &examples)?;

    let done = Done::of(&samples);
    bar.set_position(done.len() as u64);
    let mut out = BufWriter::new(
        fs::OpenOptions::new()
            .append(true)
            .open(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?,
    );
    let cache = cfg.cache.as_deref().map(RequestCache::open).transpose()?;
    let mut models: Vec<ModelInfo> = Vec::new();
    let clock = Instant::now();
    // Seconds of this session plus those of the sessions before it.
    let before = record.wall_seconds.unwrap_or(0.0);
    let elapsed = || Some(before + clock.elapsed().as_secs_f64());
    let mut saved = Instant::now();
    let stopped = || cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
    for m in &resolved {
        let finished = samples.iter().filter(|s| s.model == m.name()).count();
        if let Some(info) = earlier_models.iter().find(|i| i.name == m.name())
            && finished == per_model
        {
            models.push(info.clone());
            continue;
        }
        if stopped() {
            record.wall_seconds = elapsed();
            record::write_config(&dir, &record)?;
            return Err(Interrupted {
                dir,
                samples: samples.len(),
            }
            .into());
        }
        bar.set_message(format!("loading {}", m.name()));
        let mut model: Box<dyn Backend> = match m {
            Source::Local(m) => {
                let loaded =
                    CandleBackend::load_on(&m.path, cfg.weights, m.sha256.as_deref(), cfg.device);
                // Errors name the path; a name or hub reference is worth adding.
                let loaded = if Path::new(&m.reference) == m.path {
                    loaded
                } else {
                    loaded.with_context(|| format!("--models {}", m.reference))
                };
                Box::new(
                    loaded?
                        .named(&m.name(), &m.reference)
                        .with_kv_cache_mb(cfg.kv_cache_mb)
                        .with_batch_docs(cfg.batch_docs),
                )
            }
            Source::Server(e) => {
                Box::new(OpenAiBackend::connect(e.clone(), cfg.server.clone()).context("--models")?)
            }
        };
        let mut backend = Cached::new(model.as_mut(), cache.as_ref());
        models.push(backend.info().clone());
        record.models = models.clone();
        record::write_config(&dir, &record)?;
        let mut result = Ok(());
        for selector in &selectors {
            bar.set_message(format!(
                "{} / {}",
                backend.info().name,
                selector.task().name
            ));
            let plan = Plan {
                shots: &shots,
                seeds: p.seed_list(cfg.seed),
                permutations: p.permutations,
                demo_labels: &p.demo_labels,
                limit: cfg.limit,
                chat: p.chat,
                shard: cfg.shard,
                done: Some(&done),
            };
            result = evaluate_task(&mut backend, selector, &plan, &mut |s| {
                // One flushed line per sample: a killed run loses at most the one being written.
                serde_json::to_writer(&mut out, &s)?;
                out.write_all(b"\n")?;
                out.flush()
                    .with_context(|| format!("cannot write {}", partial.display()))?;
                samples.push(s);
                bar.inc(1);
                if saved.elapsed() > Duration::from_secs(30) {
                    record.wall_seconds = elapsed();
                    record::write_config(&dir, &record)?;
                    saved = Instant::now();
                }
                if stopped() {
                    return Err(Interrupted {
                        dir: dir.clone(),
                        samples: samples.len(),
                    }
                    .into());
                }
                Ok(())
            });
            if result.is_err() {
                break;
            }
        }
        let (reused, computed) = backend.token_counts();
        record::add_prompt_tokens(
            &mut record.prompt_tokens,
            record::PromptTokens {
                model: backend.info().name.clone(),
                computed,
                reused,
                requests: backend.counts,
            },
        );
        if let Err(e) = result {
            bar.finish_and_clear();
            record.wall_seconds = elapsed();
            record::write_config(&dir, &record)?;
            if e.is::<Interrupted>() {
                return Err(e);
            }
            bail!(
                "{e:#}\nThe run stopped; {} in {}. Run the same command again to resume it.",
                match samples.len() {
                    0 => "no sample was finished".to_string(),
                    n => format!("its {n} finished samples are kept"),
                },
                dir.display()
            );
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
    record.wall_seconds = elapsed();
    record.models = models.clone();
    record.complete = true;
    record::write_config(&dir, &record)?;
    let input = ReportInput {
        tasks: tasks.iter().map(TaskMeta::of).collect(),
        models,
        samples,
        examples,
        runs: vec![(dir.clone(), record.clone())],
        notes: Vec::new(),
        groups: cfg.groups.clone(),
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

/// One selector per task; loads the sentence encoder first when a task samples by `knn`, and
/// rejects impossible settings before any model loads.
pub fn selectors<'t>(
    tasks: &'t [Task],
    protocol: &Protocol,
    encoder: Option<&Path>,
    limit: Option<usize>,
) -> Result<Vec<Selector<'t>>> {
    let sampler_of = |t: &Task| protocol.sampler.unwrap_or(t.sampler);
    let encoder = if tasks.iter().any(|t| sampler_of(t) == Sampler::Knn) {
        let dir = encoder.unwrap_or(Path::new(crate::encoder::DEFAULT_DIR));
        Some(crate::encoder::Encoder::load(dir).context("--sampler knn")?)
    } else {
        None
    };
    tasks
        .iter()
        .map(|t| {
            sampler::check_labels(t, &protocol.demo_labels)?;
            let embeddings = match (&encoder, sampler_of(t)) {
                (Some(e), Sampler::Knn) => {
                    let n = limit.map_or(t.test.len(), |l| l.min(t.test.len()));
                    Some(
                        e.embed_task(t, n)
                            .with_context(|| format!("task `{}`: embeddings", t.name))?,
                    )
                }
                _ => None,
            };
            Selector::new(
                t,
                sampler_of(t),
                protocol.demo_order.unwrap_or(t.demo_order),
                embeddings,
            )
        })
        .collect()
}

/// The prompt of each task's first test doc at each K under the first seed, as reports show it
/// (before fitting to a model's context, which may drop demonstrations).
fn examples(tasks: &[Task], selectors: &[Selector], shots: &[usize], seed: u64) -> Vec<Example> {
    let k_max = shots.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for (t, sel) in tasks.iter().zip(selectors) {
        let Some(item) = t.test.first() else { continue };
        let ranking = sel.ranking(item, seed, k_max);
        for &k in shots {
            let demos = sel.demos(&ranking, k, item, seed, 0, DemoLabels::Gold);
            out.push(Example {
                task: t.name.clone(),
                k,
                doc_id: item.id,
                prompt: prompt::build(t, item, &demos),
            });
        }
    }
    out
}

/// First 16 hex digits of the sha256 of `s`.
pub fn short_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..16].to_string()
}

fn run_key(cfg: &RunConfig, tasks: &[Task], shots: &[usize]) -> String {
    let t: Vec<&str> = tasks.iter().map(|t| t.hash.as_str()).collect();
    let key = format!(
        "{t:?}|{:?}|{shots:?}|{}|{:?}|{:?}|{:?}|{:?}",
        cfg.models, cfg.seed, cfg.limit, cfg.weights, cfg.protocol, cfg.encoder
    );
    // A GPU's answers round differently: never resume a CPU run on it (CPU keys stay as before).
    match cfg.device {
        DeviceChoice::Cpu => key,
        gpu => format!("{key}|{gpu}"),
    }
}
