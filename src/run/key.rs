//! The run id: the hash that lets the same command find and resume its unfinished folder.
//!
//! The key is written out field by field, every value spelled here, never through `Debug` of
//! the crate's own types, so adding a setting, a variant or a field elsewhere changes no id.
//! Layout 1 is exactly the text earlier versions hashed, so their unfinished folders still
//! resume. A later setting joins as `|name=value`, only when it differs from its default, so
//! runs that do not use it keep their ids; a deliberate break would start the key with `v2|`.

use super::{Protocol, RunConfig};
use crate::backend::candle::{DeviceChoice, WeightsChoice};
use crate::hash::short_hash;
use crate::record::ChatMode;
use crate::sampler::{DemoLabels, DemoOrder, Sampler};
use crate::task::Task;

/// The run id of `cfg` over its loaded tasks and sorted, deduplicated shot counts.
pub fn run_id(cfg: &RunConfig, tasks: &[Task], shots: &[usize]) -> String {
    short_hash(&run_key(cfg, tasks, shots))
}

/// The text the run id hashes (layout 1).
fn run_key(cfg: &RunConfig, tasks: &[Task], shots: &[usize]) -> String {
    let hashes: Vec<&str> = tasks.iter().map(|t| t.hash.as_str()).collect();
    // Lists of strings, numbers and paths keep std's `{:?}` spelling (quoted, escaped), which
    // Rust guarantees for these types; only the crate's own types are spelled by hand.
    let key = format!(
        "{hashes:?}|{:?}|{shots:?}|{}|{:?}|{}|{}|{:?}",
        cfg.models,
        cfg.seed,
        cfg.limit,
        weights(cfg.weights),
        protocol(&cfg.protocol),
        cfg.protocol.flags.encoder,
    );
    let key = match cfg.task_shots {
        true => format!("{key}|task-shots"),
        false => key,
    };
    let key = match cfg.protocol.flags.format {
        Some(f) => format!("{key}|format={}", f.name()),
        None => key,
    };
    // A GPU's answers round differently: never resume a CPU run on it (CPU keys stay as before).
    match cfg.device {
        DeviceChoice::Cpu => key,
        gpu => format!("{key}|{gpu}"),
    }
}

fn weights(w: WeightsChoice) -> &'static str {
    match w {
        WeightsChoice::Auto => "Auto",
        WeightsChoice::F32 => "F32",
        WeightsChoice::Quantized => "Quantized",
    }
}

fn protocol(p: &Protocol) -> String {
    let labels: Vec<&str> = p
        .demo_labels
        .iter()
        .map(|l| match l {
            DemoLabels::Gold => "Gold",
            DemoLabels::Random => "Random",
            DemoLabels::Flipped => "Flipped",
            DemoLabels::None => "None",
        })
        .collect();
    let sampler = p.flags.sampler.map(|s| match s {
        Sampler::Random => "Random",
        Sampler::Fixed => "Fixed",
        Sampler::Balanced => "Balanced",
        Sampler::FirstN => "FirstN",
        Sampler::Bm25 => "Bm25",
        Sampler::Knn => "Knn",
    });
    let order = p.flags.demo_order.map(|o| match o {
        DemoOrder::NearestLast => "NearestLast",
        DemoOrder::NearestFirst => "NearestFirst",
        DemoOrder::ByLabel => "ByLabel",
    });
    let chat = p.flags.chat().map(|c| match c {
        ChatMode::Folded => "Folded",
        ChatMode::Multiturn => "Multiturn",
    });
    format!(
        "Protocol {{ seeds: {}, permutations: {}, demo_labels: [{}], sampler: {}, demo_order: {}, \
         chat: {} }}",
        p.seeds,
        p.permutations,
        labels.join(", "),
        some(sampler),
        some(order),
        some(chat),
    )
}

/// `Some(X)` / `None`, as layout 1 spells optional settings.
fn some(v: Option<&str>) -> String {
    v.map_or_else(|| "None".to_string(), |v| format!("Some({v})"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::run::PromptFlags;

    fn config() -> RunConfig {
        RunConfig {
            models: vec!["models/a.gguf".into(), "hf:org/b".into()],
            seed: 1234,
            limit: Some(40),
            weights: WeightsChoice::Auto,
            ..RunConfig::for_tests()
        }
    }

    fn task(hash: &str) -> Task {
        let mut t = Task::for_tests(crate::task::OutputType::GenerateUntil, vec![], vec![]);
        t.hash = hash.into();
        t
    }

    #[test]
    fn layout_1_is_the_text_earlier_versions_hashed() {
        let tasks = [task("aa11"), task("bb22")];
        let cfg = config();
        assert_eq!(
            run_key(&cfg, &tasks, &[0, 1, 32]),
            "[\"aa11\", \"bb22\"]|[\"models/a.gguf\", \"hf:org/b\"]|[0, 1, 32]|1234|Some(40)|Auto|\
             Protocol { seeds: 1, permutations: 1, demo_labels: [Gold], sampler: None, \
             demo_order: None, chat: None }|None"
        );
        let study = RunConfig {
            protocol: Protocol {
                seeds: 3,
                permutations: 2,
                demo_labels: vec![DemoLabels::Gold, DemoLabels::Random],
                flags: PromptFlags {
                    sampler: Some(Sampler::Knn),
                    demo_order: Some(DemoOrder::NearestFirst),
                    encoder: Some(PathBuf::from("models/enc")),
                    chat_template: true,
                    fewshot_as_multiturn: true,
                    format: Some(crate::task::Formulation::Mcqa),
                },
            },
            weights: WeightsChoice::Quantized,
            limit: None,
            device: DeviceChoice::Cuda(1),
            ..config()
        };
        assert_eq!(
            run_key(&study, &tasks[..1], &[4]),
            "[\"aa11\"]|[\"models/a.gguf\", \"hf:org/b\"]|[4]|1234|None|Quantized|\
             Protocol { seeds: 3, permutations: 2, demo_labels: [Gold, Random], \
             sampler: Some(Knn), demo_order: Some(NearestFirst), chat: Some(Multiturn) }|\
             Some(\"models/enc\")|format=mcqa|cuda:1"
        );
        // Settings outside the key (threads, batch size, output folder) leave the id alone.
        let other = RunConfig {
            threads: Some(7),
            batch_docs: 1,
            kv_cache_mb: Some(0),
            ..config()
        };
        assert_eq!(run_id(&other, &tasks, &[0]), run_id(&cfg, &tasks, &[0]));
        assert_ne!(run_id(&cfg, &tasks, &[0]), run_id(&cfg, &tasks[..1], &[0]));
    }
}
