//! Where a decoder's tensors come from: a GGUF file or a Hugging Face safetensors checkpoint.
//!
//! The decoder asks for tensors by their GGUF names (`blk.3.attn_q.weight`); a checkpoint source
//! translates them with its architecture's naming table.

use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};

use super::config::{Family, HfTensor, Stored};
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

/// A weight matrix `W` (`[out, in]`), float32 or quantized.
pub enum Linear {
    /// Float32, held as `Wᵀ` (`[in, out]`, contiguous). Given `W` itself, candle's product
    /// `x @ W.t()` first gathers all of `W`, element by element, into its kernel's layout, on every
    /// call: for passes of a few dozen tokens that took longer than the arithmetic. The kernel reads
    /// `Wᵀ` where it lies, and does the same arithmetic, so the products are the same bit for bit.
    Dense(Tensor),
    /// Quantized storage. Multi-token passes dequantize the matrix for the product: candle's quantized
    /// kernels round the activations to 8 bits, which costs 0.06 nats of mean log-prob error on
    /// SmolLM2, while dequantize-then-multiply is exact and faster than those kernels on x86 CPUs.
    /// Single-token steps (generation) use the quantized kernel, where it is fast.
    Quantized(Arc<QTensor>, QMatMul),
}

impl Linear {
    /// A float32 matrix `W` (`[out, in]`).
    pub fn dense(w: &Tensor) -> Result<Self> {
        Ok(Linear::Dense(transpose(w)?))
    }

    /// Output features (rows of `W`).
    pub fn out_features(&self) -> usize {
        match self {
            Linear::Dense(wt) => wt.dims().last().copied().unwrap_or(0),
            Linear::Quantized(q, _) => q.shape().dims().first().copied().unwrap_or(0),
        }
    }

    /// Input features (columns of `W`).
    pub fn in_features(&self) -> usize {
        match self {
            Linear::Dense(wt) => wt.dims().first().copied().unwrap_or(0),
            Linear::Quantized(q, _) => q.shape().dims().get(1).copied().unwrap_or(0),
        }
    }

    /// `x @ Wᵀ`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(wt) => times(x, wt),
            Linear::Quantized(q, m) => {
                let tokens = x.elem_count() / x.dim(D::Minus1)?;
                if tokens > 1 {
                    times(x, &dequantize_transposed(q)?)
                } else {
                    Ok(m.forward(x)?)
                }
            }
        }
    }

    /// Rows `ids` of `W`, `[ids, in]`: token embeddings, when the output projection is tied to them.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(wt) => wt.index_select(ids, 1)?.t()?.contiguous()?,
            Linear::Quantized(q, _) => dequantize(q)?.index_select(ids, 0)?,
        })
    }
}

/// `x @ wt` over the last dimension of `x`, whatever its leading dimensions.
fn times(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    let (inputs, outputs) = wt.dims2()?;
    let mut shape = x.dims().to_vec();
    let rows = x.elem_count() / inputs.max(1);
    let y = x.reshape((rows, inputs))?.matmul(wt)?;
    if let Some(last) = shape.last_mut() {
        *last = outputs;
    }
    Ok(y.reshape(shape)?)
}

/// `w` (`[r, c]`) transposed into a contiguous `[c, r]` tensor.
fn transpose(w: &Tensor) -> Result<Tensor> {
    let (r, c) = w.dims2()?;
    if !w.device().is_cpu() || w.dtype() != DType::F32 {
        return Ok(w.t()?.contiguous()?);
    }
    let src = w.flatten_all()?.to_vec1::<f32>()?;
    Ok(Tensor::from_vec(
        transposed(&src, r, c),
        (c, r),
        &Device::Cpu,
    )?)
}

