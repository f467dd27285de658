//! The feed-forward gate's activations on the CPU, one `exp` per element in a loop the compiler
//! vectorizes.
//!
//! candle computes GELU's tanh and SiLU's exp through libm one element at a time: 13% of Gemma 3's
//! float32 prefill went to `tanhf` and `expm1f`. Here GELU is written as x·σ(2z) (the same function
//! as ½x(1 + tanh z)) and both activations use a polynomial `exp` of a few ulp, in plain
//! multiplies and adds, so every CPU path rounds alike. Other devices keep candle's kernels.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::config::Activation;

/// `act(x)` elementwise.
pub fn apply(act: Activation, x: &Tensor) -> anyhow::Result<Tensor> {
    // ReLU and the erf GELU have no libm hot spot worth replacing: candle's kernels everywhere.
    match act {
        Activation::Relu => return Ok(x.relu()?),
        Activation::Gelu => return Ok(x.gelu_erf()?),
        _ => {}
    }
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return Ok(match act {
            Activation::GeluTanh => x.gelu()?,
            _ => candle_nn::ops::silu(x)?,
        });
    }
    Ok(x.contiguous()?.apply_op1_no_bwd(&Op(act))?)
}

struct Op(Activation);

/// Elements per parallel task: large enough to amortize scheduling, small enough to share.
const CHUNK: usize = 1 << 14;

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        "icl-eval-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(s, l, "activation")?;
        let mut out = vec![0f32; input.len()];
        let act = self.0;
        out.par_chunks_mut(CHUNK)
            .zip(input.par_chunks(CHUNK))
            .for_each(|(o, i)| run(act, i, o));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// The elements of a contiguous float32 input of the custom op `op`.
pub(super) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: float32 only");
    };
    let Some((from, to)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only");
    };
    Ok(&v[from..to])
}

fn run(act: Activation, input: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { run_avx2(act, input, out) };
    }
    run_portable(act, input, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(act: Activation, input: &[f32], out: &mut [f32]) {
    run_portable(act, input, out);
}

/// The same IEEE operations whatever the vector width (no fused multiply-adds), so the AVX2 and
/// baseline paths give the same bits.
#[inline(always)]
fn run_portable(act: Activation, input: &[f32], out: &mut [f32]) {
    // Only SiLU and GELU-tanh reach the custom op (see `apply`).
    match act {
        Activation::GeluTanh => {
            // ½x(1 + tanh z) = x·σ(2z), z = √(2/π)(x + 0.044715x³).
            const TWO_SQRT_2_OVER_PI: f32 =
                (2.0 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2) as f32;
            for (o, &x) in out.iter_mut().zip(input) {
                let u = TWO_SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
                *o = x / (1.0 + exp(-u));
            }
        }
        _ => {
            for (o, &x) in out.iter_mut().zip(input) {
                *o = x / (1.0 + exp(-x));
            }
        }
    }
}

/// e^x for float32, within a few ulp (Cephes' polynomial after a Cody–Waite reduction); the
/// argument is clamped so that no step overflows (e^89 is already above f32::MAX: +∞ divides to 0).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 × 2^23: adding and subtracting it rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * pow2(n)
}

/// 2ⁿ for an integer-valued n in -126..=127, from the bits of n + 127 + 1.5 × 2²³, whose low
/// mantissa bits hold n + 127: a float-to-int `as` saturates, which keeps loops from vectorizing.
#[inline(always)]
fn pow2(n: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let biased = (n + (ROUND + 127.0))
        .to_bits()
        .wrapping_sub(ROUND.to_bits());
    f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst}");
    }

    #[test]
    fn powers_of_two_are_exact() {
        for n in -126..=127 {
            assert_eq!(pow2(n as f32), 2f32.powi(n), "2^{n}");
        }
    }

    #[test]
    fn activations_match_their_definitions() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.005).collect();
        let t = Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let gelu = apply(Activation::GeluTanh, &t)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let silu = apply(Activation::Silu, &t)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, &x) in xs.iter().enumerate() {
            let x64 = x as f64;
            let z = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let want_gelu = 0.5 * x64 * (1.0 + z.tanh());
            let want_silu = x64 / (1.0 + (-x64).exp());
            assert!(
                (gelu[i] as f64 - want_gelu).abs() <= 2e-6 * want_gelu.abs().max(1e-3),
                "gelu({x}) = {} vs {want_gelu}",
                gelu[i]
            );
            assert!(
                (silu[i] as f64 - want_silu).abs() <= 2e-6 * want_silu.abs().max(1e-3),
                "silu({x}) = {} vs {want_silu}",
                silu[i]
            );
        }
        // Far tails: no NaN, the right limits.
        let t = Tensor::new(&[-1e4f32, -100.0, 100.0, 1e4], &candle_core::Device::Cpu).unwrap();
        let g = apply(Activation::GeluTanh, &t)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(g[0].abs() < 1e-30 && g[1].abs() < 1e-30, "{g:?}");
        assert_eq!(&g[2..], &[100.0, 1e4]);
    }
}
