//! The embedded backend: candle running GGUF files or Hugging Face checkpoint folders in-process.

mod activation;
mod attention;
pub mod config;
pub mod decoder;
pub mod families;
pub mod gemma2;
pub mod gemma3;
mod gguf_meta;
pub mod gpt2;
pub mod gpt_neox;
mod guard;
pub mod hf;
pub mod llama;
pub mod olmo2;
pub mod opt;
pub mod phi3;
pub mod prefix;
pub mod tokenizer;
pub mod weights;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

use super::{
    Backend, ChoiceRequest, GenerateRequest, LogLikelihood, ModelInfo, cut_at_stop,
    split_trailing_whitespace,
};
use config::DecoderConfig;
use decoder::{CacheOut, Decoder, KvCache, Segment};
use prefix::{Job, PrefixCache};
use tokenizer::TextTokenizer;
use weights::GgufSource;
// Checkpoint folders (hf.rs) hash their files with the same helper.
use crate::hash::{sha256_file, sha256_str};
pub use weights::WeightFormat;

/// `--weights`: how to hold the weights in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsChoice {
    /// float32 when the dequantized model fits in half the available memory, else quantized.
    Auto,
    /// Dequantize every weight to float32 at load.
    F32,
    /// Keep the file's quantized blocks.
    Quantized,
}

/// `--device`: where the forward pass runs (`cpu`, `cuda` or `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The host's CPU cores (`--threads`).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal; needs a build with `--features cuda`.
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The candle device; a clear error when this build or machine has no CUDA.
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) if !candle_core::utils::cuda_is_available() => bail!(
                "--device cuda:{n}: this icl-eval was built without CUDA; rebuild with \
                 `cargo build --release --features cuda` (needs the CUDA toolkit's nvcc)"
            ),
            Self::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                anyhow::anyhow!("--device cuda:{n}: cannot open the GPU: {}", first_line(&e))
            }),
        }
    }
}

/// Added to [`NUMERICS`] for answers computed on a GPU, whose kernels round differently: the
/// request cache never serves a CPU answer for a GPU run or the reverse.
const GPU_NUMERICS: u32 = 1 << 16;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Revision of this backend's numerics, part of every request-cache key: bump it with any change
/// to tokenization, the forward pass or scoring that changes a returned number, so no cached
/// answer of the old code is served.
pub const NUMERICS: u32 = 5;

/// GGUF architectures the decoder runs.
pub fn supported_architectures() -> Vec<&'static str> {
    families::gguf_archs()
}

/// The decoder config of a GGUF file, dispatched on its architecture.
fn gguf_config(content: &gguf_file::Content, arch: &str) -> Result<DecoderConfig> {
    match families::by_gguf_arch(arch) {
        Some(f) => (f.from_gguf)(content, arch),
        None => bail!(
            "architecture `{arch}` is not supported (supported: {})",
            supported_architectures().join(", ")
        ),
    }
}

/// Parameters counted from the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCount {
    /// Every tensor once (tied embeddings once).
    pub total: u64,
    /// Without the token embedding and an untied output projection.
    pub non_embedding: u64,
}

/// What a model file or folder yields, whatever its format.
pub struct Loaded {
    pub model: Decoder,
    pub tokenizer: TextTokenizer,
    pub architecture: String,
    pub parameters: ParameterCount,
    /// GGUF file type (`Q4_K_M`, ...) or checkpoint dtype.
    pub quantization: String,
    pub sha256: String,
    /// Storage in memory (`f32` or `quantized`).
    pub weights: String,
    /// The Jinja chat template the model ships (`tokenizer.chat_template`), if any.
    pub chat_template: Option<String>,
}

/// Budget of the prompt-prefix KV cache on a machine whose free memory is unknown, and the
/// least [`default_kv_cache_mb`] gives.
pub const DEFAULT_KV_CACHE_MB: usize = 512;

/// Budget of the prompt-prefix KV cache when `--kv-cache-mb` is not given: an eighth of the
/// memory available now (Linux's `MemAvailable`), at least [`DEFAULT_KV_CACHE_MB`]. An
/// eighth keeps a 1,024-shot prefix of every bundled model on a laptop, while leaving the
/// weights and the passes' activations room.
pub fn default_kv_cache_mb() -> usize {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_available_kib(&m));
    kv_budget_for(available)
}

/// [`default_kv_cache_mb`] for `available` KiB of free memory.
fn kv_budget_for(available_kib: Option<u64>) -> usize {
    available_kib.map_or(DEFAULT_KV_CACHE_MB, |kib| {
        ((kib / 1024 / 8) as usize).max(DEFAULT_KV_CACHE_MB)
    })
}

