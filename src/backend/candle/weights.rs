//! Where a decoder's tensors come from: a GGUF file or a Hugging Face safetensors checkpoint.
//!
//! The decoder asks for tensors by their GGUF names (`blk.3.attn_q.weight`); a checkpoint source
//! translates them with its architecture's naming table.

use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{D, DType, Device, Module, Tensor};

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

    /// `x @ Wᵀ`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
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

/// A store of named tensors (GGUF names).
pub trait TensorSource {
    /// Whether the store holds `name`.
    fn has(&self, name: &str) -> bool;
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

    fn matrix(&mut self, name: &str) -> Result<Linear> {
        let q = self.qtensor(name)?;
        Ok(match self.format {
            WeightFormat::F32 => Linear::dense(q.dequantize(&self.device)?),
            WeightFormat::Quantized => {
                let q = Arc::new(q);
                Linear::Quantized(q.clone(), QMatMul::from_arc(q)?)
            }
        })
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(&self.device)?)
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
