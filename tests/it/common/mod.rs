//! Shared helpers for the integration tests.

pub mod fake_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root: cargo's run-time variable first, so a test binary built from another
/// checkout sharing the target folder (CI's clone) still reads this checkout's files.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
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
    command_in(dir, args).output().expect("run icl-eval")
}

/// The real binary with `args`, from `dir`, not started (for more settings).
pub fn command_in(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
    c.args(args)
        .current_dir(dir)
        .env_remove("ICL_EVAL_DATA_DIR")
        // Runs compared with each other must compute, not read each other's answers.
        .env("ICL_EVAL_NO_CACHE", "1")
        .env_remove("ICL_EVAL_CACHE");
    c
}

/// `icl-eval run` of the task `task` found in the folder `tasks` on the bundled SmolLM2, into
/// `out`, with `extra` arguments (shots, limit, flags); asserts it succeeded and returns its samples.
pub fn run_smollm2(
    tasks: &Path,
    task: &str,
    out: &Path,
    extra: &[&str],
) -> Vec<icl_eval::record::Sample> {
    let model = smollm2();
    let mut args = vec![
        "run",
        "--tasks-dir",
        tasks.to_str().unwrap(),
        "--tasks",
        task,
        "--models",
        model.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let o = icl_eval(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_samples(out)
}

/// The samples of a finished run folder.
pub fn read_samples(dir: &Path) -> Vec<icl_eval::record::Sample> {
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

/// What the fake HTTP server does with one request.
pub enum Act {
    /// Status, extra headers, JSON body.
    Reply(u16, Vec<(&'static str, String)>, String),
    /// Close the connection without answering.
    Drop,
    /// Answer `{}` only after this long.
    Hang(std::time::Duration),
}

/// A request the fake server saw.
pub struct Seen {
    pub path: String,
    /// Header lines as received.
    pub headers: String,
    pub body: String,
}

/// Every request a fake server saw, in arrival order.
pub type RequestLog = std::sync::Arc<std::sync::Mutex<Vec<Seen>>>;

/// A fake HTTP/1.1 server on 127.0.0.1 (a thread per connection, `Connection: close`):
/// `script(n, path, json body)` decides each request's fate. Returns `http://ADDR` and its log.
pub fn fake_server(
    script: impl Fn(usize, &str, &serde_json::Value) -> Act + Send + Sync + 'static,
) -> (String, RequestLog) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log: RequestLog = Default::default();
    let seen = log.clone();
    let script = std::sync::Arc::new(script);
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let (seen, script) = (seen.clone(), script.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let (mut headers, mut len) = (String::new(), 0);
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    headers.push_str(&h);
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let body = String::from_utf8(body).unwrap();
                let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                seen.lock().unwrap().push(Seen {
                    path: path.clone(),
                    headers,
                    body,
                });
                let (status, extra, text) = match script(n, &path, &json) {
                    Act::Drop => return,
                    Act::Hang(d) => {
                        std::thread::sleep(d);
                        (200, vec![], "{}".to_string())
                    }
                    Act::Reply(s, h, t) => (s, h, t),
                };
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                    text.len()
                );
                for (k, v) in extra {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&text);
                let _ = stream.write_all(out.as_bytes());
            });
        }
    });
    (addr, log)
}

/// Score of `cont` after `ctx` from one plain forward pass over both, with no cache and no
/// chunks: (sum of `cont`'s token log-probabilities, whether each was the argmax, its tokens).
pub fn one_pass_score(
    b: &icl_eval::backend::candle::CandleBackend,
    ctx: &str,
    cont: &str,
) -> (f64, bool, usize) {
    let n_ctx = b.encode(ctx).unwrap().len();
    let whole = b.encode(&format!("{ctx}{cont}")).unwrap();
    let (lp, argmax) = b.next_token_logprobs(&whole).unwrap();
    let sum = lp[n_ctx - 1..].iter().map(|&x| x as f64).sum();
    let greedy = (n_ctx..whole.len()).all(|i| argmax[i - 1] == whole[i]);
    (sum, greedy, whole.len() - n_ctx)
}