/// `MemAvailable` in KiB from the text of `/proc/meminfo`.
fn mem_available_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A model with its tokenizer, ready to score.
pub struct CandleBackend {
    info: ModelInfo,
    model: Decoder,
    tokenizer: TextTokenizer,
    prefix: PrefixCache,
    chat_template: Option<String>,
    /// Docs the run plans at once: their requests are answered in one batch.
    batch_docs: usize,
}

impl CandleBackend {
    /// Loads a GGUF file or a checkpoint folder; `weights` picks float32 or quantized storage for GGUF
    /// (checkpoints are always float32).
    pub fn load(path: &Path, weights: WeightsChoice) -> Result<Self> {
        Self::load_verified(path, weights, None)
    }

    /// Like [`CandleBackend::load`], but first checks the weights' sha256 against `expected`, before
    /// spending time on them.
    pub fn load_verified(
        path: &Path,
        weights: WeightsChoice,
        expected: Option<&str>,
    ) -> Result<Self> {
        Self::load_on(path, weights, expected, DeviceChoice::Cpu)
    }

    /// Like [`CandleBackend::load_verified`], with the weights and the forward pass on `device`.
    pub fn load_on(
        path: &Path,
        weights: WeightsChoice,
        expected: Option<&str>,
        device: DeviceChoice,
    ) -> Result<Self> {
        let device = device.device()?;
        let loaded = if path.is_dir() {
            hf::load(path, expected, &device)?
        } else {
            load_gguf(path, weights, expected, &device)?
        };
        let name = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        };
        let info = ModelInfo {
            name: name
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            reference: path.display().to_string(),
            path: path.display().to_string(),
            sha256: loaded.sha256,
            family: families::family_name(&loaded.architecture),
            architecture: loaded.architecture,
            parameters: loaded.parameters.total,
            non_embedding_parameters: loaded.parameters.non_embedding,
            quantization: loaded.quantization,
            context_length: loaded.model.config().context_length,
            weights: loaded.weights,
            scoring: String::new(),
        };
        Ok(Self {
            info,
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            prefix: PrefixCache::new(DEFAULT_KV_CACHE_MB << 20),
            chat_template: loaded.chat_template,
            batch_docs: DEFAULT_BATCH_DOCS,
        })
    }

    /// Sets the family the size chart groups the model under, when the models file names one.
    pub fn with_family(mut self, family: Option<&str>) -> Self {
        if let Some(f) = family {
            self.info.family = f.to_string();
        }
        self
    }

    /// Sets the prompt-prefix cache budget in MiB (0 turns reuse off; results are the same).
    pub fn with_kv_cache_mb(mut self, mb: usize) -> Self {
        self.prefix.set_budget(mb << 20);
        self
    }

    /// Sets how many docs are scored together (at least 1; answers are the same for any number).
    pub fn with_batch_docs(mut self, docs: usize) -> Self {
        self.batch_docs = docs.max(1);
        self
    }

    /// Token positions in `ids` (the encoding of `text`) where the byte offsets `breaks` fall on a
    /// token boundary. A break inside a merged token moves before the whitespace that ends it
    /// (a few-shot delimiter), else it is dropped; either way only exact token prefixes are cuts.
    fn token_cuts(&self, text: &str, ids: &[u32], breaks: &[usize]) -> Result<Vec<usize>> {
        let mut cuts = Vec::with_capacity(breaks.len());
        for &b in breaks {
            if b == 0 || b >= text.len() || !text.is_char_boundary(b) {
                continue;
            }
            let trimmed = text[..b].trim_end().len();
            for at in [b, trimmed] {
                if at == 0 {
                    continue;
                }
                let prefix = self.tokenizer.encode(&text[..at])?;
                if prefix.len() < ids.len() && ids.starts_with(&prefix) {
                    cuts.push(prefix.len());
                    break;
                }
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        Ok(cuts)
    }

    /// Sets the name used in tables and charts and the reference the user gave.
    pub fn named(mut self, name: &str, reference: &str) -> Self {
        self.info.name = name.to_string();
        self.info.reference = reference.to_string();
        self
    }

    /// Floating-point operations of one pass over `tokens` tokens (see
    /// [`Decoder::prefill_flops`]).
    pub fn prefill_flops(&self, tokens: usize) -> f64 {
        self.model.prefill_flops(tokens)
    }

    /// Bytes of keys and values held after running `text` from an empty cache, and the bytes
    /// they would take if every layer kept every key: what a cached prefix of it costs.
    pub fn cache_footprint(&self, text: &str) -> Result<(usize, usize)> {
        let ids = self.tokenizer.encode(text)?;
        let (_, cache) = self.model.forward(&ids, &self.model.empty_cache())?;
        let every_key = self.model.config().n_layers * ids.len() * self.model.token_bytes();
        Ok((cache.bytes(), every_key))
    }

    /// Width of the model's hidden states.
    pub fn hidden_size(&self) -> usize {
        self.model.config().hidden
    }

    /// Token ids of `text` as the model sees it (`<bos>` included when the model adds one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }

    /// `out[t] = log p(ids[t + 1] | ids[..=t])` and the argmax at every position, in one forward pass.
    pub fn next_token_logprobs(&self, ids: &[u32]) -> Result<(Vec<f32>, Vec<u32>)> {
        if ids.is_empty() {
            bail!("next_token_logprobs: no tokens to score (an empty prompt without <bos>)");
        }
        let (hidden, _) = self.model.forward(ids, &self.model.empty_cache())?;
        let rows: Vec<usize> = (0..ids.len()).collect();
        let lp = self.model.log_probs(&hidden, &rows)?;
        let argmax = lp.argmax(1)?.to_vec1::<u32>()?;
        let lp = lp.to_vec2::<f32>()?;
        let out = (0..ids.len() - 1)
            .map(|t| lp[t][ids[t + 1] as usize])
            .collect();
        Ok((out, argmax))
    }

    /// Greedy decoding from `ids` with the KV cache: up to `max_tokens` (token, log-probability)
    /// pairs, stopping early when `stop` says so after a token.
    pub fn greedy(
        &self,
        ids: &[u32],
        max_tokens: usize,
        stop: impl FnMut(&[u32]) -> Result<bool>,
    ) -> Result<Vec<(u32, f32)>> {
        let (hidden, cache) = self.model.forward(ids, &self.model.empty_cache())?;
        self.decode_from(hidden, cache, max_tokens, None, stop)
    }

    /// Decoding after a forward pass whose last row of `hidden` predicts the first token: greedy,
    /// or drawn under `sampling` from its own seeded generator.
    fn decode_from(
        &self,
        mut hidden: Tensor,
        mut cache: KvCache,
        max_tokens: usize,
        sampling: Option<crate::backend::Sampling>,
        mut stop: impl FnMut(&[u32]) -> Result<bool>,
    ) -> Result<Vec<(u32, f32)>> {
        let mut out: Vec<(u32, f32)> = Vec::new();
        let mut rng = crate::seed::SeededRng::new(sampling.map_or(0, |s| s.seed));
        while out.len() < max_tokens {
            let Some(last) = hidden.dim(0)?.checked_sub(1) else {
                bail!("cannot generate after an empty prompt: it has no token to continue from");
            };
            let lp = self.model.log_probs(&hidden, &[last])?;
            let (next, logprob) = match sampling {
                None => {
                    let next = lp.argmax(1)?.to_vec1::<u32>()?[0];
                    (next, lp.to_vec2::<f32>()?[0][next as usize])
                }
                Some(s) => {
                    let row = lp.to_vec2::<f32>()?.swap_remove(0);
                    let i = s.draw(&row, &mut rng);
                    (i as u32, row[i])
                }
            };
            out.push((next, logprob));
            let tokens: Vec<u32> = out.iter().map(|(t, _)| *t).collect();
            if out.len() == max_tokens || stop(&tokens)? {
                break;
            }
            let (h, c) = self.model.forward(&[next], &cache)?;
            hidden = h;
            cache = c;
        }
        Ok(out)
    }

    /// Context tokens never start empty: like lm-eval, an empty context becomes `<bos>` (or `<eos>`).
    fn context_ids(&self, context: &str) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(context)?;
        if !ids.is_empty() {
            return Ok(ids);
        }
        Ok(vec![self.start_token().context("empty context")?])
    }

    /// The token an empty context is: `<bos>`, else `<eos>` (lm-eval's `prefix_token_id`).
    pub fn start_token(&self) -> Result<u32> {
        self.tokenizer
            .bos_id
            .or(self.tokenizer.eos_id)
            .context("the vocabulary has neither <bos> nor <eos>")
    }

    fn check_fits(&self, n: usize) -> Result<()> {
        let max = self.info.context_length;
        if n > max {
            bail!(
                "prompt of {n} tokens exceeds the context length {max} of {}",
                self.info.name
            );
        }
        Ok(())
    }
}

