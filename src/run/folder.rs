//! The run folder while a run writes it: found again (resume) or created, samples appended one
//! flushed line at a time, `config.json` kept current, and at the end renamed into place and
//! reported. Nothing here decides what is scored.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Interrupted, RunConfig, RunOutcome, setup};
use crate::backend::ModelInfo;
use crate::evaluate::{doc_count, planned_docs};
use crate::record::{self, Example, ResumePoint, RunRecord, Sample, TaskRecord};
use crate::report::{self, ReportInput, TaskMeta};
use crate::resume::{self, Done};
use crate::sampler::Selector;
use crate::task::Task;

/// A run folder being written.
pub(super) struct RunFolder {
    pub dir: PathBuf,
    record: RunRecord,
    partial: PathBuf,
    out: BufWriter<File>,
    /// Every finished sample, earlier sessions' first.
    pub samples: Vec<Sample>,
    /// Models an earlier session of this run loaded.
    earlier_models: Vec<ModelInfo>,
    /// Models of this run so far, in command order.
    models: Vec<ModelInfo>,
    examples: Vec<Example>,
    pub bar: ProgressBar,
    clock: Instant,
    /// Wall seconds of the sessions before this one.
    before: f64,
    saved: Instant,
    /// Samples each model scores.
    pub per_model: usize,
    /// Held while the folder is written, so a second run on it stops instead of appending.
    _lock: File,
}

/// The lock file in a run folder.
const LOCK: &str = ".icl-eval.lock";