/// Requests of every shape scoring meets: demonstrations shared across docs (with their break
/// offsets), multi-token continuations, a context ending in whitespace, an empty context.
pub fn mixed_requests() -> Vec<icl_eval::backend::ChoiceRequest> {
    use icl_eval::backend::ChoiceRequest;
    let demos = "Label each review.\n\nReview: A joy from start to end.\nSentiment: positive\n\n\
                 Review: Dull and far too long.\nSentiment: negative\n\n";
    let breaks = [
        "Label each review.\n\n".len(),
        "Label each review.\n\nReview: A joy from start to end.\nSentiment: positive\n\n".len(),
        demos.len(),
    ];
    let labels = [" positive".to_string(), " negative".to_string()];
    let mut out: Vec<ChoiceRequest> = ["Sharp, funny and kind.", "I walked out.", "Fine."]
        .iter()
        .map(|r| ChoiceRequest::new(&format!("{demos}Review: {r}\nSentiment:"), &breaks, &labels))
        .collect();
    out.push(ChoiceRequest::new(
        "The capital of France is",
        &[],
        &[
            " Paris, a city of light".into(),
            " Berlin".into(),
            " a".into(),
        ],
    ));
    out.push(ChoiceRequest::new(
        "Q: 2 + 2 =\nA: ",
        &[],
        &["4".into(), "5 or so".into()],
    ));
    out.push(ChoiceRequest::new("", &[], &["Hello world".into()]));
    out
}

/// A batch of [`mixed_requests`] scores bit for bit as each request alone, and close to one plain
/// pass over each context + continuation.
pub fn check_batch_invariance(
    model: &std::path::Path,
    weights: icl_eval::backend::candle::WeightsChoice,
) {
    use icl_eval::backend::Backend;
    let requests = mixed_requests();
    let mut b = icl_eval::backend::candle::CandleBackend::load(model, weights).unwrap();
    let together = b.loglikelihood_batch(&requests).unwrap();
    // Alone, in reverse order, on another load with prefix reuse off (so no request sees
    // another's cached prefix): the same bits.
    let mut fresh = icl_eval::backend::candle::CandleBackend::load(model, weights)
        .unwrap()
        .with_kv_cache_mb(0);
    let mut alone = Vec::new();
    for r in requests.iter().rev() {
        alone.push(
            fresh
                .loglikelihood(&r.context, &r.breaks, &r.continuations)
                .unwrap(),
        );
    }
    alone.reverse();
    assert_eq!(together, alone, "{}", model.display());
    // And close to one plain pass over each context + continuation (other chunking rounds
    // differently).
    for (r, got) in requests.iter().zip(&together) {
        let ctx = r.context.trim_end();
        if ctx.is_empty() {
            continue; // scored after a start token the text does not contain
        }
        for (c, g) in r.continuations.iter().zip(got) {
            let moved = &r.context[ctx.len()..];
            let (want, _, _) = one_pass_score(&b, ctx, &format!("{moved}{c}"));
            assert!(
                (g.logprob - want).abs() < 1e-3,
                "{c:?}: {} vs {want}",
                g.logprob
            );
        }
    }
}

/// The Python of the venv `scripts/install-llama-server.sh` makes with llama.cpp's server, or
/// `ICL_EVAL_LLAMA_PYTHON`.
pub fn venv_python() -> PathBuf {
    cached_python("ICL_EVAL_LLAMA_PYTHON", "llama-venv")
}

/// The Python with `datasets` that the same script makes for lm-eval's hooks, or
/// `ICL_EVAL_HOOKS_PYTHON`.
pub fn hooks_python() -> PathBuf {
    cached_python("ICL_EVAL_HOOKS_PYTHON", "hooks-venv")
}

fn cached_python(var: &str, venv: &str) -> PathBuf {
    let python = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap())
            .join(format!(".cache/icl-eval/{venv}/bin/python"))
    });
    assert!(
        python.is_file(),
        "{} is missing: run scripts/install-llama-server.sh first",
        python.display()
    );
    python
}