/// The row-major `[r, c]` matrix `src` as a row-major `[c, r]` one, on every thread.
fn transposed(src: &[f32], r: usize, c: usize) -> Vec<f32> {
    // Each task fills a band of output rows (source columns), reading each source row's
    // stretch of that band as one cache line.
    const BAND: usize = 16;
    let mut out = vec![0f32; r * c];
    if r == 0 || c == 0 {
        return out;
    }
    out.par_chunks_mut(BAND * r)
        .enumerate()
        .for_each(|(band, dst)| {
            let j0 = band * BAND;
            let width = dst.len() / r;
            for (i, row) in src.chunks_exact(c).enumerate() {
                for (jj, &v) in row[j0..j0 + width].iter().enumerate() {
                    dst[jj * r + i] = v;
                }
            }
        });
    out
}

/// `$f::<Block>($args)` for the block type of `$dtype`, `None` for a type without one here
/// (candle's own path then runs): the one list of the block types dequantized on every thread.
macro_rules! per_block_type {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {{
        use candle_core::quantized::{GgmlDType as G, k_quants as k};
        match $dtype {
            G::Q4_0 => $f::<k::BlockQ4_0>($($arg),*),
            G::Q4_1 => $f::<k::BlockQ4_1>($($arg),*),
            G::Q5_0 => $f::<k::BlockQ5_0>($($arg),*),
            G::Q5_1 => $f::<k::BlockQ5_1>($($arg),*),
            G::Q8_0 => $f::<k::BlockQ8_0>($($arg),*),
            G::Q2K => $f::<k::BlockQ2K>($($arg),*),
            G::Q3K => $f::<k::BlockQ3K>($($arg),*),
            G::Q4K => $f::<k::BlockQ4K>($($arg),*),
            G::Q5K => $f::<k::BlockQ5K>($($arg),*),
            G::Q6K => $f::<k::BlockQ6K>($($arg),*),
            _ => None,
        }
    }};
}

/// A quantized tensor as float32 on its device. On the CPU every thread takes a share of the
/// blocks (candle's own `dequantize` runs on one); each block dequantizes alone, so the result is
/// candle's, bit for bit.
pub fn dequantize(q: &QTensor) -> Result<Tensor> {
    if !q.device().is_cpu() {
        return Ok(q.dequantize(&q.device())?);
    }
    let data = q.data()?;
    let n = q.shape().elem_count();
    Ok(
        match per_block_type!(q.dtype(), dequantize_blocks(&data, n)) {
            Some(v) => Tensor::from_vec(v, q.shape().clone(), &Device::Cpu)?,
            None => q.dequantize(&Device::Cpu)?,
        },
    )
}

/// A quantized matrix `W` as float32 `Wᵀ` on its device: [`dequantize`], transposed.
pub fn dequantize_transposed(q: &QTensor) -> Result<Tensor> {
    let (rows, cols) = q.shape().dims2()?;
    if !q.device().is_cpu() {
        return transpose(&q.dequantize(&q.device())?);
    }
    let data = q.data()?;
    match per_block_type!(q.dtype(), dequantize_blocks_transposed(&data, rows, cols)) {
        Some(v) => Ok(Tensor::from_vec(v, (cols, rows), &Device::Cpu)?),
        None => transpose(&dequantize(q)?),
    }
}

/// The `[rows, cols]` matrix in the blocks of `bytes`, dequantized and transposed in one pass on
/// every thread; `None` when the bytes are not whole, aligned rows of `T` blocks.
fn dequantize_blocks_transposed<T: k_quants::GgmlType>(
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> Option<Vec<f32>> {
    let blocks = as_blocks::<T>(bytes, rows * cols)?;
    if !cols.is_multiple_of(T::BLCK_SIZE) || rows == 0 {
        return None;
    }
    let per_row = cols / T::BLCK_SIZE;
    let mut out = vec![0f32; rows * cols];
    // A task owns one block's width of output rows (columns of W): it dequantizes that block
    // of every row of W and scatters it down its band, which stays in cache.
    out.par_chunks_mut(T::BLCK_SIZE * rows)
        .enumerate()
        .for_each_init(
            || vec![0f32; T::BLCK_SIZE],
            |tmp, (b, dst)| {
                for i in 0..rows {
                    T::to_float(&blocks[i * per_row + b..][..1], tmp);
                    for (jj, &v) in tmp.iter().enumerate() {
                        dst[jj * rows + i] = v;
                    }
                }
            },
        );
    Some(out)
}

/// `bytes` as the `n / T::BLCK_SIZE` blocks candle keeps them in; `None` when they are not whole,
/// aligned blocks of `T`.
fn as_blocks<T: k_quants::GgmlType>(bytes: &[u8], n: usize) -> Option<&[T]> {
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
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), count) })
}

