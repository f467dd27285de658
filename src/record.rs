//! The files of a run folder — `config.json`, `samples.jsonl`, `examples.json` — as types, written and
//! read only here, so `run` and `report` agree on them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::backend::ModelInfo;
use crate::sampler::{DemoLabels, DemoOrder, Sampler};
use crate::task::{Answer, OutputType, Reported, Task};

/// The settings that change what prompts say, beside the study axes (seeds, orderings, labels):
/// one struct that `run` and `prompt` both flatten into their flags, that `config.json` records
/// whole, so `icl-eval prompt` shows the exact prompt of any run. A new such setting is one field.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptFlags {
    /// How demonstrations are chosen, overriding each task's `fewshot.sampler`.
    #[arg(long, value_enum)]
    pub sampler: Option<Sampler>,
    /// Order of the demonstrations, overriding each task's `fewshot.order`: bm25 / knn's nearest
    /// last or first, or grouped by label (multiple choice).
    #[arg(long, value_enum)]
    pub demo_order: Option<DemoOrder>,
    /// Sentence-encoder folder for --sampler knn (default: models/all-minilm-l6-v2).
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
    /// Render prompts through each model's own chat template (tokenizer.chat_template), the
    /// demonstrations folded into one user turn.
    #[arg(long)]
    pub chat_template: bool,
    /// How multiple-choice tasks ask, overriding each task's `format:`: cloze (each choice's
    /// text scored) or mcqa (the choices lettered in the prompt, the letter scored).
    #[arg(long, value_enum)]
    pub format: Option<crate::task::Formulation>,
    /// With --chat-template: each demonstration a user turn and an assistant turn.
    #[arg(long)]
    pub fewshot_as_multiturn: bool,
}

impl PromptFlags {
    /// Refuses `--fewshot-as-multiturn` where there are no turns to split demonstrations into:
    /// without `--chat-template`, unless every model is a chat endpoint (`chat_endpoints`).
    pub fn check(&self, chat_endpoints: bool) -> Result<()> {
        if self.fewshot_as_multiturn && !self.chat_template && !chat_endpoints {
            bail!(
                "--fewshot-as-multiturn: needs --chat-template (demonstrations as turns of each \
                 model's chat template), unless every model is a chat endpoint (openai-chat:)"
            );
        }
        Ok(())
    }

    /// How prompts go through a chat template (`None`: plain text).
    pub fn chat(&self) -> Option<ChatMode> {
        self.chat_template.then_some(if self.fewshot_as_multiturn {
            ChatMode::Multiturn
        } else {
            ChatMode::Folded
        })
    }
}

/// How demonstrations vary within a run: seeds, orderings, label studies, and the prompt flags.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Protocol {
    /// Independent demonstration draws (`--seeds N`), at least 1.
    pub seeds: usize,
    /// Orderings of each demonstration set (`--permutations N`), at least 1; the first is the
    /// sampler's own order.
    pub permutations: usize,
    /// Label studies (`--demo-labels`), at least one.
    pub demo_labels: Vec<DemoLabels>,
    /// Everything else that changes what the prompts say.
    pub flags: PromptFlags,
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            seeds: 1,
            permutations: 1,
            demo_labels: vec![DemoLabels::Gold],
            flags: PromptFlags::default(),
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

/// How demonstrations enter a chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatMode {
    /// Description, demonstrations and query in one user turn.
    Folded,
    /// Each demonstration a user turn and an assistant turn (`--fewshot-as-multiturn`).
    Multiturn,
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
    /// How the task asked (multiple choice: cloze or mcqa); written only when mcqa.
    #[serde(default, skip_serializing_if = "crate::task::Formulation::is_cloze")]
    pub format: crate::task::Formulation,
    /// Demonstrations used after fitting the context (absent when the doc was skipped).
    pub k_effective: Option<usize>,
    /// When the context cut demonstrations: the few-shot doc ids of those kept, in prompt order.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kept_demos: Option<Vec<usize>>,
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
    /// With `repeats` > 1: every generation, the first being `generated`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generations: Option<Vec<String>>,
    /// Generation with `filter_list`: each filter's answer, by filter name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub filtered: Option<BTreeMap<String, String>>,
    /// The answer picked by the headline metric (choice text, generated text trimmed, or the
    /// first filter's answer).
    pub prediction: Option<String>,
    pub gold: String,
    /// Whether the headline metric counts the doc as correct.
    pub correct: Option<bool>,
    /// Metric name → 1.0 / 0.0.
    pub metrics: BTreeMap<String, f64>,
    /// Corpus metrics (`bleu`, `chrf`, `f1`, `mcc`): this doc's sufficient statistics by reported
    /// name; a cell's score comes from its docs' statistics together (`corpus/`), and the
    /// per-doc value in `metrics` is this doc scored alone.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub stats: BTreeMap<String, Vec<f64>>,
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
            format: Default::default(),
            k_effective: None,
            kept_demos: None,
            prompt_hash: None,
            tokens: None,
            logprobs: None,
            calibration: None,
            unconditional: None,
            generated: None,
            generations: None,
            filtered: None,
            prediction: None,
            gold: gold.into(),
            correct: None,
            metrics: BTreeMap::new(),
            stats: BTreeMap::new(),
            skipped: None,
        }
    }
}

