//! Fused CPU kernels for the forward pass's element-wise steps.
//!
//! candle runs each unary op on one thread and writes a fresh tensor per op. The feed-forward
//! gate, `act(gate) * up`, is the largest element-wise step (tokens × intermediate size per
//! layer), and GELU's `tanh` alone took a tenth of a Gemma 3 prefill. Here it is one pass over
//! both inputs, split across the thread pool. Each element is computed with candle's own scalar
//! formula, so the result is bit for bit `act(gate) * up` as candle computes it.

use anyhow::{Result, bail};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::decoder::Activation;

/// Elements per parallel task: large enough that scheduling costs nothing next to the work.
const CHUNK: usize = 16 * 1024;

/// `act(gate) * up`, element-wise, for two float32 tensors of one shape.
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        bail!(
            "gate {:?} and up {:?} projections differ in shape",
            gate.shape(),
            up.shape()
        );
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    Ok(gate.apply_op2_no_bwd(&up, &Gated(act))?)
}

/// candle's `gelu` (tanh approximation), element for element.
#[inline(always)]
fn gelu_tanh(v: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * v * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)))
}

/// candle's `silu`, element for element.
#[inline(always)]
fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

struct Gated(Activation);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else {
            candle_core::bail!("gated activation: float32 tensors only");
        };
        let (Some((g0, g1)), Some((u0, u1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("gated activation: contiguous tensors only");
        };
        let (g, u) = (&g[g0..g1], &u[u0..u1]);
        let mut out = vec![0f32; g.len()];
        let act = self.0;
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| match act {
                Activation::Silu => {
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        *o = silu(g) * u;
                    }
                }
                Activation::GeluTanh => {
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        *o = gelu_tanh(g) * u;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gated_is_bit_for_bit_candles_activation_times_up() {
        // Enough elements for several parallel chunks, over the range where tanh and exp saturate.
        let n = 3 * CHUNK + 17;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 12.0).collect();
        let u: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
        let g = Tensor::from_vec(g, (1, n), &Device::Cpu).unwrap();
        let u = Tensor::from_vec(u, (1, n), &Device::Cpu).unwrap();
        for (act, reference) in [
            (Activation::Silu, candle_nn::ops::silu(&g).unwrap()),
            (Activation::GeluTanh, g.gelu().unwrap()),
        ] {
            let want = (reference * &u).unwrap().to_vec2::<f32>().unwrap();
            let got = gated(&g, &u, act).unwrap().to_vec2::<f32>().unwrap();
            assert!(
                want[0]
                    .iter()
                    .zip(&got[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{act:?}"
            );
        }
        assert!(gated(&g, &g.narrow(1, 0, 5).unwrap(), Activation::Silu).is_err());
    }
}