/// `n` floats from the blocks in `bytes`, in parallel; `None` when the bytes are not whole,
/// aligned blocks of `T` (then candle's own path runs).
fn dequantize_blocks<T: k_quants::GgmlType>(bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    const BLOCKS_PER_TASK: usize = 256;
    let blocks = as_blocks::<T>(bytes, n)?;
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
    /// A weight matrix as float32, whatever the weight format (tied embeddings).
    fn dense(&mut self, name: &str) -> Result<Linear> {
        Linear::dense(&self.tensor(name)?)
    }
    /// Any tensor as float32.
    fn tensor(&mut self, name: &str) -> Result<Tensor>;
    /// An RMSNorm weight in the `x * w` convention.
    fn norm(&mut self, name: &str) -> Result<Tensor> {
        self.tensor(name)
    }
    /// The name the file itself uses for `name`, for errors.
    fn display_name(&self, name: &str) -> String {
        name.to_string()
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
            WeightFormat::F32 => Linear::Dense(dequantize_transposed(&q)?),
            WeightFormat::Quantized => {
                let q = Arc::new(q);
                Linear::Quantized(q.clone(), QMatMul::from_arc(q)?)
            }
        })
    }

    fn dense(&mut self, name: &str) -> Result<Linear> {
        // Straight into the transposed layout: no row-major float32 copy of the largest matrix.
        Ok(Linear::Dense(dequantize_transposed(&self.qtensor(name)?)?))
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        dequantize(&self.qtensor(name)?)
    }
}

/// Tensors of a Hugging Face checkpoint (`*.safetensors`, memory-mapped), converted to float32.
pub struct SafetensorsSource {
    st: MmapedSafetensors,
    /// GGUF name → where the checkpoint keeps it, per family.
    naming: fn(&str) -> HfTensor,
    /// Added to every norm weight: Gemma stores `w` and multiplies by `1 + w`.
    norm_offset: f64,
    /// Attention heads, to reorder head-interleaved fused projections.
    heads: usize,
    device: Device,
}

