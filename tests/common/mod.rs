//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled SmolLM2 model; panics with the fix when it has not been fetched.
pub fn smollm2() -> PathBuf {
    bundled("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m")
}

/// A bundled model file; panics with the fix when it has not been fetched.
fn bundled(file: &str, fetch_name: &str) -> PathBuf {
    let p = root().join("models").join(file);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh {fetch_name} first",
        p.display()
    );
    p
}

/// The bundled Qwen2.5-Coder-0.5B model.
pub fn qwen05() -> PathBuf {
    bundled(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-0.5b",
    )
}

/// The bundled Gemma 3 270M model.
pub fn gemma3() -> PathBuf {
    bundled("gemma-3-270m-q4_k_m.gguf", "gemma3-270m")
}

/// The shared benchmark data folder (`../shared/data`), or `ICL_EVAL_DATA_DIR`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("ICL_EVAL_DATA_DIR")
        .map_or_else(|| root().join("../shared/data"), PathBuf::from)
}

/// The shared reference outputs (`../shared/reference`), or `ICL_EVAL_REFERENCE_DIR`.
pub fn reference_dir() -> PathBuf {
    std::env::var_os("ICL_EVAL_REFERENCE_DIR")
        .map_or_else(|| root().join("../shared/reference"), PathBuf::from)
}

/// A fresh temporary folder for one test.
pub fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("icl-eval-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the real binary from the repository root.
pub fn icl_eval(args: &[&str]) -> Output {
    icl_eval_in(&root(), args)
}

/// Runs the real binary from `dir`.
pub fn icl_eval_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_icl-eval"))
        .args(args)
        .current_dir(dir)
        .env_remove("ICL_EVAL_DATA_DIR")
        // Runs compared with each other must compute, not read each other's answers.
        .env("ICL_EVAL_NO_CACHE", "1")
        .env_remove("ICL_EVAL_CACHE")
        .output()
        .expect("run icl-eval")
}

/// The samples of a finished run folder.
pub fn read_samples(dir: &Path) -> Vec<icl_eval::run::Sample> {
    std::fs::read_to_string(dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON array of numbers as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}
