//! The `gemma3` family: sliding-window layers interleaved with global ones (each with its own rope
//! base), query/key norms, norms after attention and after the MLP, embeddings scaled by √hidden,
//! GELU (tanh) MLP, and norm weights stored as `w` for `x * (1 + w)` in checkpoints.

use anyhow::{Result, bail};
use candle_core::quantized::gguf_file;

use super::config::{Activation, DecoderConfig, HfConfig, Rope, RopeStyle};
use super::gguf_meta::Meta;

/// Architectures this module reads.
pub const ARCHS: &[&str] = &["gemma3"];

/// llama.cpp's defaults for Gemma 3 files that do not state them: every sixth layer is global,
/// sliding layers rotate with base 10,000.
const GGUF_SLIDING_PATTERN: usize = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Layer i slides unless it is the last of each group of `pattern` layers.
fn pattern_layers(n_layers: usize, pattern: usize) -> Vec<bool> {
    (0..n_layers)
        .map(|i| pattern == 0 || !(i + 1).is_multiple_of(pattern))
        .collect()
}

/// The config of a `gemma3` GGUF file (norm weights there already include the +1).
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    let m = Meta::new(content, arch);
    let n_heads = m.usize("attention.head_count")?;
    let hidden = m.usize("embedding_length")?;
    let head_dim = m
        .opt_usize("attention.key_length")?
        .unwrap_or(hidden / n_heads.max(1));
    let n_layers = m.usize("block_count")?;
    let pattern = m
        .opt_usize("attention.sliding_window_pattern")?
        .unwrap_or(GGUF_SLIDING_PATTERN);
    Ok(DecoderConfig {
        arch: arch.to_string(),
        n_layers,
        n_heads,
        n_kv_heads: m.opt_usize("attention.head_count_kv")?.unwrap_or(n_heads),
        head_dim,
        hidden,
        rms_eps: m.f64("attention.layer_norm_rms_epsilon")?,
        rope_style: RopeStyle::Halves,
        // Scaling applies to the global layers only, as in llama.cpp.
        rope: m.rope(1_000_000.0)?,
        rope_local: Rope {
            base: LOCAL_ROPE_BASE,
            linear_factor: 1.0,
        },
        sliding_window: Some(m.usize("attention.sliding_window")?),
        sliding_layers: pattern_layers(n_layers, pattern),
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        embed_scale: Some((hidden as f64).sqrt()),
        activation: Activation::GeluTanh,
        attn_softcap: None,
        final_softcap: None,
        context_length: m.usize("context_length")?,
    })
}

/// The config of a `gemma3_text` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    if let Some(act) = c.activation()
        && act != "gelu_pytorch_tanh"
    {
        bail!("hidden activation `{act}` is not supported for gemma3");
    }
    let head_dim = c.head_dim()?;
    let n = c.num_hidden_layers;
    let sliding_layers = match (&c.layer_types, c.sliding_window_pattern) {
        (Some(types), _) => types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => bail!("layer type `{other}` is not supported"),
            })
            .collect::<Result<Vec<_>>>()?,
        (None, Some(p)) => pattern_layers(n, p),
        (None, None) => pattern_layers(n, GGUF_SLIDING_PATTERN),
    };
    Ok(DecoderConfig {
        arch: "gemma3".to_string(),
        n_layers: n,
        n_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim,
        hidden: c.hidden_size,
        rms_eps: c.rms_norm_eps,
        rope_style: RopeStyle::Halves,
        rope: c.rope(Some("full_attention"))?,
        rope_local: match c.rope(Some("sliding_attention")) {
            Ok(r) => r,
            Err(_) => Rope {
                base: c.rope_local_base_freq.unwrap_or(LOCAL_ROPE_BASE as f64) as f32,
                linear_factor: 1.0,
            },
        },
        sliding_window: c.sliding_window,
        sliding_layers,
        attn_scale: 1.0 / c.query_pre_attn_scalar.unwrap_or(head_dim as f64).sqrt(),
        embed_scale: Some((c.hidden_size as f64).sqrt()),
        activation: Activation::GeluTanh,
        attn_softcap: c.attn_logit_softcapping,
        final_softcap: c.final_logit_softcapping,
        context_length: c.max_position_embeddings,
    })
}

/// GGUF tensor name → Hugging Face name.
pub fn hf_name(gguf: &str) -> String {
    super::config::rename(
        gguf,
        &[
            ("attn_norm", "input_layernorm"),
            ("post_attention_norm", "post_attention_layernorm"),
            ("ffn_norm", "pre_feedforward_layernorm"),
            ("post_ffw_norm", "post_feedforward_layernorm"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_layer_is_global() {
        let l = pattern_layers(12, 6);
        let global: Vec<usize> = (0..12).filter(|&i| !l[i]).collect();
        assert_eq!(global, vec![5, 11]);
        assert_eq!(pattern_layers(2, 2), vec![true, false]);
    }

    #[test]
    fn norm_names_follow_gemma_layout() {
        assert_eq!(
            hf_name("blk.1.ffn_norm.weight"),
            "model.layers.1.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k_norm.weight"),
            "model.layers.0.self_attn.k_norm.weight"
        );
    }
}
