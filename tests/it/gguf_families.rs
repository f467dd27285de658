//! The later families from GGUF files. Each tiny-hf checkpoint is written here as the GGUF
//! llama.cpp's converter makes of it (llama.cpp's architecture, tensor names, metadata keys and
//! layouts: GPT-2's `Conv1D` matrices transposed, GPT-NeoX's fused projection as q | k | v), then
//! checked twice against transformers' reference log-probabilities:
//! - llama.cpp itself (llama-cpp-python, `scripts/install-llama-server.sh`) scores the file: this
//!   proves the file is what llama.cpp means by that architecture (a wrong name, key or layout
//!   moves log-probabilities by whole nats, or the file does not load);
//! - icl-eval's GGUF reader scores the same file: within 1e-4 nats, as the checkpoint itself.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use icl_eval::backend::candle::config::DecoderConfig;
use icl_eval::backend::candle::weights::{SafetensorsSource, TensorSource};
use icl_eval::backend::candle::{CandleBackend, WeightsChoice, hf};
use serde_json::Value as Json;

/// Tensor names (GGUF's) a file of these families may hold, per layer and overall.
const LAYER_TENSORS: &[&str] = &[
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_output",
    "attn_q_norm",
    "attn_k_norm",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
];
const GLOBAL_TENSORS: &[&str] = &[
    "token_embd.weight",
    "position_embd.weight",
    "output_norm.weight",
    "output_norm.bias",
    "output.weight",
];

fn u32v(n: usize) -> Value {
    Value::U32(n as u32)
}

/// `tokenizer.ggml.*` for the byte-level BPE of a `tokenizer.json`, as llama.cpp reads `gpt2`
/// vocabularies: tokens by id, specials as control tokens, merges as "a b".
fn tokenizer_metadata(path: &Path, cfg_json: &Json) -> Vec<(String, Value)> {
    let t: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let config = path.with_file_name("tokenizer_config.json");
    let config: Json = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let add_bos = config["add_bos_token"].as_bool().unwrap_or(false);
    let vocab = t["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (tok, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = tok.clone();
    }
    let specials: Vec<u64> = t["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["special"].as_bool() == Some(true))
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    let merges: Vec<Value> = t["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Json::String(s) => Value::String(s.clone()),
            pair => Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            )),
        })
        .collect();
    let types = (0..tokens.len() as u64)
        .map(|i| Value::I32(if specials.contains(&i) { 3 } else { 1 }))
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            u32v(cfg_json["bos_token_id"].as_u64().unwrap() as usize),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            u32v(cfg_json["eos_token_id"].as_u64().unwrap() as usize),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)),
    ]
}

/// The architecture's hyper-parameters under llama.cpp's keys.
fn model_metadata(arch: &str, cfg: &DecoderConfig, ffn: usize) -> Vec<(String, Value)> {
    let k = |key: &str| format!("{arch}.{key}");
    let mut m = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        // Not the family's name: llama.cpp patches token attributes of vocabularies whose
        // model name says phi3, which this tokenizer lacks.
        (
            "general.name".into(),
            Value::String("tiny random checkpoint".into()),
        ),
        (k("context_length"), u32v(cfg.context_length)),
        (k("embedding_length"), u32v(cfg.hidden)),
        (k("block_count"), u32v(cfg.n_layers)),
        (k("feed_forward_length"), u32v(ffn)),
        (k("attention.head_count"), u32v(cfg.n_heads)),
        (k("attention.head_count_kv"), u32v(cfg.n_kv_heads)),
        (k("attention.key_length"), u32v(cfg.head_dim)),
        (k("attention.value_length"), u32v(cfg.head_dim)),
    ];
    let eps = Value::F32(cfg.norm_eps as f32);
    match arch {
        "gpt2" | "gptneox" => m.push((k("attention.layer_norm_epsilon"), eps)),
        _ => m.push((k("attention.layer_norm_rms_epsilon"), eps)),
    }
    if arch != "gpt2" {
        m.push((k("rope.dimension_count"), u32v(cfg.rotary_dims)));
        m.push((k("rope.freq_base"), Value::F32(cfg.rope.base)));
    }
    if arch == "gptneox" {
        m.push((
            k("use_parallel_residual"),
            Value::Bool(cfg.parallel_residual),
        ));
    }
    if let Some(w) = cfg.sliding_window {
        m.push((k("attention.sliding_window"), u32v(w)));
    }
    for (key, cap) in [
        ("attn_logit_softcapping", cfg.attn_softcap),
        ("final_logit_softcapping", cfg.final_softcap),
    ] {
        if let Some(c) = cap {
            m.push((k(key), Value::F32(c as f32)));
        }
    }
    m
}

