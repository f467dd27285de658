//! Where a decoder's tensors come from: a GGUF file or a Hugging Face safetensors checkpoint.
//!
//! The decoder asks for tensors by their GGUF names (`blk.3.attn_q.weight`); a checkpoint source
//! translates them with its architecture's naming table.

use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use candle_core::quantized::{QMatMul, QTensor, gguf_file, k_quants};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{D, DType, Device, Module, Tensor};
use rayon::prelude::*;

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Dequantized to float32 at load: larger, and 9–20× faster with candle's CPU kernels.
    F32,
    /// Kept in the file's quantized blocks.
    Quantized,
}

/// A weight matrix `[out, in]`, float32 or quantized.
pub enum Linear {
    Dense(QMatMul),
    /// Quantized storage. Multi-token passes dequantize the matrix for the product: candle's quantized
    /// kernels round the activations to 8 bits, which costs 0.06 nats of mean log-prob error on
    /// SmolLM2, while dequantize-then-multiply is exact and faster than those kernels on x86 CPUs.
    /// Single-token steps (generation) use the quantized kernel, where it is fast.
    Quantized(Arc<QTensor>, QMatMul),
}

impl Linear {
    /// A float32 matrix.
    pub fn dense(w: Tensor) -> Self {
        Linear::Dense(QMatMul::Tensor(w))
    }

    /// Output features (rows of `W`).
    pub fn out_features(&self) -> usize {
        let dims = match self {
            Linear::Dense(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dims(),
            Linear::Dense(QMatMul::QTensor(q)) | Linear::Quantized(q, _) => q.shape().dims(),
        };
        dims.first().copied().unwrap_or(0)
    }

    /// `x @ Wᵀ`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(m) => m.forward(x)?,
            Linear::Quantized(q, m) => {
                let tokens = x.elem_count() / x.dim(D::Minus1)?;
                if tokens > 1 {
                    QMatMul::Tensor(dequantize(q)?).forward(x)?
                } else {
                    m.forward(x)?
                }
            }
        })
    }
}

/// A quantized tensor as float32 on its device. On the CPU every thread takes a share of the
/// blocks (candle's own `dequantize` runs on one); each block dequantizes alone, so the result is
/// candle's, bit for bit.
pub fn dequantize(q: &QTensor) -> Result<Tensor> {
    use candle_core::quantized::{GgmlDType as G, k_quants as k};
    if !q.device().is_cpu() {
        return Ok(q.dequantize(&q.device())?);
    }
    let data = q.data()?;
    let n = q.shape().elem_count();
    let out = match q.dtype() {
        G::Q4_0 => dequantize_blocks::<k::BlockQ4_0>(&data, n),
        G::Q4_1 => dequantize_blocks::<k::BlockQ4_1>(&data, n),
        G::Q5_0 => dequantize_blocks::<k::BlockQ5_0>(&data, n),
        G::Q5_1 => dequantize_blocks::<k::BlockQ5_1>(&data, n),
        G::Q8_0 => dequantize_blocks::<k::BlockQ8_0>(&data, n),
        G::Q2K => dequantize_blocks::<k::BlockQ2K>(&data, n),
        G::Q3K => dequantize_blocks::<k::BlockQ3K>(&data, n),
        G::Q4K => dequantize_blocks::<k::BlockQ4K>(&data, n),
        G::Q5K => dequantize_blocks::<k::BlockQ5K>(&data, n),
        G::Q6K => dequantize_blocks::<k::BlockQ6K>(&data, n),
        _ => None,
    };
    Ok(match out {
        Some(v) => Tensor::from_vec(v, q.shape().clone(), &Device::Cpu)?,
        None => q.dequantize(&Device::Cpu)?,
    })
}

/// `n` floats from the blocks in `bytes`, in parallel; `None` when the bytes are not whole,
/// aligned blocks of `T` (then candle's own path runs).
fn dequantize_blocks<T: k_quants::GgmlType>(bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    const BLOCKS_PER_TASK: usize = 256;
    let count = n / T::BLCK_SIZE;
    let aligned = (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>());
    if !n.is_multiple_of(T::BLCK_SIZE)
        || bytes.len() != count * std::mem::size_of::<T>()
        || !aligned
    {
        return None;
    }
    // SAFETY: candle keeps a CPU quantized tensor as a `Vec<T>` and `data()` borrows its bytes;
    // the length and alignment are checked above.
    let blocks: &[T] = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), count) };
    let mut out = vec![0f32; n];
    out.par_chunks_mut(BLOCKS_PER_TASK * T::BLCK_SIZE)
        .zip(blocks.par_chunks(BLOCKS_PER_TASK))
        .for_each(|(ys, xs)| T::to_float(xs, ys));
    Some(out)
}

