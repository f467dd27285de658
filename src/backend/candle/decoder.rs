//! The decoder-only transformer shared by every supported family, with a forward pass that keeps
//! every position.
//!
//! candle-transformers' models return only the last position's logits; scoring needs the
//! log-probabilities of every continuation token, and multiple-choice scoring needs to branch several
//! continuations off one context, so the forward pass here takes and returns an explicit KV cache.
//! Families differ only in [`DecoderConfig`] (norm kind, rotary share or learned positions, MLP
//! shape, residual layout, windows and caps) and in which optional tensors they have (biases,
//! fused projections); their own modules read those from each file format.

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};

use super::attention::{Visibility, masked_softmax, transposed_keys};
use super::config::{DecoderConfig, Mlp, NormKind, Rope, RopeStyle};
use super::weights::{Linear, TensorSource};

/// A norm's weight, and its bias for LayerNorm (zeros where the file has none).
struct Norm {
    w: Tensor,
    b: Option<Tensor>,
}

/// A weight matrix and its optional bias.
struct Proj {
    w: Linear,
    b: Option<Tensor>,
}

impl Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.w.forward(x)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// The query, key and value projections.
enum Qkv {
    Split(Proj, Proj, Proj),
    /// One matrix whose outputs are all queries, then all keys, then all values.
    Fused(Proj),
}

/// RMSNorm of queries and keys before the rotation.
enum QkNorm {
    /// Over each head (gemma3, qwen3).
    PerHead(Tensor, Tensor),
    /// Over the whole projection, before the split into heads (olmo2).
    Whole(Tensor, Tensor),
}

struct Layer {
    /// Norm before attention; `None` for families without pre-norms (olmo2).
    attn_norm: Option<Norm>,
    qkv: Qkv,
    qk_norm: Option<QkNorm>,
    o: Proj,
    /// Norm of the attention output before the residual add (gemma, olmo2).
    post_attn_norm: Option<Norm>,
    ffn_norm: Option<Norm>,
    /// `None` in a gated MLP: the gate is the first half of `up` (phi3).
    gate: Option<Proj>,
    up: Proj,
    down: Proj,
    /// Norm of the feed-forward output before the residual add (gemma, olmo2).
    post_ffn_norm: Option<Norm>,
}

/// Keys and values of every layer for the tokens seen so far; cheap to clone (tensors are shared).
///
/// A sliding-window layer keeps only the keys a later query can still see (the last
/// `window - 1`), so a long prompt's cache grows with its global layers alone: for Gemma 3,
/// 3 of 18 layers.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
}

/// One layer's keys and values, as pieces `[1, nkv, n, hd]` in position order: a cache that
/// continues another shares its pieces instead of copying them, so the caches of a sweep's
/// nested prefixes (and the chunks of a long one) hold each key once.
#[derive(Clone)]
struct LayerKv {
    pieces: Vec<(Tensor, Tensor)>,
    /// Leading positions of the cache's span no longer held (they fell out of the window).
    dropped: usize,
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

    /// Each piece of keys or values with its bytes, by tensor id: pieces that several caches
    /// share have one id, so a holder of many caches can count each once.
    pub fn pieces(&self) -> impl Iterator<Item = (candle_core::TensorId, usize)> + '_ {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.layers
            .iter()
            .flat_map(|l| &l.pieces)
            .flat_map(move |(k, v)| [(k.id(), size(k)), (v.id(), size(v))])
    }

    /// Bytes held by the keys and values.
    pub fn bytes(&self) -> usize {
        self.pieces().map(|(_, size)| size).sum()
    }
}

/// Tokens to run after a past: the concatenation of `past`'s caches, in order.
#[derive(Clone)]
pub struct Segment<'a> {
    /// The tokens to run.
    pub ids: &'a [u32],
    /// Caches of the tokens before them, oldest first (empty: the sequence starts here).
    pub past: Vec<&'a KvCache>,
}

/// Which keys and values a forward pass returns per segment.
#[derive(Clone, Copy)]
pub enum CacheOut {
    /// The past's and the segment's: a cache to continue from.
    Full,
    /// The segment's own only, to be used after the same past.
    Own,
}

