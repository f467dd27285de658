//! The `gemma3` family: sliding-window layers interleaved with global ones (each with its own rope
//! base), query/key norms, norms after attention and after the MLP, embeddings scaled by √hidden,
//! GELU (tanh) MLP, and norm weights stored as `w` for `x * (1 + w)` in checkpoints.

use anyhow::{Result, bail};
use candle_core::quantized::gguf_file;

use super::config::{Activation, DecoderConfig, Family, HfConfig, HfTensor, Rope, pattern_layers};
use super::gguf_meta::Meta;

/// The family's registration.
pub const FAMILY: Family = Family {
    model_types: &["gemma3_text", "gemma3"],
    gguf_archs: &["gemma3"],
    from_hf,
    from_gguf,
    hf_tensor: |name| HfTensor::plain(hf_name(name)),
    norm_offset: 1.0,
};

/// llama.cpp's defaults for Gemma 3 files that do not state them: every sixth layer is global,
/// sliding layers rotate with base 10,000.
const GGUF_SLIDING_PATTERN: usize = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;

/// The config of a `gemma3` GGUF file (norm weights there already include the +1).
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    let m = Meta::new(content, arch);
    let mut cfg = m.base()?;
    let pattern = m
        .opt_usize("attention.sliding_window_pattern")?
        .unwrap_or(GGUF_SLIDING_PATTERN);
    cfg.norm_eps = m.f64("attention.layer_norm_rms_epsilon")?;
    // Scaling applies to the global layers only, as in llama.cpp.
    cfg.rope = m.rope(1_000_000.0)?;
    cfg.rope_local = Rope {
        base: LOCAL_ROPE_BASE,
        linear_factor: 1.0,
    };
    cfg.sliding_window = Some(m.usize("attention.sliding_window")?);
    cfg.sliding_layers = pattern_layers(cfg.n_layers, pattern);
    cfg.embed_scale = Some((cfg.hidden as f64).sqrt());
    cfg.activation = Activation::GeluTanh;
    cfg.post_norms = true;
    cfg.qk_norm = true;
    Ok(cfg)
}

/// The config of a `gemma3_text` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    if c.activation_or(Activation::GeluTanh)? != Activation::GeluTanh {
        bail!(
            "hidden activation `{}` is not supported for gemma3",
            c.activation().unwrap_or_default()
        );
    }
    let mut cfg = c.base()?;
    cfg.arch = "gemma3".into();
    cfg.norm_eps = c.rms_eps()?;
    cfg.rope = c.rope(Some("full_attention"))?;
    cfg.rope_local = match c.rope(Some("sliding_attention")) {
        Ok(r) => r,
        Err(_) => Rope {
            base: c.rope_local_base_freq.unwrap_or(LOCAL_ROPE_BASE as f64) as f32,
            linear_factor: 1.0,
        },
    };
    cfg.sliding_window = c.sliding_window;
    cfg.sliding_layers = c.sliding_layers(GGUF_SLIDING_PATTERN)?;
    cfg.attn_scale = 1.0
        / c.query_pre_attn_scalar
            .unwrap_or(cfg.head_dim as f64)
            .sqrt();
    cfg.embed_scale = Some((c.hidden_size as f64).sqrt());
    cfg.activation = Activation::GeluTanh;
    cfg.attn_softcap = c.attn_logit_softcapping;
    cfg.final_softcap = c.final_logit_softcapping;
    cfg.post_norms = true;
    cfg.qk_norm = true;
    Ok(cfg)
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
