//! The attention's CPU kernels: the keys transposed for the score product, and the softmax
//! (scale, causal and sliding-window mask, `exp` and normalization) in one pass over the scores.
//!
//! candle's softmax path takes four passes and a mask tensor (scale, add the mask, then its softmax with
//! libm's `expf` per element, 9% of a long-prompt profile). Here each query row reads only the keys
//! it sees, and `exp` is the activations' polynomial, in plain multiplies and adds, so every CPU
//! path rounds alike. A row's result depends only on its own scores, never on the other rows.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{contiguous_f32, exp};

/// Which keys the query rows of a block see.
#[derive(Debug, Clone, Copy)]
pub struct Visibility {
    /// Query rows per head: the scores are `[heads, queries, keys]`.
    pub queries: usize,
    /// Absolute position of the first query.
    pub first_query: usize,
    /// Absolute position of the first key.
    pub first_key: usize,
    /// Sliding window, counting the query itself (as transformers does).
    pub window: Option<usize>,
}

impl Visibility {
    /// Keys `[lo, hi)` (relative to the first key) that the query row `i` of a head sees.
    pub fn keys(&self, i: usize, keys: usize) -> (usize, usize) {
        let p = self.first_query + i;
        let hi = (p + 1).saturating_sub(self.first_key).min(keys);
        let oldest = self.window.map_or(0, |w| (p + 1).saturating_sub(w));
        let lo = oldest.saturating_sub(self.first_key).min(hi);
        (lo, hi)
    }