/// A loaded decoder.
pub struct Decoder {
    cfg: DecoderConfig,
    /// Token embeddings `[vocab, d]`; `None` when tied to the output projection, whose rows they are.
    embed: Option<Tensor>,
    /// Learned absolute position embeddings `[positions, d]` (gpt2, opt).
    positions: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Norm,
    output: Linear,
    inv_freq: Tensor,
    inv_freq_local: Tensor,
    device: Device,
}

impl Decoder {
    /// Loads the tensors named the GGUF way from `src`.
    pub fn load(cfg: DecoderConfig, src: &mut dyn TensorSource) -> Result<Self> {
        cfg.validate()?;
        let device = src.device().clone();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            layers.push(load_layer(&cfg, src, i).with_context(|| {
                format!(
                    "layer {i} of the {} the configuration declares",
                    cfg.n_layers
                )
            })?);
        }
        let norm = load_norm(&cfg, src, "output_norm")?;
        let positions = match cfg.learned_positions {
            Some(offset) => {
                let p = src.tensor("position_embd.weight")?;
                let (rows, d) = p.dims2()?;
                if d != cfg.hidden || rows < cfg.context_length + offset {
                    bail!(
                        "tensor `{}` is [{rows}, {d}]: {} positions (offset {offset}) of width {} \
                         need at least [{}, {}]",
                        src.display_name("position_embd.weight"),
                        cfg.context_length,
                        cfg.hidden,
                        cfg.context_length + offset,
                        cfg.hidden
                    );
                }
                Some(p)
            }
            None => None,
        };
        // Tied embeddings: models without `output.weight` project with the token embeddings,
        // held once, in the projection's layout. Loaded last, so the transposition's working
        // copy never sits beside a half-loaded model.
        let (embed, output) = if src.has("output.weight") {
            (
                Some(src.tensor("token_embd.weight")?),
                src.matrix("output.weight")?,
            )
        } else {
            (None, src.dense("token_embd.weight")?)
        };
        if output.in_features() != cfg.hidden {
            bail!(
                "tensor `{}` has rows of {}, but the hidden size is {}",
                src.display_name("token_embd.weight"),
                output.in_features(),
                cfg.hidden
            );
        }
        let inv_freq = inverse_frequencies(cfg.rotary_dims, cfg.rope, &device)?;
        let inv_freq_local = inverse_frequencies(cfg.rotary_dims, cfg.rope_local, &device)?;
        Ok(Self {
            cfg,
            embed,
            positions,
            layers,
            norm,
            output,
            inv_freq,
            inv_freq_local,
            device,
        })
    }

    /// Entries of the vocabulary the output projection scores.
    pub fn vocab_size(&self) -> usize {
        self.output.out_features()
    }

    /// Where the weights live and the forward pass runs.
    pub fn device(&self) -> &Device {
        &self.device
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
        let seg = Segment {
            ids,
            past: vec![cache],
        };
        let mut out = self.forward_segments(&[seg], CacheOut::Full)?;
        Ok(out.pop().expect("one segment in, one out"))
    }

    /// Runs several independent segments in one pass: their rows share every matrix product,
    /// while each attends only to its own past and itself. Each segment's numbers are bit for
    /// bit those of running it alone with at least two rows, whatever else is in the pass:
    /// candle's products give every row the same bits for any number of rows ≥ 2 (one row takes
    /// a matrix-vector path that rounds differently), so a lone row is run beside a copy of
    /// itself. Returns each segment's hidden states and, per `keep`, its keys and values.
    pub fn forward_packed(
        &self,
        segments: &[Segment<'_>],
        keep: CacheOut,
    ) -> Result<Vec<(Tensor, KvCache)>> {
        let rows: usize = segments.iter().map(|s| s.ids.len()).sum();
        if rows == 1 {
            let twice = [segments[0].clone(), segments[0].clone()];
            let mut two = self.forward_segments(&twice, keep)?;
            two.truncate(1);
            return Ok(two);
        }
        self.forward_segments(segments, keep)
    }

    /// [`Decoder::forward_packed`] over passes of at most [`PACK_ROWS`] rows (a longer segment
    /// alone), which bounds the activations' memory; the outputs in segment order.
    pub fn forward_in_passes(
        &self,
        segments: &[Segment<'_>],
        keep: CacheOut,
    ) -> Result<Vec<(Tensor, KvCache)>> {
        let mut out = Vec::with_capacity(segments.len());
        let mut from = 0;
        while from < segments.len() {
            let mut to = from + 1;
            let mut rows = segments[from].ids.len();
            while to < segments.len() && rows + segments[to].ids.len() <= PACK_ROWS {
                rows += segments[to].ids.len();
                to += 1;
            }
            out.extend(self.forward_packed(&segments[from..to], keep)?);
            from = to;
        }
        Ok(out)
    }

    /// Floating-point operations (a multiply-add counts two) of one pass over `tokens` tokens
    /// from an empty cache, with logits at the last position only: every layer's projections,
    /// and attention over the keys each position sees (the causal triangle, within the window
    /// for sliding layers). What a pass must do, whatever its kernels: the benchmark divides it
    /// by the time taken and by the machine's matrix-product rate.
    pub fn prefill_flops(&self, tokens: usize) -> f64 {
        let mac = |p: &Proj| (p.w.in_features() * p.w.out_features()) as f64;
        let n = tokens as f64;
        let mut total = 2.0 * (self.cfg.hidden * self.vocab_size()) as f64;
        for (li, l) in self.layers.iter().enumerate() {
            let mut per_token = mac(&l.o) + mac(&l.up) + mac(&l.down);
            per_token += match &l.qkv {
                Qkv::Split(q, k, v) => mac(q) + mac(k) + mac(v),
                Qkv::Fused(p) => mac(p),
            };
            per_token += l.gate.as_ref().map_or(0.0, mac);
            let w = self.window(li).unwrap_or(tokens).min(tokens) as f64;
            // Σ over positions p of min(p + 1, w): the keys each query sees.
            let seen = w * (w + 1.0) / 2.0 + (n - w) * w;
            let attention = 2.0 * (self.cfg.n_heads * self.cfg.head_dim) as f64 * seen;
            total += 2.0 * per_token * n + 2.0 * attention;
        }
        total
    }

    /// Bytes of keys and values a cache of `tokens` tokens holds: every token in a global layer,
    /// at most the window's last `window - 1` in a sliding-window layer.
    pub fn cache_bytes(&self, tokens: usize) -> usize {
        (0..self.layers.len())
            .map(|li| self.held(li, tokens) * self.token_bytes())
            .sum()
    }

    /// Bytes of keys and values one token adds to one layer's cache.
    pub fn token_bytes(&self) -> usize {
        2 * self.cfg.n_kv_heads * self.cfg.head_dim * 4
    }

    /// The sliding window of layer `li`, `None` for a global layer.
    fn window(&self, li: usize) -> Option<usize> {
        self.cfg
            .sliding_window
            .filter(|_| self.cfg.sliding_layers[li])
    }

    /// Keys layer `li` keeps after `tokens` tokens: what the next query can still see.
    fn held(&self, li: usize, tokens: usize) -> usize {
        match self.window(li) {
            Some(w) => tokens.min(w.saturating_sub(1)),
            None => tokens,
        }
    }

    fn forward_segments(
        &self,
        segments: &[Segment<'_>],
        keep: CacheOut,
    ) -> Result<Vec<(Tensor, KvCache)>> {
        let (spans, mut x) = self.embed_segments(segments)?;
        let rows = spans.iter().map(|s| s.1).sum::<usize>();
        let rotary = self.cfg.rotary_dims > 0;
        let (cos, sin, local) = self.segment_angles(&spans)?;
        let (nh, nkv, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let mut kept: Vec<Vec<LayerKv>> = vec![Vec::with_capacity(self.layers.len()); spans.len()];
        for (li, layer) in self.layers.iter().enumerate() {
            let sliding = self.cfg.sliding_layers[li];
            let h = self.pre_norm(&layer.attn_norm, &x)?;
            let (mut q, mut k, v) = match &layer.qkv {
                Qkv::Split(q, k, v) => (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?),
                Qkv::Fused(p) => {
                    let y = p.forward(&h)?;
                    (
                        y.narrow(2, 0, nh * hd)?,
                        y.narrow(2, nh * hd, nkv * hd)?,
                        y.narrow(2, (nh + nkv) * hd, nkv * hd)?,
                    )
                }
            };
            if let Some(QkNorm::Whole(qn, kn)) = &layer.qk_norm {
                q = self.rms(&q.contiguous()?, qn)?;
                k = self.rms(&k.contiguous()?, kn)?;
            }
            let heads =
                |x: Tensor, n: usize| x.reshape((1, rows, n, hd))?.transpose(1, 2)?.contiguous();
            let (mut q, mut k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
            if let Some(QkNorm::PerHead(qn, kn)) = &layer.qk_norm {
                q = self.rms(&q, qn)?;
                k = self.rms(&k, kn)?;
            }
            if rotary {
                let (c, s) = match (&local, sliding) {
                    (Some((c, s)), true) => (c, s),
                    _ => (&cos, &sin),
                };
                q = self.rotate(&q, c, s)?;
                k = self.rotate(&k, c, s)?;
            }
            let mut outs =
                self.attend_segments(li, &q, &k, &v, &spans, segments, keep, &mut kept)?;
            let attn = if outs.len() == 1 {
                outs.pop().expect("one segment")
            } else {
                Tensor::cat(&outs, 2)?
            };
            let attn = attn.transpose(1, 2)?.reshape((1, rows, nh * hd))?;
            let attn = self.post_norm(&layer.post_attn_norm, layer.o.forward(&attn)?)?;
            if self.cfg.parallel_residual {
                // The MLP reads the layer's input, not the attention's output (GPT-NeoX).
                let ff = self.mlp(layer, &self.pre_norm(&layer.ffn_norm, &x)?)?;
                x = ((ff + attn)? + x)?;
            } else {
                x = (x + attn)?;
                let ff = self.mlp(layer, &self.pre_norm(&layer.ffn_norm, &x)?)?;
                x = (x + self.post_norm(&layer.post_ffn_norm, ff)?)?;
            }
        }
        let x = self.norm(&self.norm, &x)?.squeeze(0)?;
        let mut out = Vec::with_capacity(spans.len());
        for (&(off, t, past), layers) in spans.iter().zip(kept) {
            let hidden = if spans.len() == 1 {
                x.clone()
            } else {
                x.narrow(0, off, t)?
            };
            let len = match keep {
                CacheOut::Full => past + t,
                CacheOut::Own => t,
            };
            out.push((hidden, KvCache { layers, len }));
        }
        Ok(out)
    }

    /// The packed segments' token embeddings (scaled, plus learned positions) as `[1, rows, d]`,
    /// and each segment's (first row, tokens, past tokens); checks each fits the context.
    #[allow(clippy::type_complexity)]
    fn embed_segments(
        &self,
        segments: &[Segment<'_>],
    ) -> Result<(Vec<(usize, usize, usize)>, Tensor)> {
        let mut spans = Vec::with_capacity(segments.len());
        let mut ids = Vec::new();
        for seg in segments {
            let t = seg.ids.len();
            if t == 0 {
                bail!("forward pass over zero tokens");
            }
            let past: usize = seg.past.iter().map(|c| c.len).sum();
            if past + t > self.cfg.context_length {
                bail!(
                    "sequence of {} tokens exceeds the model's context length {}",
                    past + t,
                    self.cfg.context_length
                );
            }
            spans.push((ids.len(), t, past));
            ids.extend_from_slice(seg.ids);
        }
        let ids_t = Tensor::new(ids.as_slice(), &self.device)?;
        let x = match &self.embed {
            Some(e) => e.index_select(&ids_t, 0)?,
            None => self.output.rows(&ids_t)?,
        };
        let mut x = x.unsqueeze(0)?; // [1, rows, d]
        if let Some(s) = self.cfg.embed_scale {
            x = (x * s)?;
        }
        if let (Some(table), Some(offset)) = (&self.positions, self.cfg.learned_positions) {
            let pos: Vec<u32> = spans
                .iter()
                .flat_map(|&(_, t, past)| (past..past + t).map(move |p| (p + offset) as u32))
                .collect();
            let pos = table.index_select(&Tensor::new(pos.as_slice(), &self.device)?, 0)?;
            x = x.broadcast_add(&pos)?;
        }
        Ok((spans, x))
    }

    /// The rotary angles (cos, sin) of every packed row, and the sliding layers' own where their
    /// base differs; empty without rotary embeddings.
    #[allow(clippy::type_complexity)]
    fn segment_angles(
        &self,
        spans: &[(usize, usize, usize)],
    ) -> Result<(Tensor, Tensor, Option<(Tensor, Tensor)>)> {
        let angles = |inv: &Tensor| -> Result<(Tensor, Tensor)> {
            let parts = spans
                .iter()
                .map(|&(_, t, past)| rope_angles(inv, past, t, &self.device))
                .collect::<Result<Vec<_>>>()?;
            let (cos, sin): (Vec<Tensor>, Vec<Tensor>) = parts.into_iter().unzip();
            Ok((Tensor::cat(&cos, 0)?, Tensor::cat(&sin, 0)?))
        };
        let rotary = self.cfg.rotary_dims > 0;
        let (cos, sin) = if rotary {
            angles(&self.inv_freq)?
        } else {
            let none = Tensor::zeros(0, DType::F32, &self.device)?;
            (none.clone(), none)
        };
        let local = if rotary && self.cfg.rope_local != self.cfg.rope {
            Some(angles(&self.inv_freq_local)?)
        } else {
            None
        };
        Ok((cos, sin, local))
    }

    /// Layer `li`'s attention of each segment over its past caches and itself, its keys and
    /// values kept as `keep` says into `kept`.
    #[allow(clippy::too_many_arguments)]
    fn attend_segments(
        &self,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        spans: &[(usize, usize, usize)],
        segments: &[Segment<'_>],
        keep: CacheOut,
        kept: &mut [Vec<LayerKv>],
    ) -> Result<Vec<Tensor>> {
        let window = self.window(li);
        let mut outs = Vec::with_capacity(spans.len());
        for (si, &(off, t, _)) in spans.iter().enumerate() {
            let part = |x: &Tensor| -> Result<Tensor> {
                Ok(if spans.len() == 1 {
                    x.clone()
                } else {
                    x.narrow(2, off, t)?.contiguous()?
                })
            };
            let (q, k_own, v_own) = (part(q)?, part(k)?, part(v)?);
            // Position of the first key held: only the first past cache may have dropped
            // keys (a full cache continued by its own tokens), so the rest follow on.
            let mut pieces: Vec<(Tensor, Tensor)> = Vec::new();
            let (mut at, mut first) = (0, None);
            for c in &segments[si].past {
                if let Some(l) = c.layers.get(li) {
                    match first {
                        None => first = Some(at + l.dropped),
                        Some(_) if l.dropped > 0 => {
                            bail!("a cache with dropped keys continues another cache")
                        }
                        Some(_) => {}
                    }
                    pieces.extend(l.pieces.iter().cloned());
                }
                at += c.len;
            }
            let offset = first.unwrap_or(at);
            pieces.push((k_own, v_own));
            let (k_all, v_all) = if pieces.len() == 1 {
                pieces[0].clone()
            } else {
                let (ks, vs): (Vec<&Tensor>, Vec<&Tensor>) =
                    pieces.iter().map(|(k, v)| (k, v)).unzip();
                (Tensor::cat(&ks, 2)?, Tensor::cat(&vs, 2)?)
            };
            outs.push(self.attention(&q, &k_all, &v_all, window, offset)?); // [1, nh, t, hd]
            kept[si].push(match keep {
                CacheOut::Full => {
                    let end = at + t;
                    let held = k_all.dim(2)?;
                    let keep = self.held(li, end);
                    if keep < held {
                        // A copy, so the dropped keys' memory goes with the pass.
                        let tail = |x: &Tensor| x.narrow(2, held - keep, keep)?.contiguous();
                        LayerKv {
                            pieces: vec![(tail(&k_all)?, tail(&v_all)?)],
                            dropped: end - keep,
                        }
                    } else {
                        LayerKv {
                            pieces,
                            dropped: offset,
                        }
                    }
                }
                CacheOut::Own => LayerKv {
                    pieces: vec![pieces.pop().expect("the segment's own piece")],
                    dropped: 0,
                },
            });
        }
        Ok(outs)
    }

    /// `norm(x)` in the config's kind.
    fn norm(&self, n: &Norm, x: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.norm_eps as f32;
        Ok(match (&self.cfg.norm, &n.b) {
            // Two passes (mean, then the centred variance), as torch computes it: the one-pass
            // E[x²] - E[x]² of candle's fused kernel cancels badly where a row's mean is large.
            (NormKind::Layer, Some(b)) => candle_nn::ops::layer_norm_slow(x, &n.w, b, eps)?,
            _ => self.rms(x, &n.w)?,
        })
    }

    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, w, self.cfg.norm_eps as f32)?)
    }

    /// The norm before a block, or its input itself where the family has none.
    fn pre_norm(&self, n: &Option<Norm>, x: &Tensor) -> Result<Tensor> {
        match n {
            Some(n) => self.norm(n, x),
            None => Ok(x.clone()),
        }
    }

    /// The norm of a block's output, where the family has one.
    fn post_norm(&self, n: &Option<Norm>, y: Tensor) -> Result<Tensor> {
        match n {
            Some(n) => self.norm(n, &y),
            None => Ok(y),
        }
    }

    /// Rotary embedding of the first `rotary_dims` of each head `[1, heads, t, head_dim]`.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let rope = match self.cfg.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i,
            RopeStyle::Halves => candle_nn::rotary_emb::rope,
        };
        let (hd, rd) = (self.cfg.head_dim, self.cfg.rotary_dims);
        if rd == hd {
            return Ok(rope(x, cos, sin)?);
        }
        let turned = rope(&x.narrow(3, 0, rd)?.contiguous()?, cos, sin)?;
        Ok(Tensor::cat(&[&turned, &x.narrow(3, rd, hd - rd)?], 3)?)
    }

    fn mlp(&self, layer: &Layer, h: &Tensor) -> Result<Tensor> {
        let act = |x: &Tensor| super::activation::apply(self.cfg.activation, x);
        let inner = match (&self.cfg.mlp, &layer.gate) {
            (Mlp::Gated, Some(gate)) => (act(&gate.forward(h)?)? * layer.up.forward(h)?)?,
            (Mlp::Gated, None) => {
                let both = layer.up.forward(h)?;
                let half = both.dim(D::Minus1)? / 2;
                (act(&both.narrow(D::Minus1, 0, half)?)? * both.narrow(D::Minus1, half, half)?)?
            }
            (Mlp::Plain, _) => act(&layer.up.forward(h)?)?,
        };
        layer.down.forward(&inner)
    }

    /// Log-probabilities over the vocabulary at the given rows of `hidden`: `[rows.len(), vocab]`.
    /// Projecting only the rows scoring uses avoids the vocabulary product at every context position.
    pub fn log_probs(&self, hidden: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let idx = Tensor::new(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            &self.device,
        )?;
        self.log_probs_all(&hidden.index_select(&idx, 0)?)
    }

    /// Log-probabilities over the vocabulary at every row of `hidden`. A lone row is projected
    /// beside a copy of itself, so each row's bits never depend on the other rows (see
    /// [`Decoder::forward_packed`]).
    pub fn log_probs_all(&self, hidden: &Tensor) -> Result<Tensor> {
        if hidden.dim(0)? == 1 {
            let twice = Tensor::cat(&[hidden, hidden], 0)?;
            return Ok(self.log_probs_all(&twice)?.narrow(0, 0, 1)?);
        }
        let mut logits = self.output.forward(hidden)?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }

    /// Attention of queries `[1, nh, t, hd]` (the last t of the s positions) over keys and values
    /// `[1, nkv, s, hd]`, causal (and within `window`). Each key/value head's query heads are stacked into
    /// one product (no copies of the keys per head), and queries go in blocks that read only the
    /// keys a block can see (the causal triangle's far side and, with a sliding window, what
    /// fell out of it are never computed). The blocks depend only on t and s, never on what else
    /// runs, so results stay those of the same chunk anywhere.
    ///
    /// The keys held start at position `offset` (those before it fell out of the window); a
    /// block reads the same keys, in the same product, whether or not older ones are held.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        window: Option<usize>,
        offset: usize,
    ) -> Result<Tensor> {
        let (_, nh, t, hd) = q.dims4()?;
        let (nkv, s) = (k.dim(1)?, k.dim(2)?);
        let groups = nh / nkv;
        let past = offset + s - t;
        let q = q.reshape((nkv, groups, t, hd))?;
        let (k, v) = (k.squeeze(0)?, v.squeeze(0)?);
        // Keys transposed once for every block: each block's product reads its range in place
        // (rows of the transposed keys are `s` apart), where a copy per block would gather the
        // keys again for each of a long prompt's hundreds of blocks.
        let kt = transposed_keys(&k)?;
        let mut blocks = Vec::with_capacity(t.div_ceil(QUERY_BLOCK));
        for b0 in (0..t).step_by(QUERY_BLOCK) {
            let len = QUERY_BLOCK.min(t - b0);
            // Keys [from, to): the newest this block's last query sees, back to the oldest its
            // first query sees.
            let to = past + b0 + len;
            let from = window.map_or(0, |w| (past + b0 + 1).saturating_sub(w));
            if from < offset {
                bail!("attention needs key {from}, but the cache holds keys from {offset} on");
            }
            let keys = to - from;
            let qb = q
                .narrow(2, b0, len)?
                .contiguous()?
                .reshape((nkv, groups * len, hd))?;
            let (mut kbt, mut vb) = (
                kt.narrow(2, from - offset, keys)?,
                v.narrow(1, from - offset, keys)?,
            );
            if !self.device.is_cpu() {
                (kbt, vb) = (kbt.contiguous()?, vb.contiguous()?);
            }
            let scores = qb.matmul(&kbt)?;
            let vis = Visibility {
                queries: len,
                first_query: past + b0,
                first_key: from,
                window,
            };
            let probs = if self.device.is_cpu() && self.cfg.attn_softcap.is_none() {
                masked_softmax(&scores, self.cfg.attn_scale as f32, vis)?
            } else {
                let mut scores = (scores * self.cfg.attn_scale)?;
                if let Some(cap) = self.cfg.attn_softcap {
                    scores = ((scores / cap)?.tanh()? * cap)?;
                }
                let mb = vis.mask(keys, &self.device)?;
                let scores = scores
                    .reshape((nkv, groups, len, keys))?
                    .broadcast_add(&mb)?;
                candle_nn::ops::softmax_last_dim(&scores)?
            };
            let out = probs.reshape((nkv, groups * len, keys))?.matmul(&vb)?;
            blocks.push(out.reshape((nkv, groups, len, hd))?);
        }
        let out = if blocks.len() == 1 {
            blocks.pop().expect("one block")
        } else {
            Tensor::cat(&blocks, 2)?
        };
        Ok(out.reshape((1, nh, t, hd))?)
    }
}

