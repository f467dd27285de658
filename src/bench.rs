//! `icl-eval bench`: the speed and memory figures of `docs/performance.md`, measured in one run on
//! this machine and printed as ratios.
//!
//! - Prompt processing: tokens per second of the candle backend (float32 and quantized weights) and
//!   of llama.cpp (through llama-cpp-python, when installed) on the same GGUF, the same token ids and
//!   the same thread count; logits at the last position only on both sides.
//! - Sweep reuse: a `--shots 0,1,8,32` run against a `--shots 32` run of the same docs, for the
//!   `random` and `fixed` samplers: wall time and tokens forwarded, as ratios.
//! - Peak RSS of a run with float32 and with quantized weights.
//! - Many-shot: a `fixed`-sampler sweep to 1,024 shots with default flags (time, peak RSS, tokens
//!   computed against the least a sweep can compute), and on a few docs its answers against the
//!   same sweep without prefix reuse.
//!
//! Runs are child processes of this binary, so each has its own memory high-water mark and
//! thread pool.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::backend::Backend;
use crate::backend::candle::{CandleBackend, DeviceChoice, WeightsChoice, hf, inspect_gguf};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// GGUF files or checkpoint folders: prompt processing is measured on each; runs use the first.
    pub models: Vec<(String, PathBuf)>,
    pub threads: usize,
    /// Tokens per prompt-processing pass.
    pub tokens: usize,
    /// Timed passes per measurement (the fastest is reported).
    pub reps: usize,
    /// The Python with `llama_cpp` (llama-cpp-python); skipped with a message when absent.
    pub llama_python: Option<PathBuf>,
    /// Task of the sweep runs, and how many of its docs.
    pub task: String,
    pub limit: usize,
    /// Folder for the child runs' outputs.
    pub work_dir: PathBuf,
    /// `--data-dir`, passed on to the runs.
    pub data_dir: Option<PathBuf>,
    /// Which measurements to make.
    pub parts: Vec<BenchPart>,
    /// Where icl-eval's forward passes run (llama.cpp stays on the CPU).
    pub device: DeviceChoice,
    /// The many-shot sweep: its K's, its docs, and the docs checked against no prefix reuse
    /// (0: no check).
    pub manyshot: ManyShotConfig,
}

/// The many-shot part's sweep.
#[derive(Debug, Clone)]
pub struct ManyShotConfig {
    /// `--shots` of the sweep, e.g. `0,1,4,16,64,256,1024`.
    pub shots: String,
    pub limit: usize,
    pub check_docs: usize,
}

/// One of `bench`'s three measurements (`--parts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPart {
    /// Prompt-processing tokens/s against llama.cpp.
    Speed,
    /// The `--shots 0,1,8,32` sweep against `--shots 32` alone.
    Sweep,
    /// Peak RSS of a run.
    Memory,
    /// A `fixed` sweep to 1,024 shots with default flags: time, peak RSS, tokens computed.
    Manyshot,
    /// Prompt processing at 2k, 8k, 16k and 32k tokens, against the float32 ceiling.
    Long,
}

/// Prompt lengths of the long-context measurement.
const LONG_TOKENS: [usize; 4] = [2048, 8192, 16384, 32768];

/// The longest prompt llama.cpp is timed on: its float16 attention makes longer passes take
/// minutes on a laptop.
const LLAMA_MAX_TOKENS: usize = 8192;

/// One long prompt's processing speed.
#[derive(Debug, Clone)]
pub struct LongSpeed {
    pub model: String,
    pub tokens: usize,
    pub tps: f64,
    /// The pass's operations per second over the measured matrix-product rate.
    pub ceiling_share: f64,
    pub llama_tps: Result<f64, String>,
}

/// Prompt-processing speed of one model.
#[derive(Debug, Clone)]
pub struct PromptSpeed {
    pub model: String,
    pub tokens: usize,
    pub f32_tps: f64,
    /// `None` for a checkpoint folder, which only runs in float32.
    pub quantized_tps: Option<f64>,
    /// `Err` says why llama.cpp was not measured.
    pub llama_tps: Result<f64, String>,
}

/// One child run.
#[derive(Debug, Clone)]
pub struct RunCost {
    pub label: String,
    pub seconds: f64,
    pub tokens: u64,
    pub peak_rss_mb: f64,
    pub dir: PathBuf,
}

