//! The decoder-only transformer shared by every supported family, with a forward pass that keeps
//! every position.
//!
//! candle-transformers' models return only the last position's logits; scoring needs the
//! log-probabilities of every continuation token, and multiple-choice scoring needs to branch several
//! continuations off one context, so the forward pass here takes and returns an explicit KV cache.
//! Families differ only in [`DecoderConfig`] and in which optional tensors they have (biases,
//! query/key norms, Gemma's extra post-norms); their own modules read those from each file format.

use anyhow::{Result, bail};
use candle_core::{D, DType, Device, Tensor};

use super::weights::{Linear, TensorSource};

/// How rotary embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (GGUF `llama`: the converter permutes Q/K weights for it).
    Interleaved,
    /// First half with second half (Hugging Face checkpoints, GGUF `qwen2` and `gemma3`).
    Halves,
}

/// The feed-forward gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Rotary embedding parameters of one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub base: f32,
    /// Linear position scaling (positions are divided by it); 1 for none.
    pub linear_factor: f32,
}

/// Hyper-parameters of a decoder, whatever file they came from.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Architecture name (`llama`, `qwen2`, `gemma3`).
    pub arch: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub rms_eps: f64,
    pub rope_style: RopeStyle,
    /// Rotary embeddings of global-attention layers.
    pub rope: Rope,
    /// Rotary embeddings of sliding-window layers.
    pub rope_local: Rope,
    /// Keys a sliding-window query sees, itself included; `None` when no layer slides.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window.
    pub sliding_layers: Vec<bool>,
    /// Multiplies query·key (1/√head_dim for most families).
    pub attn_scale: f64,
    /// Multiplies the token embeddings (Gemma: √hidden).
    pub embed_scale: Option<f64>,
    pub activation: Activation,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub context_length: usize,
}

impl DecoderConfig {
    /// Checks the head arithmetic every family relies on.
    pub fn validate(&self) -> Result<()> {
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            bail!(
                "{} attention heads cannot be shared by {} key/value heads",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            bail!(
                "head dimension {} is not a positive even number",
                self.head_dim
            );
        }
        if self.sliding_layers.len() != self.n_layers {
            bail!(
                "{} layer types given for {} layers",
                self.sliding_layers.len(),
                self.n_layers
            );
        }
        Ok(())
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    /// Q/K/V biases (qwen2 has them).
    qkv_bias: Option<(Tensor, Tensor, Tensor)>,
    /// Per-head RMSNorm of queries and keys before the rotation (gemma3).
    qk_norm: Option<(Tensor, Tensor)>,
    o: Linear,
    /// Norm of the attention output before the residual add (gemma3).
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// Norm of the feed-forward output before the residual add (gemma3).
    post_ffn_norm: Option<Tensor>,
}

/// Keys and values of every layer for the tokens seen so far; cheap to clone (tensors are shared).
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl KvCache {
    /// Number of tokens the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the keys and values.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
}

/// A loaded decoder.
pub struct Decoder {
    cfg: DecoderConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    inv_freq: Tensor,
    inv_freq_local: Tensor,
    device: Device,
}

impl Decoder {
    /// Loads the tensors named the GGUF way from `src`.
    pub fn load(cfg: DecoderConfig, src: &mut dyn TensorSource) -> Result<Self> {
        cfg.validate()?;
        let device = Device::Cpu;
        let embed = src.tensor("token_embd.weight")?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let optional_norm = |src: &mut dyn TensorSource, s: &str| -> Result<Option<Tensor>> {
                let name = n(s);
                Ok(if src.has(&name) {
                    Some(src.norm(&name)?)
                } else {
                    None
                })
            };
            let qkv_bias = if src.has(&n("attn_q.bias")) {
                Some((
                    src.tensor(&n("attn_q.bias"))?,
                    src.tensor(&n("attn_k.bias"))?,
                    src.tensor(&n("attn_v.bias"))?,
                ))
            } else {
                None
            };
            let qk_norm = match (
                optional_norm(src, "attn_q_norm.weight")?,
                optional_norm(src, "attn_k_norm.weight")?,
            ) {
                (Some(q), Some(k)) => Some((q, k)),
                (None, None) => None,
                _ => bail!("layer {i} has only one of the query and key norms"),
            };
            layers.push(Layer {
                attn_norm: src.norm(&n("attn_norm.weight"))?,
                q: src.matrix(&n("attn_q.weight"))?,
                k: src.matrix(&n("attn_k.weight"))?,
                v: src.matrix(&n("attn_v.weight"))?,
                qkv_bias,
                qk_norm,
                o: src.matrix(&n("attn_output.weight"))?,
                post_attn_norm: optional_norm(src, "post_attention_norm.weight")?,
                ffn_norm: src.norm(&n("ffn_norm.weight"))?,
                gate: src.matrix(&n("ffn_gate.weight"))?,
                up: src.matrix(&n("ffn_up.weight"))?,
                down: src.matrix(&n("ffn_down.weight"))?,
                post_ffn_norm: optional_norm(src, "post_ffw_norm.weight")?,
            });
        }
        let norm = src.norm("output_norm.weight")?;
        // Tied embeddings: models without `output.weight` project with the token embeddings.
        let output = if src.has("output.weight") {
            src.matrix("output.weight")?
        } else {
            Linear::dense(embed.clone())
        };
        let inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope, &device)?;
        let inv_freq_local = inverse_frequencies(cfg.head_dim, cfg.rope_local, &device)?;
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            output,
            inv_freq,
            inv_freq_local,
            device,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// An empty cache to start a sequence from.
    pub fn empty_cache(&self) -> KvCache {
        KvCache {
            layers: Vec::new(),
            len: 0,
        }
    }

