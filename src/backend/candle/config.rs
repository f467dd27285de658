//! What a decoder is, independent of the file it came from: the shared decoder's hyper-parameters
//! and the parsed `config.json` of a Hugging Face checkpoint.
//!
//! It sits below the decoder and below every family file, so that a family reads its configuration
//! (from GGUF metadata or `config.json`) without importing the loader that calls it.

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file;
use serde::Deserialize;

/// How rotary embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (GGUF `llama`: the converter permutes Q/K weights for it).
    Interleaved,
    /// First half with second half (Hugging Face checkpoints, GGUF `qwen2` and `gemma3`).
    Halves,
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, GPT-2's `gelu_new`).
    GeluTanh,
    /// GELU with the error function (`gelu`).
    Gelu,
    Relu,
}

impl Activation {
    /// The activation a `config.json` names (`hidden_act`, `activation_function`).
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::Gelu,
            "relu" => Self::Relu,
            other => bail!(
                "activation `{other}` is not supported (supported: silu, gelu, gelu_new, \
                 gelu_pytorch_tanh, relu)"
            ),
        })
    }
}

/// How hidden states are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `x / rms(x) * w`.
    Rms,
    /// `(x - mean) / std * w + b` (GPT-2, GPT-NeoX, OPT).
    Layer,
}

/// The feed-forward block's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp {
    /// `down(act(gate(x)) * up(x))`; a checkpoint without `ffn_gate` stores gate | up in `ffn_up`.
    Gated,
    /// `down(act(up(x)))`.
    Plain,
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
    pub norm: NormKind,
    pub norm_eps: f64,
    pub rope_style: RopeStyle,
    /// Leading dimensions of each head that rotate (the rest pass through); 0 for none.
    pub rotary_dims: usize,
    /// Learned absolute positions: row `position + offset` of `position_embd` is added to the
    /// token embedding (GPT-2: 0, OPT: 2).
    pub learned_positions: Option<usize>,
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
    pub mlp: Mlp,
    /// Norms before attention and before the MLP (all but olmo2).
    pub pre_norms: bool,
    /// Norms of the attention and MLP outputs before their residual adds (gemma, olmo2).
    pub post_norms: bool,
    /// RMSNorm of queries and keys before the rotation (gemma3, qwen3, olmo2).
    pub qk_norm: bool,
    /// `x + attn(norm1(x)) + mlp(norm2(x))` in place of two sequential residual adds (GPT-NeoX).
    pub parallel_residual: bool,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub context_length: usize,
}

/// The largest layer count, head count, head width and hidden width a configuration may declare:
/// far beyond any published model (the largest have about 130 layers and 128 heads), and small
/// enough that what is allocated per layer or per head before the weights are read (layer
/// tables, the layers themselves) stays small, so a hostile `num_hidden_layers: 1e9` is an
/// error, not an allocation of hundreds of gigabytes.
pub const MAX_SHAPE: (usize, usize, usize, usize) = (1_024, 1_024, 4_096, 262_144);

/// Refuses a declared shape beyond [`MAX_SHAPE`], naming the key. Both `base()`s call it, and
/// every family builds on one of them before sizing anything per layer.
pub fn plausible_shape(
    n_layers: usize,
    n_heads: usize,
    head_dim: usize,
    hidden: usize,
) -> Result<()> {
    let (layers, heads, width, size) = MAX_SHAPE;
    for (n, max, key) in [
        (
            n_layers,
            layers,
            "layer count (num_hidden_layers / block_count)",
        ),
        (n_heads, heads, "attention head count"),
        (head_dim, width, "head dimension"),
        (hidden, size, "hidden size"),
    ] {
        if n > max {
            bail!(
                "the configuration declares a {key} of {n}, more than any model has (at most {max}); the file is damaged or not a model's"
            );
        }
    }
    Ok(())
}

