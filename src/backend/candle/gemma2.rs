//! The `gemma2` family: Gemma 3's block (four norms a layer, `x * (1 + w)` weights, √hidden
//! embeddings, GELU-tanh MLP) without query/key norms, with sliding and global layers
//! alternating, one rotary base, and soft-capped attention scores and logits.

use anyhow::{Result, bail};
use candle_core::quantized::gguf_file;

use super::config::{Activation, DecoderConfig, Family, HfConfig, HfTensor, Rope, pattern_layers};
use super::gguf_meta::Meta;

/// The family's registration.
pub const FAMILY: Family = Family {
    model_types: &["gemma2"],
    gguf_archs: &["gemma2"],
    from_hf,
    from_gguf,
    hf_tensor: |name| HfTensor::plain(super::gemma3::hf_name(name)),
    norm_offset: 1.0,
};

/// transformers' default when `layer_types` is absent: even layers slide, odd ones are global.
const SLIDING_PATTERN: usize = 2;

/// llama.cpp's defaults for what a Gemma 2 file does not state (the released models' values).
const GGUF_WINDOW: usize = 4096;
const GGUF_ATTN_SOFTCAP: f64 = 50.0;
const GGUF_FINAL_SOFTCAP: f64 = 30.0;
/// The 27B model scales queries by 1/√(hidden / heads), not 1/√head_dim; GGUF has no key for
/// `query_pre_attn_scalar`, so llama.cpp knows that model by its layer count.
const LAYERS_OF_27B: usize = 46;

/// The config of a `gemma2` GGUF file, read as llama.cpp reads it (norm weights there already
/// include the +1).
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    let m = Meta::new(content, arch);
    let mut cfg = m.base()?;
    cfg.norm_eps = m.f64("attention.layer_norm_rms_epsilon")?;
    cfg.rope = m.rope(10_000.0)?;
    cfg.rope_local = match m.opt_f64("rope.freq_base_swa")? {
        Some(base) => Rope {
            base: base as f32,
            linear_factor: 1.0,
        },
        None => cfg.rope,
    };
    cfg.sliding_window = Some(
        m.opt_usize("attention.sliding_window")?
            .unwrap_or(GGUF_WINDOW),
    );
    let pattern = m
        .opt_usize("attention.sliding_window_pattern")?
        .unwrap_or(SLIDING_PATTERN);
    cfg.sliding_layers = pattern_layers(cfg.n_layers, pattern);
    let scale_dim = if cfg.n_layers == LAYERS_OF_27B {
        cfg.hidden / cfg.n_heads
    } else {
        cfg.head_dim
    };
    cfg.attn_scale = 1.0 / (scale_dim as f64).sqrt();
    cfg.embed_scale = Some((cfg.hidden as f64).sqrt());
    cfg.activation = Activation::GeluTanh;
    cfg.attn_softcap = Some(
        m.opt_f64("attn_logit_softcapping")?
            .unwrap_or(GGUF_ATTN_SOFTCAP),
    );
    cfg.final_softcap = Some(
        m.opt_f64("final_logit_softcapping")?
            .unwrap_or(GGUF_FINAL_SOFTCAP),
    );
    cfg.post_norms = true;
    Ok(cfg)
}

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