/// Everything `bench` measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub threads: usize,
    pub speeds: Vec<PromptSpeed>,
    /// (sampler, sweep run, K = 32 alone run, how their K = 32 samples compare).
    pub sweeps: Vec<(String, RunCost, RunCost, Agreement)>,
    /// (weights, run, memory of the weights in MB).
    pub memory: Vec<(String, RunCost, f64)>,
    pub manyshot: Option<ManyShot>,
    pub long: Vec<LongSpeed>,
    /// The matrix-product rate the long-context shares are of, in GFLOP/s.
    pub matmul_gflops: Option<f64>,
}

/// What the many-shot part measured.
#[derive(Debug, Clone)]
pub struct ManyShot {
    pub shots: String,
    pub docs: usize,
    pub run: RunCost,
    /// The issue's yardstick of a sweep that computes its prefix once: each seed's largest
    /// prompt once (without its query), plus every sample's query and continuation (its doc's
    /// 0-shot prompt's tokens, start token included, so a little more than the queries add).
    pub ideal_tokens: u64,
    /// Tokens of the largest K's prompt of the first doc (with its longest continuation).
    pub largest_prompt: usize,
    /// The same sweep on the first docs, with prefix reuse and without: how their answers agree.
    pub check: Option<Agreement>,
}

/// Measures everything in `cfg`.
pub fn bench(cfg: &BenchConfig) -> Result<BenchReport> {
    if cfg.models.is_empty() {
        bail!("bench: name at least one model");
    }
    // Child runs first: a child's peak RSS counts the parent's pages until it execs, so the parent
    // must not have loaded a model yet.
    let (_, path) = &cfg.models[0];
    let wants = |part| cfg.parts.contains(&part);
    let mut sweeps = Vec::new();
    if wants(BenchPart::Sweep) {
        for sampler in ["random", "fixed"] {
            eprintln!("sweep runs: {sampler}");
            let sweep = child_run(
                cfg,
                path,
                sampler,
                "0,1,8,32",
                "auto",
                &format!("sweep-{sampler}"),
                cfg.limit,
                &[],
            )?;
            let alone = child_run(
                cfg,
                path,
                sampler,
                "32",
                "auto",
                &format!("k32-{sampler}"),
                cfg.limit,
                &[],
            )?;
            let same = compare_runs(&sweep.dir, &alone.dir, Some(32))?;
            sweeps.push((sampler.to_string(), sweep, alone, same));
        }
    }
    let mut memory = Vec::new();
    if wants(BenchPart::Memory) {
        let mut sizes = Vec::new();
        if path.is_dir() {
            let params = hf::inspect(path)?.parameters.total;
            sizes.push(("f32", params as f64 * 4.0 / 1e6));
        } else {
            let params = inspect_gguf(path)?.parameters.total;
            sizes.push(("f32", params as f64 * 4.0 / 1e6));
            sizes.push(("quantized", std::fs::metadata(path)?.len() as f64 / 1e6));
        }
        for (weights, size) in sizes {
            eprintln!("memory: --weights {weights}");
            let run = child_run(
                cfg,
                path,
                "random",
                "0,1",
                weights,
                &format!("rss-{weights}"),
                cfg.limit,
                &[],
            )?;
            memory.push((weights.to_string(), run, size));
        }
    }
    let manyshot = match wants(BenchPart::Manyshot) {
        true => Some(many_shot(cfg, path)?),
        false => None,
    };
    let mut speeds = Vec::new();
    if wants(BenchPart::Speed) {
        for (name, path) in &cfg.models {
            eprintln!("prompt processing: {name}");
            speeds.push(prompt_speed(cfg, name, path)?);
        }
    }
    let (mut long, mut matmul_gflops) = (Vec::new(), None);
    if wants(BenchPart::Long) {
        for (name, path) in &cfg.models {
            eprintln!("long prompts: {name}");
            let (rate, speeds) = long_speed(cfg, name, path)?;
            matmul_gflops = Some(rate / 1e9);
            long.extend(speeds);
        }
    }
    Ok(BenchReport {
        threads: cfg.threads,
        speeds,
        sweeps,
        memory,
        manyshot,
        long,
        matmul_gflops,
    })
}

/// Float32 matrix products per second on this machine, through candle's kernel, at the shape of a
/// long prompt's MLP: 1,024 rows of the model's width times a 4× wider matrix; the fastest of 5.
fn matmul_rate(hidden: usize) -> Result<f64> {
    use candle_core::{DType, Device, Tensor};
    let (m, k, n) = (1024, hidden, 4 * hidden);
    let a = Tensor::ones((m, k), DType::F32, &Device::Cpu)?;
    let b = Tensor::ones((k, n), DType::F32, &Device::Cpu)?;
    a.matmul(&b)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        std::hint::black_box(&c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best)
}

