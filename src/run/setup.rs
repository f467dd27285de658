//! Resolving the command before any model loads: shot counts, tasks, their selectors, model
//! references — each problem a one-line error, none after work has started.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Protocol, RunConfig};
use crate::backend::Scheme;
use crate::models::ResolvedModel;
use crate::prompt;
use crate::record::Example;
use crate::sampler::{self, DemoLabels, Sampler, Selector};
use crate::task::Task;

/// Where a model runs: in process, or behind an OpenAI-compatible server.
pub(super) enum Source {
    Local(ResolvedModel),
    /// A model behind an API, reached through its reference's scheme.
    Remote {
        reference: String,
        scheme: &'static Scheme,
        name: String,
    },
}

impl Source {
    /// The name tables and charts use.
    pub(super) fn name(&self) -> String {
        match self {
            Source::Local(m) => m.name(),
            Source::Remote { name, .. } => name.clone(),
        }
    }
}

/// Checks the command's own settings; returns its shot counts sorted and deduplicated.
pub(super) fn check_command(cfg: &RunConfig) -> Result<Vec<usize>> {
    if cfg.shots.is_empty() && !cfg.task_shots {
        bail!("--shots: give at least one shot count, e.g. --shots 0,1,32");
    }
    if cfg.models.is_empty() {
        bail!(
            "--models: give at least one model (a .gguf file, checkpoint folder, name or hf:ORG/REPO)"
        );
    }
    cfg.protocol.check()?;
    let all_chat = cfg
        .models
        .iter()
        .all(|m| crate::backend::scheme_of(m).is_some_and(|s| s.chat));
    cfg.protocol.flags.check(all_chat)?;
    let mut shots = cfg.shots.clone();
    shots.sort_unstable();
    shots.dedup();
    Ok(shots)
}

/// The K's each task runs, in task order: `--shots` for every task, or with `--shots task` the
/// task's own `num_fewshot` (lm-eval's default; 0 where the task names none).
pub(super) fn task_shots(cfg: &RunConfig, tasks: &[Task], shots: &[usize]) -> Vec<Vec<usize>> {
    tasks
        .iter()
        .map(|t| match cfg.task_shots {
            true => vec![t.num_fewshot.unwrap_or(0)],
            false => shots.to_vec(),
        })
        .collect()
}

/// One line per task whose largest K asks for more demonstrations than its few-shot split can
/// give (those prompts show them all, and each sample records the K it used).
pub(super) fn small_pools(tasks: &[Task], shots: &[Vec<usize>]) -> Vec<String> {
    tasks
        .iter()
        .zip(shots)
        .filter_map(|(t, ks)| {
            let k = ks.iter().copied().max()?;
            // A test doc never shows itself, so a test split lends one fewer.
            let pool = t.fewshot.len() - usize::from(t.fewshot_is_test && !t.fewshot.is_empty());
            (k > pool).then(|| {
                format!(
                    "note: task {}: K={k} asks for more demonstrations than its few-shot split \
                     holds ({pool}); those prompts show all {pool}",
                    t.name
                )
            })
        })
        .collect()
}

/// A line when `--fewshot-as-multiturn` meets many shots: the template wraps each demonstration
/// in its own turns, so prompts have no demonstration boundaries to share a prefix at.
pub(super) fn multiturn_cost(protocol: &Protocol, shots: &[Vec<usize>]) -> Option<String> {
    let k = shots.iter().flatten().copied().max()?;
    (protocol.flags.chat() == Some(crate::record::ChatMode::Multiturn) && k >= MANY_SHOTS).then(|| {
        format!(
            "note: --fewshot-as-multiturn wraps each demonstration in the chat template's turns, \
             so prompts share no demonstration prefix: at K={k} each doc computes its whole \
             prompt (--chat-template alone folds them into one turn, whose prefix is shared)"
        )
    })
}

/// Where a K counts as many shots for the notes above.
const MANY_SHOTS: usize = 32;

