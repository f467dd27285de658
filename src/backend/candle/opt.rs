//! The `opt` family: learned positions read at `position + 2`, pre-LN blocks with LayerNorm,
//! biases on every projection, and a plain ReLU MLP.

use anyhow::{Result, bail};

use super::config::{
    Activation, DecoderConfig, Family, HfConfig, HfTensor, Mlp, NormKind, no_gguf,
};

/// The family's registration; llama.cpp has no OPT architecture.
pub const FAMILY: Family = Family {
    model_types: &["opt"],
    gguf_archs: &[],
    from_hf,
    from_gguf: no_gguf,
    hf_tensor,
    norm_offset: 0.0,
};

/// OPT's position table starts two rows in (a fairseq legacy).
const POSITION_OFFSET: usize = 2;

/// The config of an `opt` Hugging Face checkpoint.
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    if c.do_layer_norm_before == Some(false) {
        bail!("post-LN OPT (`do_layer_norm_before: false`, as in opt-350m) is not supported");
    }
    if let Some(p) = c.word_embed_proj_dim
        && p != c.hidden_size
    {
        bail!(
            "`word_embed_proj_dim` {p} differs from `hidden_size` {} (projected embeddings, as in \
             opt-350m) and is not supported",
            c.hidden_size
        );
    }
    let mut cfg = c.base()?;
    cfg.norm = NormKind::Layer;
    // OPT's LayerNorms use torch's default epsilon; the config has no field for it.
    cfg.norm_eps = 1e-5;
    cfg.rotary_dims = 0;
    cfg.learned_positions = Some(POSITION_OFFSET);
    cfg.mlp = Mlp::Plain;
    cfg.activation = c.activation_or(Activation::Relu)?;
    Ok(cfg)
}

/// GGUF tensor name → the checkpoint's, with and without the `model.` prefix (the original hub
/// files start at `decoder.`).
pub fn hf_tensor(gguf: &str) -> HfTensor {
    let name = hf_name(gguf);
    if name == "lm_head.weight" {
        return HfTensor::plain(name);
    }
    HfTensor {
        names: vec![format!("model.{name}"), name],
        stored: super::config::Stored::Plain,
    }
}

fn hf_name(gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => return "decoder.embed_tokens.weight".into(),
        "position_embd.weight" => return "decoder.embed_positions.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    if let Some(suffix) = gguf.strip_prefix("output_norm.") {
        return format!("decoder.final_layer_norm.{suffix}");
    }
    let Some((layer, part, suffix)) = super::config::layer_tensor(gguf) else {
        return gguf.to_string();
    };
    let module = match part {
        "attn_norm" => "self_attn_layer_norm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.out_proj",
        "ffn_norm" => "final_layer_norm",
        "ffn_up" => "fc1",
        "ffn_down" => "fc2",
        other => other,
    };
    format!("decoder.layers.{layer}.{module}.{suffix}")
}