/// A task as `config.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub name: String,
    pub path: String,
    /// sha256 over the YAML, its templates and its data.
    pub hash: String,
    pub output_type: OutputType,
    pub metrics: Vec<String>,
    pub test_docs: usize,
    pub fewshot_docs: usize,
    pub fewshot_from_test_split: bool,
    /// Accuracy of a uniform random guess (multiple choice): mean of 1 / number of choices.
    #[serde(default)]
    pub chance: Option<f64>,
    /// The demonstration sampler the run used for this task.
    #[serde(default)]
    pub sampler: Sampler,
    /// The order the demonstrations were shown in (`fewshot.order`, `--demo-order`).
    #[serde(default)]
    pub demo_order: crate::sampler::DemoOrder,
    /// The label set, when every doc has the same choices (classification).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// The data files read (Hub files with the conversion's commit) and their sha256.
    #[serde(default)]
    pub data: Vec<crate::task::DataFile>,
    /// The task file's `metadata.version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The Python hooks run to build the docs (`--allow-python`); empty when none ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python: Vec<String>,
    /// Python aggregations of corpus metrics (metric → `FILE.py:function`), run again whenever the
    /// report is rebuilt with `--allow-python`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aggregations: BTreeMap<String, String>,
    /// How a multiple-choice task asked (`format:`, `--format`); written only when mcqa.
    #[serde(default, skip_serializing_if = "crate::task::Formulation::is_cloze")]
    pub format: crate::task::Formulation,
}

impl TaskRecord {
    /// The record of a loaded task.
    pub fn of(t: &Task, sampler: Sampler, demo_order: crate::sampler::DemoOrder) -> Self {
        Self {
            name: t.name.clone(),
            path: t.source.display().to_string(),
            hash: t.hash.clone(),
            output_type: t.output_type,
            metrics: t.reported().iter().map(|m| m.name().to_string()).collect(),
            test_docs: t.test.len(),
            fewshot_docs: t.fewshot.len(),
            fewshot_from_test_split: t.fewshot_is_test,
            chance: chance(t),
            sampler,
            demo_order,
            labels: labels(t),
            data: t.data.clone(),
            version: t.version.clone(),
            python: t.python.clone(),
            aggregations: t.aggregations.clone(),
            format: t.format,
        }
    }

    /// The metrics as types (the first is the headline).
    pub fn metric_list(&self) -> Result<Vec<Reported>> {
        let list = self
            .metrics
            .iter()
            .map(|m| Reported::parse(m, self.output_type).map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("task `{}`", self.name))?;
        if list.is_empty() {
            bail!("task `{}` records no metric", self.name);
        }
        Ok(list)
    }
}

/// The choices every doc shares, if they all share one list (a classification task's labels).
pub fn labels(t: &Task) -> Option<Vec<String>> {
    let mut lists = t.test.iter().map(|i| match &i.answer {
        Answer::Choice { choices, .. } => Some(choices),
        _ => None,
    });
    let first = lists.next()??;
    lists.all(|l| l == Some(first)).then(|| first.clone())
}

/// Accuracy of a uniform random guess on a multiple-choice or multiple-input task: mean of
/// 1 / number of options.
pub fn chance(t: &Task) -> Option<f64> {
    let options = matches!(
        t.output_type,
        OutputType::MultipleChoice | OutputType::MultipleInput
    );
    (options && !t.test.is_empty()).then(|| {
        t.test
            .iter()
            .map(|i| i.options().map_or(0.0, |o| 1.0 / o.len().max(1) as f64))
            .sum::<f64>()
            / t.test.len() as f64
    })
}

/// How much prompt work one model did in a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptTokens {
    pub model: String,
    /// Tokens run through the forward pass (prompts and continuations).
    pub computed: u64,
    /// Prompt tokens whose keys and values came from the prefix cache instead.
    pub reused: u64,
    /// Requests (prompts with their continuations) computed, and answered from the request cache.
    #[serde(default)]
    pub requests: crate::cache::RequestCounts,
}

/// Adds `t` to the entry of its model in `list` (appending one when the model has none): how a
/// resumed run adds its sessions' counts, and `merge` its shards'.
pub fn add_prompt_tokens(list: &mut Vec<PromptTokens>, t: PromptTokens) {
    match list.iter_mut().find(|p| p.model == t.model) {
        Some(p) => {
            p.computed += t.computed;
            p.reused += t.reused;
            p.requests.computed += t.requests.computed;
            p.requests.cached += t.requests.cached;
        }
        None => list.push(t),
    }
}