/// One pass at each of [`LONG_TOKENS`] that fits the context (float32 weights, no prefix
/// reuse): tokens/s, the share of the matrix-product rate the pass's arithmetic reaches, and
/// llama.cpp's tokens/s on the same ids. Returns the rate too.
fn long_speed(cfg: &BenchConfig, name: &str, path: &Path) -> Result<(f64, Vec<LongSpeed>)> {
    let mut b =
        CandleBackend::load_on(path, WeightsChoice::F32, None, cfg.device)?.with_kv_cache_mb(0);
    let rate = matmul_rate(b.hidden_size())?;
    let fits = b.info().context_length.saturating_sub(2);
    b.loglikelihood("Warm up.", &[], &[" x".to_string()])?;
    let mut out = Vec::new();
    // The longest length is the context itself where it is exactly that (Gemma 3's 32,768).
    let mut lengths: Vec<usize> = LONG_TOKENS
        .into_iter()
        .filter(|&n| n / 2 < fits)
        .map(|n| n.min(fits))
        .collect();
    lengths.dedup();
    for n in lengths {
        let ids = bench_ids(&b, n)?;
        let text = b.decode(&ids)?;
        // Long passes take minutes on a laptop: one timed pass beyond 8k.
        let reps = if n > 8192 { 1 } else { cfg.reps };
        let (tps, computed) = fastest_pass(&mut b, &text, reps)?;
        let llama_tps = match n > LLAMA_MAX_TOKENS && !path.is_dir() {
            true => Err(format!(
                "beyond {LLAMA_MAX_TOKENS} tokens (llama.cpp's pass takes minutes on 2 cores)"
            )),
            false => llama_speed(cfg, path, &ids),
        };
        out.push(LongSpeed {
            model: name.to_string(),
            tokens: computed,
            tps,
            ceiling_share: b.prefill_flops(computed) * tps / computed as f64 / rate,
            llama_tps,
        });
    }
    Ok((rate, out))
}

/// The many-shot sweep with default flags, then (on `check_docs` docs) with and without reuse.
fn many_shot(cfg: &BenchConfig, path: &Path) -> Result<ManyShot> {
    let m = &cfg.manyshot;
    eprintln!("many-shot sweep: --shots {} over {} docs", m.shots, m.limit);
    let run = child_run(
        cfg,
        path,
        "fixed",
        &m.shots,
        "auto",
        "manyshot",
        m.limit,
        &[],
    )?;
    let samples = crate::record::read_run(&run.dir)?.samples;
    let zero_shot: std::collections::HashMap<(String, usize), usize> = samples
        .iter()
        .filter(|s| s.k == 0)
        .filter_map(|s| Some(((s.task.clone(), s.doc_id), s.tokens?)))
        .collect();
    let k_max = samples.iter().map(|s| s.k).max().unwrap_or(0);
    let largest = samples
        .iter()
        .filter(|s| s.k == k_max)
        .min_by_key(|s| (s.doc_id, s.seed))
        .context("the many-shot sweep scored no sample at its largest K")?;
    let largest_prompt = largest.tokens.unwrap_or(0);
    let query = zero_shot
        .get(&(largest.task.clone(), largest.doc_id))
        .copied()
        .unwrap_or(0);
    let seeds: std::collections::BTreeSet<u64> = samples.iter().map(|s| s.seed).collect();
    let queries: usize = samples
        .iter()
        .filter_map(|s| zero_shot.get(&(s.task.clone(), s.doc_id)))
        .sum();
    let ideal_tokens = (largest_prompt.saturating_sub(query) * seeds.len() + queries) as u64;
    let check = if m.check_docs == 0 {
        None
    } else {
        eprintln!(
            "many-shot check: {} docs with and without prefix reuse",
            m.check_docs
        );
        let with = child_run(
            cfg,
            path,
            "fixed",
            &m.shots,
            "auto",
            "manyshot-reuse",
            m.check_docs,
            &[],
        )?;
        let without = child_run(
            cfg,
            path,
            "fixed",
            &m.shots,
            "auto",
            "manyshot-no-reuse",
            m.check_docs,
            &["--kv-cache-mb", "0"],
        )?;
        Some(compare_runs(&with.dir, &without.dir, None)?)
    };
    Ok(ManyShot {
        shots: m.shots.clone(),
        docs: m.limit,
        run,
        ideal_tokens,
        largest_prompt,
        check,
    })
}

