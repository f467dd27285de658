//! Hugging Face checkpoint folders: `config.json`, `*.safetensors`, `tokenizer.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;

use super::config::{DecoderConfig, Family, HfConfig, TokenIds};
use super::decoder::Decoder;
use super::families;
use super::tokenizer::TextTokenizer;
use super::weights::SafetensorsSource;
use super::{Loaded, ModelSummary, ParameterCount, sha256_file};

/// The weight files of a checkpoint folder: the shards `model.safetensors.index.json` lists (each
/// must be there), else every `*.safetensors`, in name order.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return shards(&index);
    }
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

/// The shard files a sharded checkpoint's index names in its `weight_map`.
fn shards(index: &Path) -> Result<Vec<PathBuf>> {
    let shown = index.display();
    let text = std::fs::read_to_string(index).with_context(|| format!("{shown}: cannot read"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{shown}: invalid JSON"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{shown}: no `weight_map` object"))?;
    let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let f = dir.join(name);
        if !f.is_file() {
            let tensor = map
                .iter()
                .find(|(_, v)| v.as_str() == Some(name))
                .map_or("", |(k, _)| k.as_str());
            bail!(
                "{shown}: shard `{name}` (holding `{tensor}`, among others) is missing from the \
                 folder; download it again"
            );
        }
        files.push(f);
    }
    if files.is_empty() {
        bail!("{shown}: the `weight_map` names no shard");
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

/// The family and decoder config of a checkpoint, dispatched on `model_type`.
pub fn decoder_config(c: &HfConfig) -> Result<(&'static Family, DecoderConfig)> {
    let Some(family) = families::by_model_type(&c.model_type) else {
        bail!(
            "model_type `{}` is not supported (supported: {})",
            c.model_type,
            families::model_types().join(", ")
        )
    };
    Ok((family, (family.from_hf)(c)?))
}

/// `tokenizer_config.json` of a checkpoint folder, if there is one; a file that is there but
/// unreadable or not JSON is an error naming it and where it breaks.
fn tokenizer_config(dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read it", path.display()))?;
    let v = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: malformed JSON at line {}, column {}: {e}; fix or remove the file",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    Ok(Some(v))
}

/// `chat_template` from `tokenizer_config.json`, when it is a single template string.
pub(super) fn chat_template(dir: &Path) -> Result<Option<String>> {
    Ok(tokenizer_config(dir)?
        .as_ref()
        .and_then(|v| v.get("chat_template"))
        .and_then(|t| t.as_str())
        .map(str::to_string))
}

/// The tokenizer of a checkpoint folder: `tokenizer.json` as written, and, as transformers does,
/// `<bos>` prepended when `tokenizer_config.json` says `add_bos_token: true` and the
/// post-processor does not add it itself (GPT-2-style files written for OPT, for instance).
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
    let mut tokenizer = TextTokenizer::from_tokenizer_json(&path, bos, &eos)?;
    let wants_bos = tokenizer_config(dir)?
        .and_then(|v| v.get("add_bos_token")?.as_bool())
        .unwrap_or(false);
    if wants_bos && let Some(bos) = bos {
        tokenizer.add_bos = tokenizer.encode("a")?.first() != Some(&bos);
    }
    Ok(tokenizer)
}

/// Parameters from the checkpoint's tensor sizes: tied embeddings once, GPT-2's attention-mask
/// buffers (`h.N.attn.bias` in the original hub files) not at all. Non-embedding parameters
/// leave out the token and position tables and an untied head, as Kaplan et al. count them.
fn count_parameters(c: &HfConfig, family: &Family, counts: &[(String, u64)]) -> ParameterCount {
    let tied = c.tie_word_embeddings.unwrap_or(false);
    let names = |gguf: &str| (family.hf_tensor)(gguf).names;
    let count = |gguf: &str| {
        let names = names(gguf);
        counts
            .iter()
            .find(|(n, _)| names.contains(n))
            .map_or(0, |(_, c)| *c)
    };
    let head_names = names("output.weight");
    let is_buffer = |n: &str| n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias");
    let embedding = count("token_embd.weight") + count("position_embd.weight");
    // Tied checkpoints sometimes store lm_head as well; it is the same matrix, counted once.
    let head = if tied { 0 } else { count("output.weight") };
    let total = counts
        .iter()
        .filter(|(n, _)| !(is_buffer(n) || tied && head_names.contains(n)))
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
    let (family, cfg) =
        decoder_config(&c).with_context(|| format!("{}/config.json", dir.display()))?;
    let src = SafetensorsSource::open(&safetensors_files(dir)?, family, cfg.n_heads)?;
    Ok(ModelSummary {
        architecture: c.model_type.clone(),
        parameters: count_parameters(&c, family, &src.element_counts()),
        quantization: dtype(&c),
        context_length: cfg.context_length,
    })
}

/// Loads a checkpoint folder with float32 weights.
pub fn load(dir: &Path, expected_sha256: Option<&str>, device: &Device) -> Result<Loaded> {
    let shown = dir.display();
    let c = read_config(dir)?;
    let (family, cfg) = decoder_config(&c).with_context(|| format!("{shown}/config.json"))?;
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
    let mut src = SafetensorsSource::open(&files, family, cfg.n_heads)
        .with_context(|| format!("{shown}: loading weights"))?
        .on(device);
    let parameters = count_parameters(&c, family, &src.element_counts());
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