/// llama.cpp's `general.file_type` values, for reports.
fn gguf_file_type(code: u32) -> Option<&'static str> {
    Some(match code {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// Size and storage facts of a model, read from file headers only.
pub struct ModelSummary {
    pub architecture: String,
    pub parameters: ParameterCount,
    pub quantization: String,
    pub context_length: usize,
}

fn summarize_gguf(content: &gguf_file::Content, arch: &str) -> Result<ModelSummary> {
    let count = |name: &str| {
        content
            .tensor_infos
            .get(name)
            .map_or(0, |t| t.shape.elem_count() as u64)
    };
    // GPT-2's head is its token embedding; llama.cpp's converter writes a copy as `output.weight`.
    let copied_head = if arch == "gpt2" {
        count("output.weight")
    } else {
        0
    };
    let total: u64 = content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count() as u64)
        .sum::<u64>()
        - copied_head;
    let quantization = content
        .metadata
        .get("general.file_type")
        .and_then(|v| v.to_u32().ok())
        .and_then(gguf_file_type)
        .map_or_else(|| "unknown".to_string(), str::to_string);
    Ok(ModelSummary {
        architecture: arch.to_string(),
        parameters: ParameterCount {
            total,
            non_embedding: total
                - count("token_embd.weight")
                - count("position_embd.weight")
                - (count("output.weight") - copied_head),
        },
        quantization,
        context_length: gguf_config(content, arch)?.context_length,
    })
}

/// Architecture, parameters, quantization and context length of a GGUF file, without its weights.
pub fn inspect_gguf(path: &Path) -> Result<ModelSummary> {
    let (content, _, arch) = open_gguf(path)?;
    summarize_gguf(&content, &arch).with_context(|| path.display().to_string())
}

/// Fails when `actual` differs from the digest the caller expects.
fn check_sha256(path: &Path, expected: Option<&str>, actual: &str) -> Result<()> {
    match expected {
        Some(want) if !want.eq_ignore_ascii_case(actual) => bail!(
            "{}: sha256 mismatch: expected {want}, got {actual} (the file is corrupt or not the \
             one the models file names; fetch it again)",
            path.display()
        ),
        _ => Ok(()),
    }
}

fn load_gguf(
    path: &Path,
    weights: WeightsChoice,
    expected: Option<&str>,
    device: &Device,
) -> Result<Loaded> {
    let shown = path.display();
    let sha256 = sha256_file(path)?;
    check_sha256(path, expected, &sha256)?;
    let (content, mut reader, arch) = open_gguf(path)?;
    let summary = summarize_gguf(&content, &arch).with_context(|| format!("{shown}"))?;
    let format = match weights {
        WeightsChoice::F32 => WeightFormat::F32,
        WeightsChoice::Quantized => WeightFormat::Quantized,
        WeightsChoice::Auto if summary.parameters.total * 4 <= available_memory_bytes() / 2 => {
            WeightFormat::F32
        }
        WeightsChoice::Auto => WeightFormat::Quantized,
    };
    let tokenizer = TextTokenizer::for_gguf(path, &content)?;
    let cfg = gguf_config(&content, &arch).with_context(|| format!("{shown}"))?;
    let mut src = GgufSource {
        content: &content,
        reader: &mut reader,
        format,
        device: device.clone(),
    };
    let model =
        Decoder::load(cfg, &mut src).with_context(|| format!("{shown}: loading weights"))?;
    Ok(Loaded {
        model,
        tokenizer,
        architecture: arch,
        parameters: summary.parameters,
        quantization: summary.quantization,
        sha256,
        weights: match format {
            WeightFormat::F32 => "f32".into(),
            WeightFormat::Quantized => "quantized".into(),
        },
        chat_template: gguf_chat_template(&content),
    })
}

/// Reads and checks a GGUF header: magic, sizes (candle bounds every length by the file size before
/// allocating) and a supported architecture.
fn open_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>, String)> {
    let shown = path.display();
    let mut file = File::open(path).with_context(|| format!("{shown}: cannot open model file"))?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != GGUF_MAGIC {
        bail!(
            "{shown}: not a GGUF file (the first four bytes are not `GGUF`); --models takes .gguf \
             files, checkpoint folders, names from models.yaml or hf:ORG/REPO"
        );
    }
    let mut reader = BufReader::new(File::open(path)?);
    let content = guard::no_panic(format!("{shown}: invalid GGUF"), || {
        gguf_file::Content::read(&mut reader)
    })?
    .map_err(|e| anyhow::anyhow!("{shown}: invalid GGUF: {}", first_line(&e)))?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .with_context(|| format!("{shown}: GGUF has no `general.architecture`"))?;
    if !supported_architectures().contains(&arch.as_str()) {
        bail!(
            "{shown}: architecture `{arch}` is not supported yet (supported: {})",
            supported_architectures().join(", ")
        );
    }
    // A cut-off download parses (the header is at the front) but lacks tensor data: say so now,
    // not halfway through loading.
    let needed = content
        .tensor_infos
        .values()
        .map(|t| {
            let bytes = t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size();
            content
                .tensor_data_offset
                .saturating_add(t.offset)
                .saturating_add(bytes as u64)
        })
        .max()
        .unwrap_or(0);
    let have = file.metadata().map(|m| m.len()).unwrap_or(0);
    if needed > have {
        bail!(
            "{shown}: truncated GGUF: its tensors need {needed} bytes but the file has {have}; \
             download it again"
        );
    }
    Ok((content, reader, arch))
}

