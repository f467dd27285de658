//! The `llama` and `qwen2` families: pre-norm blocks, SiLU-gated MLP; qwen2 adds Q/K/V biases.

use anyhow::{Result, bail};
use candle_core::quantized::gguf_file;

use super::config::{Activation, DecoderConfig, HfConfig, RopeStyle};
use super::gguf_meta::Meta;

/// Architectures this module reads.
pub const ARCHS: &[&str] = &["llama", "qwen2"];

/// The config of a `llama` or `qwen2` GGUF file.
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    let m = Meta::new(content, arch);
    let n_heads = m.usize("attention.head_count")?;
    let hidden = m.usize("embedding_length")?;
    if n_heads == 0 || !hidden.is_multiple_of(n_heads) {
        bail!("embedding_length {hidden} is not a multiple of head_count {n_heads}");
    }
    let head_dim = m
        .opt_usize("attention.key_length")?
        .unwrap_or(hidden / n_heads);
    let n_layers = m.usize("block_count")?;
    let rope = m.rope(10_000.0)?;
    Ok(DecoderConfig {
        arch: arch.to_string(),
        n_layers,
        n_heads,
        n_kv_heads: m.opt_usize("attention.head_count_kv")?.unwrap_or(n_heads),
        head_dim,
        hidden,
        rms_eps: m.f64("attention.layer_norm_rms_epsilon")?,
        // llama.cpp's converter permutes llama's Q/K rows for the interleaved rotation; qwen2
        // keeps Hugging Face's layout.
        rope_style: if arch == "llama" {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Halves
        },
        rope,
        rope_local: rope,
        sliding_window: None,
        sliding_layers: vec![false; n_layers],
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        embed_scale: None,
        activation: Activation::Silu,
        attn_softcap: None,
        final_softcap: None,
        context_length: m.usize("context_length")?,
    })
}

/// The config of a `llama` or `qwen2` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    if c.use_sliding_window == Some(true) {
        bail!("`use_sliding_window: true` (Qwen2 sliding attention) is not supported");
    }
    if let Some(act) = c.activation()
        && act != "silu"
    {
        bail!(
            "hidden activation `{act}` is not supported for {}",
            c.model_type
        );
    }
    let head_dim = c.head_dim()?;
    let rope = c.rope(None)?;
    Ok(DecoderConfig {
        arch: c.model_type.clone(),
        n_layers: c.num_hidden_layers,
        n_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim,
        hidden: c.hidden_size,
        rms_eps: c.rms_norm_eps,
        rope_style: RopeStyle::Halves,
        rope,
        rope_local: rope,
        sliding_window: None,
        sliding_layers: vec![false; c.num_hidden_layers],
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        embed_scale: None,
        activation: Activation::Silu,
        attn_softcap: None,
        final_softcap: None,
        context_length: c.max_position_embeddings,
    })
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
