//! Tasks: validated, typed, rendered once at load so bad templates and targets fail before any model runs.

pub mod dataset;
pub mod discover;
pub mod fewshot;
pub mod filter;
pub mod formulation;
pub mod generators;
pub mod hooks;
pub mod import;
pub mod include;
pub mod load;
mod problems;
pub mod process;
mod render;
pub mod spec;
mod splits;
pub mod stock;

use std::path::PathBuf;

pub use crate::metric::{Metric, OutputType};
pub use discover::{TaskSource, discover};
pub use formulation::Formulation;
pub use include::TaskRef;
pub use load::{
    LoadOptions, load_ref, load_ref_with_problems, load_task, load_task_using, load_task_with,
    load_with_problems, load_with_problems_using, load_with_problems_with,
};

/// A metric as reported: alone, or under one of the task's answer filters (`filter_list`), named
/// as lm-eval names it (`exact_match,strict-match`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reported {
    pub metric: Metric,
    name: String,
}

impl Reported {
    /// `metric` under the filter `filter` (none: the metric's own name).
    pub fn new(metric: Metric, filter: Option<&str>) -> Self {
        let name = match filter {
            Some(f) => format!("{},{f}", metric.name()),
            None => metric.name().to_string(),
        };
        Reported { metric, name }
    }

    /// The name in results (`samples.jsonl`, summaries).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses `metric` or `metric,filter`, checking the metric applies to `output_type`.
    pub fn parse(name: &str, output_type: OutputType) -> Result<Self, String> {
        let (m, filter) = match name.split_once(',') {
            Some((m, f)) => (m, Some(f)),
            None => (name, None),
        };
        Ok(Reported::new(Metric::parse(m, output_type)?, filter))
    }
}

impl From<Metric> for Reported {
    fn from(m: Metric) -> Self {
        Reported::new(m, None)
    }
}

/// Whether two texts need a delimiter between them: neither has whitespace at the join (lm-eval's
/// `requires_delimiter`).
pub fn needs_delimiter(before: &str, after: &str) -> bool {
    !before.is_empty()
        && !before.ends_with(char::is_whitespace)
        && !after.starts_with(char::is_whitespace)
}

/// The gold answer of a doc.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `multiple_choice`: the choices (without delimiter) and the index of the gold one.
    Choice { choices: Vec<String>, gold: usize },
    /// `generate_until`: the target text.
    Text(String),
    /// `multiple_input`: the inputs (each ending where the shared continuation starts), the index
    /// of the gold one, and the continuation.
    Inputs {
        inputs: Vec<String>,
        gold: usize,
        continuation: String,
    },
    /// `loglikelihood`: the continuation whose greedy match is scored.
    Continuation(String),
    /// `loglikelihood_rolling`: the document scored whole.
    Document(String),
}

/// One doc, rendered: its input text and its answer.
#[derive(Debug, Clone)]
pub struct Item {
    /// Index of the doc in its split; seeds the demonstration draw.
    pub id: usize,
    /// Rendered `doc_to_text`.
    pub text: String,
    pub answer: Answer,
    /// Rendered `description` (only used when the doc is a test doc).
    pub description: String,
}

impl Item {
    /// The answer text a demonstration shows after the target delimiter.
    pub fn target_text(&self) -> &str {
        match &self.answer {
            Answer::Choice { choices, gold } => &choices[*gold],
            Answer::Inputs { continuation, .. } => continuation,
            Answer::Text(t) | Answer::Continuation(t) | Answer::Document(t) => t,
        }
    }

    /// The gold answer a sample records: the gold choice or input, or the target text.
    pub fn gold_text(&self) -> &str {
        match &self.answer {
            Answer::Inputs { inputs, gold, .. } => &inputs[*gold],
            _ => self.target_text(),
        }
    }

    /// The options one of which is the answer: a multiple-choice doc's choices or a
    /// multiple-input doc's inputs.
    pub fn options(&self) -> Option<&[String]> {
        match &self.answer {
            Answer::Choice { choices, .. } => Some(choices),
            Answer::Inputs { inputs, .. } => Some(inputs),
            Answer::Text(_) | Answer::Continuation(_) | Answer::Document(_) => None,
        }
    }
}

