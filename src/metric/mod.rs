//! Metrics: one table entry each ([`SPECS`]) says everything the layers above need to know of a
//! metric — its name, the output types it applies to, its direction, how reports show it, the
//! extra requests it needs, how a doc is scored and how a cell's docs become the cell's value.
//! `evaluate`, the summary, LaTeX, the importer and the loader read the entry; none of them
//! matches on metric names. A new metric is a variant, an entry and its function.

pub mod choice;
pub mod corpus;

use serde::{Deserialize, Serialize};

use choice::{ChoiceScore, hit};

/// How a doc is scored (a task's `output_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    /// Score each choice's log-likelihood; the highest wins.
    MultipleChoice,
    /// Generate greedily and compare with the target.
    GenerateUntil,
    /// Partial scoring (Trinh & Le 2018; lm-eval's WinoGrande): each choice is a different input
    /// (`doc_to_choice`), the shared continuation (`doc_to_target`) is scored after each, and the
    /// input it is likeliest after wins. `doc_to_text` names the gold input (index or text).
    MultipleInput,
    /// One continuation (`doc_to_target`) scored after the input: `acc` is 1 when greedy decoding
    /// would produce it exactly (lm-eval's LAMBADA).
    Loglikelihood,
    /// lm-eval's `loglikelihood_rolling`: the whole `doc_to_target` text scored on its own, in
    /// windows of the context length, for word and byte perplexities (WikiText). Demonstrations
    /// do not apply: every K scores the document alone.
    LoglikelihoodRolling,
}

impl OutputType {
    /// The YAML spelling.
    pub fn name(self) -> &'static str {
        match self {
            OutputType::MultipleChoice => "multiple_choice",
            OutputType::GenerateUntil => "generate_until",
            OutputType::MultipleInput => "multiple_input",
            OutputType::Loglikelihood => "loglikelihood",
            OutputType::LoglikelihoodRolling => "loglikelihood_rolling",
        }
    }
}

/// A metric a task reports; its behaviour is its [`Spec`] in [`SPECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Acc,
    AccNorm,
    AccBytes,
    ExactMatch,
    AccCalibrated,
    AccPmi,
    AccMutualInfo,
    AccBatchCalibrated,
    BrierScore,
    Ece,
    Perplexity,
    Bleu,
    Chrf,
    Ter,
    F1,
    Mcc,
    F1Weighted,
    WordPerplexity,
    BytePerplexity,
    BitsPerByte,
}

/// How reports write a metric's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// A share of docs (or on that 0–1 scale): in percent.
    Share,
    /// As it is (perplexities, bits per byte).
    Raw,
}

/// Requests a multiple-choice metric needs beyond the prompt's own choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// The choices after content-free inputs with the same demonstrations.
    ContentFree,
    /// The choices after a neutral answer prefix.
    Neutral,
    /// The choices after an empty context.
    EmptyContext,
}

/// A doc's value, from what its requests returned.
#[derive(Clone, Copy)]
pub enum PerDoc {
    /// Multiple choice (or multiple input): 1 when the choice `pick` makes is gold. `None` from
    /// `pick`: the requests this metric needs were not made.
    Pick(fn(&ChoiceScore) -> Option<usize>),
    /// Multiple choice: a value from the whole score and the gold index.
    Choice(fn(&ChoiceScore, usize) -> f64),
    /// Generation: 1 when the answer equals the target under the task's `exact_match` options.
    Match,
    /// One continuation: 1 when greedy decoding produces it.
    Greedy,
    /// One continuation: its log-likelihood (the cell's value is `exp(−mean)`).
    LogLikelihood,
    /// Statistics of (gold, pick) from the choice score, scored over the cell's docs.
    ChoiceStats(fn(&ChoiceScore, usize) -> Vec<f64>),
    /// Statistics of (answer, reference) text, scored over the cell's docs.
    TextStats(fn(&str, &str) -> Vec<f64>),
    /// Statistics of a rolling document (log-likelihood, text), scored over the cell's docs.
    DocumentStats(fn(f64, &str) -> Vec<f64>),
}

/// How the summary turns a cell's docs into its value.
#[derive(Clone, Copy)]
pub enum Summary {
    /// The mean of the per-doc values, with their standard error.
    Mean,
    /// `exp(−mean)` of the per-doc values, the standard error by the delta method.
    ExpNegMean,
    /// A function of all the docs' statistics together; a seeded bootstrap standard error.
    Corpus(fn(&[&[f64]]) -> f64),
}