/// Every K of the run, sorted, once.
pub(super) fn all_shots(shots: &[Vec<usize>]) -> Vec<usize> {
    let mut all: Vec<usize> = shots.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Loads and validates every task of the command.
pub(super) fn load_tasks(cfg: &RunConfig) -> Result<Vec<Task>> {
    cfg.tasks
        .iter()
        .map(|r| {
            let options = crate::task::LoadOptions {
                data_dir: cfg.data_dir.as_deref(),
                python: cfg.python.as_deref(),
                hub: cfg.hub.clone(),
            };
            let task = crate::task::load_ref(r, &options)?;
            crate::task::formulation::formulate_as(task, cfg.protocol.flags.format)
        })
        .collect()
}

/// A line naming the tasks `--format mcqa` leaves as written (they are not multiple choice).
pub(super) fn unformulated(protocol: &Protocol, tasks: &[Task]) -> Option<String> {
    let asked = protocol.flags.format?;
    let others: Vec<&str> = tasks
        .iter()
        .filter(|t| t.output_type != crate::task::OutputType::MultipleChoice)
        .map(|t| t.name.as_str())
        .collect();
    (asked == crate::task::Formulation::Mcqa && !others.is_empty()).then(|| {
        format!(
            "note: --format mcqa letters the choices of multiple-choice tasks only; {} run as \
             written",
            others.join(", ")
        )
    })
}

/// Refuses a task a chat endpoint cannot score, before anything runs: only generation and
/// multiple choice whose choices are letters (`mcqa`) can be answered without prompt
/// log-probabilities, and only from the prompt itself.
pub(super) fn check_chat_models(sources: &[Source], tasks: &[Task]) -> Result<()> {
    use crate::metric::Needs;
    use crate::task::OutputType;
    let Some(Source::Remote {
        reference, scheme, ..
    }) = sources
        .iter()
        .find(|s| matches!(s, Source::Remote { scheme, .. } if scheme.chat))
    else {
        return Ok(());
    };
    let scheme = scheme.prefix.trim_end_matches(':');
    for t in tasks {
        let why = match t.output_type {
            OutputType::GenerateUntil => None,
            OutputType::MultipleChoice
                if t.format == crate::task::Formulation::Cloze
                    && !crate::task::formulation::already_lettered(t) =>
            {
                Some(
                    "it is cloze multiple choice, whose choices' texts only prompt \
                     log-probabilities can score; run it with --format mcqa (the choices lettered, \
                     the answer letter read from the model's reply)"
                        .to_string(),
                )
            }
            OutputType::MultipleChoice => t
                .metrics
                .iter()
                .find(|m| matches!(m.spec().needs, Needs::Neutral | Needs::EmptyContext))
                .map(|m| {
                    format!(
                        "its metric {} scores the choices without the question, which a chat \
                         reply cannot; remove it from the task's metrics",
                        m.name()
                    )
                }),
            other => Some(format!(
                "its output_type {} needs prompt log-probabilities, which chat endpoints do not \
                 return; score it with openai: (a completions endpoint) or in process",
                other.name()
            )),
        };
        if let Some(why) = why {
            bail!(
                "--models {reference}: task `{}` cannot run on a {scheme}: endpoint: {why}",
                t.name
            );
        }
    }
    Ok(())
}

/// Results are keyed by task name, so two tasks may not share one.
pub(super) fn check_task_names(tasks: &[Task]) -> Result<()> {
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
    Ok(())
}

/// Resolves (and downloads) every model reference; refuses two models with one name.
pub(super) fn resolve_models(cfg: &RunConfig) -> Result<Vec<Source>> {
    let resolved: Vec<Source> = cfg
        .models
        .iter()
        .map(|m| match crate::backend::scheme_of(m) {
            Some(scheme) => Ok(Source::Remote {
                reference: m.clone(),
                scheme,
                name: (scheme.name)(m)?,
            }),
            None => {
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
    Ok(resolved)
}

/// One selector per task; loads the sentence encoder first when a task samples by `knn`, and
/// rejects impossible settings before any model loads.
pub fn selectors<'t>(
    tasks: &'t [Task],
    protocol: &Protocol,
    limit: Option<usize>,
) -> Result<Vec<Selector<'t>>> {
    let sampler_of = |t: &Task| protocol.flags.sampler.unwrap_or(t.sampler);
    let encoder = if tasks.iter().any(|t| sampler_of(t) == Sampler::Knn) {
        let dir =
            (protocol.flags.encoder.as_deref()).unwrap_or(Path::new(crate::encoder::DEFAULT_DIR));
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
                protocol.flags.demo_order.unwrap_or(t.demo_order),
                embeddings,
            )
        })
        .collect()
}

/// The prompt of each task's first test doc at each K under the first seed, as reports show it
/// (before fitting to a model's context, which may drop demonstrations).
pub(super) fn examples(
    tasks: &[Task],
    selectors: &[Selector],
    shots: &[Vec<usize>],
    seed: u64,
) -> Vec<Example> {
    let mut out = Vec::new();
    for ((t, sel), shots) in tasks.iter().zip(selectors).zip(shots) {
        let Some(item) = t.test.first() else { continue };
        let k_max = shots.iter().copied().max().unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Answer, Item, Metric, OutputType};

    fn task(docs: usize) -> Task {
        let items = (0..docs)
            .map(|id| Item {
                id,
                text: format!("doc {id}"),
                answer: Answer::Text("x".into()),
                description: String::new(),
            })
            .collect();
        Task::for_tests(OutputType::GenerateUntil, vec![Metric::ExactMatch], items)
    }

    #[test]
    fn a_k_beyond_the_split_is_noted_with_what_exists() {
        // Demonstrations from the test split: a doc never shows itself, so 10 docs lend 9.
        let tasks = [task(10)];
        assert!(small_pools(&tasks, &[vec![0, 9]]).is_empty());
        assert_eq!(
            small_pools(&tasks, &[vec![0, 32]]),
            vec![
                "note: task t: K=32 asks for more demonstrations than its few-shot split holds \
                 (9); those prompts show all 9"
            ]
        );
    }

    #[test]
    fn multiturn_at_many_shots_is_noted() {
        let multiturn = Protocol {
            flags: crate::run::PromptFlags {
                chat_template: true,
                fewshot_as_multiturn: true,
                ..Default::default()
            },
            ..Protocol::default()
        };
        assert!(multiturn_cost(&multiturn, &[vec![0, 8]]).is_none());
        assert!(multiturn_cost(&Protocol::default(), &[vec![1024]]).is_none());
        let note = multiturn_cost(&multiturn, &[vec![0, 1024]]).unwrap();
        assert!(
            note.contains("at K=1024 each doc computes its whole prompt"),
            "{note}"
        );
    }
}
