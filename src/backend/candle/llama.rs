//! The `llama` family from GGUF weights (`llama`, `qwen2`), with a forward pass that keeps every
//! position.
//!
//! candle-transformers' quantized llama returns only the last position's logits; scoring needs the
//! log-probabilities of every continuation token, and multiple-choice scoring needs to branch several
//! continuations off one context, so the forward pass here takes and returns an explicit KV cache.

use anyhow::{Context, Result, bail};
use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{D, DType, Device, Module, Tensor};
use std::io::{Read, Seek};
use std::sync::Arc;

/// GGUF architectures this module runs.
pub const SUPPORTED: &[&str] = &["llama", "qwen2"];

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Dequantized to float32 at load: larger, and 9–20× faster with candle's CPU kernels.
    F32,
    /// Kept in the file's quantized blocks.
    Quantized,
}

/// How rotary embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (GGUF `llama`: the converter permutes Q/K weights for it).
    Interleaved,
    /// First half with second half (GPT-NeoX style; `qwen2`).
    Halves,
}

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub context_length: usize,
}

impl LlamaConfig {
    /// Reads the config of architecture `arch` (keys are prefixed by it).
    pub fn from_metadata(content: &gguf_file::Content, arch: &str) -> Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| {
            let key = format!("{arch}.{k}");
            md.get(&key)
                .with_context(|| format!("missing metadata `{key}`"))
        };
        let n_heads = get("attention.head_count")?.to_u32()? as usize;
        let hidden = get("embedding_length")?.to_u32()? as usize;
        if n_heads == 0 || !hidden.is_multiple_of(n_heads) {
            bail!("embedding_length {hidden} is not a multiple of head_count {n_heads}");
        }
        let n_kv_heads =
            get("attention.head_count_kv").map_or(Ok(n_heads as u32), |v| v.to_u32())? as usize;
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            bail!("head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}");
        }
        Ok(Self {
            n_layers: get("block_count")?.to_u32()? as usize,
            n_heads,
            n_kv_heads,
            head_dim: hidden / n_heads,
            hidden,
            rms_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_base: get("rope.freq_base").map_or(Ok(10_000.0), |v| v.to_f32())?,
            rope_style: match arch {
                "llama" => RopeStyle::Interleaved,
                "qwen2" => RopeStyle::Halves,
                other => bail!(
                    "architecture `{other}` is not supported (supported: {})",
                    SUPPORTED.join(", ")
                ),
            },
            context_length: get("context_length")?.to_u32()? as usize,
        })
    }
}

/// A weight matrix `[out, in]`, float32 or quantized.
enum Linear {
    Dense(QMatMul),
    /// Quantized storage. Multi-token passes dequantize the matrix for the product: candle's quantized
    /// kernels round the activations to 8 bits, which costs 0.06 nats of mean log-prob error on
    /// SmolLM2, while dequantize-then-multiply is exact and faster than those kernels on x86 CPUs.
    /// Single-token steps (generation) use the quantized kernel, where it is fast.
    Quantized(Arc<QTensor>, QMatMul),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(m) => m.forward(x)?,
            Linear::Quantized(q, m) => {
                let tokens = x.elem_count() / x.dim(D::Minus1)?;
                if tokens > 1 {
                    QMatMul::Tensor(q.dequantize(&q.device())?).forward(x)?
                } else {
                    m.forward(x)?
                }
            }
        })
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    /// Q/K/V biases (qwen2 has them, llama does not).
    qkv_bias: Option<(Tensor, Tensor, Tensor)>,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
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
}

/// A loaded llama-family decoder.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

fn load_linear<R: Read + Seek>(
    content: &gguf_file::Content,
    r: &mut R,
    name: &str,
    format: WeightFormat,
    device: &Device,
) -> Result<Linear> {
    let q = load_q(content, r, name, device)?;
    Ok(match format {
        WeightFormat::F32 => Linear::Dense(QMatMul::Tensor(q.dequantize(device)?)),
        WeightFormat::Quantized => {
            let q = Arc::new(q);
            Linear::Quantized(q.clone(), QMatMul::from_arc(q)?)
        }
    })
}

