//! The registry of model families: adding one is its own file plus a line here.

use super::config::Family;
use super::{gemma2, gemma3, gpt_neox, gpt2, llama, olmo2, opt, phi3};

/// Every family the decoder runs.
pub const FAMILIES: &[&Family] = &[
    &llama::FAMILY,
    &gemma3::FAMILY,
    &gemma2::FAMILY,
    &gpt2::FAMILY,
    &gpt_neox::FAMILY,
    &opt::FAMILY,
    &phi3::FAMILY,
    &olmo2::FAMILY,
];

/// The family of a `config.json` `model_type`.
pub fn by_model_type(model_type: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_types.contains(&model_type))
}

/// The family of a GGUF `general.architecture`.
pub fn by_gguf_arch(arch: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.gguf_archs.contains(&arch))
}

/// The family name an architecture or `model_type` stands for (`gemma3_text` is `gemma3`).
pub fn family_name(arch: &str) -> String {
    match arch {
        "gemma3_text" => "gemma3".into(),
        // llama.cpp's name of the Pythia family; a checkpoint folder says `gpt_neox`.
        "gptneox" => "gpt_neox".into(),
        other => other.to_string(),
    }
}

/// Every `model_type` a checkpoint folder may have.
pub fn model_types() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.model_types)
        .copied()
        .collect()
}

/// Every GGUF architecture a file may have.
pub fn gguf_archs() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.gguf_archs)
        .copied()
        .collect()
}
