//! `TaskSpec`: the serde mirror of a task YAML. Unknown fields are errors; validation happens in `Task`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A task YAML file, field for field (lm-evaluation-harness vocabulary where it applies).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Task name, used on the command line and in results.
    pub task: String,
    /// Jinja text rendered before the demonstrations (no delimiter is added after it).
    #[serde(default)]
    pub description: String,
    pub dataset: DatasetSpec,
    /// Split whose docs are evaluated.
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// Split demonstrations are drawn from; when equal to `test_split` the test doc itself is excluded.
    pub fewshot_split: Option<String>,
    /// Jinja template of the input, or `file:NAME` for `prompts/NAME`.
    pub doc_to_text: String,
    /// Jinja template of the answer: the gold text, or for `multiple_choice` a choice index or choice text.
    pub doc_to_target: String,
    /// `multiple_choice` and `multiple_input` only: a list of Jinja templates, or one
    /// `{{ expression }}` yielding a list.
    pub doc_to_choice: Option<ChoiceSpec>,
    #[serde(default = "default_target_delimiter")]
    pub target_delimiter: String,
    #[serde(default = "default_fewshot_delimiter")]
    pub fewshot_delimiter: String,
    pub output_type: OutputType,
    /// `generate_until` only.
    pub generation: Option<GenerationSpec>,
    /// Metrics to report; the first is the headline metric of charts. Defaults per output type.
    pub metrics: Option<Vec<String>>,
    /// How demonstrations are chosen (overridden by `--sampler`).
    #[serde(default)]
    pub fewshot: FewshotSpec,
    /// Names that select this task with others: `--tasks TAG` runs every task tagged TAG.
    pub tag: Option<Tags>,
    /// Steps applied to every doc after loading (rename, map, extract, split).
    #[serde(default)]
    pub process_docs: Vec<super::process::Step>,
    /// How `exact_match` compares (lm-eval's options of that metric).
    pub exact_match: Option<ExactMatchSpec>,
    /// `generate_until`: lm-eval's answer-extraction pipelines (`regex`, `take_first`, …); each
    /// metric is reported per pipeline as `metric,NAME`.
    #[serde(default)]
    pub filter_list: Vec<super::filter::PipelineSpec>,
    /// `generate_until`: generations per prompt (lm-eval's `repeats`), which filters such as
    /// `majority_vote` read; sampled ones differ by their seeds.
    #[serde(default = "default_repeats")]
    pub repeats: usize,
    /// Free-form facts about the task; `metadata.version` (lm-eval's task version) is recorded
    /// with every run's results.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_yaml::Value>,
    /// lm-eval's `gen_prefix`: a template that starts the answer, after the input (and the
    /// target delimiter where neither side has whitespace); plain-text prompts.
    pub gen_prefix: Option<String>,
    /// lm-eval's `!function` hooks, run through the user's Python only with `--allow-python`.
    pub python: Option<super::hooks::HookSpec>,
    /// The task's own K (lm-eval's `num_fewshot`), which `--shots task` runs; `--shots` with
    /// numbers runs those instead.
    pub num_fewshot: Option<usize>,
    /// `multiple_choice`: `cloze` (each choice's text scored, the default) or `mcqa` (the choices
    /// lettered in the prompt, the letter scored); `--format` overrides it.
    #[serde(default)]
    pub format: super::Formulation,
}

/// `exact_match:` — lm-eval's (Hugging Face `evaluate`'s) options of the metric, applied to the
/// generation and the target alike, in this order: regexes removed, case folded, punctuation
/// removed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactMatchSpec {
    #[serde(default)]
    pub regexes_to_ignore: Vec<String>,
    #[serde(default)]
    pub ignore_case: bool,
    #[serde(default)]
    pub ignore_punctuation: bool,
}

/// `tag:` — one name or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Tags {
    One(String),
    Many(Vec<String>),
}

impl Tags {
    /// The names, as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Tags::One(t) => vec![t],
            Tags::Many(v) => v,
        }
    }
}