fn load_q<R: Read + Seek>(
    content: &gguf_file::Content,
    r: &mut R,
    name: &str,
    device: &Device,
) -> Result<QTensor> {
    content
        .tensor(r, name, device)
        .with_context(|| format!("cannot read tensor `{name}`"))
}

fn load_f32<R: Read + Seek>(
    content: &gguf_file::Content,
    r: &mut R,
    name: &str,
    device: &Device,
) -> Result<Tensor> {
    Ok(load_q(content, r, name, device)?.dequantize(device)?)
}

impl Llama {
    /// Loads the weights of a `llama` GGUF file.
    pub fn load<R: Read + Seek>(
        content: &gguf_file::Content,
        r: &mut R,
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let cfg = LlamaConfig::from_metadata(content, &arch)?;
        let embed = load_f32(content, r, "token_embd.weight", device)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("blk.{i}");
            let lin = |r: &mut R, n: &str| {
                load_linear(content, r, &format!("{p}.{n}.weight"), format, device)
            };
            let qkv_bias = if content
                .tensor_infos
                .contains_key(&format!("{p}.attn_q.bias"))
            {
                let b = |r: &mut R, n: &str| load_f32(content, r, &format!("{p}.{n}.bias"), device);
                Some((b(r, "attn_q")?, b(r, "attn_k")?, b(r, "attn_v")?))
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: load_f32(content, r, &format!("{p}.attn_norm.weight"), device)?,
                q: lin(r, "attn_q")?,
                k: lin(r, "attn_k")?,
                v: lin(r, "attn_v")?,
                qkv_bias,
                o: lin(r, "attn_output")?,
                ffn_norm: load_f32(content, r, &format!("{p}.ffn_norm.weight"), device)?,
                gate: lin(r, "ffn_gate")?,
                up: lin(r, "ffn_up")?,
                down: lin(r, "ffn_down")?,
            });
        }
        let norm = load_f32(content, r, "output_norm.weight", device)?;
        // Tied embeddings: models without `output.weight` project with the token embeddings.
        let output = if content.tensor_infos.contains_key("output.weight") {
            load_linear(content, r, "output.weight", format, device)?
        } else {
            Linear::Dense(QMatMul::Tensor(embed.clone()))
        };
        let (cos, sin) = rope_tables(&cfg, device)?;
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Vocabulary size (rows of the output projection).
    pub fn vocab_size(&self) -> usize {
        self.embed.dim(0).unwrap_or(0)
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
        let cos = self.cos.narrow(0, past, t)?;
        let sin = self.sin.narrow(0, past, t)?;
        let mask = causal_mask(t, past, &self.device)?;
        let (nh, nkv, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let mut new_layers = Vec::with_capacity(self.layers.len());
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.cfg.rms_eps as f32)?;
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
            let (q, k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
            // GGUF llama Q/K weights are permuted for the interleaved (GPT-J style) rotation;
            // qwen2 keeps Hugging Face's layout and rotates halves.
            let rope = match self.cfg.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i,
                RopeStyle::Halves => candle_nn::rotary_emb::rope,
            };
            let q = rope(&q, &cos, &sin)?;
            let k = rope(&k, &cos, &sin)?;
            let (k, v) = match cache.layers.get(li) {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            new_layers.push((k.clone(), v.clone()));
            let attn = attention(&q, &k, &v, &mask, nh / nkv, hd)?; // [1, nh, t, hd]
            let attn = attn.transpose(1, 2)?.reshape((1, t, nh * hd))?;
            x = (x + layer.o.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.cfg.rms_eps as f32)?;
            let ff = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&ff)?)?;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.cfg.rms_eps as f32)?;
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
        let logits = self.output.forward(&h)?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }
}

fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32))
        .collect();
    let inv = Tensor::new(inv, device)?.reshape((1, half))?;
    let pos = Tensor::arange(0u32, cfg.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.context_length, 1))?;
    let freqs = pos.matmul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Additive mask `[t, past + t]`: query i (at absolute position past + i) sees keys 0..=past + i.
fn causal_mask(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let total = past + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (t, total), device)?)
}

fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    groups: usize,
    hd: usize,
) -> Result<Tensor> {
    let k = repeat_kv(k, groups)?;
    let v = repeat_kv(v, groups)?;
    let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
    let scores = scores.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    Ok(probs.matmul(&v)?)
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
