//! The `openai` backend against a real OpenAI-compatible server: llama.cpp, served by
//! llama-cpp-python's server (`scripts/install-llama-server.sh` installs it), started here on
//! 127.0.0.1 with a bundled GGUF and stopped when the test ends. Its answers are compared with the
//! in-process candle backend's on the same file.

use crate::common;
use common::fake_hub::FakeHub;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use icl_eval::record::Sample;

/// One server at a time: each takes both cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// A llama-cpp-python server child process, killed on drop.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    fn start(model: &Path, alias: &str, dir: &Path) -> Server {
        let python = common::venv_python();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("{alias}-server.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(model)
            .args(["--model_alias", alias, "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            // Prompt log-probabilities need the logits of every position.
            .args([
                "--n_ctx",
                "2048",
                "--n_threads",
                "2",
                "--logits_all",
                "true",
            ])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}/v1"),
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the server exited ({status}): {}", server.log_text());
            }
            if ureq::get(format!("{}/models", server.base)).call().is_ok() {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "the server did not start in 3 minutes: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn model(&self, alias: &str) -> String {
        format!("openai:{}#{alias}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `icl-eval run` with `args`, each request computed (no request cache).
/// `icl-eval run ARGS --output OUT`, its Hub datasets (the library's `arithmetic_2ds`) from a fake
/// Hub shared by this file's runs.
fn run(out: &Path, args: &[&str]) -> Output {
    static HUB: std::sync::OnceLock<FakeHub> = std::sync::OnceLock::new();
    let hub = HUB.get_or_init(FakeHub::datasets);
    let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
    c.arg("run")
        .args(args)
        .arg("--output")
        .arg(out)
        .current_dir(common::root())
        .env("ICL_EVAL_NO_CACHE", "1");
    hub.env(&mut c, &out.with_extension("hf-cache"), false)
        .output()
        .unwrap()
}

/// Samples by (task, doc, K).
type Cells = BTreeMap<(String, usize, usize), Sample>;

/// The same run through the server and in process on `gguf`; each one's samples by cell.
fn server_and_candle(d: &Path, server_model: &str, gguf: &Path, args: &[&str]) -> (Cells, Cells) {
    let mut server_args = args.to_vec();
    server_args.extend(["--models", server_model, "--context-length", "2048"]);
    let o = run(&d.join("server"), &server_args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gguf = gguf.to_string_lossy().to_string();
    let mut local_args = args.to_vec();
    local_args.extend(["--models", &gguf]);
    let o = run(&d.join("candle"), &local_args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (by_cell(&d.join("server")), by_cell(&d.join("candle")))
}

fn by_cell(dir: &Path) -> Cells {
    common::read_samples(dir)
        .into_iter()
        .map(|s| ((s.task.clone(), s.doc_id, s.k), s))
        .collect()
}

/// How many cells give the same answer on both sides, and a report; asserts each task's accuracy
/// is within `points` on the two sides.
fn same_answers(served: &Cells, local: &Cells, tasks: &[&str], points: f64) -> (usize, String) {
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    let same = served
        .iter()
        .filter(|(k, s)| s.prediction == local[*k].prediction)
        .count();
    let mut report = format!("same answer: {same} of {}\n", served.len());
    for task in tasks {
        let acc = |m: &Cells| {
            let v: Vec<f64> = m
                .values()
                .filter(|s| s.task == *task)
                .map(|s| f64::from(u8::from(s.correct == Some(true))))
                .collect();
            100.0 * v.iter().sum::<f64>() / v.len() as f64
        };
        let (a, b) = (acc(served), acc(local));
        report.push_str(&format!("{task}: server {a:.1}%, candle {b:.1}%\n"));
        assert!((a - b).abs() <= points + 1e-9, "{report}");
    }
    (same, report)
}

#[test]
#[ignore = "needs llama-cpp-python's server (scripts/install-llama-server.sh) and the bundled SmolLM2"]
fn smollm2_through_llama_cpp_generates_like_candle_and_its_shifted_scores_are_refused() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = common::tmp("llama-smollm2");
    let gguf = common::smollm2();
    let server = Server::start(&gguf, "smollm2", &d);
    let model = server.model("smollm2");

    // SmolLM2 adds no BOS token, and llama-cpp-python then scores each echoed prompt token with
    // the next position's distribution: icl-eval must refuse rather than report wrong numbers.
    let o = run(
        &d.join("mc"),
        &[
            "--tasks",
            "sentiment_reviews",
            "--models",
            model.as_str(),
            "--context-length",
            "2048",
            "--shots",
            "0",
            "--limit",
            "1",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("shifted by one token"), "{err}");

    // Generation needs no prompt log-probabilities: greedy answers against candle's.
    let args = [
        "--tasks",
        "two_digit_addition,en_fr_words",
        "--shots",
        "0,1,4",
        "--limit",
        "20",
    ];
    let (served, local) = server_and_candle(&d, &model, &gguf, &args);
    assert_eq!(served.len(), 120, "2 tasks × 20 docs × 3 K");
    let (same, report) = same_answers(&served, &local, &["two_digit_addition", "en_fr_words"], 2.0);
    eprintln!("{report}");
    // Greedy answers of a 135M model on these tasks sit on near-ties: llama.cpp's own f16 and f32
    // KV caches disagree on 17% of them. Most answers must still match.
    assert!(same * 10 >= served.len() * 8, "{report}");
}

#[test]
#[ignore = "needs llama-cpp-python's server (scripts/install-llama-server.sh) and the bundled Gemma 3"]
fn gemma3_loglikelihoods_through_llama_cpp_match_candle() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = common::tmp("llama-gemma3");
    let gguf = common::gemma3();
    let server = Server::start(&gguf, "gemma", &d);
    let model = server.model("gemma");
    // llama-cpp-python sorts the 262,144-token vocabulary in Python for every echoed token
    // (about 0.4 s each here), so this check stays small: 4 docs, 0-shot, 2 choices.
    let args = [
        "--tasks",
        "sentiment_reviews",
        "--shots",
        "0",
        "--limit",
        "4",
    ];
    let (served, local) = server_and_candle(&d, &model, &gguf, &args);
    assert_eq!(served.len(), 4);
    for (k, s) in &served {
        let (a, b) = (
            s.logprobs.as_ref().unwrap(),
            local[k].logprobs.as_ref().unwrap(),
        );
        eprintln!(
            "doc {}: server {a:?}, candle {b:?}, margins {} vs {}",
            k.1,
            a[1] - a[0],
            b[1] - b[0]
        );
    }
    for (k, s) in &served {
        let (a, b) = (
            s.logprobs.as_ref().unwrap(),
            local[k].logprobs.as_ref().unwrap(),
        );
        // Q4_K weights with llama.cpp's 8-bit activations and f16 KV cache against candle's
        // float32. Both choices share the prompt, so most of the gap is common to them: measured
        // with the portable AVX2 build (which varies from run to run), 0.003–0.53 nats per choice,
        // 0.11 at most between margins. A token shifted or dropped moves either by whole nats.
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 0.75, "{x} vs {y}");
        }
        let (ma, mb) = (a[1] - a[0], b[1] - b[0]);
        assert!((ma - mb).abs() < 0.2, "margins {ma} vs {mb}");
        assert_eq!(s.prediction, local[k].prediction);
    }
}

#[test]
#[ignore = "needs llama-cpp-python's server (scripts/install-llama-server.sh) and the bundled Qwen2.5-Coder-0.5B"]
fn qwen_through_llama_cpp_gives_candles_greedy_answers() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = common::tmp("llama-qwen");
    let gguf = common::qwen05();
    let server = Server::start(&gguf, "qwen", &d);
    let model = server.model("qwen");
    // Unlike the 135M and 270M models, Qwen2.5-Coder-0.5B answers arithmetic with margins, so the
    // two backends' numerics rarely flip an answer (docs/servers.md has the 30-doc grid). This is
    // its first 6 docs: 36 of 36 the same here. A broken backend gets most answers wrong; the
    // bound leaves room for the other near-ties another CPU's kernels may flip.
    let args = [
        "--tasks",
        "two_digit_addition,arithmetic_2ds",
        "--shots",
        "0,1,4",
        "--limit",
        "6",
    ];
    let (served, local) = server_and_candle(&d, &model, &gguf, &args);
    assert_eq!(served.len(), 36, "2 tasks × 6 docs × 3 K");
    // 18 samples a task: one doc answered differently moves its accuracy by 5.6 points.
    let (same, report) = same_answers(
        &served,
        &local,
        &["two_digit_addition", "arithmetic_2ds"],
        100.0 / 18.0,
    );
    eprintln!("{report}");
    assert!(same * 10 >= served.len() * 9, "{report}");
}

/// `openai-chat:` against llama-cpp-python's chat endpoint: ARC-Easy in `mcqa` form, the
/// letter read from the first answer token's top log-probabilities, against the same GGUF in
/// process with its chat template (folded, the same messages rendered by minijinja), letter by
/// letter; generation through the chat endpoint against candle's greedy answers; and a cloze task
/// refused before anything runs.
#[test]
#[ignore = "needs llama-cpp-python's server (scripts/install-llama-server.sh) and the bundled Qwen2.5-Coder-0.5B"]
fn chat_endpoint_answers_mcqa_letters_like_candle() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = common::tmp("llama-chat");
    let gguf = common::qwen05();
    let server = Server::start(&gguf, "qwen", &d);
    let chat = format!("openai-chat:{}#qwen", server.base);
    let gguf = gguf.to_string_lossy().to_string();
    let mcqa = [
        "--tasks", "arc_easy", "--format", "mcqa", "--shots", "0,5", "--limit", "20",
    ];
    let mut served: Vec<&str> = mcqa.to_vec();
    served.extend(["--models", &chat, "--context-length", "2048"]);
    let o = run(&d.join("chat"), &served);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut local: Vec<&str> = mcqa.to_vec();
    local.extend(["--models", &gguf, "--chat-template"]);
    let o = run(&d.join("candle"), &local);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (by_cell(&d.join("chat")), by_cell(&d.join("candle")));
    let (same, report) = same_answers(&a, &b, &["arc_easy"], 10.0);
    eprintln!("{report}");
    assert_eq!(a.len(), 40);
    // The two sides differ in numerics (llama.cpp's kernels against candle's on the same Q4_K_M
    // weights): letters the model holds nearly equal can swap. Every cell with a clear answer on
    // both sides (a margin of 0.1 nats between the best two letters) must agree.
    let margin = |s: &Sample| {
        let mut l = s.logprobs.clone().unwrap();
        l.sort_by(|x, y| y.total_cmp(x));
        l[0] - l[1]
    };
    let clear: Vec<_> = a
        .keys()
        .filter(|k| margin(&a[*k]) >= 0.1 && margin(&b[*k]) >= 0.1)
        .collect();
    let split: Vec<_> = clear
        .iter()
        .filter(|k| a[**k].prediction != b[**k].prediction)
        .collect();
    eprintln!(
        "clear answers: {} of {}, split: {split:?}",
        clear.len(),
        a.len()
    );
    assert!(split.is_empty(), "{report}");
    assert!(clear.len() * 2 >= a.len(), "{report}");
    assert!(same * 100 >= 80 * a.len(), "{report}");
    assert!(
        a.values()
            .all(|s| s.format == icl_eval::task::Formulation::Mcqa)
    );
    let config = std::fs::read_to_string(d.join("chat/config.json")).unwrap();
    assert!(config.contains("top log-probabilities"), "{config}");

    // Generation: the chat endpoint's greedy answers against candle's through the same template.
    let gen_args = [
        "--tasks",
        "two_digit_addition",
        "--shots",
        "0,4",
        "--limit",
        "20",
    ];
    let mut served: Vec<&str> = gen_args.to_vec();
    served.extend(["--models", &chat, "--context-length", "2048"]);
    let o = run(&d.join("chat-gen"), &served);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut local: Vec<&str> = gen_args.to_vec();
    local.extend(["--models", &gguf, "--chat-template"]);
    let o = run(&d.join("candle-gen"), &local);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (by_cell(&d.join("chat-gen")), by_cell(&d.join("candle-gen")));
    let (same, report) = same_answers(&a, &b, &["two_digit_addition"], 10.0);
    eprintln!("{report}");
    assert!(same * 100 >= 90 * a.len(), "{report}");

    // A cloze task cannot be scored from a chat reply: refused, naming the fix.
    let o = run(
        &d.join("cloze"),
        &[
            "--tasks",
            "arc_easy",
            "--shots",
            "0",
            "--limit",
            "1",
            "--models",
            &chat,
            "--context-length",
            "2048",
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--format mcqa") && e.contains("arc_easy"),
        "{e}"
    );
    assert!(!d.join("cloze/samples.jsonl").exists());
}