    /// Runs `ids` after the tokens in `cache`; returns the final-norm hidden states `[len(ids), hidden]`
    /// and the extended cache (the input cache is left untouched so callers can branch from it).
    pub fn forward(&self, ids: &[u32], cache: &KvCache) -> Result<(Tensor, KvCache)> {
        let t = ids.len();
        if t == 0 {
            bail!("forward pass over zero tokens");
        }
        let past = cache.len;
        if past + t > self.cfg.context_length {
            bail!(
                "sequence of {} tokens exceeds the model's context length {}",
                past + t,
                self.cfg.context_length
            );
        }
        let ids_t = Tensor::new(ids, &self.device)?;
        let mut x = self.embed.index_select(&ids_t, 0)?.unsqueeze(0)?; // [1, t, d]
        if let Some(s) = self.cfg.embed_scale {
            x = (x * s)?;
        }
        let (cos, sin) = rope_angles(&self.inv_freq, past, t, &self.device)?;
        let local = if self.cfg.rope_local != self.cfg.rope {
            Some(rope_angles(&self.inv_freq_local, past, t, &self.device)?)
        } else {
            None
        };
        let mask = attention_mask(t, past, None, &self.device)?;
        let sliding_mask = match self.cfg.sliding_window {
            Some(w) => Some(attention_mask(t, past, Some(w), &self.device)?),
            None => None,
        };
        let (nh, nkv, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let eps = self.cfg.rms_eps as f32;
        let rope = match self.cfg.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i,
            RopeStyle::Halves => candle_nn::rotary_emb::rope,
        };
        let mut new_layers = Vec::with_capacity(self.layers.len());
        for (li, layer) in self.layers.iter().enumerate() {
            let sliding = self.cfg.sliding_layers[li];
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let (mut q, mut k, mut v) = (
                layer.q.forward(&h)?,
                layer.k.forward(&h)?,
                layer.v.forward(&h)?,
            );
            if let Some((bq, bk, bv)) = &layer.qkv_bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let heads =
                |x: Tensor, n: usize| x.reshape((1, t, n, hd))?.transpose(1, 2)?.contiguous();
            let (mut q, mut k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
            if let Some((qn, kn)) = &layer.qk_norm {
                q = candle_nn::ops::rms_norm(&q, qn, eps)?;
                k = candle_nn::ops::rms_norm(&k, kn, eps)?;
            }
            let (c, s) = match (&local, sliding) {
                (Some((c, s)), true) => (c, s),
                _ => (&cos, &sin),
            };
            let q = rope(&q, c, s)?;
            let k = rope(&k, c, s)?;
            let (k, v) = match cache.layers.get(li) {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            new_layers.push((k.clone(), v.clone()));
            let m = match (&sliding_mask, sliding) {
                (Some(m), true) => m,
                _ => &mask,
            };
            let attn = self.attention(&q, &k, &v, m)?; // [1, nh, t, hd]
            let attn = attn.transpose(1, 2)?.reshape((1, t, nh * hd))?;
            let mut attn = layer.o.forward(&attn)?;
            if let Some(n) = &layer.post_attn_norm {
                attn = candle_nn::ops::rms_norm(&attn, n, eps)?;
            }
            x = (x + attn)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = layer.gate.forward(&h)?;
            let gate = match self.cfg.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let mut ff = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
            if let Some(n) = &layer.post_ffn_norm {
                ff = candle_nn::ops::rms_norm(&ff, n, eps)?;
            }
            x = (x + ff)?;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        Ok((
            x.squeeze(0)?,
            KvCache {
                layers: new_layers,
                len: past + t,
            },
        ))
    }

    /// Log-probabilities over the vocabulary at the given rows of `hidden`: `[rows.len(), vocab]`.
    /// Projecting only the rows scoring uses avoids the vocabulary product at every context position.
    pub fn log_probs(&self, hidden: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let idx = Tensor::new(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            &self.device,
        )?;
        let h = hidden.index_select(&idx, 0)?;
        let mut logits = self.output.forward(&h)?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let groups = self.cfg.n_heads / self.cfg.n_kv_heads;
        let k = repeat_kv(k, groups)?;
        let v = repeat_kv(v, groups)?;
        let mut scores = (q.matmul(&k.t()?)? * self.cfg.attn_scale)?;
        if let Some(cap) = self.cfg.attn_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let scores = scores.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs.matmul(&v)?)
    }
}

fn inverse_frequencies(head_dim: usize, rope: Rope, device: &Device) -> Result<Tensor> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / rope.base.powf(2.0 * i as f32 / head_dim as f32) / rope.linear_factor)
        .collect();
    Ok(Tensor::new(inv, device)?.reshape((1, half))?)
}