/// The tokenizer and context length of a GGUF file or checkpoint folder, without loading weights.
pub fn load_tokenizer(path: &Path) -> Result<(TextTokenizer, usize)> {
    let m = load_prompt_model(path)?;
    Ok((m.tokenizer, m.context))
}

/// What rendering and fitting a prompt needs of a model, without its weights.
pub struct PromptModel {
    pub tokenizer: TextTokenizer,
    /// Context length in tokens.
    pub context: usize,
    /// The model's chat template, if it ships one.
    pub chat_template: Option<crate::chat::ChatTemplate>,
}

/// A model's tokenizer, context length and chat template, from a GGUF's header or a checkpoint
/// folder's config and tokenizer files.
pub fn load_prompt_model(path: &Path) -> Result<PromptModel> {
    let (tokenizer, context, template) = if path.is_dir() {
        let c = hf::read_config(path)?;
        let context = c
            .context_length()
            .with_context(|| format!("{}/config.json", path.display()))?;
        (
            hf::load_tokenizer(path, &c)?,
            context,
            hf::chat_template(path)?,
        )
    } else {
        let (content, _, arch) = open_gguf(path)?;
        let cfg = gguf_config(&content, &arch)?;
        (
            TextTokenizer::for_gguf(path, &content)?,
            cfg.context_length,
            gguf_chat_template(&content),
        )
    };
    let chat_template = template.map(|t| chat_template_of(&tokenizer, t));
    Ok(PromptModel {
        tokenizer,
        context,
        chat_template,
    })
}

