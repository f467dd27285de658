//! A run: tasks × models × shot counts → samples, summary, charts in a run folder.
//!
//! Samples stream to `samples.jsonl.partial` as they finish and are renamed only when the run is
//! complete, so an interrupted run never leaves a result that looks whole, and the same command
//! started again resumes it (`resume.rs`).

mod folder;
mod key;
mod score;
mod setup;
pub mod shots;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use crate::backend::candle::{DeviceChoice, WeightsChoice};
use crate::backend::http;
use crate::models::{HubOptions, ModelsFile};
use crate::shard::Shard;

pub use crate::record::{PromptFlags, Protocol};
pub use setup::selectors;

/// Set once a run's folder is open: before that a run has written nothing, so a signal may stop
/// it at once (loading tasks, rendering templates, resolving models) instead of waiting for a
/// batch boundary that has not come.
static WRITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a run in this process has opened its folder (see [`WRITING`]).
pub fn writing() -> bool {
    WRITING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Everything a run needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub tasks: Vec<crate::task::include::TaskRef>,
    /// Tags named on `--tasks`, reported as group means besides their tasks.
    pub groups: Vec<crate::task::discover::Group>,
    /// Model references (`.gguf` path, checkpoint folder, models-file name, `hf:ORG/REPO[/FILE]`).
    pub models: Vec<String>,
    /// The models file names resolve through.
    pub models_file: Option<ModelsFile>,
    pub hub: HubOptions,
    pub shots: Vec<usize>,
    /// `--shots task`: each task at its own K (`num_fewshot`, 0 where it has none); `shots` is
    /// then empty.
    pub task_shots: bool,
    pub limit: Option<usize>,
    /// The first seed; `--seeds N` runs seeds `seed .. seed + N`.
    pub seed: u64,
    /// The demonstration protocol besides the first seed.
    pub protocol: Protocol,
    /// Budget of the prompt-prefix KV cache in MiB (`None`: an eighth of the memory available
    /// when a model loads, see [`crate::backend::candle::default_kv_cache_mb`]).
    pub kv_cache_mb: Option<usize>,
    /// Docs scored together by in-process models.
    pub batch_docs: usize,
    pub threads: Option<usize>,
    pub output: Option<PathBuf>,
    pub results_root: PathBuf,
    pub data_dir: Option<PathBuf>,
    /// `--allow-python`: the Python that runs lm-eval task files' `!function` hooks.
    pub python: Option<PathBuf>,
    pub weights: WeightsChoice,
    /// Where in-process models run.
    pub device: DeviceChoice,
    /// `--shard I/N`: evaluate only that share of each task's docs.
    pub shard: Option<Shard>,
    /// The persistent request cache (`None`: `--no-cache`).
    pub cache: Option<PathBuf>,
    /// How to talk to models behind APIs (every backend of [`crate::backend::SCHEMES`]).
    pub server: http::Options,
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
    let shots = setup::check_command(cfg)?;
    let tasks = setup::load_tasks(cfg)?;
    let selectors = selectors(&tasks, &cfg.protocol, cfg.limit)?;
    setup::check_task_names(&tasks)?;
    let shots = setup::task_shots(cfg, &tasks, &shots);
    let notes = setup::small_pools(&tasks, &shots);
    for note in notes
        .iter()
        .chain(&setup::multiturn_cost(&cfg.protocol, &shots))
        .chain(&setup::unformulated(&cfg.protocol, &tasks))
    {
        eprintln!("{note}");
    }
    // Every reference resolves (and downloads) before any work starts.
    let sources = setup::resolve_models(cfg)?;
    setup::check_chat_models(&sources, &tasks)?;
    let run_id = key::run_id(cfg, &tasks, &setup::all_shots(&shots));
    let (mut folder, done) =
        folder::RunFolder::open(cfg, &tasks, &selectors, &shots, run_id, sources.len())?;
    let cache = cfg
        .cache
        .as_deref()
        .map(crate::cache::RequestCache::open)
        .transpose()?;
    for source in &sources {
        score::score_model(
            cfg,
            source,
            &selectors,
            &shots,
            &done,
            cache.as_ref(),
            &mut folder,
        )?;
    }
    folder.finish(cfg, &tasks)
}

#[cfg(test)]
impl RunConfig {
    /// A command with every setting at its default, for unit tests.
    pub(crate) fn for_tests() -> Self {
        RunConfig {
            tasks: Vec::new(),
            groups: Vec::new(),
            models: Vec::new(),
            models_file: None,
            hub: HubOptions {
                endpoint: String::new(),
                cache_dir: PathBuf::new(),
                offline: true,
                token: None,
            },
            shots: vec![0],
            task_shots: false,
            limit: None,
            seed: 1234,
            protocol: Protocol::default(),
            kv_cache_mb: Some(256),
            batch_docs: 8,
            threads: None,
            output: None,
            results_root: PathBuf::from("results"),
            data_dir: None,
            python: None,
            weights: WeightsChoice::Auto,
            device: DeviceChoice::Cpu,
            shard: None,
            cache: None,
            server: http::Options::default(),
            stop: None,
        }
    }
}