/// Text of about `n` tokens: the shipped hand-written reviews, repeated.
fn bench_ids(b: &CandleBackend, n: usize) -> Result<Vec<u32>> {
    let data = include_str!("../tasks/data/sentiment_reviews.jsonl");
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.len() < n + 1 {
        for line in data.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            text.push_str(v["text"].as_str().unwrap_or_default());
            text.push(' ');
        }
        ids = b.encode(&text)?;
    }
    ids.truncate(n);
    Ok(ids)
}

fn prompt_speed(cfg: &BenchConfig, name: &str, path: &Path) -> Result<PromptSpeed> {
    let mut ids = Vec::new();
    let mut tps = Vec::new();
    // Checkpoint folders hold float32 weights only.
    let formats: &[WeightsChoice] = if path.is_dir() {
        &[WeightsChoice::F32]
    } else {
        &[WeightsChoice::F32, WeightsChoice::Quantized]
    };
    for &weights in formats {
        // No prefix cache: every pass computes every token.
        let mut b = CandleBackend::load_on(path, weights, None, cfg.device)?.with_kv_cache_mb(0);
        if ids.is_empty() {
            // A pass fits the context with the one-token continuation (tiny models have 256).
            let fits = b.info().context_length.saturating_sub(2);
            ids = bench_ids(&b, cfg.tokens.min(fits))?;
        }
        let text = b.decode(&ids)?;
        b.loglikelihood("Warm up.", &[], &[" x".to_string()])?;
        tps.push(fastest_pass(&mut b, &text, cfg.reps)?.0);
    }
    let llama_tps = llama_speed(cfg, path, &ids);
    Ok(PromptSpeed {
        model: name.to_string(),
        tokens: ids.len(),
        f32_tps: tps[0],
        quantized_tps: tps.get(1).copied(),
        llama_tps,
    })
}

/// The fastest of `reps` passes (at least one) over `text` with a one-token continuation:
/// tokens per second and tokens computed.
fn fastest_pass(b: &mut CandleBackend, text: &str, reps: usize) -> Result<(f64, usize)> {
    let (mut best, mut computed) = (0f64, 0);
    for _ in 0..reps.max(1) {
        let (_, before) = b.token_counts();
        let t = Instant::now();
        b.loglikelihood(text, &[], &[" x".to_string()])?;
        let secs = t.elapsed().as_secs_f64();
        computed = (b.token_counts().1 - before).max(1) as usize;
        best = best.max(computed as f64 / secs);
    }
    Ok((best, computed))
}

/// llama.cpp's tokens per second on `ids`, or why it was not measured.
fn llama_speed(cfg: &BenchConfig, path: &Path, ids: &[u32]) -> Result<f64, String> {
    match &cfg.llama_python {
        _ if path.is_dir() => Err("a checkpoint folder (llama.cpp reads GGUF)".to_string()),
        None => Err("no Python with llama_cpp given (--llama-python)".to_string()),
        Some(py) => llama_cpp_speed(py, path, ids, cfg),
    }
}

/// llama.cpp's prompt processing of `ids` (logits of the last position only, as icl-eval's scoring
/// pass), fastest of `reps` passes after a warm-up.
const LLAMA_SCRIPT: &str = r#"
import json, sys, time
from llama_cpp import Llama
c = json.load(sys.stdin)
llm = Llama(model_path=c["model"], n_ctx=c["n_ctx"], n_batch=c["n_ctx"], n_ubatch=c["n_ctx"],
            n_threads=c["threads"], n_threads_batch=c["threads"], logits_all=False, verbose=False)
ids = c["ids"]
llm.eval(ids[:16])
best = float("inf")
for _ in range(c["reps"]):
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    best = min(best, time.perf_counter() - t)
print(json.dumps({"tokens_per_second": len(ids) / best}))
"#;

