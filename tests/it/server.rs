//! The `openai` backend against fake OpenAI-compatible servers on 127.0.0.1: parsing of echoed
//! log-probabilities, retries through faults, errors, and `--models openai:…` end to end with the
//! real binary (a character-level fake model, so every score is computed by hand).

use crate::common;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Act;
use icl_eval::backend::Backend;
use icl_eval::backend::openai::{ALIGNMENT_PROBE, Endpoint, OpenAiBackend, Options};
use serde_json::{Value, json};

/// Log-probability the fake model gives character `c`: -(code point mod 7 + 1) / 10.
fn char_logprob(c: char) -> f64 {
    -(((c as u32) % 7) as f64 + 1.0) / 10.0
}

fn answer(path: &str, body: &Value) -> (u16, Value) {
    match path {
        "/v1/models" => (
            200,
            json!({"data": [{"id": "fake", "meta": {"n_ctx_train": 100000}}]}),
        ),
        "/tokenize" => {
            let n = body["content"].as_str().unwrap_or("").chars().count();
            (200, json!({"tokens": vec![0; n]}))
        }
        "/v1/completions" if body["echo"] == true => {
            let prompt = body["prompt"].as_str().unwrap();
            let mut tokens: Vec<String> = prompt.chars().map(String::from).collect();
            tokens.push("!".into());
            let mut offsets = Vec::new();
            let mut at = 0;
            for t in &tokens {
                offsets.push(at);
                at += t.len();
            }
            let lps: Vec<Value> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| match i {
                    0 => Value::Null,
                    _ => json!(char_logprob(t.chars().next().unwrap())),
                })
                .collect();
            let tops: Vec<Value> = tokens
                .iter()
                .zip(&lps)
                .map(|(t, l)| match l {
                    Value::Null => Value::Null,
                    l => json!({ t.as_str(): l }),
                })
                .collect();
            (
                200,
                json!({"choices": [{"text": format!("{prompt}!"), "logprobs": {
                    "tokens": tokens, "text_offset": offsets, "token_logprobs": lps,
                    "top_logprobs": tops}}]}),
            )
        }
        "/v1/completions" => (200, json!({"choices": [{"text": " 42\nQ: more"}]})),
        _ => (404, json!({})),
    }
}

/// Serves the fake model; returns its base URL and a count of completion requests.
fn serve() -> (String, Arc<AtomicUsize>) {
    let completions = Arc::new(AtomicUsize::new(0));
    let count = completions.clone();
    let (addr, _) = common::fake_server(move |_, path, body| {
        if path == "/v1/completions" {
            count.fetch_add(1, Ordering::SeqCst);
        }
        let (status, v) = answer(path, body);
        Act::Reply(status, vec![], v.to_string())
    });
    (format!("{addr}/v1"), completions)
}

fn run(model: &str, out: &Path, cache: &Path) -> std::process::Output {
    run_with(model, out, cache, &[])
}

fn run_with(model: &str, out: &Path, cache: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_icl-eval"))
        .args([
            "run",
            "--tasks",
            "sentiment_reviews,two_digit_addition",
            "--models",
            model,
            "--shots",
            "0,2",
            "--limit",
            "3",
            "--output",
        ])
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .args(extra)
        .current_dir(common::root())
        .env_remove("ICL_EVAL_NO_CACHE")
        .env("OPENAI_API_KEY", "sk-test-secret")
        .output()
        .unwrap()
}

