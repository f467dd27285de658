//! One model's turn in a run: load it (in process or behind a server), wrap it in the request
//! cache, evaluate every task with it, and hand each sample to the run folder.

use std::path::Path;

use anyhow::{Context, Result};

use super::RunConfig;
use super::folder::{RunFolder, stopped};
use super::setup::Source;
use crate::backend::Backend;
use crate::backend::candle::CandleBackend;
use crate::cache::{Cached, RequestCache};
use crate::evaluate::{Plan, evaluate_task};
use crate::record;
use crate::resume::Done;
use crate::sampler::Selector;

/// Scores every task with one model, skipping the cells in `done`; a model an earlier session
/// finished is only recorded.
pub(super) fn score_model(
    cfg: &RunConfig,
    source: &Source,
    selectors: &[Selector],
    shots: &[Vec<usize>],
    done: &Done,
    cache: Option<&RequestCache>,
    folder: &mut RunFolder,
) -> Result<()> {
    if let Some(info) = folder.finished_model(&source.name()) {
        let info = info.clone();
        return folder.add_model(info, false);
    }
    if stopped(cfg) {
        folder.save()?;
        return Err(folder.interrupted().into());
    }
    folder.bar.set_message(format!("loading {}", source.name()));
    let mut model = load(cfg, source)?;
    let mut backend = Cached::new(model.as_mut(), cache);
    folder.add_model(backend.info().clone(), true)?;
    let p = &cfg.protocol;
    let mut result = Ok(());
    for (selector, shots) in selectors.iter().zip(shots) {
        folder.bar.set_message(format!(
            "{} / {}",
            backend.info().name,
            selector.task().name
        ));
        let plan = Plan {
            shots,
            seeds: p.seed_list(cfg.seed),
            permutations: p.permutations,
            demo_labels: &p.demo_labels,
            limit: cfg.limit,
            // A chat endpoint always takes messages: folded, or as turns when asked.
            chat: match backend.takes_messages() {
                true if p.flags.fewshot_as_multiturn => Some(record::ChatMode::Multiturn),
                true => Some(record::ChatMode::Folded),
                false => p.flags.chat(),
            },
            shard: cfg.shard,
            done: Some(done),
        };
        result = evaluate_task(&mut backend, selector, &plan, &mut |s| folder.push(s, cfg));
        if result.is_err() {
            break;
        }
    }
    let (reused, computed) = backend.token_counts();
    folder.add_prompt_tokens(record::PromptTokens {
        model: backend.info().name.clone(),
        computed,
        reused,
        requests: backend.counts,
    });
    result.map_err(|e| folder.fail(e))
}

/// Loads the model a source names.
fn load(cfg: &RunConfig, source: &Source) -> Result<Box<dyn Backend>> {
    Ok(match source {
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
                    .with_family(m.family.as_deref())
                    .with_kv_cache_mb(cfg.kv_cache_mb.unwrap_or_else(|| {
                        let mb = crate::backend::candle::default_kv_cache_mb();
                        eprintln!(
                            "prefix cache: {mb} MiB (an eighth of the memory available; \
                             --kv-cache-mb sets it)"
                        );
                        mb
                    }))
                    .with_batch_docs(cfg.batch_docs),
            )
        }
        Source::Remote {
            reference, scheme, ..
        } => (scheme.connect)(reference, &cfg.server).context("--models")?,
    })
}
