//! The `gemma2` family: Gemma 3's block (four norms a layer, `x * (1 + w)` weights, √hidden
//! embeddings, GELU-tanh MLP) without query/key norms, with sliding and global layers
//! alternating, one rotary base, and soft-capped attention scores and logits.

use anyhow::{Result, bail};

use super::config::{Activation, DecoderConfig, Family, HfConfig, HfTensor, no_gguf};

/// The family's registration. No GGUF reader: no Gemma 2 GGUF file was available to check one.
pub const FAMILY: Family = Family {
    model_types: &["gemma2"],
    gguf_archs: &[],
    from_hf,
    from_gguf: no_gguf,
    hf_tensor: |name| HfTensor::plain(super::gemma3::hf_name(name)),
    norm_offset: 1.0,
};

/// transformers' default when `layer_types` is absent: even layers slide, odd ones are global.
const SLIDING_PATTERN: usize = 2;

/// The config of a `gemma2` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    if c.activation_or(Activation::GeluTanh)? != Activation::GeluTanh {
        bail!(
            "hidden activation `{}` is not supported for gemma2",
            c.activation().unwrap_or_default()
        );
    }
    let mut cfg = c.base()?;
    cfg.norm_eps = c.rms_eps()?;
    cfg.rope = c.rope(None)?;
    cfg.rope_local = cfg.rope;
    cfg.sliding_window = Some(c.need(c.sliding_window, "sliding_window")?);
    cfg.sliding_layers = c.sliding_layers(SLIDING_PATTERN)?;
    cfg.attn_scale = 1.0
        / c.need(c.query_pre_attn_scalar, "query_pre_attn_scalar")?
            .sqrt();
    cfg.embed_scale = Some((c.hidden_size as f64).sqrt());
    cfg.activation = Activation::GeluTanh;
    cfg.attn_softcap = c.attn_logit_softcapping;
    cfg.final_softcap = c.final_logit_softcapping;
    cfg.post_norms = true;
    Ok(cfg)
}