#[test]
fn a_run_against_an_openai_compatible_server_scores_by_hand_and_caches() {
    let (base, completions) = serve();
    let model = format!("openai:{base}#fake");
    let d = common::tmp("server");
    let cache = d.join("cache.sqlite");
    let o = run(&model, &d.join("a"), &cache);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = common::read_samples(&d.join("a"));
    assert_eq!(samples.len(), 12, "2 tasks × 3 docs × 2 K");
    // Each choice's log-likelihood is the fake model's sum over its characters.
    let first = samples
        .iter()
        .find(|s| s.task == "sentiment_reviews" && s.logprobs.is_some())
        .unwrap();
    for (lp, choice) in first
        .logprobs
        .as_ref()
        .unwrap()
        .iter()
        .zip(["negative", "positive"])
    {
        let expected: f64 = format!(" {choice}").chars().map(char_logprob).sum();
        assert!((lp - expected).abs() < 1e-12, "{lp} vs {expected}");
    }
    let generated = samples
        .iter()
        .find(|s| s.task == "two_digit_addition")
        .unwrap();
    assert_eq!(
        generated.generated.as_deref(),
        Some(" 42"),
        "cut at the stop sequence"
    );
    let used = completions.load(Ordering::SeqCst);
    assert!(used > 0);
    // The key reaches the server as a header only: no file of the run holds it.
    for f in ["config.json", "samples.jsonl", "summary.csv", "report.html"] {
        let text = std::fs::read_to_string(d.join("a").join(f)).unwrap();
        assert!(!text.contains("sk-test-secret"), "{f}");
    }
    // The same command again is answered from the cache: no completion request.
    let o = run(&model, &d.join("b"), &cache);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(completions.load(Ordering::SeqCst), used);
    assert_eq!(
        std::fs::read(d.join("a/samples.jsonl")).unwrap(),
        std::fs::read(d.join("b/samples.jsonl")).unwrap()
    );
}

/// Answers a healthy llama.cpp-like server would give for "Q: 1+1=" / " 2".
fn healthy(path: &str, body: &Value) -> Act {
    let ok = |v: Value| Act::Reply(200, vec![], v.to_string());
    match path {
        "/v1/models" => ok(json!({"data": [{"id": "m", "meta": {"n_ctx_train": 2048}}]})),
        "/tokenize" => ok(json!({"tokens": [1, 2, 3]})),
        // The alignment probe, echoed a character a token, each the likeliest at its place.
        "/v1/completions" if body["echo"] == true && body["prompt"] == ALIGNMENT_PROBE => {
            let tokens: Vec<String> = ALIGNMENT_PROBE.chars().map(String::from).collect();
            let offsets: Vec<usize> = (0..tokens.len()).collect();
            let lps: Vec<Value> = (0..tokens.len())
                .map(|i| if i == 0 { Value::Null } else { json!(-0.5) })
                .collect();
            let tops: Vec<Value> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if i == 0 {
                        Value::Null
                    } else {
                        json!({ t.as_str(): -0.5 })
                    }
                })
                .collect();
            ok(json!({"choices": [{"text": ALIGNMENT_PROBE, "logprobs": {
                "tokens": tokens, "text_offset": offsets, "token_logprobs": lps,
                "top_logprobs": tops,
            }}]}))
        }
        "/v1/completions" if body["echo"] == true => {
            assert_eq!(body["prompt"], "Q: 1+1= 2");
            // The context's tokens, then " 2" (the continuation), then a generated "\n".
            ok(json!({"choices": [{"text": "Q: 1+1= 2\n", "logprobs": {
                "tokens": ["Q", ":", " 1", "+", "1", "=", " 2", "\n"],
                "text_offset": [0, 1, 2, 4, 5, 6, 7, 9],
                "token_logprobs": [null, -1.0, -2.0, -0.5, -0.25, -0.125, -0.75, -3.0],
                "top_logprobs": [null, {":": -1.0}, {" 1": -2.0}, {"+": -0.5}, {"1": -0.25},
                                 {"=": -0.125}, {" 3": -0.5}, {"\n": -3.0}],
            }}]}))
        }
        "/v1/completions" => ok(json!({"choices": [{"text": " 2\nQ: 2+2="}]})),
        _ => Act::Reply(404, vec![], "{}".into()),
    }
}

fn fast() -> Options {
    Options {
        timeout: Duration::from_millis(1500),
        retries: 3,
        backoff: Duration::from_millis(10),
        api_key_env: "ICL_EVAL_TEST_KEY_UNSET".into(),
        ..Options::default()
    }
}

fn connect(addr: &str, model: &str, opts: Options) -> anyhow::Result<OpenAiBackend> {
    OpenAiBackend::connect(
        Endpoint::parse(&format!("openai:{addr}/v1#{model}")).unwrap(),
        opts,
    )
}