/// A GGUF's `tokenizer.chat_template`.
fn gguf_chat_template(content: &gguf_file::Content) -> Option<String> {
    content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
}

/// A chat template's source with the special tokens it may name, from the model's tokenizer.
fn chat_template_of(tokenizer: &TextTokenizer, source: String) -> crate::chat::ChatTemplate {
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
    crate::chat::ChatTemplate {
        source,
        bos_token: token(tokenizer.bos_id),
        eos_token: token(tokenizer.eos_id),
    }
}

/// Free memory: MemAvailable, capped by a cgroup (container) limit when one is set.
fn available_memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let host = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(8 << 30, |kb| kb * 1024);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    .min();
    cgroup.map_or(host, |c| c.min(host))
}

/// candle errors carry a backtrace when `RUST_BACKTRACE` is set; users need only the message.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Index of the first largest entry of `row`.
fn first_argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// Default docs per batch (`--batch-size`).
pub const DEFAULT_BATCH_DOCS: usize = 8;

/// Bytes of distinct base caches a batch holds before it is scored (bounds memory when
/// per-doc demonstrations give every request its own).
const BATCH_BASE_BYTES: usize = 256 << 20;

/// Bytes of log-probabilities one vocabulary projection produces at most.
const PROJECTION_BYTES: usize = 32 << 20;

/// One scoring request, tokenized.
struct Tokenized {
    /// Context tokens.
    n: usize,
    /// Context + continuation tokens, one per continuation.
    wholes: Vec<Vec<u32>>,
    /// Tokens every continuation shares with the context (0: none).
    p: usize,
    /// Token positions of the context's demonstration boundaries.
    cuts: Vec<usize>,
}

impl Tokenized {
    /// Tokens of the shared prefix before its last chunk: what the request's base cache holds.
    fn base_len(&self) -> usize {
        self.cuts
            .iter()
            .copied()
            .filter(|&c| c < self.p)
            .max()
            .unwrap_or(0)
    }
}

/// One scoring request, tokenized, with its shared prefix computed up to its last chunk.
struct Prepared {
    /// Context tokens.
    n: usize,
    /// Context + continuation tokens, one per continuation.
    wholes: Vec<Vec<u32>>,
    /// Tokens every continuation shares with the context (0: none).
    p: usize,
    /// Where the prefix's last chunk starts.
    start: usize,
    /// The cache before that chunk.
    base: KvCache,
}