/// `fewshot:` — demonstration selection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewshotSpec {
    /// `random` (default), `fixed`, `balanced`, `first_n`, `bm25` or `knn`.
    #[serde(default)]
    pub sampler: crate::task::fewshot::Sampler,
    /// For `bm25` and `knn`: `nearest_last` (default) or `nearest_first`.
    #[serde(default)]
    pub order: crate::task::fewshot::DemoOrder,
    /// Demonstration docs written out here (lm-eval's `fewshot_config.samples`, e.g. GSM8K's
    /// chain-of-thought exemplars) instead of a dataset split; rendered by the task's templates.
    pub samples: Option<Vec<serde_json::Value>>,
    /// The demonstrations' own input template (lm-eval's `fewshot_config.doc_to_text`).
    pub doc_to_text: Option<String>,
    /// The demonstrations' own answer template (lm-eval's `fewshot_config.doc_to_target`).
    pub doc_to_target: Option<String>,
}

/// The split name inline `fewshot.samples` are known by in messages and records.
pub const INLINE_SAMPLES: &str = "fewshot.samples";

/// Where docs come from: one file, one file per split, or a built-in generator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// One file holding every split (see `split_column`); relative to the YAML, or `${DATA_DIR}/...`.
    pub path: Option<String>,
    /// One file per split name.
    pub files: Option<BTreeMap<String, String>>,
    /// `jsonl`, `json` (an array of objects), `csv`, `tsv`, `parquet`, `regex` or `lines`; inferred
    /// from the extension (after `.gz` / `.bz2`) when absent.
    pub format: Option<String>,
    /// csv/tsv without a header row: the column names. `lines`: the field of each line of a record.
    pub columns: Option<Vec<String>>,
    /// Fields read from other files, one non-empty line per doc in order (e.g. a labels file).
    pub column_files: Option<BTreeMap<String, String>>,
    /// For `format: regex`: a pattern with named groups, matched against every non-empty line.
    pub pattern: Option<String>,
    /// For a single file: the column naming each row's split. Without it (and `split_rows`) the
    /// file is one split, `all`.
    pub split_column: Option<String>,
    /// For a single file: splits as half-open row ranges, e.g. `{test: [0, 6000], train: [6000, 7600]}`
    /// (rows counted from 0, header excluded), to hold apart demonstrations from a test-only file.
    pub split_rows: Option<BTreeMap<String, [usize; 2]>>,
    /// A built-in generator instead of files.
    pub generator: Option<GeneratorSpec>,
    /// A Hugging Face Hub dataset instead of files (lm-eval's `dataset_path`), read from the
    /// Hub's parquet conversion into the standard cache; its splits are the Hub's.
    pub hub: Option<String>,
    /// The Hub dataset's configuration (lm-eval's `dataset_name`; default `default`).
    pub name: Option<String>,
    /// The revision (branch, tag or commit) a Hub dataset's own `files` are read at (lm-eval's
    /// `dataset_kwargs.revision`); default `main`.
    pub revision: Option<String>,
}

/// A seeded built-in data generator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// Generator name, e.g. `two_digit_addition`.
    pub name: String,
    /// Docs per split name, e.g. `{train: 200, test: 1000}`.
    pub splits: BTreeMap<String, usize>,
    /// Seed of the data (not of the demonstration draw).
    #[serde(default)]
    pub seed: u64,
}

/// `doc_to_choice`: a list of templates or one expression.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChoiceSpec {
    List(Vec<String>),
    Expression(String),
}

pub use crate::metric::OutputType;

/// Generation settings for `generate_until`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    /// Stop sequences; defaults to the few-shot delimiter.
    pub until: Option<Vec<String>>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Sample instead of decoding greedily (lm-eval's `do_sample`), seeded per request.
    #[serde(default)]
    pub do_sample: bool,
    /// With `do_sample`: the softmax temperature (default 1.0; 0 means greedy, as in lm-eval).
    pub temperature: Option<f64>,
    /// With `do_sample`: nucleus sampling's probability mass (default 1.0, no cut).
    pub top_p: Option<f64>,
}

fn default_test_split() -> String {
    "test".into()
}
fn default_target_delimiter() -> String {
    " ".into()
}
fn default_fewshot_delimiter() -> String {
    "\n\n".into()
}
fn default_repeats() -> usize {
    1
}
fn default_max_tokens() -> usize {
    32
}
