//! What a decoder is, independent of the file it came from: the shared decoder's hyper-parameters
//! and the parsed `config.json` of a Hugging Face checkpoint.
//!
//! It sits below the decoder and below every family file, so that a family reads its configuration
//! (from GGUF metadata or `config.json`) without importing the loader that calls it.

use anyhow::{Result, bail};
use serde::Deserialize;

/// How rotary embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (GGUF `llama`: the converter permutes Q/K weights for it).
    Interleaved,
    /// First half with second half (Hugging Face checkpoints, GGUF `qwen2` and `gemma3`).
    Halves,
}

/// The feed-forward gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Rotary embedding parameters of one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub base: f32,
    /// Linear position scaling (positions are divided by it); 1 for none.
    pub linear_factor: f32,
}

/// Hyper-parameters of a decoder, whatever file they came from.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Architecture name (`llama`, `qwen2`, `gemma3`).
    pub arch: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub rms_eps: f64,
    pub rope_style: RopeStyle,
    /// Rotary embeddings of global-attention layers.
    pub rope: Rope,
    /// Rotary embeddings of sliding-window layers.
    pub rope_local: Rope,
    /// Keys a sliding-window query sees, itself included; `None` when no layer slides.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window.
    pub sliding_layers: Vec<bool>,
    /// Multiplies query·key (1/√head_dim for most families).
    pub attn_scale: f64,
    /// Multiplies the token embeddings (Gemma: √hidden).
    pub embed_scale: Option<f64>,
    pub activation: Activation,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub context_length: usize,
}

impl DecoderConfig {
    /// Checks the head arithmetic every family relies on.
    pub fn validate(&self) -> Result<()> {
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            bail!(
                "{} attention heads cannot be shared by {} key/value heads",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            bail!(
                "head dimension {} is not a positive even number",
                self.head_dim
            );
        }
        if self.sliding_layers.len() != self.n_layers {
            bail!(
                "{} layer types given for {} layers",
                self.sliding_layers.len(),
                self.n_layers
            );
        }
        Ok(())
    }
}

/// `bos_token_id` / `eos_token_id`: one id or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The fields of `config.json` the supported families use (others are ignored: configs carry many
/// training-only keys).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5: `{rope_theta, rope_type}`, or one such object per layer type (Gemma 3).
    pub rope_parameters: Option<serde_json::Value>,
    pub rope_local_base_freq: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub layer_types: Option<Vec<String>>,
    pub sliding_window_pattern: Option<usize>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub dtype: Option<String>,
    pub torch_dtype: Option<String>,
}

impl HfConfig {
    /// The MLP activation, under either spelling.
    pub fn activation(&self) -> Option<&str> {
        self.hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
    }

    /// `head_dim`, or hidden / heads.
    pub fn head_dim(&self) -> Result<usize> {
        match self.head_dim {
            Some(d) => Ok(d),
            None if self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads) =>
            {
                Ok(self.hidden_size / self.num_attention_heads)
            }
            None => bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            ),
        }
    }

    /// Rotary parameters of the layers of `kind` (`full_attention`, `sliding_attention`), or of all
    /// layers when `kind` is `None`.
    pub fn rope(&self, kind: Option<&str>) -> Result<Rope> {
        let per_kind = kind.and_then(|k| self.rope_parameters.as_ref()?.get(k));
        if let Some(p) = per_kind {
            return parse_rope(p, None);
        }
        if kind == Some("sliding_attention") {
            return Ok(Rope {
                base: self.rope_local_base_freq.unwrap_or(10_000.0) as f32,
                linear_factor: 1.0,
            });
        }
        match &self.rope_parameters {
            Some(p) if p.get("rope_theta").is_some() => parse_rope(p, None),
            _ => parse_rope(
                self.rope_scaling
                    .as_ref()
                    .unwrap_or(&serde_json::Value::Null),
                Some(self.rope_theta.unwrap_or(10_000.0)),
            ),
        }
    }
}

/// `{rope_theta, rope_type | type, factor}`; only unscaled and linear rotary embeddings exist here.
fn parse_rope(p: &serde_json::Value, theta: Option<f64>) -> Result<Rope> {
    let base = theta
        .or_else(|| p.get("rope_theta").and_then(|v| v.as_f64()))
        .unwrap_or(10_000.0) as f32;
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let linear_factor = match kind {
        "default" => 1.0,
        "linear" => p.get("factor").and_then(|v| v.as_f64()).unwrap_or(1.0) as f32,
        other => bail!("rope type `{other}` is not supported (only default and linear)"),
    };
    Ok(Rope {
        base,
        linear_factor,
    })
}

/// GGUF tensor name → Hugging Face name; `norms` maps the family's norm names.
pub fn rename(gguf: &str, norms: &[(&str, &str)]) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some(rest) = gguf.strip_prefix("blk.") else {
        return gguf.to_string();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return gguf.to_string();
    };
    let Some((part, suffix)) = rest.rsplit_once('.') else {
        return gguf.to_string();
    };
    let common = [
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ];
    let mapped = common
        .iter()
        .chain(norms)
        .find(|(g, _)| *g == part)
        .map_or(part, |(_, h)| *h);
    format!("model.layers.{layer}.{mapped}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_parameters_per_layer_kind() {
        let c: HfConfig = serde_json::from_value(serde_json::json!({
            "model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "rms_norm_eps": 1e-6, "max_position_embeddings": 256,
            "rope_parameters": {
                "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}
            }
        }))
        .unwrap();
        assert_eq!(c.rope(Some("full_attention")).unwrap().base, 1e6);
        assert_eq!(c.rope(Some("sliding_attention")).unwrap().base, 1e4);
        let legacy: HfConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 256,
            "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}
        }))
        .unwrap();
        let r = legacy.rope(None).unwrap();
        assert_eq!((r.base, r.linear_factor), (5e5, 4.0));
        let yarn: HfConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 256,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0}
        }))
        .unwrap();
        assert!(yarn.rope(None).is_err());
    }
}