/// A norm `{base}.weight` (and `.bias`), in the config's kind.
fn load_norm(cfg: &DecoderConfig, src: &mut dyn TensorSource, base: &str) -> Result<Norm> {
    let name = format!("{base}.weight");
    let w = src.norm(&name)?;
    let width = w.dims1()?;
    if width != cfg.hidden {
        bail!(
            "tensor `{}` has {width} entries, but the hidden size is {}",
            src.display_name(&name),
            cfg.hidden
        );
    }
    let bias = format!("{base}.bias");
    let b = match cfg.norm {
        NormKind::Rms => None,
        NormKind::Layer if src.has(&bias) => Some(src.tensor(&bias)?),
        NormKind::Layer => Some(Tensor::zeros(width, DType::F32, &src.device().clone())?),
    };
    Ok(Norm { w, b })
}

/// A norm the config says a layer has, or `None` when it has none.
fn layer_norm_if(
    cfg: &DecoderConfig,
    src: &mut dyn TensorSource,
    present: bool,
    base: &str,
) -> Result<Option<Norm>> {
    Ok(if present {
        Some(load_norm(cfg, src, base)?)
    } else {
        None
    })
}

/// `{base}.weight` `[out, in]` (and `.bias` when the file has it), checked against the shape the
/// config implies (`out` `None`: any number of outputs).
fn load_proj(
    src: &mut dyn TensorSource,
    base: &str,
    out: Option<usize>,
    inputs: usize,
) -> Result<Proj> {
    let name = format!("{base}.weight");
    let w = src.matrix(&name)?;
    let (o, i) = (w.out_features(), w.in_features());
    if i != inputs || out.is_some_and(|out| out != o) {
        let want = out.map_or("N".to_string(), |o| o.to_string());
        bail!(
            "tensor `{}` is [{o}, {i}] (outputs, inputs), but the config implies [{want}, {inputs}]",
            src.display_name(&name)
        );
    }
    let bias = format!("{base}.bias");
    let b = if src.has(&bias) {
        let b = src.tensor(&bias)?;
        if b.dims1()? != o {
            bail!(
                "tensor `{}` has {} entries for {o} outputs",
                src.display_name(&bias),
                b.dims1()?
            );
        }
        Some(b)
    } else {
        None
    };
    Ok(Proj { w, b })
}