/// Everything about one metric.
pub struct Spec {
    pub metric: Metric,
    /// The name in YAML and results.
    pub name: &'static str,
    /// The output types it applies to.
    pub applies: &'static [OutputType],
    pub lower_is_better: bool,
    pub shown: Shown,
    pub needs: Needs,
    pub per_doc: PerDoc,
    pub summary: Summary,
    /// lm-eval's `aggregation` names that compute what icl-eval computes for this metric;
    /// `None`: not one of lm-eval's metrics.
    pub lm_eval: Option<&'static [&'static str]>,
    /// Every doc must have the same number of choices (the metric compares choices by position
    /// across docs); the loader refuses a task where they differ.
    pub same_choices: bool,
}

use OutputType::{
    GenerateUntil as Gen, Loglikelihood as Ll, LoglikelihoodRolling as Rolling,
    MultipleChoice as Mc, MultipleInput as Mi,
};

/// A doc's (gold, pick) under `acc`: lm-eval's corpus metrics score `argmax(lls)`.
fn gold_and_pred(s: &ChoiceScore, gold: usize) -> Vec<f64> {
    corpus::choice_stats(gold, s.pred)
}

/// Every metric, in the order error messages list them.
pub static SPECS: &[Spec] = &[
    Spec {
        metric: Metric::Acc,
        name: "acc",
        applies: &[Mc, Mi, Ll],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::Pick(|s| Some(s.pred)),
        summary: Summary::Mean,
        lm_eval: Some(&["mean"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::AccNorm,
        name: "acc_norm",
        applies: &[Mc],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::Pick(|s| Some(s.pred_norm)),
        summary: Summary::Mean,
        lm_eval: Some(&["mean"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::AccBytes,
        name: "acc_bytes",
        applies: &[Mc],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::Pick(|s| Some(s.pred_bytes)),
        summary: Summary::Mean,
        lm_eval: Some(&["mean"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::AccCalibrated,
        name: "acc_calibrated",
        applies: &[Mc],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::ContentFree,
        per_doc: PerDoc::Pick(|s| s.pred_calibrated),
        summary: Summary::Mean,
        lm_eval: None,
        same_choices: false,
    },
    Spec {
        metric: Metric::AccPmi,
        name: "acc_pmi",
        applies: &[Mc],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Neutral,
        per_doc: PerDoc::Pick(|s| s.pred_pmi),
        summary: Summary::Mean,
        lm_eval: None,
        same_choices: false,
    },
    Spec {
        metric: Metric::AccMutualInfo,
        name: "acc_mutual_info",
        applies: &[Mc],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::EmptyContext,
        per_doc: PerDoc::Pick(|s| s.pred_mutual_info),
        summary: Summary::Mean,
        lm_eval: Some(&["mean"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::AccBatchCalibrated,
        name: "acc_batch_calibrated",
        applies: &[Mc],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::ChoiceStats(choice::gold_and_probs),
        summary: Summary::Corpus(choice::batch_calibrated_acc),
        lm_eval: None,
        same_choices: true,
    },
    Spec {
        metric: Metric::BrierScore,
        name: "brier_score",
        applies: &[Mc],
        lower_is_better: true,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::Choice(|s, gold| choice::brier(&s.probs, gold)),
        summary: Summary::Mean,
        lm_eval: Some(&["mean"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::Ece,
        name: "ece",
        applies: &[Mc],
        lower_is_better: true,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::ChoiceStats(choice::confidence_stats),
        summary: Summary::Corpus(choice::ece),
        lm_eval: None,
        same_choices: false,
    },
    Spec {
        metric: Metric::ExactMatch,
        name: "exact_match",
        applies: &[Gen],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::Match,
        summary: Summary::Mean,
        lm_eval: Some(&["mean"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::Perplexity,
        name: "perplexity",
        applies: &[Ll],
        lower_is_better: true,
        shown: Shown::Raw,
        needs: Needs::Nothing,
        per_doc: PerDoc::LogLikelihood,
        summary: Summary::ExpNegMean,
        lm_eval: Some(&["mean", "perplexity"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::Bleu,
        name: "bleu",
        applies: &[Gen],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::TextStats(corpus::bleu_stats),
        summary: Summary::Corpus(corpus::bleu),
        lm_eval: Some(&["bleu"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::Chrf,
        name: "chrf",
        applies: &[Gen],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::TextStats(corpus::chrf_stats),
        summary: Summary::Corpus(corpus::chrf),
        lm_eval: Some(&["chrf"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::Ter,
        name: "ter",
        applies: &[Gen],
        lower_is_better: true,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::TextStats(corpus::ter_stats),
        summary: Summary::Corpus(corpus::ter),
        lm_eval: Some(&["ter"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::F1,
        name: "f1",
        applies: &[Mc, Mi],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::ChoiceStats(gold_and_pred),
        summary: Summary::Corpus(corpus::f1),
        lm_eval: Some(&["f1"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::F1Weighted,
        name: "f1_weighted",
        applies: &[Mc, Mi],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::ChoiceStats(gold_and_pred),
        summary: Summary::Corpus(corpus::f1_weighted),
        lm_eval: Some(&[]),
        same_choices: false,
    },
    Spec {
        metric: Metric::Mcc,
        name: "mcc",
        applies: &[Mc, Mi],
        lower_is_better: false,
        shown: Shown::Share,
        needs: Needs::Nothing,
        per_doc: PerDoc::ChoiceStats(gold_and_pred),
        summary: Summary::Corpus(corpus::mcc),
        lm_eval: Some(&["matthews_corrcoef"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::WordPerplexity,
        name: "word_perplexity",
        applies: &[Rolling],
        lower_is_better: true,
        shown: Shown::Raw,
        needs: Needs::Nothing,
        per_doc: PerDoc::DocumentStats(corpus::word_stats),
        summary: Summary::Corpus(corpus::weighted_perplexity),
        lm_eval: Some(&["weighted_perplexity"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::BytePerplexity,
        name: "byte_perplexity",
        applies: &[Rolling],
        lower_is_better: true,
        shown: Shown::Raw,
        needs: Needs::Nothing,
        per_doc: PerDoc::DocumentStats(corpus::byte_stats),
        summary: Summary::Corpus(corpus::weighted_perplexity),
        lm_eval: Some(&["weighted_perplexity"]),
        same_choices: false,
    },
    Spec {
        metric: Metric::BitsPerByte,
        name: "bits_per_byte",
        applies: &[Rolling],
        lower_is_better: true,
        shown: Shown::Raw,
        needs: Needs::Nothing,
        per_doc: PerDoc::DocumentStats(corpus::byte_stats),
        summary: Summary::Corpus(corpus::bits_per_byte),
        lm_eval: Some(&["bits_per_byte"]),
        same_choices: false,
    },
];

impl Metric {
    /// This metric's entry in [`SPECS`].
    pub fn spec(self) -> &'static Spec {
        SPECS
            .iter()
            .find(|s| s.metric == self)
            .expect("every metric has an entry in SPECS (pinned by a test)")
    }

    /// The metric named `name` in YAML and results.
    pub fn from_name(name: &str) -> Option<Metric> {
        SPECS.iter().find(|s| s.name == name).map(|s| s.metric)
    }

    /// The metric's name in YAML and results.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Whether lower values are better (and the metric cannot be a headline deciding `correct`).
    pub fn lower_is_better(self) -> bool {
        self.spec().lower_is_better
    }

    /// Whether a cell's value comes from its docs' statistics together.
    pub fn is_corpus(self) -> bool {
        matches!(self.spec().summary, Summary::Corpus(_))
    }

    /// A corpus metric's value over docs' statistics (NaN for a per-doc metric).
    pub fn corpus_score(self, stats: &[&[f64]]) -> f64 {
        match self.spec().summary {
            Summary::Corpus(score) => score(stats),
            Summary::Mean | Summary::ExpNegMean => f64::NAN,
        }
    }

    /// A corpus metric's seeded bootstrap standard error (NaN for a per-doc metric).
    pub fn bootstrap_stderr(self, stats: &[&[f64]], seed: u64) -> f64 {
        match self.spec().summary {
            Summary::Corpus(score) => corpus::bootstrap_stderr(score, stats, seed),
            Summary::Mean | Summary::ExpNegMean => f64::NAN,
        }
    }

    /// Parses a metric name, checking it applies to `output_type`.
    pub fn parse(name: &str, output_type: OutputType) -> Result<Self, String> {
        let m = Metric::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
            format!("unknown metric `{name}` (known: {})", known.join(", "))
        })?;
        if m.spec().applies.contains(&output_type) {
            Ok(m)
        } else {
            Err(format!(
                "metric `{name}` does not apply to output_type {output_type:?}"
            ))
        }
    }

    /// Metrics reported when the YAML names none.
    pub fn defaults(output_type: OutputType) -> Vec<Metric> {
        match output_type {
            OutputType::MultipleChoice => vec![Metric::Acc, Metric::AccNorm],
            OutputType::GenerateUntil => vec![Metric::ExactMatch],
            OutputType::MultipleInput | OutputType::Loglikelihood => vec![Metric::Acc],
            OutputType::LoglikelihoodRolling => vec![
                Metric::WordPerplexity,
                Metric::BytePerplexity,
                Metric::BitsPerByte,
            ],
        }
    }

    /// A multiple-choice doc's value: the pick's hit, or the value the entry computes from the
    /// score. A corpus metric's per-doc value is whether `acc`'s pick is gold (the doc's
    /// statistics carry the rest). `None`: a metric of another output type.
    pub fn choice_value(self, s: &ChoiceScore, gold: usize) -> Option<f64> {
        match self.spec().per_doc {
            PerDoc::Pick(pick) => Some(hit(pick(s) == Some(gold))),
            PerDoc::Choice(f) => Some(f(s, gold)),
            PerDoc::ChoiceStats(_) => Some(hit(s.pred == gold)),
            PerDoc::Match
            | PerDoc::Greedy
            | PerDoc::LogLikelihood
            | PerDoc::TextStats(_)
            | PerDoc::DocumentStats(_) => None,
        }
    }

    /// The choice this metric picks for a doc on its own (the prediction a sample records when
    /// it is the headline); `None` for a metric that picks none per doc (a corpus metric's picks,
    /// such as batch calibration's, depend on the cell) or whose requests were not made.
    pub fn pick(self, s: &ChoiceScore) -> Option<usize> {
        match self.spec().per_doc {
            PerDoc::Pick(pick) => pick(s),
            _ => None,
        }
    }

    /// Whether the summary shows this metric as a share (percent) rather than as it is.
    pub fn is_share(self) -> bool {
        self.spec().shown == Shown::Share
    }
}

/// The metric of a reported name (`exact_match,strict-match` → `exact_match`).
pub fn of_reported(name: &str) -> Option<Metric> {
    Metric::from_name(name.split_once(',').map_or(name, |(m, _)| m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_one_entry_and_a_unique_name() {
        // Every variant, listed by hand: the compiler checks this match is exhaustive, the test
        // that each has exactly one entry.
        let every = |m: Metric| match m {
            Metric::Acc
            | Metric::AccNorm
            | Metric::AccBytes
            | Metric::ExactMatch
            | Metric::AccCalibrated
            | Metric::AccPmi
            | Metric::AccMutualInfo
            | Metric::AccBatchCalibrated
            | Metric::BrierScore
            | Metric::Ece
            | Metric::Perplexity
            | Metric::Bleu
            | Metric::Chrf
            | Metric::Ter
            | Metric::F1
            | Metric::Mcc
            | Metric::F1Weighted
            | Metric::WordPerplexity
            | Metric::BytePerplexity
            | Metric::BitsPerByte => m,
        };
        assert_eq!(SPECS.len(), 20);
        for s in SPECS {
            assert_eq!(every(s.metric), s.metric);
            assert_eq!(SPECS.iter().filter(|o| o.metric == s.metric).count(), 1);
            assert_eq!(SPECS.iter().filter(|o| o.name == s.name).count(), 1);
            assert_eq!(Metric::from_name(s.name), Some(s.metric));
            assert!(!s.applies.is_empty(), "{}", s.name);
        }
        // Defaults apply to their output types.
        for o in [Mc, Gen, Mi, Ll, Rolling] {
            for m in Metric::defaults(o) {
                assert!(Metric::parse(m.name(), o).is_ok(), "{}", m.name());
            }
        }
        assert_eq!(
            of_reported("exact_match,strict-match"),
            Some(Metric::ExactMatch)
        );
        assert!(Metric::parse("ece", Gen).is_err());
    }
}
