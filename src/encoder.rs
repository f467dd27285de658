//! The sentence encoder behind `--sampler knn`: a BERT checkpoint (all-MiniLM-L6-v2) run by
//! candle-transformers, mean-pooled over every token and L2-normalised, as sentence-transformers
//! does for this model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::sampler::Embeddings;
use crate::task::Task;

/// Where `scripts/fetch-models.sh minilm` puts the encoder.
pub const DEFAULT_DIR: &str = "models/all-minilm-l6-v2";

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2 (`sentence_bert_config.json`).
const DEFAULT_MAX_TOKENS: usize = 256;

/// A loaded sentence encoder.
pub struct Encoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl Encoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let need = |f: &str| -> Result<PathBuf> {
            let p = dir.join(f);
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "sentence encoder: {} is missing; run `scripts/fetch-models.sh minilm` or pass \
                     --encoder DIR (a sentence-transformers BERT folder)",
                    p.display()
                )
            }
        };
        let config_path = need("config.json")?;
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?,
        )
        .with_context(|| format!("{}: not a BERT config", config_path.display()))?;
        let weights = need("model.safetensors")?;
        let mut tokenizer = Tokenizer::from_file(need("tokenizer.json")?)
            .map_err(|e| anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        // The shipped tokenizer.json pads and cuts to 128; sentence-transformers does neither for
        // one sentence and truncates at max_seq_length.
        let max = max_seq_length(dir).unwrap_or(DEFAULT_MAX_TOKENS);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
        let device = Device::Cpu;
        // SAFETY: the file is mapped read-only and not modified while the model lives.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .with_context(|| format!("cannot read {}", weights.display()))?;
        let model = BertModel::load(vb, &config)
            .with_context(|| format!("{}: not a BERT checkpoint", weights.display()))?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// Token ids as the model sees them (`[CLS]` … `[SEP]`, truncated).
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("sentence encoder tokenizer: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Mean-pooled embedding of `text` before normalisation.
    pub fn embed_raw(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.ids(text)?;
        let input = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let types = input.zeros_like()?;
        let hidden = self.model.forward(&input, &types, None)?;
        Ok(hidden.mean(1)?.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Unit-length embedding of `text`.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let mut v = self.embed_raw(text)?;
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(v)
    }
}

impl Encoder {
    /// Embeddings of a task's rendered inputs for `knn`: every few-shot doc and the first `n_test`
    /// test docs (later test docs, beyond `--limit`, get none and are never asked for).
    pub fn embed_task(&self, task: &Task, n_test: usize) -> Result<Embeddings> {
        let embed_all = |items: &[crate::task::Item]| -> Result<Vec<Vec<f32>>> {
            items.iter().map(|i| self.embed(&i.text)).collect()
        };
        let mut test = embed_all(&task.test[..n_test.min(task.test.len())])?;
        test.resize(task.test.len(), Vec::new());
        let fewshot = if task.fewshot_is_test && n_test >= task.test.len() {
            test.clone()
        } else {
            embed_all(&task.fewshot)?
        };
        Ok(Embeddings { test, fewshot })
    }
}

/// `max_seq_length` from `sentence_bert_config.json`, when the folder has one.
fn max_seq_length(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("sentence_bert_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("max_seq_length")?.as_u64().map(|n| n as usize)
}