impl SafetensorsSource {
    /// Maps the given files, naming tensors the way `family`'s checkpoints do.
    pub fn open(files: &[impl AsRef<Path>], family: &Family, heads: usize) -> Result<Self> {
        // SAFETY: the files are memory-mapped read-only; like every mmap user we rely on them not
        // being truncated while the model is loaded (weights are copied to float32 tensors at load).
        let st = unsafe { MmapedSafetensors::multi(files) }
            .map_err(|e| anyhow::anyhow!("cannot read safetensors: {}", super::first_line(&e)))?;
        Ok(Self {
            st,
            naming: family.hf_tensor,
            norm_offset: family.norm_offset,
            heads,
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

    /// The checkpoint's name for `name` and how it is stored: the first candidate present.
    fn find(&self, name: &str) -> (String, Stored) {
        let t = (self.naming)(name);
        let found = t
            .names
            .iter()
            .find(|n| self.st.get(n.as_str()).is_ok())
            .or(t.names.first())
            .cloned()
            .unwrap_or_else(|| name.to_string());
        (found, t.stored)
    }

    fn load(&self, name: &str) -> Result<(Tensor, Stored)> {
        let (hf, stored) = self.find(name);
        let t = self
            .st
            .load(&hf, &self.device)
            .map_err(|e| anyhow::anyhow!("cannot read tensor `{hf}`: {}", super::first_line(&e)))?;
        Ok((t.to_dtype(DType::F32)?, stored))
    }

    /// `[q_h | k_h | v_h]` per head (rows of a weight, entries of a bias) as `[q | k | v]`.
    fn deinterleave(&self, name: &str, t: Tensor) -> Result<Tensor> {
        let rows = t.dim(0)?;
        let h = self.heads;
        if h == 0 || !rows.is_multiple_of(3 * h) {
            bail!(
                "tensor `{}` has {rows} rows, not 3 × {h} heads of equal size",
                self.display_name(name)
            );
        }
        let hd = rows / (3 * h);
        let rest: Vec<usize> = t.dims()[1..].to_vec();
        let mut shape = vec![h, 3, hd];
        shape.extend(&rest);
        let t = t.reshape(shape)?.transpose(0, 1)?.contiguous()?;
        let mut out = vec![rows];
        out.extend(&rest);
        Ok(t.reshape(out)?)
    }
}

impl TensorSource for SafetensorsSource {
    fn has(&self, name: &str) -> bool {
        (self.naming)(name)
            .names
            .iter()
            .any(|n| self.st.get(n.as_str()).is_ok())
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn matrix(&mut self, name: &str) -> Result<Linear> {
        match self.load(name)? {
            // Already Wᵀ, the layout the products read.
            (t, Stored::Transposed) => Ok(Linear::Dense(t.contiguous()?)),
            (t, Stored::HeadInterleavedQkv) => Linear::dense(&self.deinterleave(name, t)?),
            (t, Stored::Plain) => Linear::dense(&t),
        }
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        match self.load(name)? {
            (t, Stored::Transposed) => Ok(t.t()?.contiguous()?),
            (t, Stored::HeadInterleavedQkv) => self.deinterleave(name, t),
            (t, Stored::Plain) => Ok(t),
        }
    }

    fn norm(&mut self, name: &str) -> Result<Tensor> {
        let w = self.tensor(name)?;
        Ok(if self.norm_offset == 0.0 {
            w
        } else {
            (w + self.norm_offset)?
        })
    }

    fn display_name(&self, name: &str) -> String {
        self.find(name).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    /// Every block type dequantized on all threads, and one (F16) that takes candle's path.
    const TYPES: [GgmlDType; 11] = [
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
    ];

    #[test]
    fn parallel_dequantization_is_candles_bit_for_bit() {
        // 64 rows of 2048: several parallel tasks for every block size.
        let t = Tensor::randn(0f32, 1.0, (64, 2048), &Device::Cpu).unwrap();
        for dtype in TYPES {
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

    #[test]
    fn transposed_storage_multiplies_bit_for_bit() {
        // The projections' shapes of the bundled models, and token counts either side of the
        // kernel's tile edges.
        for (out, inp) in [
            (576, 576),
            (1536, 576),
            (576, 1536),
            (192, 576),
            (640, 2048),
        ] {
            let w = Tensor::randn(0f32, 1.0, (out, inp), &Device::Cpu).unwrap();
            let dense = Linear::dense(&w).unwrap();
            assert_eq!(dense.out_features(), out);
            for m in [2, 3, 16, 17, 64, 97, 130, 300] {
                let x = Tensor::randn(0f32, 1.0, (1, m, inp), &Device::Cpu).unwrap();
                let ours = dense.forward(&x).unwrap();
                assert_eq!(ours.dims(), &[1, m, out]);
                let theirs = x.matmul(&w.t().unwrap().unsqueeze(0).unwrap()).unwrap();
                assert_eq!(
                    ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    "[{out}, {inp}] times {m} rows"
                );
            }
            let ids = Tensor::new(&[3u32, 0, 3, (out - 1) as u32], &Device::Cpu).unwrap();
            assert_eq!(
                dense.rows(&ids).unwrap().to_vec2::<f32>().unwrap(),
                w.index_select(&ids, 0).unwrap().to_vec2::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn dequantized_transposed_is_the_transposed_dequantization() {
        let t = Tensor::randn(0f32, 1.0, (48, 1024), &Device::Cpu).unwrap();
        for dtype in TYPES {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let ours = dequantize_transposed(&q).unwrap().to_vec2::<f32>().unwrap();
            let theirs = dequantize(&q)
                .unwrap()
                .t()
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(ours, theirs, "{dtype:?}");
        }
    }
}