/// cos and sin `[t, head_dim / 2]` for positions past..past + t.
fn rope_angles(
    inv_freq: &Tensor,
    past: usize,
    t: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let pos = Tensor::arange(past as u32, (past + t) as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((t, 1))?;
    let freqs = pos.matmul(inv_freq)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Additive mask `[t, past + t]`: query i (at absolute position p = past + i) sees key j iff j ≤ p
/// and, with a sliding window w, p - j < w (w keys counting itself, as transformers does).
fn attention_mask(t: usize, past: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let total = past + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            let p = past + i;
            (0..total).map(move |j| {
                let visible = j <= p && window.is_none_or(|w| p - j < w);
                if visible { 0.0 } else { f32::NEG_INFINITY }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, total), device)?)
}

fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, s, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, nkv, groups, s, hd))?
        .reshape((b, nkv * groups, s, hd))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_counts_the_query_itself() {
        // Window 2 at positions 3..5 after 3 cached tokens: each query sees itself and one before.
        let m = attention_mask(2, 3, Some(2), &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let visible: Vec<Vec<usize>> = m
            .iter()
            .map(|r| (0..r.len()).filter(|&j| r[j] == 0.0).collect())
            .collect();
        assert_eq!(visible, vec![vec![2, 3], vec![3, 4]]);
        let causal = attention_mask(2, 1, None, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(causal[0][2], f32::NEG_INFINITY);
        assert_eq!(causal[1][2], 0.0);
    }
}
