//! The `gpt_neox` family (Pythia): LayerNorm with biases, one fused Q/K/V projection laid out
//! head by head, rotary embeddings on a leading share of each head, a parallel residual
//! (`x + attn(ln1(x)) + mlp(ln2(x))`) and a plain GELU MLP.

use anyhow::Result;

use candle_core::quantized::gguf_file;

use super::config::{
    Activation, DecoderConfig, Family, HfConfig, HfTensor, Mlp, NormKind, Rope, Stored,
};
use super::gguf_meta::Meta;

/// The family's registration.
pub const FAMILY: Family = Family {
    model_types: &["gpt_neox"],
    gguf_archs: &["gptneox"],
    from_hf,
    from_gguf,
    hf_tensor,
    norm_offset: 0.0,
};

/// The config of a `gptneox` GGUF file (llama.cpp's converter stores the fused projection as
/// q | k | v). Pythia's GELU is the exact one; llama.cpp computes its tanh form here, which moves
/// log-probabilities by about 1e-3.
pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    let m = Meta::new(content, arch);
    let mut cfg = m.base()?;
    cfg.norm = NormKind::Layer;
    cfg.norm_eps = m.f64("attention.layer_norm_epsilon")?;
    cfg.rotary_dims = m.opt_usize("rope.dimension_count")?.unwrap_or(cfg.head_dim);
    cfg.rope = m.rope(10_000.0)?;
    cfg.rope_local = cfg.rope;
    cfg.parallel_residual = m.opt_bool("use_parallel_residual")?.unwrap_or(true);
    cfg.mlp = Mlp::Plain;
    cfg.activation = Activation::Gelu;
    Ok(cfg)
}

/// The config of a `gpt_neox` Hugging Face checkpoint (`rotary_pct`, `rotary_emb_base`,
/// `use_parallel_residual`, or their transformers 5 spellings in `rope_parameters`).
pub fn from_hf(c: &HfConfig) -> Result<DecoderConfig> {
    let mut cfg = c.base()?;
    cfg.norm = NormKind::Layer;
    cfg.norm_eps = c.layer_norm_eps.unwrap_or(1e-5);
    cfg.rotary_dims = c.rotary_dims(cfg.head_dim);
    let has_theta = c
        .rope_parameters
        .as_ref()
        .is_some_and(|p| p.get("rope_theta").is_some());
    cfg.rope = match c.rotary_emb_base {
        Some(base) if !has_theta && c.rope_theta.is_none() => Rope {
            base: base as f32,
            linear_factor: 1.0,
        },
        _ => c.rope(None)?,
    };
    cfg.rope_local = cfg.rope;
    cfg.parallel_residual = c.use_parallel_residual.unwrap_or(true);
    cfg.mlp = Mlp::Plain;
    cfg.activation = c.activation_or(Activation::Gelu)?;
    Ok(cfg)
}

/// GGUF tensor name → the checkpoint's.
pub fn hf_tensor(gguf: &str) -> HfTensor {
    let plain = |n: &str| HfTensor::plain(n.to_string());
    match gguf {
        "token_embd.weight" => return plain("gpt_neox.embed_in.weight"),
        "output.weight" => {
            return HfTensor {
                names: vec!["embed_out.weight".into(), "lm_head.weight".into()],
                stored: Stored::Plain,
            };
        }
        _ => {}
    }
    if let Some(suffix) = gguf.strip_prefix("output_norm.") {
        return plain(&format!("gpt_neox.final_layer_norm.{suffix}"));
    }
    let Some((layer, part, suffix)) = super::config::layer_tensor(gguf) else {
        return plain(gguf);
    };
    let module = match part {
        "attn_norm" => "input_layernorm",
        "attn_qkv" => "attention.query_key_value",
        "attn_output" => "attention.dense",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_up" => "mlp.dense_h_to_4h",
        "ffn_down" => "mlp.dense_4h_to_h",
        other => other,
    };
    HfTensor {
        names: vec![format!("gpt_neox.layers.{layer}.{module}.{suffix}")],
        stored: if part == "attn_qkv" {
            Stored::HeadInterleavedQkv
        } else {
            Stored::Plain
        },
    }
}
