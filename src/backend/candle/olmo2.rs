//! The `olmo2` family: the llama block with its norms moved after attention and the MLP (none
//! before), and RMSNorm of queries and keys over the whole projection, before the split into heads.

use anyhow::Result;

use candle_core::quantized::gguf_file;

use super::config::{DecoderConfig, Family, HfConfig, HfTensor};

/// The family's registration.
pub const FAMILY: Family = Family {
    model_types: &["olmo2"],
    gguf_archs: &["olmo2"],
    from_hf,
    from_gguf,
    hf_tensor: |name| HfTensor::plain(hf_name(name)),
    norm_offset: 0.0,
};

/// Olmo 2's norms: after attention and the MLP, none before, and over whole q/k projections.
fn shape(mut cfg: DecoderConfig) -> DecoderConfig {
    cfg.pre_norms = false;
    cfg.post_norms = true;
    cfg.qk_norm = true;
    cfg
}

/// The config of an `olmo2` GGUF file.
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    Ok(shape(super::llama::from_gguf(content, arch)?))
}

/// The config of an `olmo2` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    Ok(shape(super::llama::from_hf(c)?))
}

/// GGUF tensor name → Hugging Face name.
pub fn hf_name(gguf: &str) -> String {
    super::config::rename(
        gguf,
        &[
            ("post_attention_norm", "post_attention_layernorm"),
            ("post_ffw_norm", "post_feedforward_layernorm"),
        ],
    )
}