/// A run started again after an interruption.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResumePoint {
    /// When (RFC 3339).
    pub at: String,
    /// Samples already finished then.
    pub samples: usize,
}

/// `config.json`: everything needed to reproduce and to read a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// False until every sample is written.
    pub complete: bool,
    /// Hash of everything that decides the results (tasks, models, shots, seeds, limit, protocol,
    /// weights; not the shard): equal for the shards of one run, and how a resumed run finds its
    /// folder.
    #[serde(default)]
    pub run_id: String,
    /// `--shard I/N`: this folder holds only that share of the docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shard::Shard>,
    /// Each time the run was resumed: when, and how many samples were already finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<ResumePoint>,
    /// Tags named on `--tasks` (e.g. `mmlu`), reported as group means besides their tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<crate::task::discover::Group>,
    pub tasks: Vec<TaskRecord>,
    pub models: Vec<ModelInfo>,
    pub shots: Vec<usize>,
    /// `--shots task`: each task ran at its own K (its `num_fewshot`), not every K of `shots`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub task_shots: bool,
    /// The first seed.
    pub seed: u64,
    /// Every seed of the run (`--seeds N`: `seed .. seed + N`).
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Orderings per demonstration set (`--permutations`).
    #[serde(default = "one")]
    pub permutations: usize,
    /// Label studies (`--demo-labels`).
    #[serde(default = "gold")]
    pub demo_labels: Vec<DemoLabels>,
    /// Prompts went through each model's chat template (`--chat-template`), and how.
    #[serde(default)]
    pub chat: Option<ChatMode>,
    /// Every setting that changed the prompts, whole (`icl-eval prompt` takes the same flags).
    #[serde(default)]
    pub protocol: Protocol,
    /// Per model: prompt tokens run through the model, and tokens taken from the prefix cache.
    #[serde(default)]
    pub prompt_tokens: Vec<PromptTokens>,
    pub limit: Option<usize>,
    pub threads: Option<usize>,
    pub weights: String,
    /// Where in-process models ran (`cpu`, `cuda:N`).
    #[serde(default = "cpu")]
    pub device: String,
    pub data_dir: Option<PathBuf>,
    pub icl_eval_version: String,
    pub git_commit: String,
    pub started: String,
    /// Seconds the run took; for a resumed run, the sessions' seconds added up.
    pub wall_seconds: Option<f64>,
}

/// The prompt of one doc at one K, shown in reports (before fitting to a model's context).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Example {
    pub task: String,
    pub k: usize,
    pub doc_id: usize,
    pub prompt: String,
}

/// A finished run folder, read back.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    pub record: RunRecord,
    pub samples: Vec<Sample>,
    pub examples: Vec<Example>,
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader never sees half.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `config.json`.
pub fn write_config(dir: &Path, record: &RunRecord) -> Result<()> {
    write_atomic(
        &dir.join("config.json"),
        (serde_json::to_string_pretty(record)? + "\n").as_bytes(),
    )
}

/// Writes `examples.json`.
pub fn write_examples(dir: &Path, examples: &[Example]) -> Result<()> {
    write_atomic(
        &dir.join("examples.json"),
        (serde_json::to_string_pretty(examples)? + "\n").as_bytes(),
    )
}

/// Reads a finished run folder; an unfinished or foreign folder is an error naming what is missing.
pub fn read_run(dir: &Path) -> Result<RunData> {
    let shown = dir.display();
    let config = dir.join("config.json");
    if !config.is_file() {
        bail!("{shown}: not a run folder (no config.json)");
    }
    let record: RunRecord = serde_json::from_str(
        &fs::read_to_string(&config)
            .with_context(|| format!("cannot read {}", config.display()))?,
    )
    .with_context(|| format!("{}: not an icl-eval run config", config.display()))?;
    let samples_path = dir.join("samples.jsonl");
    // `samples.jsonl` appears only once every sample is scored (renamed from the partial file);
    // `complete: true` follows the report, so a run stopped while reporting is still whole here.
    if !samples_path.is_file() {
        bail!(
            "{shown}: the run did not finish (samples.jsonl is missing); run the same command \
             again to resume it before reporting"
        );
    }
    let text = fs::read_to_string(&samples_path)
        .with_context(|| format!("cannot read {}", samples_path.display()))?;
    let samples = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Sample>(l)
                .with_context(|| format!("{}: line {}", samples_path.display(), i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let examples_path = dir.join("examples.json");
    let examples = if examples_path.is_file() {
        serde_json::from_str(&fs::read_to_string(&examples_path)?)
            .with_context(|| format!("{}: invalid", examples_path.display()))?
    } else {
        Vec::new()
    };
    Ok(RunData {
        dir: dir.to_path_buf(),
        record,
        samples,
        examples,
    })
}

fn one() -> usize {
    1
}

fn gold() -> Vec<DemoLabels> {
    vec![DemoLabels::Gold]
}

fn cpu() -> String {
    "cpu".into()
}