#[test]
fn echoed_logprobs_score_only_the_continuation_and_generation_stops() {
    let (addr, log) = common::fake_server(|_, p, b| healthy(p, b));
    let mut b = connect(&addr, "m", fast()).unwrap();
    assert_eq!(b.info().context_length, 2048);
    assert_eq!(b.count_tokens("x").unwrap(), 3);
    let ll = b.loglikelihood("Q: 1+1=", &[], &[" 2".into()]).unwrap();
    // Not the context's tokens, not the generated "\n".
    assert_eq!((ll[0].logprob, ll[0].n_tokens), (-0.75, 1));
    assert!(!ll[0].is_greedy, "\" 3\" was likelier");
    let g = b.generate_until("Q: 1+1=", &[], &["\n".into()], 8).unwrap();
    assert_eq!(g, " 2");
    let sent: Value = serde_json::from_str(&log.lock().unwrap().last().unwrap().body).unwrap();
    assert_eq!(sent["stop"], json!(["\n"]));
    assert_eq!(sent["temperature"], json!(0.0));
}

#[test]
fn errors_429_500_drops_and_hangs_are_retried() {
    // The completion request fails once in each way before it is answered.
    let tries = Arc::new(Mutex::new(0usize));
    let t = tries.clone();
    let (addr, _) = common::fake_server(move |_, p, b| {
        if p != "/v1/completions" {
            return healthy(p, b);
        }
        let mut n = t.lock().unwrap();
        *n += 1;
        match *n {
            1 => Act::Reply(500, vec![], "{\"error\": \"boom\"}".into()),
            2 => Act::Reply(429, vec![("Retry-After", "1".into())], "{}".into()),
            3 => Act::Drop,
            4 => Act::Hang(Duration::from_secs(3)),
            _ => healthy(p, b),
        }
    });
    let mut opts = fast();
    opts.retries = 5;
    let mut b = connect(&addr, "m", opts).unwrap();
    let start = Instant::now();
    let ll = b.loglikelihood("Q: 1+1=", &[], &[" 2".into()]).unwrap();
    assert_eq!(ll[0].logprob, -0.75);
    // The first scoring request is the alignment probe: it takes the faults, the score is the 6th.
    assert_eq!(*tries.lock().unwrap(), 6);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
}

#[test]
fn a_server_that_stays_down_is_a_clear_error_without_the_key() {
    let (addr, log) = common::fake_server(|_, p, b| match p {
        // A server that echoes the Authorization header in its error body: the key is blanked
        // from what is shown.
        "/v1/completions" => Act::Reply(
            503,
            vec![],
            "{\"error\":\"loading\", \"auth\": \"Bearer sk-very-secret\"}".into(),
        ),
        _ => healthy(p, b),
    });
    let mut opts = fast();
    // The key is given directly: setting a variable would race the binary's other threads.
    opts.api_key = Some("sk-very-secret".into());
    let mut b = connect(&addr, "m", opts).unwrap();
    let e = format!(
        "{:#}",
        b.loglikelihood("Q: 1+1=", &[], &[" 2".into()]).unwrap_err()
    );
    assert!(
        e.contains("gave up after 4 attempts") && e.contains("HTTP 503"),
        "{e}"
    );
    assert!(
        !e.contains("sk-very-secret") && e.contains("<redacted>"),
        "{e}"
    );
    let seen = log.lock().unwrap();
    assert!(
        seen.iter()
            .all(|r| r.headers.contains("Bearer sk-very-secret"))
    );
    assert!(seen.iter().all(|r| !r.body.contains("sk-very-secret")));
    // Every attempt reached the completions endpoint: 1 + 3 retries.
    assert_eq!(
        seen.iter().filter(|r| r.path == "/v1/completions").count(),
        4
    );
}