impl CandleBackend {
    /// Tokenizes a request: context and continuation encoded whole, split at the context's
    /// length, so boundary merges are those the model sees in one pass.
    fn tokenize(&self, r: &ChoiceRequest) -> Result<Tokenized> {
        let ctx_text = r.context.trim_end();
        let encoded = self.tokenizer.encode(ctx_text)?;
        let empty_context = encoded.is_empty();
        let ctx_ids = if empty_context {
            self.context_ids(ctx_text)?
        } else {
            encoded
        };
        let n = ctx_ids.len();
        let mut wholes = Vec::with_capacity(r.continuations.len());
        for c in &r.continuations {
            let (_, cont) = split_trailing_whitespace(&r.context, c);
            let whole = if empty_context {
                // No text to merge with: the start token, then the continuation on its own.
                let mut w = ctx_ids.clone();
                w.extend(self.tokenizer.encode(&cont)?);
                w
            } else {
                self.tokenizer.encode(&format!("{ctx_text}{cont}"))?
            };
            if whole.len() <= n {
                bail!("continuation {c:?} adds no token after the context");
            }
            self.check_fits(whole.len())?;
            wholes.push(whole);
        }
        let p = wholes
            .iter()
            .map(|w| {
                w[..n]
                    .iter()
                    .zip(&ctx_ids)
                    .take_while(|(a, b)| a == b)
                    .count()
            })
            .min()
            .unwrap_or(0);
        let cuts = if p > 0 && !empty_context {
            self.token_cuts(ctx_text, &ctx_ids, &r.breaks)?
        } else {
            Vec::new()
        };
        Ok(Tokenized { n, wholes, p, cuts })
    }

    /// Runs every chunk of the requests' shared prefixes but the last (all requests together,
    /// see [`PrefixCache::prepare`]).
    fn prepare(&mut self, batch: Vec<Tokenized>) -> Result<Vec<Prepared>> {
        let jobs: Vec<Job<'_>> = batch
            .iter()
            .filter(|t| t.p > 0)
            .map(|t| Job {
                ids: &t.wholes[0],
                cuts: &t.cuts,
                end: t.p,
            })
            .collect();
        let mut done = self.prefix.prepare(&self.model, &jobs)?.into_iter();
        drop(jobs);
        let mut out = Vec::with_capacity(batch.len());
        for t in batch {
            let (start, base) = if t.p > 0 {
                done.next().expect("one result per job")
            } else {
                (0, self.model.empty_cache())
            };
            out.push(Prepared {
                n: t.n,
                wholes: t.wholes,
                p: t.p,
                start,
                base,
            });
        }
        Ok(out)
    }