/// Writes `tiny-hf/<folder>` as a float32 GGUF of llama.cpp's architecture `arch`, with the
/// folder's `tokenizer.json` beside it; returns the file.
fn convert(folder: &str, arch: &str, out: &Path) -> PathBuf {
    let dir = common::reference_dir().join("tiny-hf").join(folder);
    let config = hf::read_config(&dir).unwrap();
    let (family, cfg) = hf::decoder_config(&config).unwrap();
    let mut src =
        SafetensorsSource::open(&[dir.join("model.safetensors")], family, cfg.n_heads).unwrap();
    let mut names: Vec<String> = GLOBAL_TENSORS.iter().map(|s| s.to_string()).collect();
    for i in 0..cfg.n_layers {
        for t in LAYER_TENSORS {
            for suffix in ["weight", "bias"] {
                names.push(format!("blk.{i}.{t}.{suffix}"));
            }
        }
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    names.retain(|n| src.has(n));
    for name in &names {
        // `tensor` gives each one in the decoder's layout: what llama.cpp's converter writes,
        // norms with Gemma's +1 folded in, as its converter does.
        let mut t = if name.contains("norm.weight") {
            src.norm(name).unwrap()
        } else {
            src.tensor(name).unwrap()
        };
        if arch == "llama" {
            // llama.cpp's converter permutes llama's query/key rows for its interleaved rotation.
            if name.ends_with("attn_q.weight") {
                t = permute(&t, cfg.n_heads);
            } else if name.ends_with("attn_k.weight") {
                t = permute(&t, cfg.n_kv_heads);
            }
        }
        tensors.push((name.clone(), QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    if arch == "gpt2" {
        // llama.cpp's GPT-2 converter writes the tied head as a copy of the embedding.
        let e = src.tensor("token_embd.weight").unwrap();
        tensors.push((
            "output.weight".into(),
            QTensor::quantize(&e, GgmlDType::F32).unwrap(),
        ));
    }
    let ffn = src.tensor("blk.0.ffn_down.weight").unwrap().dims()[1];
    let cfg_json: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut meta = model_metadata(arch, &cfg, ffn);
    meta.extend(tokenizer_metadata(&dir.join("tokenizer.json"), &cfg_json));
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    std::fs::create_dir_all(out).unwrap();
    let path = out.join(format!("tiny-{folder}.gguf"));
    let mut f = std::fs::File::create(&path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    std::fs::copy(dir.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    path
}

/// llama.cpp's `permute`: each head's rows from halves order (`rotate_half`) to interleaved pairs.
fn permute(w: &candle_core::Tensor, heads: usize) -> candle_core::Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn reference(folder: &str) -> Json {
    let p = common::root().join(format!("tests/fixtures/tiny-hf/{folder}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Each reference prompt's ids and next-token log-probabilities.
fn prompts(r: &Json) -> Vec<(Vec<u32>, Vec<f64>)> {
    r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let want = p["next_token_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (common::ids(&p["ids_with_special"]), want)
        })
        .collect()
}

/// llama.cpp's next-token log-probabilities of each id sequence, from llama-cpp-python.
fn llama_cpp_logprobs(model: &Path, seqs: &[Vec<u32>]) -> Vec<Vec<f64>> {
    let python = common::venv_python();
    let script = r#"
import json, sys
import numpy as np
from llama_cpp import Llama
# A float32 KV cache (llama.cpp's default is float16), so only the kernels' rounding differs.
m = Llama(model_path=sys.argv[1], n_ctx=256, n_batch=256, logits_all=True, n_threads=1,
          type_k=0, type_v=0, verbose=False)
out = []
for ids in json.loads(sys.argv[2]):
    m.reset()
    m.eval(ids)
    z = np.array(m.scores[: len(ids)], dtype=np.float64)
    lp = z - (z.max(1, keepdims=True) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)))
    out.append([float(lp[t, ids[t + 1]]) for t in range(len(ids) - 1)])
print(json.dumps(out))
"#;
    let o = Command::new(&python)
        .args(["-c", script])
        .arg(model)
        .arg(serde_json::to_string(seqs).unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "llama.cpp refused {}: {}",
        model.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn worst(got: &[Vec<f64>], want: &[(Vec<u32>, Vec<f64>)]) -> f64 {
    got.iter()
        .zip(want)
        .flat_map(|(g, (_, w))| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f64::max)
}

/// The folder as GGUF: llama.cpp within `llama_cpp_tol` of transformers, icl-eval within 1e-4,
/// and the same parameter count as from the checkpoint.
fn check(folder: &str, arch: &str, llama_cpp_tol: f64) {
    let out = common::tmp(&format!("gguf-{folder}"));
    let gguf = convert(folder, arch, &out);
    let r = reference(folder);
    let want = prompts(&r);
    let seqs: Vec<Vec<u32>> = want.iter().map(|(ids, _)| ids.clone()).collect();
    let theirs = worst(&llama_cpp_logprobs(&gguf, &seqs), &want);
    eprintln!("{arch} GGUF: llama.cpp max |Δ logprob| = {theirs:.2e} nats");
    assert!(
        theirs <= llama_cpp_tol,
        "llama.cpp reads the {arch} file differently: {theirs}"
    );
    let ours = CandleBackend::load(&gguf, WeightsChoice::F32).unwrap();
    let checkpoint = CandleBackend::load(
        &common::reference_dir().join("tiny-hf").join(folder),
        WeightsChoice::Auto,
    )
    .unwrap();
    use icl_eval::backend::Backend;
    assert_eq!(ours.info().architecture, arch);
    assert_eq!(ours.info().parameters, checkpoint.info().parameters);
    let got: Vec<Vec<f64>> = seqs
        .iter()
        .map(|ids| {
            let (lp, _) = ours.next_token_logprobs(ids).unwrap();
            lp.into_iter().map(f64::from).collect()
        })
        .collect();
    let mine = worst(&got, &want);
    eprintln!("{arch} GGUF: icl-eval max |Δ logprob| = {mine:.2e} nats");
    assert!(mine <= 1e-4, "{arch}: {mine}");
    for (p, (ids, _)) in r["prompts"].as_array().unwrap().iter().zip(&want) {
        assert_eq!(&ours.encode(p["prompt"].as_str().unwrap()).unwrap(), ids);
    }
}

/// Gemma 2 from GGUF has no `query_pre_attn_scalar`: llama.cpp scales queries by 1/√head_dim
/// except in the 46-layer 27B model, which the tiny checkpoint (scale 1/√16, head size 32) is not.
/// So the file's meaning is llama.cpp's, and icl-eval must agree with llama.cpp on it at every
/// position (sliding windows, both soft-caps and the +1 norms included) up to ggml's float16 GELU
/// table (2.4e-3 here; a wrong scale, window or cap costs whole nats); transformers' numbers,
/// with their other scale, are far.
#[test]
#[ignore = "needs ../shared/reference/tiny-hf and llama-cpp-python (scripts/install-llama-server.sh)"]
fn gemma2_gguf_is_read_as_llama_cpp_reads_it() {
    let out = common::tmp("gguf-gemma2");
    let gguf = convert("gemma2", "gemma2", &out);
    let want = prompts(&reference("gemma2"));
    let seqs: Vec<Vec<u32>> = want.iter().map(|(ids, _)| ids.clone()).collect();
    let theirs = llama_cpp_logprobs(&gguf, &seqs);
    let ours = CandleBackend::load(&gguf, WeightsChoice::F32).unwrap();
    let mut gap = 0f64;
    for (ids, t) in seqs.iter().zip(&theirs) {
        let (lp, _) = ours.next_token_logprobs(ids).unwrap();
        for (a, b) in lp.iter().zip(t) {
            gap = gap.max((f64::from(*a) - b).abs());
        }
    }
    let from_transformers = worst(&theirs, &want);
    eprintln!(
        "gemma2 GGUF: icl-eval vs llama.cpp {gap:.2e} nats; llama.cpp vs transformers \
         {from_transformers:.2}"
    );
    assert!(gap <= 5e-3, "{gap}");
    assert!(from_transformers > 0.1, "the scale must matter here");
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf and llama-cpp-python (scripts/install-llama-server.sh)"]
fn llama_gguf_matches_transformers_and_llama_cpp() {
    check("llama", "llama", 1e-4);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf and llama-cpp-python (scripts/install-llama-server.sh)"]
fn gpt2_gguf_matches_transformers_and_llama_cpp() {
    // ggml's GELU reads a float16 table: llama.cpp lands 2.5e-3 from transformers here.
    check("gpt2", "gpt2", 5e-3);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf and llama-cpp-python (scripts/install-llama-server.sh)"]
fn gptneox_gguf_matches_transformers_and_llama_cpp() {
    // llama.cpp's GPT-NeoX GELU is the tanh form from a float16 table (Pythia's is exact):
    // 1.9e-3 from transformers here.
    check("gpt_neox", "gptneox", 5e-3);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf and llama-cpp-python (scripts/install-llama-server.sh)"]
fn qwen3_gguf_matches_transformers_and_llama_cpp() {
    check("qwen3", "qwen3", 1e-4);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf and llama-cpp-python (scripts/install-llama-server.sh)"]
fn phi3_gguf_matches_transformers_and_llama_cpp() {
    check("phi3", "phi3", 1e-4);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf and llama-cpp-python (scripts/install-llama-server.sh)"]
fn olmo2_gguf_matches_transformers_and_llama_cpp() {
    check("olmo2", "olmo2", 1e-4);
}
