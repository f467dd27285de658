//! The `phi3` family: the llama block with fused projections (`qkv_proj` = q | k | v,
//! `gate_up_proj` = gate | up) and rotary embeddings on a leading share of each head.

use anyhow::Result;

use candle_core::quantized::gguf_file;

use super::config::{DecoderConfig, Family, HfConfig, HfTensor};
use super::gguf_meta::Meta;

/// The family's registration.
pub const FAMILY: Family = Family {
    model_types: &["phi3"],
    gguf_archs: &["phi3"],
    from_hf,
    from_gguf,
    hf_tensor: |name| HfTensor::plain(hf_name(name)),
    norm_offset: 0.0,
};

/// The config of a `phi3` GGUF file: the llama reader's, with `rope.dimension_count` rotating
/// dimensions and the sliding window, when the file has one, on every layer.
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    let m = Meta::new(content, arch);
    let mut cfg = super::llama::from_gguf(content, arch)?;
    cfg.rotary_dims = m.opt_usize("rope.dimension_count")?.unwrap_or(cfg.head_dim);
    if let Some(w) = m.opt_usize("attention.sliding_window")? {
        cfg.sliding_window = Some(w);
        cfg.sliding_layers = vec![true; cfg.n_layers];
    }
    Ok(cfg)
}

/// The config of a `phi3` Hugging Face checkpoint (`partial_rotary_factor` from
/// `rope_parameters` or the top level; long-context rope scaling is refused by the rope parser).
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    let mut cfg = super::llama::from_hf(c)?;
    if let Some(w) = c.sliding_window {
        cfg.sliding_window = Some(w);
        cfg.sliding_layers = vec![true; c.num_hidden_layers];
    }
    cfg.rotary_dims = c.rotary_dims(cfg.head_dim);
    Ok(cfg)
}

/// GGUF tensor name → Hugging Face name.
pub fn hf_name(gguf: &str) -> String {
    super::config::rename(
        gguf,
        &[
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
            ("attn_qkv", "self_attn.qkv_proj"),
            ("ffn_up", "mlp.gate_up_proj"),
        ],
    )
}