    /// Scores prepared requests: their last prefix chunks packed, then their continuations
    /// packed, then the scored positions projected in groups.
    fn score_prepared(&mut self, batch: &[Prepared]) -> Result<Vec<Vec<LogLikelihood>>> {
        // The shared prefixes' last chunks.
        let with_prefix: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].p > 0).collect();
        let segments: Vec<Segment<'_>> = with_prefix
            .iter()
            .map(|&i| {
                let b = &batch[i];
                Segment {
                    ids: &b.wholes[0][b.start..b.p],
                    past: vec![&b.base],
                }
            })
            .collect();
        let mut prefixes: Vec<Option<(Tensor, KvCache)>> = vec![None; batch.len()];
        for (&i, done) in with_prefix
            .iter()
            .zip(self.model.forward_in_passes(&segments, CacheOut::Own)?)
        {
            self.prefix.computed_tokens += (batch[i].p - batch[i].start) as u64;
            prefixes[i] = Some(done);
        }
        // Every continuation from its prefix: targets whole[n..len] are predicted at positions
        // n-1..len-1; positions ≥ p come from a pass over whole[p..len-1].
        let mut branches = Vec::new();
        let mut segments = Vec::new();
        for (i, b) in batch.iter().enumerate() {
            for (j, whole) in b.wholes.iter().enumerate() {
                if whole.len() - 1 > b.p {
                    let past = match &prefixes[i] {
                        Some((_, own)) => vec![&b.base, own],
                        None => Vec::new(),
                    };
                    branches.push((i, j));
                    segments.push(Segment {
                        ids: &whole[b.p..whole.len() - 1],
                        past,
                    });
                }
            }
        }
        let mut hidden: Vec<Vec<Option<Tensor>>> =
            batch.iter().map(|b| vec![None; b.wholes.len()]).collect();
        for (&(i, j), (h, _)) in branches
            .iter()
            .zip(self.model.forward_in_passes(&segments, CacheOut::Own)?)
        {
            let b = &batch[i];
            self.prefix.computed_tokens += (b.wholes[j].len() - 1 - b.p) as u64;
            hidden[i][j] = Some(h);
        }
        // The rows to project, each with the targets scored there.
        let mut rows: Vec<Tensor> = Vec::new();
        let mut targets: Vec<Vec<u32>> = Vec::new();
        let mut plan: Vec<Vec<Vec<(usize, usize)>>> = Vec::with_capacity(batch.len());
        for (i, b) in batch.iter().enumerate() {
            let prefix_row = match (&prefixes[i], b.p == b.n) {
                (Some((h, _)), true) => {
                    rows.push(h.narrow(0, h.dim(0)? - 1, 1)?);
                    targets.push(Vec::new());
                    Some(rows.len() - 1)
                }
                _ => None,
            };
            let mut per_cont = Vec::with_capacity(b.wholes.len());
            for (j, whole) in b.wholes.iter().enumerate() {
                let mut picks = Vec::with_capacity(whole.len() - b.n);
                if let Some(r) = prefix_row {
                    picks.push((r, targets[r].len()));
                    targets[r].push(whole[b.n]);
                }
                if let Some(h) = &hidden[i][j] {
                    for pos in (b.n - 1).max(b.p)..whole.len() - 1 {
                        rows.push(h.narrow(0, pos - b.p, 1)?);
                        targets.push(vec![whole[pos + 1]]);
                        picks.push((rows.len() - 1, 0));
                    }
                }
                per_cont.push(picks);
            }
            plan.push(per_cont);
        }
        // (log-probability, is the first argmax) of each row's targets.
        let group = (PROJECTION_BYTES / (4 * self.model.vocab_size().max(1))).max(2);
        let mut scored: Vec<Vec<(f32, bool)>> = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(group) {
            let lp = self
                .model
                .log_probs_all(&Tensor::cat(chunk, 0)?)?
                .to_vec2::<f32>()?;
            for row in &lp {
                // A context's last row serves every continuation: one argmax scan for all.
                let best = first_argmax(row);
                let r = scored.len();
                scored.push(
                    targets[r]
                        .iter()
                        .map(|&t| (row[t as usize], best == t as usize))
                        .collect(),
                );
            }
        }
        Ok(batch
            .iter()
            .zip(plan)
            .map(|(b, per_cont)| {
                b.wholes
                    .iter()
                    .zip(per_cont)
                    .map(|(whole, picks)| {
                        let mut logprob = 0.0f64;
                        let mut is_greedy = true;
                        for (row, k) in picks {
                            let (lp, greedy) = scored[row][k];
                            logprob += lp as f64;
                            is_greedy &= greedy;
                        }
                        LogLikelihood {
                            logprob,
                            is_greedy,
                            n_tokens: whole.len() - b.n,
                        }
                    })
                    .collect()
            })
            .collect())
    }
}

impl Backend for CandleBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text)?.len())
    }

    fn token_counts(&self) -> (u64, u64) {
        (self.prefix.reused_tokens, self.prefix.computed_tokens)
    }

    fn numerics(&self) -> u32 {
        if self.model.device().is_cpu() {
            NUMERICS
        } else {
            NUMERICS + GPU_NUMERICS
        }
    }

    fn chat_template(&self) -> Option<crate::chat::ChatTemplate> {
        self.chat_template
            .clone()
            .map(|source| chat_template_of(&self.tokenizer, source))
    }

    fn concurrency(&self) -> usize {
        // Docs planned together share their matrix products (see `loglikelihood_batch`).
        self.batch_docs
    }

    /// Requests go in groups whose base caches (their prefixes before the last chunk) hold at
    /// most [`BATCH_BASE_BYTES`]. In a group, every request's prefix chunks but the last run
    /// together, a chunk per request per pass; then the last prefix chunks of all requests run
    /// packed, then all their continuations, then every scored position's vocabulary
    /// projection in groups. Packing changes no bit (see [`Decoder::forward_packed`]), so answers
    /// do not depend on the batch.
    fn loglikelihood_batch(
        &mut self,
        requests: &[ChoiceRequest],
    ) -> Result<Vec<Vec<LogLikelihood>>> {
        let mut pending = requests
            .iter()
            .map(|r| self.tokenize(r))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(requests.len());
        while !pending.is_empty() {
            // Requests sharing demonstrations share one base cache: count its bytes once.
            let mut bases = std::collections::HashSet::new();
            let mut base_bytes = 0usize;
            let mut take = 0;
            while take < pending.len() && base_bytes <= BATCH_BASE_BYTES {
                let t = &pending[take];
                let len = t.base_len();
                if len > 0 && bases.insert(&t.wholes[0][..len]) {
                    base_bytes += self.model.cache_bytes(len);
                }
                take += 1;
            }
            let group: Vec<Tokenized> = pending.drain(..take).collect();
            let prepared = self.prepare(group)?;
            out.extend(self.score_prepared(&prepared)?);
        }
        Ok(out)
    }

    fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<String>> {
        requests.iter().map(|r| self.generate(r)).collect()
    }

    fn loglikelihood_rolling(&mut self, text: &str) -> Result<f64> {
        self.rolling_logprob(text, self.info.context_length)
    }
}

