//! The `olmo2` family: the llama block with its norms moved after attention and the MLP (none
//! before), and RMSNorm of queries and keys over the whole projection, before the split into heads.

use anyhow::Result;

use super::config::{DecoderConfig, Family, HfConfig, HfTensor, no_gguf};

/// The family's registration. No GGUF reader: no OLMo 2 GGUF file was available to check one.
pub const FAMILY: Family = Family {
    model_types: &["olmo2"],
    gguf_archs: &[],
    from_hf,
    from_gguf: no_gguf,
    hf_tensor: |name| HfTensor::plain(hf_name(name)),
    norm_offset: 0.0,
};

/// The config of an `olmo2` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    let mut cfg = super::llama::from_hf(c)?;
    cfg.pre_norms = false;
    cfg.post_norms = true;
    cfg.qk_norm = true;
    Ok(cfg)
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