/// Takes the folder's exclusive lock (released when the process ends, however it ends) and
/// records this process in it; a folder another run is writing is refused, naming that run.
fn lock(dir: &Path) -> Result<File> {
    use std::io::{Read, Seek};
    let path = dir.join(LOCK);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            anyhow::bail!(
                "--output: {} is being written by another icl-eval run ({}); wait for it to \
                 finish, or choose another folder",
                dir.display(),
                holder.trim()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    f.set_len(0)?;
    f.rewind()?;
    writeln!(
        f,
        "process {} since {}",
        std::process::id(),
        chrono::Utc::now().to_rfc3339()
    )?;
    Ok(f)
}

impl RunFolder {
    /// Resumes the unfinished folder of the same command or starts a fresh one; writes its
    /// `config.json` (`complete: false`) and `examples.json`. Also returns the cells already done.
    pub fn open(
        cfg: &RunConfig,
        tasks: &[Task],
        selectors: &[Selector],
        shots: &[Vec<usize>],
        run_id: String,
        n_models: usize,
    ) -> Result<(Self, Done)> {
        let now = chrono::Utc::now();
        let unfinished =
            resume::locate(cfg.output.as_deref(), &cfg.results_root, &run_id, cfg.shard)?;
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
        let lock = lock(&dir)?;
        super::WRITING.store(true, std::sync::atomic::Ordering::SeqCst);
        let cells: usize = tasks
            .iter()
            .zip(shots)
            .map(|(t, k)| doc_count(t, cfg.limit, cfg.shard) * k.len())
            .sum();
        let p = &cfg.protocol;
        let per_model = cells * p.seeds * p.permutations * p.demo_labels.len();
        let total = (per_model * n_models) as u64;
        let mut record = new_record(cfg, tasks, selectors, shots, run_id, &now);
        let partial = dir.join(resume::PARTIAL);
        // Models scored in an earlier session keep their records; their work is not repeated.
        let (samples, earlier_models) = match unfinished {
            Some(u) => {
                check_plan(&u.samples, cfg, tasks, shots, &partial)?;
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
        let examples = setup::examples(tasks, selectors, shots, cfg.seed);
        record::write_examples(&dir, &examples)?;
        let done = Done::of(&samples);
        let bar = progress_bar(total);
        bar.set_position(done.len() as u64);
        let out = BufWriter::new(
            fs::OpenOptions::new()
                .append(true)
                .open(&partial)
                .with_context(|| format!("cannot write {}", partial.display()))?,
        );
        let folder = RunFolder {
            _lock: lock,
            dir,
            before: record.wall_seconds.unwrap_or(0.0),
            record,
            partial,
            out,
            samples,
            earlier_models,
            models: Vec::new(),
            examples,
            bar,
            clock: Instant::now(),
            saved: Instant::now(),
            per_model,
        };
        Ok((folder, done))
    }

    /// Seconds of this session plus those of the sessions before it.
    fn elapsed(&self) -> Option<f64> {
        Some(self.before + self.clock.elapsed().as_secs_f64())
    }

    /// Writes `config.json` with the time spent so far.
    pub fn save(&mut self) -> Result<()> {
        self.record.wall_seconds = self.elapsed();
        record::write_config(&self.dir, &self.record)
    }

    /// The error that stops the run on request, its finished samples kept.
    pub fn interrupted(&self) -> Interrupted {
        Interrupted {
            dir: self.dir.clone(),
            samples: self.samples.len(),
        }
    }

    /// An earlier session's record of `name`, when that session scored all its samples.
    pub fn finished_model(&self, name: &str) -> Option<&ModelInfo> {
        let finished = self.samples.iter().filter(|s| s.model == name).count();
        self.earlier_models
            .iter()
            .find(|i| i.name == name)
            .filter(|_| finished == self.per_model)
    }

    /// Records a model of the run; `write` also saves `config.json` (a model about to score).
    pub fn add_model(&mut self, info: ModelInfo, write: bool) -> Result<()> {
        self.models.push(info);
        if write {
            self.record.models = self.models.clone();
            record::write_config(&self.dir, &self.record)?;
        }
        Ok(())
    }

    /// Appends a finished sample: one flushed line, so a killed run loses at most the one being
    /// written; `config.json` is refreshed every 30 s.
    pub fn push(&mut self, s: Sample, cfg: &RunConfig) -> Result<()> {
        serde_json::to_writer(&mut self.out, &s)?;
        self.out.write_all(b"\n")?;
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.partial.display()))?;
        self.samples.push(s);
        self.bar.inc(1);
        if self.saved.elapsed() > Duration::from_secs(30) {
            self.save()?;
            self.saved = Instant::now();
        }
        if stopped(cfg) {
            return Err(self.interrupted().into());
        }
        Ok(())
    }

    /// Adds a model's prompt-token counts to the record.
    pub fn add_prompt_tokens(&mut self, tokens: record::PromptTokens) {
        record::add_prompt_tokens(&mut self.record.prompt_tokens, tokens);
    }

    /// Saves what is finished after a model failed or was stopped, and says how to go on.
    pub fn fail(&mut self, e: anyhow::Error) -> anyhow::Error {
        self.bar.finish_and_clear();
        if let Err(save) = self.save() {
            return save;
        }
        if e.is::<Interrupted>() {
            return e;
        }
        anyhow::anyhow!(
            "{e:#}\nThe run stopped; {} in {}. Run the same command again to resume it.",
            match self.samples.len() {
                0 => "no sample was finished".to_string(),
                n => format!("its {n} finished samples are kept"),
            },
            self.dir.display()
        )
    }

    /// Completes the folder: samples renamed into place, the report written (each file through a
    /// temporary file and a rename), then `config.json` marked complete — last, so a run killed
    /// on the way is never marked finished with missing outputs (a failing report never costs
    /// the scored samples).
    pub fn finish(mut self, cfg: &RunConfig, tasks: &[Task]) -> Result<RunOutcome> {
        self.bar.finish_and_clear();
        let elapsed = self.elapsed();
        self.out
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .with_context(|| format!("cannot write {}", self.partial.display()))?;
        fs::rename(&self.partial, self.dir.join("samples.jsonl"))?;
        self.record.wall_seconds = elapsed;
        self.record.models = self.models.clone();
        record::write_config(&self.dir, &self.record)?;
        let dir = self.dir;
        let input = ReportInput {
            tasks: tasks.iter().map(TaskMeta::of).collect(),
            models: self.models,
            samples: self.samples,
            examples: self.examples,
            runs: vec![(dir.clone(), self.record.clone())],
            notes: Vec::new(),
            groups: cfg.groups.clone(),
            python: cfg.python.clone(),
        };
        let report = report::write_report(&dir, &input).with_context(|| {
            format!(
                "the run finished and its samples are in {}/samples.jsonl, but its report could \
                 not be written; fix the cause and rebuild it with `icl-eval report {}`",
                dir.display(),
                dir.display()
            )
        })?;
        let mut record = self.record;
        record.complete = true;
        record::write_config(&dir, &record)?;
        Ok(RunOutcome {
            dir,
            summary: report.summary,
            summary_markdown: report.markdown,
            charts: report.charts,
        })
    }
}

/// Refuses a partial file holding a sample twice or one this run would not score (a task, doc,
/// K, seed, label study or ordering outside its plan): resuming it would count such rows in the
/// summary as if they were the run's.
fn check_plan(
    samples: &[Sample],
    cfg: &RunConfig,
    tasks: &[Task],
    shots: &[Vec<usize>],
    partial: &Path,
) -> Result<()> {
    let p = &cfg.protocol;
    let seeds = p.seed_list(cfg.seed);
    // Per task: the docs it scores and its K's, gathered once.
    let plans: Vec<(&str, HashSet<usize>, &[usize])> = tasks
        .iter()
        .zip(shots)
        .map(|(t, ks)| {
            let docs = planned_docs(t, cfg.limit, cfg.shard)
                .map(|i| i.id)
                .collect();
            (t.name.as_str(), docs, ks.as_slice())
        })
        .collect();
    let mut seen = Done::default();
    for (line, s) in samples.iter().enumerate() {
        let in_plan = plans.iter().any(|(name, docs, ks)| {
            *name == s.task && docs.contains(&s.doc_id) && ks.contains(&s.k)
        }) && seeds.contains(&s.seed)
            && p.demo_labels.contains(&s.demo_labels)
            && s.permutation < p.permutations;
        let why = if !in_plan {
            "is not a cell of this run (task, doc, K, seed, labels or ordering)"
        } else if !seen.insert(s) {
            "repeats an earlier sample"
        } else {
            continue;
        };
        anyhow::bail!(
            "{}: line {} {why}; the folder was changed by hand — delete it to start the run over",
            partial.display(),
            line + 1
        );
    }
    Ok(())
}

/// Whether Ctrl-C asked the run to stop.
pub(super) fn stopped(cfg: &RunConfig) -> bool {
    cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:30} [{bar:30}] {pos}/{len} samples, {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// `config.json` of a run just started (`complete: false`).
fn new_record(
    cfg: &RunConfig,
    tasks: &[Task],
    selectors: &[Selector],
    shots: &[Vec<usize>],
    run_id: String,
    now: &chrono::DateTime<chrono::Utc>,
) -> RunRecord {
    let p = &cfg.protocol;
    RunRecord {
        complete: false,
        run_id,
        shard: cfg.shard,
        resumed: Vec::new(),
        groups: cfg.groups.clone(),
        tasks: tasks
            .iter()
            .zip(selectors)
            .map(|(t, s)| TaskRecord::of(t, s.sampler(), s.order()))
            .collect(),
        models: Vec::new(),
        shots: setup::all_shots(shots),
        task_shots: cfg.task_shots,
        seed: cfg.seed,
        seeds: p.seed_list(cfg.seed),
        permutations: p.permutations,
        demo_labels: p.demo_labels.clone(),
        chat: p.flags.chat(),
        protocol: p.clone(),
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
    }
}