impl CandleBackend {
    /// lm-eval's rolling windows (`get_rolling_token_windows` with a context of 1, made disjoint)
    /// over `text`'s tokens (no `<bos>`): the first window predicts up to `window` tokens after the
    /// start token, each later one the next up to `window` tokens after as many earlier tokens as
    /// fill the window. The sum of every token's log-probability.
    pub fn rolling_logprob(&self, text: &str, window: usize) -> Result<f64> {
        if window < 2 {
            bail!("loglikelihood_rolling: a window of {window} tokens is too small");
        }
        let mut tokens = self.tokenizer.encode(text)?;
        if self.tokenizer.bos_id.is_some() && tokens.first() == self.tokenizer.bos_id.as_ref() {
            tokens.remove(0);
        }
        if tokens.is_empty() {
            return Ok(0.0);
        }
        let start = self.start_token().context("loglikelihood_rolling")?;
        let first = window.min(tokens.len());
        let mut input = vec![start];
        input.extend_from_slice(&tokens[..first - 1]);
        let mut total = self.score_targets(&input, &tokens[..first])?;
        let mut predicted = first;
        while predicted < tokens.len() {
            let n = (tokens.len() - predicted).min(window);
            let end = predicted + n;
            // `window` tokens ending just before the last target; the last `n` positions predict.
            total +=
                self.score_targets(&tokens[end - window - 1..end - 1], &tokens[end - n..end])?;
            predicted = end;
        }
        Ok(total)
    }

    /// Σ log p(targets[i]) at the last `targets.len()` positions of one forward pass over `input`.
    fn score_targets(&self, input: &[u32], targets: &[u32]) -> Result<f64> {
        let (hidden, _) = self.model.forward(input, &self.model.empty_cache())?;
        let from = input.len() - targets.len();
        let mut total = 0.0;
        // The vocabulary projection in slices, so a long window never holds all its logits.
        for (c, chunk) in targets.chunks(256).enumerate() {
            let rows: Vec<usize> = (0..chunk.len()).map(|i| from + c * 256 + i).collect();
            let lp = self.model.log_probs(&hidden, &rows)?.to_vec2::<f32>()?;
            total += chunk
                .iter()
                .zip(&lp)
                .map(|(&t, row)| row[t as usize] as f64)
                .sum::<f64>();
        }
        Ok(total)
    }

    /// Greedy or sampled generation for one request, cut at its stop sequences.
    fn generate(&mut self, r: &GenerateRequest) -> Result<String> {
        let (context, breaks, until, max_tokens) = (&r.context, &r.breaks, &r.until, r.max_tokens);
        let ids = self.context_ids(context)?;
        self.check_fits(ids.len() + max_tokens)?;
        let cuts = self.token_cuts(context, &ids, breaks)?;
        let (hidden, cache) = self.prefix.run(&self.model, &ids, &cuts, ids.len())?;
        let tok = &self.tokenizer;
        let is_end = |t: u32| Some(t) == tok.eos_id || tok.control_ids.contains(&t);
        let out = self.decode_from(hidden, cache, max_tokens, r.sampling, |so_far| {
            let last = so_far[so_far.len() - 1];
            Ok(is_end(last) || cut_at_stop(&tok.decode(so_far)?, until).1)
        })?;
        // Each token after the first was one more forward step.
        self.prefix.computed_tokens += out.len().saturating_sub(1) as u64;
        let mut generated: Vec<u32> = out.into_iter().map(|(t, _)| t).collect();
        if generated.last().is_some_and(|&t| is_end(t)) {
            generated.pop();
        }
        Ok(cut_at_stop(&tok.decode(&generated)?, until).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_prefix_budget_is_an_eighth_of_available_memory() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:   16777216 kB\n";
        assert_eq!(mem_available_kib(meminfo), Some(16_777_216));
        assert_eq!(kv_budget_for(Some(16_777_216)), 2048);
        // A small or unknown machine keeps the old floor.
        assert_eq!(kv_budget_for(Some(1 << 20)), DEFAULT_KV_CACHE_MB);
        assert_eq!(kv_budget_for(None), DEFAULT_KV_CACHE_MB);
        assert_eq!(mem_available_kib("MemTotal: 1 kB\n"), None);
    }
}
