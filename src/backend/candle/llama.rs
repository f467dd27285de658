//! The llama layout and its close kin: `llama`, `mistral` (a sliding window on every layer),
//! `qwen2` (Q/K/V biases) and `qwen3` (per-head query/key norms, a head size of its own):
//! pre-norm blocks, SiLU-gated MLP, rotary positions.

use anyhow::{Result, bail};
use candle_core::quantized::gguf_file;

use super::config::{Activation, DecoderConfig, Family, HfConfig, HfTensor, RopeStyle};
use super::gguf_meta::Meta;

/// The family's registration.
pub const FAMILY: Family = Family {
    model_types: &["llama", "mistral", "qwen2", "qwen3"],
    gguf_archs: &["llama", "qwen2", "qwen3"],
    from_hf,
    from_gguf,
    hf_tensor: |name| HfTensor::plain(hf_name(name)),
    norm_offset: 0.0,
};

/// The config of a `llama`, `qwen2` or `qwen3` GGUF file (Mistral's files are `llama`).
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    let m = Meta::new(content, arch);
    let mut cfg = m.base()?;
    cfg.norm_eps = m.f64("attention.layer_norm_rms_epsilon")?;
    // llama.cpp's converter permutes llama's Q/K rows for the interleaved rotation; qwen keeps
    // Hugging Face's layout.
    if arch == "llama" {
        cfg.rope_style = RopeStyle::Interleaved;
    }
    cfg.rope = m.rope(10_000.0)?;
    cfg.rope_local = cfg.rope;
    cfg.qk_norm = arch == "qwen3";
    Ok(cfg)
}

/// The config of a `llama`, `mistral`, `qwen2` or `qwen3` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    if c.use_sliding_window == Some(true) {
        bail!("`use_sliding_window: true` (Qwen sliding attention) is not supported");
    }
    if c.activation_or(Activation::Silu)? != Activation::Silu {
        bail!(
            "hidden activation `{}` is not supported for {}",
            c.activation().unwrap_or_default(),
            c.model_type
        );
    }
    let mut cfg = c.base()?;
    cfg.norm_eps = c.rms_eps()?;
    cfg.rope = c.rope(None)?;
    cfg.rope_local = cfg.rope;
    cfg.qk_norm = c.model_type == "qwen3";
    if c.model_type == "mistral"
        && let Some(w) = c.sliding_window
    {
        cfg.sliding_window = Some(w);
        cfg.sliding_layers = vec![true; c.num_hidden_layers];
    }
    Ok(cfg)
}

/// GGUF tensor name → Hugging Face name.
pub fn hf_name(gguf: &str) -> String {
    super::config::rename(
        gguf,
        &[
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_names_map_to_transformers_layout() {
        assert_eq!(
            hf_name("blk.3.attn_q.bias"),
            "model.layers.3.self_attn.q_proj.bias"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("output.weight"), "lm_head.weight");
    }
}