    /// Additive mask `[queries, keys]`: 0 where a query sees the key, -∞ elsewhere (for
    /// candle's own softmax, off the CPU).
    pub fn mask(&self, keys: usize, device: &Device) -> candle_core::Result<Tensor> {
        let mask: Vec<f32> = (0..self.queries)
            .flat_map(|i| {
                let (lo, hi) = self.keys(i, keys);
                (0..keys).map(move |j| {
                    if (lo..hi).contains(&j) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        Tensor::from_vec(mask, (self.queries, keys), device)
    }
}

/// `softmax(scale · scores)` over the last dimension of `scores` (`[.., queries, keys]`, float32
/// on the CPU), each row over the keys it sees; the others get probability 0.
pub fn masked_softmax(scores: &Tensor, scale: f32, vis: Visibility) -> anyhow::Result<Tensor> {
    Ok(scores.contiguous()?.apply_op1_no_bwd(&Op { scale, vis })?)
}

struct Op {
    scale: f32,
    vis: Visibility,
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        "icl-eval-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(s, l, "masked softmax")?;
        let keys = l.dims().last().copied().unwrap_or(0);
        let queries = self.vis.queries.max(1);
        if keys == 0 || !input.len().is_multiple_of(keys * queries) {
            candle_core::bail!("masked softmax: scores are not [heads, queries, keys]");
        }
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(ROWS_PER_TASK * keys)
            .zip(input.par_chunks(ROWS_PER_TASK * keys))
            .enumerate()
            .for_each(|(task, (o, x))| {
                for (r, (o, x)) in o
                    .chunks_exact_mut(keys)
                    .zip(x.chunks_exact(keys))
                    .enumerate()
                {
                    let i = (task * ROWS_PER_TASK + r) % queries;
                    let (lo, hi) = self.vis.keys(i, keys);
                    row(&x[lo..hi], &mut o[lo..hi], self.scale);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

fn row(x: &[f32], out: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { row_avx2(x, out, scale) };
    }
    row_portable(x, out, scale);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(x: &[f32], out: &mut [f32], scale: f32) {
    row_portable(x, out, scale);
}

/// Lanes of the running max and sum: a fixed order of additions that the compiler can vectorize,
/// the same at every vector width.
const LANES: usize = 8;

#[inline(always)]
fn row_portable(x: &[f32], out: &mut [f32], scale: f32) {
    if x.is_empty() {
        return;
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v * scale);
        }
    }
    let mut max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in chunks.remainder() {
        max = max.max(v * scale);
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp(v * scale - max);
    }
    let mut sums = [0f32; LANES];
    let mut chunks = out.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &e) in sums.iter_mut().zip(c) {
            *s += e;
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for &e in chunks.remainder() {
        sum += e;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// Keys `[heads, keys, d]` (any strides) as a contiguous `[heads, d, keys]`: the score product
/// `q @ kᵀ` reads this layout in place, where given `k.t()` candle's kernel first gathers the keys
/// element by element, once per query block. The arithmetic is the same, bit for bit.
pub fn transposed_keys(k: &Tensor) -> anyhow::Result<Tensor> {
    if !k.device().is_cpu() || k.dtype() != DType::F32 || k.rank() != 3 {
        return Ok(k.transpose(1, 2)?.contiguous()?);
    }
    Ok(k.apply_op1_no_bwd(&TransposeKeys)?)
}

struct TransposeKeys;

impl CustomOp1 for TransposeKeys {
    fn name(&self) -> &'static str {
        "icl-eval-transpose-keys"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("transpose keys: float32 only");
        };
        let (heads, keys, d) = l.shape().dims3()?;
        let st = l.stride();
        let (sh, sk, sd) = (st[0], st[1], st[2]);
        let base = l.start_offset();
        let mut out = vec![0f32; heads * d * keys];
        if keys > 0 {
            // A task fills one output row: dimension j of one head, over every key.
            out.par_chunks_mut(keys).enumerate().for_each(|(row, dst)| {
                let (h, j) = (row / d, row % d);
                let from = base + h * sh + j * sd;
                for (t, o) in dst.iter_mut().enumerate() {
                    *o = v[from + t * sk];
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((heads, d, keys))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The softmax with candle's kernels over an explicit additive mask.
    fn reference(scores: &Tensor, scale: f32, vis: Visibility) -> Vec<Vec<f32>> {
        let keys = scores.dim(1).unwrap();
        let mask = vis.mask(keys, &Device::Cpu).unwrap();
        let s = (scores * scale as f64)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        candle_nn::ops::softmax_last_dim(&s)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_the_masked_softmax_of_candle() {
        for (queries, keys, first_query, first_key, window) in [
            (5, 5, 0, 0, None),        // a fresh causal block
            (3, 40, 37, 0, None),      // after 37 cached tokens
            (4, 20, 30, 14, Some(10)), // a sliding window that starts past the first key
            (1, 1, 0, 0, Some(1)),
            (17, 300, 283, 0, Some(64)),
        ] {
            let vis = Visibility {
                queries,
                first_query,
                first_key,
                window,
            };
            let scores =
                (Tensor::randn(0f32, 3.0, (queries, keys), &Device::Cpu).unwrap() + 5.0).unwrap();
            let ours = masked_softmax(&scores, 0.125, vis)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let theirs = reference(&scores, 0.125, vis);
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                let (lo, hi) = vis.keys(i, keys);
                assert!(lo < hi, "every query sees a key");
                assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                for (j, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= 4.0 * f32::EPSILON * y.max(1e-30) + 1e-7,
                        "{queries}x{keys} row {i} key {j}: {x} vs {y}"
                    );
                    if !(lo..hi).contains(&j) {
                        assert_eq!(*x, 0.0);
                    }
                }
            }
        }
    }

    #[test]
    fn heads_repeat_the_query_rows() {
        // Two heads of three queries: head 1's rows see what head 0's do.
        let vis = Visibility {
            queries: 3,
            first_query: 2,
            first_key: 0,
            window: None,
        };
        let scores = Tensor::ones((2, 3, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let p = masked_softmax(&scores, 1.0, vis)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(p[0], p[1]);
        assert_eq!(p[0][0], vec![1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]);
        assert_eq!(p[0][2], vec![0.2; 5]);
    }

    #[test]
    fn keys_transpose_from_any_window() {
        let k = Tensor::randn(0f32, 1.0, (3, 40, 8), &Device::Cpu).unwrap();
        let window = k.narrow(1, 5, 30).unwrap();
        let ours = transposed_keys(&window).unwrap();
        assert!(ours.is_contiguous());
        assert_eq!(
            ours.to_vec3::<f32>().unwrap(),
            window.transpose(1, 2).unwrap().to_vec3::<f32>().unwrap()
        );
        let q = Tensor::randn(0f32, 1.0, (3, 17, 8), &Device::Cpu).unwrap();
        assert_eq!(
            q.matmul(&ours).unwrap().to_vec3::<f32>().unwrap(),
            q.matmul(&window.contiguous().unwrap().t().unwrap())
                .unwrap()
                .to_vec3::<f32>()
                .unwrap(),
            "the score product is the same bit for bit"
        );
    }

    /// The attention transposes a layer's keys once and multiplies each query block by a range
    /// of them in place (rows `s` apart): bit for bit the product with that range copied out,
    /// and likewise for the values' range.
    #[test]
    fn products_read_key_and_value_ranges_in_place() {
        for heads in [1, 2] {
            let k = Tensor::randn(0f32, 1.0, (heads, 300, 64), &Device::Cpu).unwrap();
            let v = Tensor::randn(0f32, 1.0, (heads, 300, 64), &Device::Cpu).unwrap();
            let all = transposed_keys(&k).unwrap();
            let q = Tensor::randn(0f32, 1.0, (heads, 130, 64), &Device::Cpu).unwrap();
            for (from, keys) in [(0, 300), (37, 200), (171, 129)] {
                let copied = transposed_keys(&k.narrow(1, from, keys).unwrap()).unwrap();
                let scores = q.matmul(&copied).unwrap();
                assert_eq!(
                    q.matmul(&all.narrow(2, from, keys).unwrap())
                        .unwrap()
                        .to_vec3::<f32>()
                        .unwrap(),
                    scores.to_vec3::<f32>().unwrap()
                );
                let vb = v.narrow(1, from, keys).unwrap();
                assert_eq!(
                    scores.matmul(&vb).unwrap().to_vec3::<f32>().unwrap(),
                    scores
                        .matmul(&vb.contiguous().unwrap())
                        .unwrap()
                        .to_vec3::<f32>()
                        .unwrap()
                );
            }
        }
    }
}