#[test]
fn missing_prompt_logprobs_and_unknown_models_are_named() {
    let (addr, _) = common::fake_server(|_, p, b| match p {
        "/v1/completions" => {
            Act::Reply(200, vec![], json!({"choices": [{"text": "x"}]}).to_string())
        }
        _ => healthy(p, b),
    });
    let mut b = connect(&addr, "m", fast()).unwrap();
    let e = format!(
        "{:#}",
        b.loglikelihood("Q: 1+1=", &[], &[" 2".into()]).unwrap_err()
    );
    assert!(e.contains("no prompt log-probabilities"), "{e}");
    let e = connect(&addr, "nope", fast()).err().unwrap().to_string();
    assert!(
        e.contains("does not serve model `nope`") && e.contains("serves: m"),
        "{e}"
    );
}

/// The fake model behind a server that takes 20 ms per completion, counting completions and the
/// most it ever had in flight at once; `down` makes it drop every connection (a dead server).
struct Slow {
    completions: AtomicUsize,
    in_flight: AtomicUsize,
    most: AtomicUsize,
    down: std::sync::atomic::AtomicBool,
}

fn serve_slow() -> (String, Arc<Slow>) {
    let state = Arc::new(Slow {
        completions: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        down: Default::default(),
    });
    let s = state.clone();
    let (addr, _) = common::fake_server(move |_, path, body| {
        if s.down.load(Ordering::SeqCst) {
            return Act::Drop;
        }
        if path == "/v1/completions" {
            let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            s.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            s.completions.fetch_add(1, Ordering::SeqCst);
        }
        let (status, v) = answer(path, body);
        Act::Reply(status, vec![], v.to_string())
    });
    (format!("openai:{addr}/v1#fake"), state)
}