/// A validated task with its docs rendered.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    /// The YAML file it came from.
    pub source: PathBuf,
    /// sha256 over the YAML, its template files and its data.
    pub hash: String,
    pub output_type: OutputType,
    pub target_delimiter: String,
    pub fewshot_delimiter: String,
    /// Stop sequences for `generate_until`.
    pub until: Vec<String>,
    pub max_tokens: usize,
    /// Reported metrics; the first is the headline.
    pub metrics: Vec<Metric>,
    pub test: Vec<Item>,
    pub fewshot: Vec<Item>,
    /// Demonstrations come from the test split itself, so each test doc is excluded from its own draw.
    pub fewshot_is_test: bool,
    /// The task's demonstration sampler (`fewshot.sampler`).
    pub sampler: crate::task::fewshot::Sampler,
    /// Order of similarity-ranked demonstrations (`fewshot.order`).
    pub demo_order: crate::task::fewshot::DemoOrder,
    /// `doc_to_text` of the first test doc with every string field replaced by each of
    /// [`CONTENT_FREE`], for `acc_calibrated`.
    pub content_free: Vec<String>,
    /// Every data file read, for the run's record.
    pub data: Vec<DataFile>,
    /// `metadata.version`: the task's version, as its file gives it.
    pub version: Option<String>,
    /// The Python hooks run to build its docs (`--allow-python`), as `name: FILE:function`.
    pub python: Vec<String>,
    /// Python aggregations of corpus metrics (`--allow-python`): metric name →
    /// `FILE.py:function`, run on each cell's (gold, predicted) pairs by the report.
    pub aggregations: std::collections::BTreeMap<String, String>,
    /// How `exact_match` compares.
    pub exact_match: ExactMatch,
    /// `generate_until`: the answer-extraction pipelines (`filter_list`); none scores the
    /// generation itself.
    pub filters: Vec<filter::Pipeline>,
    /// Per test doc (in `test` order), its `choices` field, when a filter reads it
    /// (`multi_choice_regex`); otherwise empty.
    pub doc_choices: Vec<Vec<String>>,
    /// `generate_until`: generations per prompt (`repeats`).
    pub repeats: usize,
    /// Items end with lm-eval's `gen_prefix`; a demonstration then joins its answer with a space
    /// only where neither side has whitespace (lm-eval's `maybe_delimit`).
    pub gen_prefix: bool,
    /// `generate_until` with `do_sample`: temperature and top-p; `None` decodes greedily.
    pub sampling: Option<(f64, f64)>,
    /// The task's own K (lm-eval's `num_fewshot`), run by `--shots task`.
    pub num_fewshot: Option<usize>,
    /// How a multiple-choice task asks: the task's `format:` as loaded (its docs cloze), the
    /// formulation its docs are in after [`formulation::formulate`].
    pub format: Formulation,
}

/// `exact_match`'s options, compiled from `task::spec::ExactMatchSpec`.
#[derive(Debug, Clone, Default)]
pub struct ExactMatch {
    /// Python `re` patterns, as lm-eval's files write them.
    pub regexes_to_ignore: Vec<fancy_regex::Regex>,
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
}

/// One data file a task read: where it came from and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataFile {
    /// A local path, or `hf://datasets/ORG/NAME@COMMIT/PATH` for a Hub file.
    pub source: String,
    pub sha256: String,
}

/// Steps one template may take rendering one doc (minijinja's fuel): thousands of times what a
/// task's templates need, and a bound on a template that would loop for hours.
pub const TEMPLATE_FUEL: u64 = 5_000_000;

/// The most bytes one rendered template of one doc may hold (a description, an input, a
/// target): far beyond any prompt a model's context takes, and a bound on what a task's
/// templates can make memory hold per doc.
pub const MAX_RENDERED: usize = 16 << 20;

/// Content-free inputs of contextual calibration (Zhao et al. 2021).
pub const CONTENT_FREE: [&str; 3] = ["N/A", "", "[MASK]"];

/// The neutral context `acc_pmi` scores each choice after.
pub const PMI_CONTEXT: &str = "Answer:";

impl Task {
    /// Whether any of the task's metrics needs the requests `needs` names.
    pub fn needs(&self, needs: crate::metric::Needs) -> bool {
        self.metrics.iter().any(|m| m.spec().needs == needs)
    }

    /// The headline metric (first listed).
    pub fn primary_metric(&self) -> Reported {
        self.reported().swap_remove(0)
    }

    /// Every metric as reported: each metric under each filter, filters first, in YAML order
    /// (lm-eval's `metric,filter` names), or the metrics alone without filters.
    pub fn reported(&self) -> Vec<Reported> {
        if self.filters.is_empty() {
            return self.metrics.iter().map(|&m| m.into()).collect();
        }
        self.filters
            .iter()
            .flat_map(|f| {
                self.metrics
                    .iter()
                    .map(|&m| Reported::new(m, Some(&f.name)))
            })
            .collect()
    }
}

#[cfg(test)]
impl Item {
    /// An item with empty text and answer, for unit tests that only count samples.
    pub(crate) fn blank(id: usize) -> Item {
        Item {
            id,
            text: String::new(),
            answer: Answer::Text(String::new()),
            description: String::new(),
        }
    }
}

#[cfg(test)]
impl Task {
    /// A task over `docs` (used as both splits) for unit tests elsewhere in the crate.
    pub(crate) fn for_tests(
        output_type: OutputType,
        metrics: Vec<Metric>,
        docs: Vec<Item>,
    ) -> Task {
        Task {
            name: "t".into(),
            source: "t.yaml".into(),
            hash: String::new(),
            output_type,
            target_delimiter: " ".into(),
            fewshot_delimiter: "\n\n".into(),
            until: vec!["\n".into()],
            max_tokens: 4,
            metrics,
            test: docs.clone(),
            fewshot: docs,
            fewshot_is_test: true,
            sampler: Default::default(),
            demo_order: Default::default(),
            content_free: CONTENT_FREE.iter().map(|s| s.to_string()).collect(),
            data: Vec::new(),
            version: None,
            python: Vec::new(),
            aggregations: Default::default(),
            exact_match: Default::default(),
            filters: Vec::new(),
            doc_choices: Vec::new(),
            repeats: 1,
            gen_prefix: false,
            num_fewshot: None,
            sampling: None,
            format: Formulation::Cloze,
        }
    }
}
