//! The `gpt2` family: learned absolute positions, pre-LN blocks with LayerNorm (weight and bias),
//! a fused `c_attn` (q | k | v), a plain GELU (tanh) MLP, biases everywhere, and `Conv1D` weights
//! stored `[in, out]`.

use anyhow::{Result, bail};

use candle_core::quantized::gguf_file;

use super::config::{Activation, DecoderConfig, Family, HfConfig, HfTensor, Mlp, NormKind, Stored};
use super::gguf_meta::Meta;

/// The family's registration.
pub const FAMILY: Family = Family {
    model_types: &["gpt2"],
    gguf_archs: &["gpt2"],
    from_hf,
    from_gguf,
    hf_tensor,
    norm_offset: 0.0,
};

/// The config of a `gpt2` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    if c.scale_attn_by_inverse_layer_idx == Some(true) || c.scale_attn_weights == Some(false) {
        bail!(
            "GPT-2 attention without the 1/√head_dim scale or scaled by layer index \
             (scale_attn_weights false / scale_attn_by_inverse_layer_idx true) is not supported"
        );
    }
    let mut cfg = shape(c.base()?, c.layer_norm_eps.unwrap_or(1e-5));
    cfg.activation = c.activation_or(Activation::GeluTanh)?;
    Ok(cfg)
}

/// The shape GPT-2 has whatever the file: LayerNorm, learned positions, a GELU-tanh plain MLP.
fn shape(mut cfg: DecoderConfig, eps: f64) -> DecoderConfig {
    cfg.norm = NormKind::Layer;
    cfg.norm_eps = eps;
    cfg.rotary_dims = 0;
    cfg.learned_positions = Some(0);
    cfg.mlp = Mlp::Plain;
    cfg.activation = Activation::GeluTanh;
    cfg
}

/// The config of a `gpt2` GGUF file.
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    let m = Meta::new(content, arch);
    Ok(shape(m.base()?, m.f64("attention.layer_norm_epsilon")?))
}

/// GGUF tensor name → the checkpoint's, with and without transformers' `transformer.` prefix
/// (the original hub files have none).
pub fn hf_tensor(gguf: &str) -> HfTensor {
    let (name, conv1d) = hf_name(gguf);
    let names = if name == "lm_head.weight" {
        vec![name]
    } else {
        vec![format!("transformer.{name}"), name]
    };
    HfTensor {
        names,
        stored: if conv1d && gguf.ends_with(".weight") {
            Stored::Transposed
        } else {
            Stored::Plain
        },
    }
}

/// The unprefixed checkpoint name, and whether it is a `Conv1D` (`[in, out]`) module.
fn hf_name(gguf: &str) -> (String, bool) {
    match gguf {
        "token_embd.weight" => return ("wte.weight".into(), false),
        "position_embd.weight" => return ("wpe.weight".into(), false),
        "output.weight" => return ("lm_head.weight".into(), false),
        _ => {}
    }
    if let Some(suffix) = gguf.strip_prefix("output_norm.") {
        return (format!("ln_f.{suffix}"), false);
    }
    let Some((layer, part, suffix)) = super::config::layer_tensor(gguf) else {
        return (gguf.to_string(), false);
    };
    let (module, conv1d) = match part {
        "attn_norm" => ("ln_1", false),
        "attn_qkv" => ("attn.c_attn", true),
        "attn_output" => ("attn.c_proj", true),
        "ffn_norm" => ("ln_2", false),
        "ffn_up" => ("mlp.c_fc", true),
        "ffn_down" => ("mlp.c_proj", true),
        other => (other, false),
    };
    (format!("h.{layer}.{module}.{suffix}"), conv1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv1d_weights_are_transposed_and_both_prefixes_tried() {
        let t = hf_tensor("blk.1.attn_qkv.weight");
        assert_eq!(
            t.names,
            [
                "transformer.h.1.attn.c_attn.weight",
                "h.1.attn.c_attn.weight"
            ]
        );
        assert_eq!(t.stored, Stored::Transposed);
        assert_eq!(hf_tensor("blk.1.attn_qkv.bias").stored, Stored::Plain);
        assert_eq!(hf_tensor("blk.0.attn_norm.bias").names[1], "h.0.ln_1.bias");
        assert_eq!(hf_tensor("output.weight").names, ["lm_head.weight"]);
    }
}
