//! The few-shot configuration a task spec names (`fewshot.sampler`, `fewshot.order`): plain
//! values the task layer parses and `sampler` acts on, so neither imports the other's logic.

use serde::{Deserialize, Serialize};

/// How demonstrations are chosen (`fewshot.sampler` in the task YAML, `--sampler` on the CLI).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Sampler {
    /// A fresh draw per test doc (GPT-3, lm-eval).
    #[default]
    Random,
    /// One draw per seed, shared by every test doc (HELM; Zhao et al. 2021).
    Fixed,
    /// A per-doc draw cycling through the labels, so each label appears equally often.
    Balanced,
    /// The first K docs of the few-shot split, in order.
    FirstN,
    /// The K few-shot docs most similar to the test doc by BM25 over the rendered inputs.
    Bm25,
    /// The K nearest few-shot docs by cosine similarity of sentence embeddings (KATE).
    Knn,
}

impl Sampler {
    /// The YAML / CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Random => "random",
            Sampler::Fixed => "fixed",
            Sampler::Balanced => "balanced",
            Sampler::FirstN => "first_n",
            Sampler::Bm25 => "bm25",
            Sampler::Knn => "knn",
        }
    }

    /// Whether every test doc sees the same demonstrations (then prompts share their prefix).
    pub fn shared(self) -> bool {
        matches!(self, Sampler::Fixed | Sampler::FirstN)
    }
}

/// The order demonstrations are shown in: where the most similar goes, for `bm25` and `knn`;
/// or grouped by label (Bertsch et al. 2024's many-shot ablation), for any sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum DemoOrder {
    /// Most similar right before the query (KATE's default).
    #[default]
    NearestLast,
    /// Most similar first.
    NearestFirst,
    /// Grouped by the label each shows, in the order of the choices (within a label, the
    /// sampler's order); multiple-choice tasks only.
    ByLabel,
}