/// Query/key norms, per head or over the whole projection, told apart by their width.
fn load_qk_norm(cfg: &DecoderConfig, src: &mut dyn TensorSource, i: usize) -> Result<QkNorm> {
    let (qn, kn) = (
        format!("blk.{i}.attn_q_norm.weight"),
        format!("blk.{i}.attn_k_norm.weight"),
    );
    let (q, k) = (src.norm(&qn)?, src.norm(&kn)?);
    let (wq, wk) = (q.dims1()?, k.dims1()?);
    let hd = cfg.head_dim;
    if wq == hd && wk == hd {
        Ok(QkNorm::PerHead(q, k))
    } else if wq == cfg.n_heads * hd && wk == cfg.n_kv_heads * hd {
        Ok(QkNorm::Whole(q, k))
    } else {
        bail!(
            "tensors `{}` / `{}` have {wq} / {wk} entries: neither one head ({hd}) nor the \
             whole projections ({} / {})",
            src.display_name(&qn),
            src.display_name(&kn),
            cfg.n_heads * hd,
            cfg.n_kv_heads * hd
        )
    }
}

fn load_layer(cfg: &DecoderConfig, src: &mut dyn TensorSource, i: usize) -> Result<Layer> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let (d, hd) = (cfg.hidden, cfg.head_dim);
    let (q_out, kv_out) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
    let qkv = if src.has(&n("attn_qkv.weight")) {
        Qkv::Fused(load_proj(src, &n("attn_qkv"), Some(q_out + 2 * kv_out), d)?)
    } else {
        Qkv::Split(
            load_proj(src, &n("attn_q"), Some(q_out), d)?,
            load_proj(src, &n("attn_k"), Some(kv_out), d)?,
            load_proj(src, &n("attn_v"), Some(kv_out), d)?,
        )
    };
    let qk_norm = if cfg.qk_norm {
        Some(load_qk_norm(cfg, src, i)?)
    } else {
        None
    };
    let fused_gate = cfg.mlp == Mlp::Gated && !src.has(&n("ffn_gate.weight"));
    let up = load_proj(src, &n("ffn_up"), None, d)?;
    let inter = if fused_gate {
        let o = up.w.out_features();
        if !o.is_multiple_of(2) {
            bail!(
                "tensor `{}` (gate and up projections in one) has an odd number of outputs, {o}",
                src.display_name(&n("ffn_up.weight"))
            );
        }
        o / 2
    } else {
        up.w.out_features()
    };
    let gate = match cfg.mlp {
        Mlp::Gated if !fused_gate => Some(load_proj(src, &n("ffn_gate"), Some(inter), d)?),
        _ => None,
    };
    Ok(Layer {
        attn_norm: layer_norm_if(cfg, src, cfg.pre_norms, &n("attn_norm"))?,
        qkv,
        qk_norm,
        o: load_proj(src, &n("attn_output"), Some(d), q_out)?,
        post_attn_norm: layer_norm_if(cfg, src, cfg.post_norms, &n("post_attention_norm"))?,
        ffn_norm: layer_norm_if(cfg, src, cfg.pre_norms, &n("ffn_norm"))?,
        gate,
        up,
        down: load_proj(src, &n("ffn_down"), Some(d), inter)?,
        post_ffn_norm: layer_norm_if(cfg, src, cfg.post_norms, &n("post_ffw_norm"))?,
    })
}

/// Queries per attention block.
const QUERY_BLOCK: usize = 128;

/// Rows of one packed forward pass.
const PACK_ROWS: usize = 1024;

/// `1 / base^(2i / dims)` over the rotating dimensions (not the whole head, for partial rotary).
fn inverse_frequencies(dims: usize, rope: Rope, device: &Device) -> Result<Tensor> {
    let half = dims / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / rope.base.powf(2.0 * i as f32 / dims as f32) / rope.linear_factor)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_counts_the_query_itself() {
        // Window 2 at positions 3..5 after 3 cached tokens: each query sees itself and one before.
        let block = |first_query, window| Visibility {
            queries: 2,
            first_query,
            first_key: 0,
            window,
        };
        let m = block(3, Some(2))
            .mask(5, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let visible: Vec<Vec<usize>> = m
            .iter()
            .map(|r| (0..r.len()).filter(|&j| r[j] == 0.0).collect())
            .collect();
        assert_eq!(visible, vec![vec![2, 3], vec![3, 4]]);
        let causal = block(1, None)
            .mask(3, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(causal[0][2], f32::NEG_INFINITY);
        assert_eq!(causal[1][2], 0.0);
    }
}