fn llama_cpp_speed(
    python: &Path,
    model: &Path,
    ids: &[u32],
    cfg: &BenchConfig,
) -> Result<f64, String> {
    #[derive(Deserialize)]
    struct Out {
        tokens_per_second: f64,
    }
    let input = serde_json::json!({
        "model": model,
        "ids": ids,
        "n_ctx": (ids.len() + 16).next_power_of_two(),
        "threads": cfg.threads,
        "reps": cfg.reps.max(1),
    });
    let mut child = Command::new(python)
        .args(["-c", LLAMA_SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(input.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!("llama-cpp-python failed: {last}"));
    }
    serde_json::from_slice::<Out>(&out.stdout)
        .map(|o| o.tokens_per_second)
        .map_err(|e| format!("unreadable llama-cpp-python output: {e}"))
}

/// Runs `icl-eval run` as a child and measures its wall time, tokens forwarded and peak RSS.
#[allow(clippy::too_many_arguments)]
fn child_run(
    cfg: &BenchConfig,
    model: &Path,
    sampler: &str,
    shots: &str,
    weights: &str,
    label: &str,
    limit: usize,
    extra: &[&str],
) -> Result<RunCost> {
    let dir = cfg.work_dir.join(label);
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--tasks", &cfg.task, "--models"])
        .arg(model)
        .args(["--shots", shots, "--sampler", sampler, "--weights", weights])
        .args(["--limit", &limit.to_string()])
        .args(extra)
        .args(["--device", &cfg.device.to_string()])
        .args([
            "--threads",
            &cfg.threads.to_string(),
            "--no-cache",
            "--output",
        ])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(d) = &cfg.data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    let t = Instant::now();
    let child = cmd.spawn().context("cannot start a child run")?;
    let (status, peak_kb) = wait_with_peak_rss(child)?;
    let seconds = t.elapsed().as_secs_f64();
    if !status {
        bail!(
            "the child run {label} failed (its folder: {})",
            dir.display()
        );
    }
    let record = crate::record::read_run(&dir)?.record;
    let tokens = record.prompt_tokens.iter().map(|p| p.computed).sum();
    Ok(RunCost {
        label: label.to_string(),
        seconds,
        tokens,
        peak_rss_mb: peak_kb as f64 * 1024.0 / 1e6,
        dir,
    })
}

/// Waits for `child`; returns whether it succeeded and its peak resident set in KiB.
fn wait_with_peak_rss(mut child: std::process::Child) -> Result<(bool, i64)> {
    // Drain stderr so a chatty child never blocks on a full pipe.
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for this child, which we have not reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let err = reader.join().unwrap_or_default();
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        eprintln!("{err}");
    }
    Ok((ok, usage.ru_maxrss))
}

/// How two runs' samples of the same cells compare. A sweep's K = 32 prompts are those of a
/// K = 32 run, but a sweep also cuts them after 1 and 8 demonstrations (where its shorter prompts
/// end), and float sums over other chunk boundaries round differently in the last bits; the same
/// sweep without prefix reuse (`--kv-cache-mb 0`) is bit-identical, which `tests/it/protocol.rs`
/// checks.
#[derive(Debug, Clone, Copy)]
pub struct Agreement {
    pub samples: usize,
    /// Samples with the same prompt, K used and prediction.
    pub same_answers: usize,
    /// Largest difference between their log-probabilities.
    pub max_logprob_diff: f64,
}

/// Compares the samples of two runs cell by cell (only K = `k` when given).
fn compare_runs(a: &Path, b: &Path, k: Option<usize>) -> Result<Agreement> {
    let pick = |d: &Path| -> Result<Vec<crate::record::Sample>> {
        let mut v: Vec<_> = crate::record::read_run(d)?
            .samples
            .into_iter()
            .filter(|s| k.is_none_or(|k| s.k == k))
            .collect();
        v.sort_by(|x, y| (&x.task, x.doc_id, x.k, x.seed).cmp(&(&y.task, y.doc_id, y.k, y.seed)));
        Ok(v)
    };
    let (x, y) = (pick(a)?, pick(b)?);
    if x.len() != y.len() {
        bail!(
            "{} scored {} samples, {} scored {}",
            a.display(),
            x.len(),
            b.display(),
            y.len()
        );
    }
    let mut out = Agreement {
        samples: x.len(),
        same_answers: 0,
        max_logprob_diff: 0.0,
    };
    for (s, t) in x.iter().zip(&y) {
        let key = |s: &crate::record::Sample| {
            (
                s.task.clone(),
                s.doc_id,
                s.k,
                s.prompt_hash.clone(),
                s.k_effective,
                s.prediction.clone(),
            )
        };
        out.same_answers += usize::from(key(s) == key(t));
        for (p, q) in s.logprobs.iter().flatten().zip(t.logprobs.iter().flatten()) {
            out.max_logprob_diff = out.max_logprob_diff.max((p - q).abs());
        }
    }
    Ok(out)
}