#[test]
fn concurrent_requests_give_the_samples_of_one_at_a_time() {
    let d = common::tmp("server-concurrency");
    let mut outputs = Vec::new();
    for n in ["1", "4"] {
        let (model, state) = serve_slow();
        let out = d.join(format!("c{n}"));
        let o = run_with(
            &model,
            &out,
            &d.join(format!("cache{n}.sqlite")),
            &["--concurrency", n],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let most = state.most.load(Ordering::SeqCst);
        match n {
            "1" => assert_eq!(most, 1),
            _ => assert!((2..=4).contains(&most), "{most} in flight"),
        }
        outputs.push(std::fs::read(out.join("samples.jsonl")).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn a_server_that_dies_mid_run_stops_with_a_clear_message_and_the_run_resumes() {
    let d = common::tmp("server-dies");
    // The uninterrupted run, and how many completions it takes.
    let (model, whole) = serve_slow();
    let o = run_with(&model, &d.join("whole"), &d.join("w.sqlite"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let total = whole.completions.load(Ordering::SeqCst);

    let (model, state) = serve_slow();
    let args = ["--retries", "1", "--concurrency", "2"];
    let out = d.join("run");
    let watcher = {
        let state = state.clone();
        std::thread::spawn(move || {
            while state.completions.load(Ordering::SeqCst) < total / 2 {
                std::thread::sleep(Duration::from_millis(2));
            }
            state.down.store(true, Ordering::SeqCst);
        })
    };
    let o = run_with(&model, &out, &d.join("r.sqlite"), &args);
    watcher.join().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("gave up after 2 attempts") && err.contains("Run the same command again"),
        "{err}"
    );
    assert!(
        !out.join("samples.jsonl").exists(),
        "no whole-looking result"
    );
    let kept = std::fs::read_to_string(out.join("samples.jsonl.partial")).unwrap();
    assert!(kept.lines().count() > 0, "finished samples are kept");

    // The server is back: the same command finishes the run without redoing the kept samples.
    state.down.store(false, Ordering::SeqCst);
    let before = state.completions.load(Ordering::SeqCst);
    let o = run_with(&model, &out, &d.join("r.sqlite"), &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed = state.completions.load(Ordering::SeqCst) - before;
    assert!(resumed < total, "{resumed} of {total} completions redone");
    assert_eq!(
        std::fs::read(d.join("whole/samples.jsonl")).unwrap(),
        std::fs::read(out.join("samples.jsonl")).unwrap()
    );
}

#[test]
fn without_a_tokenize_endpoint_a_named_tokenizer_counts_tokens() {
    let (addr, _) = common::fake_server(|_, p, b| match p {
        "/tokenize" => Act::Reply(404, vec![], "{}".into()),
        _ => healthy(p, b),
    });
    let e = connect(&addr, "m", fast()).err().unwrap().to_string();
    assert!(
        e.contains("no tokenize endpoint") && e.contains("--tokenizer"),
        "{e}"
    );
    // A word-level tokenizer.json written by hand: whitespace split, unknown words one token.
    let d = common::tmp("server-tokenizer");
    let path = d.join("tokenizer.json");
    std::fs::write(
        &path,
        json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
               "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
               "post_processor": null, "decoder": null,
               "model": {"type": "WordLevel", "vocab": {"hello": 0, "world": 1, "[UNK]": 2},
                         "unk_token": "[UNK]"}})
        .to_string(),
    )
    .unwrap();
    let mut opts = fast();
    opts.tokenizer = Some(path);
    let b = connect(&addr, "m", opts).unwrap();
    assert_eq!(b.count_tokens("hello big world").unwrap(), 3);
    let mut opts = fast();
    opts.tokenizer = Some(d.join("missing.json"));
    let e = connect(&addr, "m", opts).err().unwrap().to_string();
    assert!(
        e.contains("--tokenizer") && e.contains("missing.json"),
        "{e}"
    );
}

/// A server that answers an absurd log-likelihood (1e308, the JSON stand-in for a broken model)
/// for one continuation: the run stops with an error naming the model, task and docs, and no
/// sample computed from it is written (nothing cached either: a rerun asks again).
#[test]
fn an_impossible_log_likelihood_stops_the_run_before_anything_is_written() {
    let (addr, _) = common::fake_server(move |_, path, body| {
        let (status, mut v) = answer(path, body);
        let broken = path == "/v1/completions"
            && body["echo"] == true
            && body["prompt"]
                .as_str()
                .is_some_and(|p| p.ends_with("positive"));
        if broken {
            let lps = v["choices"][0]["logprobs"]["token_logprobs"]
                .as_array_mut()
                .unwrap();
            let last = lps.len() - 2;
            lps[last] = json!(1e308);
        }
        Act::Reply(status, vec![], v.to_string())
    });
    let d = common::tmp("server-impossible");
    let out = d.join("run");
    let o = run(
        &format!("openai:{addr}/v1#fake"),
        &out,
        &d.join("cache.sqlite"),
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("model `fake`")
            && e.contains("impossible log-likelihood (1e308)")
            && e.contains("task sentiment_reviews, doc"),
        "{e}"
    );
    let partial = std::fs::read_to_string(out.join("samples.jsonl.partial")).unwrap_or_default();
    assert!(
        !partial.contains("null") && !partial.contains("1e308"),
        "{partial}"
    );
}

/// A fake chat endpoint: `/v1/models`, `/tokenize`, and `/v1/chat/completions` answered by
/// `chat(n, body)` (n counts chat requests from 1; the connection probe is the first).
fn chat_server(
    chat: impl Fn(usize, &Value) -> Act + Send + Sync + 'static,
) -> (String, common::RequestLog) {
    let n = Arc::new(AtomicUsize::new(0));
    common::fake_server(move |_, p, b| match p {
        "/v1/chat/completions" => chat(n.fetch_add(1, Ordering::SeqCst) + 1, b),
        "/v1/models" => Act::Reply(
            200,
            vec![],
            json!({"data": [{"id": "fake", "meta": {"n_ctx_train": 4096}}]}).to_string(),
        ),
        "/tokenize" => {
            let n = b["content"].as_str().unwrap_or("").chars().count();
            Act::Reply(200, vec![], json!({"tokens": vec![0; n]}).to_string())
        }
        _ => Act::Reply(404, vec![], "{}".into()),
    })
}

/// A chat answer whose first token has these top log-probabilities.
fn top(entries: &[(&str, f64)]) -> Act {
    let tops: Vec<Value> = entries
        .iter()
        .map(|(t, l)| json!({"token": t, "logprob": l, "bytes": null}))
        .collect();
    Act::Reply(
        200,
        vec![],
        json!({"choices": [{"message": {"role": "assistant", "content": entries[0].0},
            "logprobs": {"content": [{"token": entries[0].0, "logprob": entries[0].1,
                                      "top_logprobs": tops}]}}]})
        .to_string(),
    )
}

fn reply(content: &str) -> Act {
    Act::Reply(
        200,
        vec![],
        json!({"choices": [{"message": {"role": "assistant", "content": content}}]}).to_string(),
    )
}

fn chat_connect(addr: &str, opts: Options) -> anyhow::Result<Box<dyn Backend>> {
    let scheme = icl_eval::backend::scheme_of("openai-chat:").unwrap();
    (scheme.connect)(&format!("openai-chat:{addr}/v1#fake"), &opts)
}

/// The messages `prompt::Format::Messages` sends for one user turn.
fn user(text: &str) -> String {
    json!([{"role": "user", "content": text}]).to_string()
}

#[test]
fn chat_letters_come_from_the_top_log_probabilities_and_unlisted_ones_are_not_chosen() {
    let (addr, log) = chat_server(|n, _| match n {
        // The probe, then a reply listing two of the four letters, then one listing none.
        1 => top(&[("A", -0.1)]),
        2 => top(&[("B", -0.4), ("The", -1.0), (" A", -2.0), ("A", -2.5)]),
        _ => top(&[("I", -0.2), ("The", -1.0)]),
    });
    let mut b = chat_connect(&addr, fast()).unwrap();
    assert!(b.takes_messages());
    assert!(
        b.info()
            .scoring
            .contains("top log-probabilities (100 asked, 1 given)"),
        "{}",
        b.info().scoring
    );
    let letters: Vec<String> = ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect();
    let ll = b
        .loglikelihood(&user("Q?\nA. a\nB. b\nC. c\nD. d\nAnswer:"), &[], &letters)
        .unwrap();
    let a = ((-2.0f64).exp() + (-2.5f64).exp()).ln();
    assert!((ll[0].logprob - a).abs() < 1e-12, "{ll:?}");
    assert_eq!(ll[1].logprob, -0.4);
    assert_eq!(
        (ll[2].logprob, ll[3].logprob),
        (icl_eval::backend::UNLISTED, icl_eval::backend::UNLISTED)
    );
    assert!(ll[1].is_greedy && !ll[0].is_greedy);
    let none = b.loglikelihood(&user("Q2?"), &[], &letters).unwrap();
    let lps: Vec<f64> = none.iter().map(|l| l.logprob).collect();
    assert!(icl_eval::backend::unanswered(&lps));
    let sent: Value = serde_json::from_str(&log.lock().unwrap()[3].body).unwrap();
    assert_eq!(sent["messages"][0]["role"], "user");
    assert_eq!(
        (sent["max_tokens"].clone(), sent["top_logprobs"].clone()),
        (json!(1), json!(100))
    );
    // A cloze continuation is refused, naming the fix.
    let e = b
        .loglikelihood(&user("Q?"), &[], &[" positive".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--format mcqa"), "{e}");
}

#[test]
fn a_chat_endpoint_without_log_probabilities_answers_by_generated_letter() {
    let (addr, log) = chat_server(|n, b| match (n, b["messages"][0]["content"].as_str()) {
        (1, _) => reply("A"),
        (_, Some("gen")) => reply("42\nQ: next"),
        _ => reply("The answer is (C)."),
    });
    let mut b = chat_connect(&addr, fast()).unwrap();
    assert!(
        b.info().scoring.contains("generated answer"),
        "{}",
        b.info().scoring
    );
    let letters: Vec<String> = ["A", "B", "C"].iter().map(|s| s.to_string()).collect();
    let ll = b.loglikelihood(&user("Q?"), &[], &letters).unwrap();
    assert_eq!(
        ll.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        [
            icl_eval::backend::UNLISTED,
            icl_eval::backend::UNLISTED,
            0.0
        ]
    );
    assert_eq!(
        b.generate_until(&user("gen"), &[], &["\n".into()], 8)
            .unwrap(),
        "42"
    );
    let sent: Value = serde_json::from_str(&log.lock().unwrap().last().unwrap().body).unwrap();
    assert_eq!(
        (sent["stop"].clone(), sent["temperature"].clone()),
        (json!(["\n"]), json!(0.0))
    );
}

#[test]
fn chat_faults_are_retried_and_bad_answers_are_named() {
    // 429 with Retry-After, then a hang past the time-out, then the answer.
    let (addr, _) = chat_server(|n, _| match n {
        1 => top(&[("A", -0.1)]),
        2 => Act::Reply(429, vec![("Retry-After", "1".into())], "{}".into()),
        3 => Act::Hang(Duration::from_secs(3)),
        _ => top(&[("A", -0.3), ("B", -1.5)]),
    });
    let mut b = chat_connect(&addr, fast()).unwrap();
    let start = Instant::now();
    let ll = b
        .loglikelihood(&user("Q?"), &[], &["A".into(), "B".into()])
        .unwrap();
    assert_eq!((ll[0].logprob, ll[1].logprob), (-0.3, -1.5));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    // Malformed JSON, and a server that keeps timing out: errors, not panics.
    let (addr, _) = chat_server(|n, _| match n {
        1 => top(&[("A", -0.1)]),
        _ => Act::Reply(200, vec![], "{\"choices\": [".into()),
    });
    let mut b = chat_connect(&addr, fast()).unwrap();
    let e = format!(
        "{:#}",
        b.loglikelihood(&user("Q?"), &[], &["A".into()])
            .unwrap_err()
    );
    assert!(e.contains("chat/completions"), "{e}");
    let (addr, _) = chat_server(|n, _| match n {
        1 => top(&[("A", -0.1)]),
        _ => Act::Hang(Duration::from_secs(3)),
    });
    let mut opts = fast();
    opts.retries = 1;
    let mut b = chat_connect(&addr, opts).unwrap();
    let e = format!(
        "{:#}",
        b.loglikelihood(&user("Q?"), &[], &["A".into()])
            .unwrap_err()
    );
    assert!(e.to_lowercase().contains("time"), "{e}");
}

/// End to end through the binary: a cloze task on a chat endpoint is one line naming the fix;
/// in mcqa form it runs, records the scoring path, and notes the unanswered docs.
#[test]
fn openai_chat_runs_mcqa_and_refuses_cloze() {
    let (addr, _) = chat_server(|n, b| {
        let text = b["messages"][0]["content"].as_str().unwrap_or("");
        match n {
            1 => top(&[("A", -0.1)]),
            // Docs whose review mentions "not" get no letter at all.
            _ if text.rsplit("Review:").next().unwrap_or("").contains("not") => {
                top(&[("Hmm", -0.1)])
            }
            _ => top(&[("B", -0.2), ("A", -1.8)]),
        }
    });
    let model = format!("openai-chat:{addr}/v1#fake");
    let d = common::tmp("openai-chat-run");
    let out = d.join("run").display().to_string();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "--tasks",
            "sentiment_reviews",
            "--models",
            &model,
            "--shots",
            "0,2",
            "--limit",
            "12",
            "--output",
            &out,
            "--no-cache",
        ];
        a.extend_from_slice(extra);
        common::icl_eval(&a)
    };
    let o = run(&[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--format mcqa") && e.trim_end().lines().count() == 1,
        "{e}"
    );
    let o = run(&["--format", "mcqa"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    let samples = common::read_samples(&d.join("run"));
    assert_eq!(samples.len(), 24);
    let unanswered = samples.iter().filter(|s| s.prediction.is_none()).count();
    assert!(unanswered > 0 && unanswered < 24, "{unanswered}");
    assert!(
        samples
            .iter()
            .filter(|s| s.prediction.is_none())
            .all(|s| s.metrics["acc"] == 0.0)
    );
    assert!(e.contains(&format!("{unanswered} of 24 answers")), "{e}");
    let config = std::fs::read_to_string(d.join("run/config.json")).unwrap();
    assert!(
        config.contains("\"scoring\": \"chat: answer letters"),
        "{config}"
    );
}