impl DecoderConfig {
    /// The llama shape (RMSNorm, full rotary halves of base 10,000, SiLU-gated MLP, causal
    /// attention scaled by 1/√head_dim); families change what differs.
    pub fn base(
        arch: &str,
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        hidden: usize,
        context_length: usize,
    ) -> Self {
        let rope = Rope {
            base: 10_000.0,
            linear_factor: 1.0,
        };
        Self {
            arch: arch.to_string(),
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            hidden,
            norm: NormKind::Rms,
            norm_eps: 1e-5,
            rope_style: RopeStyle::Halves,
            rotary_dims: head_dim,
            learned_positions: None,
            rope,
            rope_local: rope,
            sliding_window: None,
            sliding_layers: vec![false; n_layers],
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            embed_scale: None,
            activation: Activation::Silu,
            mlp: Mlp::Gated,
            pre_norms: true,
            post_norms: false,
            qk_norm: false,
            parallel_residual: false,
            attn_softcap: None,
            final_softcap: None,
            context_length,
        }
    }

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
        if self.rotary_dims > self.head_dim || !self.rotary_dims.is_multiple_of(2) {
            bail!(
                "{} rotary dimensions do not fit a head of {} (an even number up to it)",
                self.rotary_dims,
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
/// training-only keys). GPT-2's own spellings (`n_embd`, `n_layer`, ...) are aliases.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    #[serde(alias = "n_embd")]
    pub hidden_size: usize,
    #[serde(alias = "n_layer")]
    pub num_hidden_layers: usize,
    #[serde(alias = "n_head")]
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    #[serde(alias = "layer_norm_epsilon")]
    pub layer_norm_eps: Option<f64>,
    #[serde(alias = "n_positions")]
    pub max_position_embeddings: Option<usize>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5: `{rope_theta, rope_type}`, or one such object per layer type (Gemma 3).
    pub rope_parameters: Option<serde_json::Value>,
    pub rope_local_base_freq: Option<f64>,
    /// Share of each head that rotates (Phi-3's legacy key; GPT-NeoX spells it `rotary_pct`).
    #[serde(alias = "rotary_pct")]
    pub partial_rotary_factor: Option<f64>,
    pub rotary_emb_base: Option<f64>,
    pub use_parallel_residual: Option<bool>,
    pub do_layer_norm_before: Option<bool>,
    pub word_embed_proj_dim: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub activation_function: Option<String>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub layer_types: Option<Vec<String>>,
    pub sliding_window_pattern: Option<usize>,
    pub query_pre_attn_scalar: Option<f64>,
    pub scale_attn_weights: Option<bool>,
    pub scale_attn_by_inverse_layer_idx: Option<bool>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub dtype: Option<String>,
    pub torch_dtype: Option<String>,
}

impl HfConfig {
    /// The MLP activation, under any of its spellings.
    pub fn activation(&self) -> Option<&str> {
        self.hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
            .or(self.activation_function.as_deref())
    }

    /// The activation, `default` when the config names none; unknown names are errors.
    pub fn activation_or(&self, default: Activation) -> Result<Activation> {
        self.activation().map_or(Ok(default), Activation::from_hf)
    }

    /// A field the family needs, or an error naming it.
    pub fn need<T: Copy>(&self, value: Option<T>, field: &str) -> Result<T> {
        value.with_context(|| {
            format!(
                "`{field}` is missing, and model_type `{}` needs it",
                self.model_type
            )
        })
    }

    /// The context length (`max_position_embeddings` / `n_positions`).
    pub fn context_length(&self) -> Result<usize> {
        self.need(self.max_position_embeddings, "max_position_embeddings")
    }

    /// RMSNorm's epsilon (`rms_norm_eps`).
    pub fn rms_eps(&self) -> Result<f64> {
        self.need(self.rms_norm_eps, "rms_norm_eps")
    }

    /// The rotating dimensions of a head: `partial_rotary_factor` (top level or in
    /// `rope_parameters`) of it, all when neither says.
    pub fn rotary_dims(&self, head_dim: usize) -> usize {
        let factor = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(|v| v.as_f64())
            .or(self.partial_rotary_factor)
            .unwrap_or(1.0);
        // transformers truncates: int(head_dim * factor).
        (head_dim as f64 * factor) as usize
    }

    /// The shared decoder's base shape from the fields every family has.
    pub fn base(&self) -> Result<DecoderConfig> {
        let head_dim = self.head_dim()?;
        plausible_shape(
            self.num_hidden_layers,
            self.num_attention_heads,
            head_dim,
            self.hidden_size,
        )?;
        Ok(DecoderConfig::base(
            &self.model_type,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            self.hidden_size,
            self.context_length()?,
        ))
    }

    /// Per layer, whether it slides: from `layer_types`, else every `pattern`-th layer is global.
    pub fn sliding_layers(&self, default_pattern: usize) -> Result<Vec<bool>> {
        match (&self.layer_types, self.sliding_window_pattern) {
            (Some(types), _) => {
                if types.len() != self.num_hidden_layers {
                    bail!(
                        "`layer_types` has {} entries for {} layers",
                        types.len(),
                        self.num_hidden_layers
                    );
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => bail!("layer type `{other}` is not supported"),
                    })
                    .collect()
            }
            (None, Some(p)) => Ok(pattern_layers(self.num_hidden_layers, p)),
            (None, None) => Ok(pattern_layers(self.num_hidden_layers, default_pattern)),
        }
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

/// Layer i slides unless it is the last of each group of `pattern` layers.
pub fn pattern_layers(n_layers: usize, pattern: usize) -> Vec<bool> {
    (0..n_layers)
        .map(|i| pattern == 0 || !(i + 1).is_multiple_of(pattern))
        .collect()
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

/// How a checkpoint stores a tensor the decoder asks for by its GGUF name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// As the decoder wants it (`[out, in]` for a matrix).
    Plain,
    /// A matrix stored `[in, out]` (GPT-2's `Conv1D`).
    Transposed,
    /// A fused Q/K/V projection (weight rows or bias) laid out head by head, `[q_h | k_h | v_h]`
    /// for each head h (GPT-NeoX), where the decoder wants `[all q | all k | all v]`.
    HeadInterleavedQkv,
}

/// Where a checkpoint keeps one tensor: the names to try (the first present is read) and its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfTensor {
    pub names: Vec<String>,
    pub stored: Stored,
}

impl HfTensor {
    /// One name, stored as the decoder wants it.
    pub fn plain(name: String) -> Self {
        Self {
            names: vec![name],
            stored: Stored::Plain,
        }
    }
}

/// What a model family registers: the names it answers to, how to read its configuration from
/// each file format, and how its checkpoints name and lay out tensors.
pub struct Family {
    /// `config.json` `model_type`s it reads.
    pub model_types: &'static [&'static str],
    /// GGUF `general.architecture`s it reads (empty: llama.cpp has no such architecture).
    pub gguf_archs: &'static [&'static str],
    pub from_hf: fn(&HfConfig) -> Result<DecoderConfig>,
    pub from_gguf: fn(&gguf_file::Content, &str) -> Result<DecoderConfig>,
    /// GGUF tensor name → the checkpoint's.
    pub hf_tensor: fn(&str) -> HfTensor,
    /// Added to every norm weight of a checkpoint: Gemma stores `w` and multiplies by `1 + w`.
    pub norm_offset: f64,
}

/// `from_gguf` of a family llama.cpp does not know.
pub fn no_gguf(_: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    bail!("architecture `{arch}` has no GGUF reader")
}

/// `blk.{layer}.{part}.{suffix}` as its three pieces (`blk.3.attn_q.weight` → 3, attn_q, weight).
pub fn layer_tensor(gguf: &str) -> Option<(&str, &str, &str)> {
    let (layer, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let (part, suffix) = rest.rsplit_once('.')?;
    Some((layer, part, suffix))
}

/// GGUF tensor name → Hugging Face name in the llama layout; `norms` maps the family's own names
/// (norms, fused projections), ahead of the common ones.
pub fn rename(gguf: &str, norms: &[(&str, &str)]) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some((layer, part, suffix)) = layer_tensor(gguf) else {
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
    let mapped = norms
        .iter()
        .chain(&common)
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