impl BenchReport {
    /// The report as Markdown tables, one per part measured.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        if !self.speeds.is_empty() {
            let _ = write!(
                out,
                "Prompt processing, {} thread(s), fastest of the timed passes (tokens per second):\n\n\
                 | model | tokens | icl-eval f32 | icl-eval quantized | llama.cpp | f32 / llama.cpp | quantized / llama.cpp |\n\
                 |---|---:|---:|---:|---:|---:|---:|\n",
                self.threads
            );
        }
        for s in &self.speeds {
            let quantized = s.quantized_tps.map_or("–".into(), |q| format!("{q:.0}"));
            let (llama, r1, r2) = match &s.llama_tps {
                Ok(l) => (
                    format!("{l:.0}"),
                    format!("{:.2}×", s.f32_tps / l),
                    s.quantized_tps
                        .map_or("–".into(), |q| format!("{:.2}×", q / l)),
                ),
                Err(e) => (format!("skipped: {e}"), "–".into(), "–".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {quantized} | {llama} | {r1} | {r2} |",
                s.model, s.tokens, s.f32_tps
            );
        }
        if !self.sweeps.is_empty() {
            out.push_str(
                "\nSweep `--shots 0,1,8,32` against `--shots 32` alone (same docs, prefix reuse on, \
                 request cache off):\n\n\
                 | sampler | sweep s | K=32 alone s | time ratio | sweep tokens | K=32 tokens | token ratio | same K=32 answers | max \\|Δ log p\\| |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
        }
        for (sampler, sweep, alone, same) in &self.sweeps {
            let _ = writeln!(
                out,
                "| {sampler} | {:.1} | {:.1} | {:.2} | {} | {} | {:.2} | {}/{} | {:.1e} |",
                sweep.seconds,
                alone.seconds,
                sweep.seconds / alone.seconds,
                sweep.tokens,
                alone.tokens,
                sweep.tokens as f64 / alone.tokens.max(1) as f64,
                same.same_answers,
                same.samples,
                same.max_logprob_diff
            );
        }
        if let Some(m) = &self.manyshot {
            let _ = write!(
                out,
                "\nMany-shot sweep `--shots {}`, `--sampler fixed`, {} docs, default flags:\n\n\
                 | wall s | peak RSS MB | tokens computed | largest prompt + queries | ratio | largest prompt (tokens) | same answers without reuse | max \\|Δ log p\\| |\n\
                 |---:|---:|---:|---:|---:|---:|---:|---:|\n",
                m.shots, m.docs
            );
            let (same, diff) = match &m.check {
                Some(c) => (
                    format!("{}/{}", c.same_answers, c.samples),
                    format!("{:.1e}", c.max_logprob_diff),
                ),
                None => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                out,
                "| {:.1} | {:.0} | {} | {} | {:.3} | {} | {same} | {diff} |",
                m.run.seconds,
                m.run.peak_rss_mb,
                m.run.tokens,
                m.ideal_tokens,
                m.run.tokens as f64 / m.ideal_tokens.max(1) as f64,
                m.largest_prompt,
            );
        }
        if !self.memory.is_empty() {
            out.push_str(
                "\nPeak RSS of a run (`--shots 0,1`), against 1.5 × the weights' size + 300 MB:\n\n\
                 | weights | weights MB | peak RSS MB | limit MB | RSS / limit |\n|---|---:|---:|---:|---:|\n",
            );
        }
        for (weights, run, size) in &self.memory {
            let limit = 1.5 * size + 300.0;
            let _ = writeln!(
                out,
                "| {weights} | {size:.0} | {:.0} | {limit:.0} | {:.2} |",
                run.peak_rss_mb,
                run.peak_rss_mb / limit
            );
        }
        if let Some(rate) = self.matmul_gflops {
            let _ = write!(
                out,
                "\nLong prompts, float32 weights, {} thread(s), one pass each (share: the pass's \
                 operations per second over candle's float32 matrix-product rate here, \
                 {rate:.0} GFLOP/s):\n\n\
                 | model | tokens | icl-eval tok/s | share of the ceiling | llama.cpp tok/s | icl-eval / llama.cpp |\n\
                 |---|---:|---:|---:|---:|---:|\n",
                self.threads
            );
        }
        for l in &self.long {
            let (llama, ratio) = match &l.llama_tps {
                Ok(t) => (format!("{t:.0}"), format!("{:.2}×", l.tps / t)),
                Err(e) => (format!("skipped: {e}"), "–".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0}% | {llama} | {ratio} |",
                l.model,
                l.tokens,
                l.tps,
                100.0 * l.ceiling_share
            );
        }
        // Each later table starts with a blank line; the first one printed must not.
        out.trim_start().to_string()
    }
}
