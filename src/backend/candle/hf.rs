//! Hugging Face checkpoint folders: `config.json`, `*.safetensors`, `tokenizer.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;

use super::config::{DecoderConfig, HfConfig, TokenIds};
use super::decoder::Decoder;
use super::tokenizer::TextTokenizer;
use super::weights::SafetensorsSource;
use super::{Loaded, ModelSummary, ParameterCount, gemma3, llama, sha256_file};

/// The `*.safetensors` files of a checkpoint folder, in name order.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no *.safetensors weights in the checkpoint folder",
            dir.display()
        );
    }
    Ok(files)
}

/// Reads `config.json` of a checkpoint folder.
pub fn read_config(dir: &Path) -> Result<HfConfig> {
    let path = dir.join("config.json");
    if !path.is_file() {
        bail!(
            "{}: not a model checkpoint folder (no config.json); --models takes a .gguf file, a \
             folder with config.json + *.safetensors + tokenizer.json, a name from models.yaml or \
             hf:ORG/REPO",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
}

/// Maps a checkpoint tensor name to its GGUF name.
pub type Rename = fn(&str) -> String;

/// The decoder config of a checkpoint, dispatched on `model_type`, with its tensor renaming and norm
/// weight offset.
pub fn decoder_config(c: &HfConfig) -> Result<(DecoderConfig, Rename, f64)> {
    Ok(match c.model_type.as_str() {
        "llama" | "qwen2" => (llama::from_hf(c)?, llama::hf_name as Rename, 0.0),
        "gemma3_text" | "gemma3" => (gemma3::from_hf(c)?, gemma3::hf_name, 1.0),
        other => {
            bail!("model_type `{other}` is not supported (supported: llama, qwen2, gemma3_text)")
        }
    })
}

/// The tokenizer of a checkpoint folder.
/// `chat_template` from `tokenizer_config.json`, when it is a single template string; a file
/// that is there but unreadable or not JSON is an error naming it and where it breaks.
fn chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read it", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: malformed JSON at line {}, column {}: {e}; fix or remove the file",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    Ok(v.get("chat_template")
        .and_then(|t| t.as_str())
        .map(str::to_string))
}

/// The tokenizer of a checkpoint folder.
pub fn load_tokenizer(dir: &Path, c: &HfConfig) -> Result<TextTokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        bail!(
            "{}: the checkpoint folder has no tokenizer.json",
            dir.display()
        );
    }
    let eos: Vec<u32> = c
        .eos_token_id
        .as_ref()
        .map(TokenIds::ids)
        .unwrap_or_default();
    let bos = c
        .bos_token_id
        .as_ref()
        .and_then(|b| b.ids().first().copied());
    TextTokenizer::from_tokenizer_json(&path, bos, &eos)
}

/// Parameters from the checkpoint's tensor sizes: tied embeddings once.
fn count_parameters(c: &HfConfig, counts: &[(String, u64)]) -> ParameterCount {
    let tied = c.tie_word_embeddings.unwrap_or(false);
    let count = |name: &str| {
        counts
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    };
    let embedding = count("model.embed_tokens.weight");
    // Tied checkpoints sometimes store lm_head as well; it is the same matrix, counted once.
    let head = if tied { 0 } else { count("lm_head.weight") };
    let total = counts
        .iter()
        .filter(|(n, _)| !(tied && n == "lm_head.weight"))
        .map(|(_, c)| c)
        .sum::<u64>();
    ParameterCount {
        total,
        non_embedding: total.saturating_sub(embedding + head),
    }
}

fn dtype(c: &HfConfig) -> String {
    c.dtype
        .clone()
        .or(c.torch_dtype.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// Architecture, parameters, dtype and context length of a checkpoint folder, from headers only.
pub fn inspect(dir: &Path) -> Result<ModelSummary> {
    let c = read_config(dir)?;
    let (_, rename, offset) =
        decoder_config(&c).with_context(|| format!("{}/config.json", dir.display()))?;
    let src = SafetensorsSource::open(&safetensors_files(dir)?, rename, offset)?;
    Ok(ModelSummary {
        architecture: c.model_type.clone(),
        parameters: count_parameters(&c, &src.element_counts()),
        quantization: dtype(&c),
        context_length: c.max_position_embeddings,
    })
}

/// Loads a checkpoint folder with float32 weights.
pub fn load(dir: &Path, expected_sha256: Option<&str>, device: &Device) -> Result<Loaded> {
    let shown = dir.display();
    let c = read_config(dir)?;
    let (cfg, rename, norm_offset) =
        decoder_config(&c).with_context(|| format!("{shown}/config.json"))?;
    let files = safetensors_files(dir)?;
    // One fingerprint for the folder: the config, the tokenizer files present, and every weight
    // file in name order. The tokenizer is part of it because the request cache trusts it: the
    // same weights under another tokenizer give other answers.
    let mut parts = vec![sha256_file(&dir.join("config.json"))?];
    for name in [
        "tokenizer.json",
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
    ] {
        let f = dir.join(name);
        if f.is_file() {
            parts.push(format!("{name}:{}", sha256_file(&f)?));
        }
    }
    for f in &files {
        parts.push(sha256_file(f)?);
    }
    let sha256 = super::sha256_str(&parts.join("\n"));
    super::check_sha256(dir, expected_sha256, &sha256)?;
    let tokenizer = load_tokenizer(dir, &c)?;
    let chat_template = chat_template(dir)?;
    let mut src = SafetensorsSource::open(&files, rename, norm_offset)
        .with_context(|| format!("{shown}: loading weights"))?
        .on(device);
    let parameters = count_parameters(&c, &src.element_counts());
    let model =
        Decoder::load(cfg, &mut src).with_context(|| format!("{shown}: loading weights"))?;
    Ok(Loaded {
        model,
        tokenizer,
        architecture: c.model_type.clone(),
        parameters,
        quantization: dtype(&c),
        sha256,
        weights: "f32".into(),
        chat_template,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_tokenizer_config_is_named_not_ignored() {
        let d = std::env::temp_dir().join(format!("icl-eval-tokcfg-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(chat_template(&d).unwrap(), None, "no file: no template");
        std::fs::write(
            d.join("tokenizer_config.json"),
            "{\"chat_template\": \"{{ x }}\"}",
        )
        .unwrap();
        assert_eq!(chat_template(&d).unwrap().as_deref(), Some("{{ x }}"));
        std::fs::write(
            d.join("tokenizer_config.json"),
            "{\n  \"chat_template\": \"a\",,\n}",
        )
        .unwrap();
        let e = chat_template(&d).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("line 2") && e.contains("malformed"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