/// A store of named tensors (GGUF names).
pub trait TensorSource {
    /// Whether the store holds `name`.
    fn has(&self, name: &str) -> bool;
    /// Where the tensors it returns live.
    fn device(&self) -> &Device;
    /// A weight matrix.
    fn matrix(&mut self, name: &str) -> Result<Linear>;
    /// Any tensor as float32.
    fn tensor(&mut self, name: &str) -> Result<Tensor>;
    /// An RMSNorm weight in the `x * w` convention.
    fn norm(&mut self, name: &str) -> Result<Tensor> {
        self.tensor(name)
    }
}

/// Tensors of a GGUF file.
pub struct GgufSource<'a, R> {
    pub content: &'a gguf_file::Content,
    pub reader: &'a mut R,
    pub format: WeightFormat,
    pub device: Device,
}

impl<R: Read + Seek> GgufSource<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(self.reader, name, &self.device)
            .map_err(|e| anyhow::anyhow!("cannot read tensor `{name}`: {}", super::first_line(&e)))
    }
}

impl<R: Read + Seek> TensorSource for GgufSource<'_, R> {
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn matrix(&mut self, name: &str) -> Result<Linear> {
        let q = self.qtensor(name)?;
        Ok(match self.format {
            WeightFormat::F32 => Linear::dense(dequantize(&q)?),
            WeightFormat::Quantized => {
                let q = Arc::new(q);
                Linear::Quantized(q.clone(), QMatMul::from_arc(q)?)
            }
        })
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        dequantize(&self.qtensor(name)?)
    }
}

/// Tensors of a Hugging Face checkpoint (`*.safetensors`, memory-mapped), converted to float32.
pub struct SafetensorsSource {
    st: MmapedSafetensors,
    /// GGUF name → checkpoint name, per architecture.
    rename: fn(&str) -> String,
    /// Added to every norm weight: Gemma stores `w` and multiplies by `1 + w`.
    norm_offset: f64,
    device: Device,
}

impl SafetensorsSource {
    /// Maps the given files; `rename` translates GGUF tensor names to the checkpoint's.
    pub fn open(
        files: &[impl AsRef<Path>],
        rename: fn(&str) -> String,
        norm_offset: f64,
    ) -> Result<Self> {
        // SAFETY: the files are memory-mapped read-only; like every mmap user we rely on them not
        // being truncated while the model is loaded (weights are copied to float32 tensors at load).
        let st = unsafe { MmapedSafetensors::multi(files) }
            .map_err(|e| anyhow::anyhow!("cannot read safetensors: {}", super::first_line(&e)))?;
        Ok(Self {
            st,
            rename,
            norm_offset,
            device: Device::Cpu,
        })
    }

    /// Loads tensors onto `device` (the CPU by default).
    pub fn on(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    /// Element count of every tensor, by checkpoint name.
    pub fn element_counts(&self) -> Vec<(String, u64)> {
        self.st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().iter().product::<usize>() as u64))
            .collect()
    }
}

impl TensorSource for SafetensorsSource {
    fn has(&self, name: &str) -> bool {
        self.st.get((self.rename)(name).as_str()).is_ok()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn matrix(&mut self, name: &str) -> Result<Linear> {
        Ok(Linear::dense(self.tensor(name)?))
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let hf = (self.rename)(name);
        let t = self
            .st
            .load(&hf, &self.device)
            .map_err(|e| anyhow::anyhow!("cannot read tensor `{hf}`: {}", super::first_line(&e)))?;
        Ok(t.to_dtype(DType::F32)?)
    }

    fn norm(&mut self, name: &str) -> Result<Tensor> {
        let w = self.tensor(name)?;
        Ok(if self.norm_offset == 0.0 {
            w
        } else {
            (w + self.norm_offset)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn parallel_dequantization_is_candles_bit_for_bit() {
        // 64 rows of 2048: several parallel tasks for every block size.
        let t = Tensor::randn(0f32, 1.0, (64, 2048), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::F16,
        ] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let ours = dequantize(&q).unwrap().to_vec2::<f32>().unwrap();
            let theirs = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(ours, theirs, "{dtype:?}");
            assert_eq!(dequantize(&q).unwrap().dims(), &[64, 2048]);
        }
    }
}
