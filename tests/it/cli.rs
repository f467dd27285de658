//! End-to-end tests of the real binary: bad input (hermetic) and full runs on SmolLM2 (ignored by
//! plain `cargo test`; README command 2 runs them with `--include-ignored`).

use crate::common;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{icl_eval, icl_eval_in, read_samples, root, smollm2, tmp};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the command failed with exactly one line on stderr containing every `needle`.
fn assert_one_line_error(o: &std::process::Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {e}"
    );
    assert!(!e.contains("panicked"), "panic: {e}");
    assert_eq!(
        e.trim_end().lines().count(),
        1,
        "expected a one-line error, got:\n{e}"
    );
    for n in needles {
        assert!(e.contains(n), "error should mention {n:?}: {e}");
    }
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    p.display().to_string()
}

const DOCS: &str = "{\"q\": \"good\", \"a\": \"1\"}\n{\"q\": \"bad\", \"a\": \"0\"}\n";

#[test]
fn unknown_yaml_field_is_a_one_line_error() {
    let d = tmp("unknown-field");
    write(&d, "docs.jsonl", DOCS);
    let y = write(
        &d,
        "t.yaml",
        "task: t\ndataset: {path: docs.jsonl}\ndoc_to_txt: x\ndoc_to_text: x\ndoc_to_target: y\noutput_type: generate_until\n",
    );
    let o = icl_eval(&["validate", &y]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("t.yaml") && out.contains("unknown field `doc_to_txt`"),
        "{out}"
    );
    let o = icl_eval(&["run", "--tasks", &y, "--models", "x.gguf"]);
    assert_one_line_error(&o, &["t.yaml", "doc_to_txt"]);
}

#[test]
fn undefined_template_variable_names_field_and_doc() {
    let d = tmp("undefined");
    write(&d, "docs.jsonl", DOCS);
    let y = write(
        &d,
        "t.yaml",
        "task: t\ndataset: {path: docs.jsonl}\ntest_split: all\ndoc_to_text: \"{{ question }}\"\ndoc_to_target: \"{{ a }}\"\noutput_type: generate_until\n",
    );
    let o = icl_eval(&["run", "--tasks", &y, "--models", "x.gguf"]);
    assert_one_line_error(&o, &["t.yaml", "doc_to_text", "doc 0", "undefined"]);
}

#[test]
fn missing_dataset_file_is_named() {
    let d = tmp("missing-data");
    let y = write(
        &d,
        "t.yaml",
        "task: t\ndataset: {path: nowhere.jsonl}\ndoc_to_text: x\ndoc_to_target: y\noutput_type: generate_until\n",
    );
    let o = icl_eval(&["run", "--tasks", &y, "--models", "x.gguf"]);
    assert_one_line_error(&o, &["t.yaml", "nowhere.jsonl"]);
}

#[test]
fn model_that_is_not_gguf_is_rejected() {
    let d = tmp("not-gguf");
    let m = write(&d, "model.gguf", "this is not a model");
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition",
        "--models",
        &m,
        "--output",
        &d.join("run").display().to_string(),
    ]);
    assert_one_line_error(&o, &["model.gguf", "not a GGUF file"]);
}

#[test]
fn negative_shot_count_is_rejected() {
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition",
        "--models",
        "x.gguf",
        "--shots",
        "0,-1",
    ]);
    assert_one_line_error(&o, &["--shots", "-1"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `--shots` ranges expand before anything loads: a K the few-shot split cannot fill is one note
/// naming how many exist; a malformed range is a one-line error saying what to write.
#[test]
fn shot_ranges_expand_and_a_k_beyond_the_split_is_noted() {
    let run = |shots: &str| {
        icl_eval(&[
            "run",
            "--tasks",
            "two_digit_addition",
            "--models",
            "missing.gguf",
            "--shots",
            shots,
        ])
    };
    let o = run("0,1..2048:x2");
    let e = stderr(&o);
    assert!(!o.status.success() && !e.contains("panicked"), "{e}");
    let notes: Vec<&str> = e.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(
        notes,
        vec![
            "note: task two_digit_addition: K=2048 asks for more demonstrations than its \
             few-shot split holds (200); those prompts show all 200"
        ],
        "{e}"
    );
    assert!(e.contains("missing.gguf"), "{e}");
    assert!(!run("0,1..128:x2").stderr.starts_with(b"note:"));
    for (bad, says) in [
        ("0..2048:x2", "start ≥ 1"),
        ("1..8:/2", "neither +STEP nor xFACTOR"),
        ("8..2", "ends (2) before it starts (8)"),
    ] {
        assert_one_line_error(&run(bad), &["--shots", bad, says]);
    }
}

/// `icl-eval prompt --demo-order by_label` shows the same demonstrations grouped by label.
#[test]
fn prompt_groups_demonstrations_by_label() {
    let prompt = |order: &[&str]| {
        let mut args = vec![
            "prompt",
            "--task",
            "sentiment_reviews",
            "--shots",
            "12",
            "--sampler",
            "fixed",
        ];
        args.extend_from_slice(order);
        let o = icl_eval(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let labels = |p: &str| -> Vec<String> {
        p.lines()
            .filter_map(|l| l.strip_prefix("Sentiment: "))
            .map(str::to_string)
            .collect()
    };
    let (own, grouped) = (prompt(&[]), prompt(&["--demo-order", "by_label"]));
    let (a, b) = (labels(&own), labels(&grouped));
    assert_eq!(b.len(), 12);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(b, sorted, "negative first, then positive");
    assert_ne!(a, b, "the fixed draw is not already grouped");
    let lines = |p: &str| {
        let mut v: Vec<String> = p.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(lines(&own), lines(&grouped), "the same demonstrations");
}

/// A K whose prompts overflow the model's context is noted once per K, naming what fits; the
/// run still finishes, each sample recording the K it used.
#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn a_k_beyond_the_context_is_noted_with_what_fits() {
    let model = common::reference_dir().join("tiny-hf/llama");
    let d = tmp("k-beyond-context");
    let o = icl_eval(&[
        "run",
        "--tasks",
        "sentiment_reviews",
        "--models",
        model.to_str().unwrap(),
        "--shots",
        "0,1,16,32",
        "--limit",
        "3",
        "--no-cache",
        "--output",
        d.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    let notes: Vec<&str> = e.lines().filter(|l| l.contains("do not fit")).collect();
    assert_eq!(notes.len(), 2, "one note each for K=16 and K=32: {e}");
    assert_eq!(
        notes[0],
        "note: task sentiment_reviews, llama: 16 demonstrations do not fit the 256-token \
         context; doc 0's prompt holds 3 (each sample records the K it used)",
    );
    let samples = read_samples(&d);
    let cut = samples.iter().find(|s| s.k == 32 && s.doc_id == 0).unwrap();
    assert_eq!(cut.k_effective, Some(3));
}

/// `complete: true` is written last: a run whose report fails (here `report.html` cannot be
/// replaced) keeps `complete: false` beside its finished samples, a rerun says how to finish it,
/// and `icl-eval report` on the folder then completes it.
#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn a_run_is_marked_complete_only_after_its_report() {
    let model = common::reference_dir().join("tiny-hf/llama");
    let d = tmp("complete-last");
    std::fs::create_dir_all(d.join("report.html")).unwrap();
    let args = [
        "run",
        "--tasks",
        "sentiment_reviews",
        "--models",
        model.to_str().unwrap(),
        "--shots",
        "0,1",
        "--limit",
        "2",
        "--no-cache",
        "--output",
        d.to_str().unwrap(),
    ];
    let o = icl_eval(&args);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("report could not be written"),
        "{}",
        stderr(&o)
    );
    let config = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(config()["complete"], false);
    assert!(d.join("samples.jsonl").is_file());
    let o = icl_eval(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("icl-eval report"), "{}", stderr(&o));
    std::fs::remove_dir(d.join("report.html")).unwrap();
    let o = icl_eval(&["report", d.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(config()["complete"], true);
    assert!(d.join("report.html").is_file() && d.join("summary.csv").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn gguf_header(tensor_count: u64, kv: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensor_count.to_le_bytes());
    b.extend(u64::from(!kv.is_empty()).to_le_bytes());
    b.extend(kv);
    b.extend([0u8; 64]);
    b
}

#[test]
fn absurd_gguf_sizes_are_rejected_without_allocating() {
    let d = tmp("absurd");
    let huge = 1u64 << 60;
    let many_tensors = d.join("tensors.gguf");
    fs::write(&many_tensors, gguf_header(huge, &[])).unwrap();
    // One metadata entry whose key claims to be 2^60 bytes long.
    let long_string = d.join("string.gguf");
    fs::write(&long_string, gguf_header(0, &huge.to_le_bytes())).unwrap();
    for p in [&many_tensors, &long_string] {
        let o = icl_eval(&[
            "run",
            "--tasks",
            "two_digit_addition",
            "--models",
            &p.display().to_string(),
            "--output",
            &d.join("run").display().to_string(),
        ]);
        assert_one_line_error(&o, &[&p.display().to_string(), "invalid GGUF"]);
    }
}

/// A GGUF whose metadata sets `general.alignment` to 0 (candle's reader divides by it) is an
/// error naming the file, not a panic.
#[test]
fn a_gguf_with_alignment_zero_is_an_error_not_a_panic() {
    let d = tmp("alignment-zero");
    let key = b"general.alignment";
    let mut kv = (key.len() as u64).to_le_bytes().to_vec();
    kv.extend(key);
    kv.extend(4u32.to_le_bytes()); // GGUF type 4: u32
    kv.extend(0u32.to_le_bytes());
    let p = d.join("align0.gguf");
    fs::write(&p, gguf_header(0, &kv)).unwrap();
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition",
        "--models",
        &p.display().to_string(),
        "--output",
        &d.join("run").display().to_string(),
    ]);
    assert_one_line_error(&o, &[&p.display().to_string(), "invalid GGUF"]);
}

#[test]
fn tasks_and_prompt_commands_work_without_a_model() {
    let o = icl_eval(&["tasks"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for t in [
        "two_digit_addition",
        "en_fr_words",
        "sentiment_reviews",
        "sst2",
    ] {
        assert!(out.contains(t), "{out}");
    }
    let o = icl_eval(&[
        "prompt",
        "--task",
        "two_digit_addition",
        "--shots",
        "2",
        "--doc",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = String::from_utf8_lossy(&o.stdout);
    assert_eq!(p.matches("Q: What is ").count(), 3, "{p}");
    assert!(p.ends_with("?\nA:"), "{p:?}");
    let o = icl_eval(&[
        "validate",
        "tasks/two_digit_addition.yaml",
        "tasks/en_fr_words.yaml",
        "tasks/sentiment_reviews.yaml",
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn full_run_on_smollm2_writes_consistent_outputs_and_is_deterministic() {
    let model = smollm2().display().to_string();
    let d = tmp("e2e");
    let a = d.join("a");
    let o = icl_eval(&[
        "run",
        "--tasks",
        "sentiment_reviews,two_digit_addition",
        "--models",
        &model,
        "--shots",
        "0,1,4",
        "--limit",
        "10",
        "--threads",
        "2",
        "--output",
        &a.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("| task | model | K |"),
        "summary table printed: {stdout}"
    );
    for f in [
        "config.json",
        "samples.jsonl",
        "summary.csv",
        "summary.md",
        "accuracy_vs_shots.png",
        "accuracy_vs_shots.svg",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    assert!(!a.join("samples.jsonl.partial").exists());
    let png = fs::read(a.join("accuracy_vs_shots.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        fs::read_to_string(a.join("accuracy_vs_shots.svg"))
            .unwrap()
            .contains("<svg")
    );
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["complete"], true);
    assert_eq!(config["models"][0]["parameters"], 134_515_008u64);
    assert_eq!(config["models"][0]["architecture"], "llama");
    assert_eq!(config["shots"], serde_json::json!([0, 1, 4]));
    assert_eq!(config["tasks"][0]["hash"].as_str().unwrap().len(), 64);

    let samples = read_samples(&a);
    assert_eq!(samples.len(), 2 * 10 * 3);
    // The summary must agree with the samples: recompute every cell's mean and n.
    let mut cells: BTreeMap<(String, usize, String), Vec<f64>> = BTreeMap::new();
    for s in &samples {
        assert_eq!(
            s.k_effective,
            Some(s.k),
            "SmolLM2's 8k context fits 4 demonstrations"
        );
        for (m, v) in &s.metrics {
            cells
                .entry((s.task.clone(), s.k, m.clone()))
                .or_default()
                .push(*v);
        }
    }
    let csv = fs::read_to_string(a.join("summary.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let mut seen = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let key = (
            f[col("task")].to_string(),
            f[col("k")].parse().unwrap(),
            f[col("metric")].to_string(),
        );
        let vals = &cells[&key];
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        assert!(
            (f[col("value")].parse::<f64>().unwrap() - mean).abs() < 1e-9,
            "{line}"
        );
        assert_eq!(f[col("n")].parse::<usize>().unwrap(), vals.len());
        seen += 1;
    }
    assert_eq!(seen, cells.len());

    // Determinism: another --limit and thread count agree exactly on the shared docs.
    let b = d.join("b");
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition,sentiment_reviews",
        "--models",
        &model,
        "--shots",
        "4,0,1",
        "--limit",
        "4",
        "--threads",
        "1",
        "--output",
        &b.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let small = read_samples(&b);
    assert_eq!(small.len(), 2 * 4 * 3);
    for s in &small {
        let twin = samples
            .iter()
            .find(|x| x.task == s.task && x.doc_id == s.doc_id && x.k == s.k)
            .unwrap();
        assert_eq!(
            s, twin,
            "doc {} of {} at K={} differs between runs",
            s.doc_id, s.task, s.k
        );
    }
}

#[test]
#[ignore = "needs models/ and ../shared/data"]
fn storycloze_resolves_through_the_data_dir() {
    let model = smollm2().display().to_string();
    let d = tmp("storycloze");
    let data = common::data_dir().display().to_string();
    let o = icl_eval_in(
        &root(),
        &[
            "run",
            "--tasks",
            "storycloze",
            "--models",
            &model,
            "--shots",
            "0,2",
            "--limit",
            "4",
            "--data-dir",
            &data,
            "--output",
            &d.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let samples = read_samples(&d);
    assert_eq!(samples.len(), 8);
    assert!(
        samples
            .iter()
            .all(|s| s.logprobs.as_ref().is_some_and(|l| l.len() == 2))
    );
    let o = icl_eval(&["run", "--tasks", "storycloze", "--models", &model]);
    assert_one_line_error(&o, &["--data-dir", "ICL_EVAL_DATA_DIR"]);
}

/// The README's "Add your own task" example, verbatim, must validate and render.
#[test]
fn readme_example_task_works() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let block = |title: &str| {
        let start = readme
            .find(title)
            .unwrap_or_else(|| panic!("README lacks {title}"));
        let rest = &readme[start..];
        let open = rest.find("```").unwrap();
        let body = &rest[open..];
        let body = &body[body.find('\n').unwrap() + 1..];
        body[..body.find("```").unwrap()].to_string()
    };
    let d = tmp("readme-task");
    fs::create_dir_all(d.join("tasks/data")).unwrap();
    fs::create_dir_all(d.join("prompts")).unwrap();
    fs::write(
        d.join("tasks/capitals.yaml"),
        block("`tasks/capitals.yaml`"),
    )
    .unwrap();
    fs::write(
        d.join("prompts/capitals.jinja"),
        block("`prompts/capitals.jinja`"),
    )
    .unwrap();
    fs::write(
        d.join("tasks/data/capitals.jsonl"),
        block("`tasks/data/capitals.jsonl`"),
    )
    .unwrap();
    let o = icl_eval_in(&d, &["validate", "tasks/capitals.yaml"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let o = icl_eval_in(
        &d,
        &["prompt", "--task", "capitals", "--shots", "2", "--doc", "0"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let p = String::from_utf8_lossy(&o.stdout);
    assert!(
        p.starts_with("Pick the capital city.\n\nCountry: "),
        "{p:?}"
    );
    assert!(
        p.contains("Capital: Paris") && p.contains("Capital: Tokyo"),
        "{p:?}"
    );
    assert!(p.ends_with("Country: Canada\nCapital:"), "{p:?}");
}

/// A GGUF key/value entry holding a string.
fn gguf_string_kv(key: &str, value: &str) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend(key.as_bytes());
    b.extend(8u32.to_le_bytes()); // GGUF value type 8: string
    b.extend((value.len() as u64).to_le_bytes());
    b.extend(value.as_bytes());
    b
}

#[test]
fn unsupported_architecture_is_named() {
    let d = tmp("arch");
    let p = d.join("mamba.gguf");
    fs::write(
        &p,
        gguf_header(0, &gguf_string_kv("general.architecture", "mamba")),
    )
    .unwrap();
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition",
        "--models",
        &p.display().to_string(),
        "--output",
        &d.join("run").display().to_string(),
    ]);
    assert_one_line_error(
        &o,
        &[
            "mamba.gguf",
            "architecture `mamba` is not supported",
            "gemma3",
        ],
    );
}

#[test]
fn truncated_gguf_is_rejected() {
    let d = tmp("truncated");
    let p = d.join("cut.gguf");
    let mut bytes = gguf_header(0, &gguf_string_kv("general.architecture", "llama"));
    bytes.truncate(30);
    fs::write(&p, bytes).unwrap();
    // A header that parses but whose tensor data was cut off.
    let cut = d.join("cut-data.gguf");
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    let kv = gguf_string_kv("general.architecture", "llama");
    b.extend(1u64.to_le_bytes());
    b.extend(&kv);
    let name = "token_embd.weight";
    b.extend((name.len() as u64).to_le_bytes());
    b.extend(name.as_bytes());
    b.extend(2u32.to_le_bytes()); // two dimensions
    b.extend(64u64.to_le_bytes());
    b.extend(1000u64.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // f32
    b.extend(0u64.to_le_bytes()); // offset
    b.extend([0u8; 64]);
    fs::write(&cut, b).unwrap();
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition",
        "--models",
        &cut.display().to_string(),
        "--output",
        &d.join("run2").display().to_string(),
    ]);
    assert_one_line_error(
        &o,
        &["cut-data.gguf", "truncated GGUF", "download it again"],
    );
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition",
        "--models",
        &p.display().to_string(),
        "--output",
        &d.join("run").display().to_string(),
    ]);
    assert_one_line_error(&o, &["cut.gguf", "invalid GGUF"]);
}

#[test]
fn checkpoint_folder_without_config_is_named() {
    let d = tmp("noconfig");
    let m = d.join("my-model");
    fs::create_dir_all(&m).unwrap();
    fs::write(m.join("model.safetensors"), b"").unwrap();
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition",
        "--models",
        &m.display().to_string(),
        "--output",
        &d.join("run").display().to_string(),
    ]);
    assert_one_line_error(&o, &["my-model", "no config.json"]);
}

#[test]
fn sha256_mismatch_from_the_models_file_is_named() {
    let d = tmp("sha");
    write(&d, "weights.gguf", "not the promised bytes");
    let models = write(
        &d,
        "models.yaml",
        &format!(
            "models:\n  promised:\n    source: weights.gguf\n    sha256: {}\n",
            "0".repeat(64)
        ),
    );
    let o = icl_eval(&[
        "run",
        "--tasks",
        "two_digit_addition",
        "--models",
        "promised",
        "--models-file",
        &models,
        "--output",
        &d.join("run").display().to_string(),
    ]);
    assert_one_line_error(&o, &["weights.gguf", "sha256 mismatch", &"0".repeat(64)]);
    let o = icl_eval(&["models", "--models-file", &models]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("| promised |") && out.contains("unreadable"),
        "{out}"
    );
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh smollm2-135m gemma3-270m qwen2.5-coder-0.5b)"]
fn three_models_by_name_give_the_model_size_chart() {
    let d = tmp("sizes");
    let o = icl_eval(&[
        "run",
        "--tasks",
        "sentiment_reviews,two_digit_addition",
        "--models",
        "smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b",
        "--shots",
        "0,1,2",
        "--limit",
        "2",
        "--output",
        &d.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    // Parameter counts as ../shared/MODELS.md lists them (every tensor of the file).
    let want = [
        ("SmolLM2-135M", "llama", 134_515_008u64),
        ("Gemma-3-270M", "gemma3", 268_098_176),
        ("Qwen2.5-Coder-0.5B", "qwen2", 630_167_424),
    ];
    for (i, (name, arch, params)) in want.iter().enumerate() {
        let m = &config["models"][i];
        assert_eq!(m["name"], *name);
        assert_eq!(m["architecture"], *arch);
        assert_eq!(m["parameters"], *params, "{name}");
        assert!(m["non_embedding_parameters"].as_u64().unwrap() < *params);
    }
    let png = fs::read(d.join("accuracy_vs_model_size.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = fs::read_to_string(d.join("accuracy_vs_model_size.svg")).unwrap();
    // Two task panels and the mean panel, each a line per K with a point per model.
    let markers = svg
        .lines()
        .filter(|l| l.contains("<circle") && l.contains("fill=\"#"))
        .count();
    assert_eq!(markers, 3 * 3 * 3, "3 panels × 3 K × 3 models");
    for k in ["K = 0", "K = 1", "K = 2"] {
        assert!(svg.contains(k), "{k} missing from the legend");
    }
}

/// `bench` on a small budget: every table is there, the sweep forwards more tokens than K = 32
/// alone but gives its K = 32 docs the same answers, and memory is measured per run.
/// `bench --parts manyshot`: the sweep's tokens stay within 1.1 × its largest prompt plus the
/// queries (the prefix once), and its answers equal those of the same sweep without reuse.
#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn bench_many_shot_computes_the_prefix_once() {
    let d = tmp("bench-manyshot");
    let o = icl_eval(&[
        "bench",
        "--parts",
        "manyshot",
        "--threads",
        "1",
        "--task",
        "sentiment_reviews",
        "--manyshot-shots",
        "0,1..32:x4",
        "--manyshot-limit",
        "6",
        "--check-docs",
        "2",
        "--work-dir",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let row = out
        .lines()
        .rfind(|l| l.starts_with("| ") && !l.starts_with("| wall"))
        .unwrap_or_else(|| panic!("no row in {out}"));
    let cols: Vec<&str> = row.split('|').map(str::trim).collect();
    let (computed, bound): (f64, f64) = (cols[3].parse().unwrap(), cols[4].parse().unwrap());
    assert!(computed > 0.0 && computed <= 1.1 * bound, "{row}");
    assert_eq!(cols[7], "8/8", "2 docs × K 0, 1, 4, 16: {row}");
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn bench_prints_speed_reuse_and_memory_tables() {
    let d = tmp("bench");
    let o = icl_eval(&[
        "bench",
        "--threads",
        "1",
        "--tokens",
        "32",
        "--reps",
        "1",
        "--limit",
        "2",
        "--work-dir",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("| SmolLM2-135M | 32 |"), "{out}");
    for sampler in ["random", "fixed"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {sampler} |")))
            .unwrap_or_else(|| panic!("no {sampler} row in {out}"));
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        let (sweep, alone): (u64, u64) = (cols[5].parse().unwrap(), cols[6].parse().unwrap());
        assert!(sweep > alone && alone > 0, "{row}");
        assert_eq!(cols[8], "2/2", "{row}");
    }
    for weights in ["f32", "quantized"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {weights} |")))
            .unwrap_or_else(|| panic!("no {weights} row in {out}"));
        let rss: f64 = row.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(rss > 50.0, "{row}");
    }
}

/// A damaged request cache: every command that reads it says so and how to clear it, and
/// `cache clear` clears it (the cache only saves recomputation).
#[test]
fn a_damaged_request_cache_is_named_and_cleared() {
    let d = tmp("damaged-cache");
    let file = d.join("requests.sqlite");
    std::fs::write(&file, b"this is not SQLite, it is a damaged cache file").unwrap();
    let f = file.to_str().unwrap();
    let o = icl_eval(&["cache", "stats", "--cache", f]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("may be damaged") && e.contains(&format!("icl-eval cache clear --cache {f}")),
        "{e}"
    );
    let o = icl_eval(&["cache", "clear", "--cache", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("deleted it"));
    assert!(!file.exists());
    let o = icl_eval(&["cache", "stats", "--cache", f]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("No request cache"));
}

/// A task name in a `--tasks-dir` folder and in ./tasks: the folder the user named wins, a note
/// names both files, and `icl-eval tasks` marks the ./tasks entry as shadowed.
#[test]
fn a_tasks_dir_shadows_the_library_and_says_so() {
    let d = tmp("shadowed");
    let own = std::fs::read_to_string(root().join("tasks/two_digit_addition.yaml")).unwrap();
    std::fs::write(
        d.join("two_digit_addition.yaml"),
        own.replace("doc_to_text: \"Q:", "doc_to_text: \"SHADOW Q:"),
    )
    .unwrap();
    let dir = d.to_str().unwrap();
    let o = icl_eval(&[
        "prompt",
        "--tasks-dir",
        dir,
        "--task",
        "two_digit_addition",
        "--shots",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("SHADOW Q:"));
    let e = stderr(&o);
    assert!(
        e.contains("note: task `two_digit_addition` is in")
            && e.contains("tasks/two_digit_addition.yaml")
            && e.contains("--tasks-dir folders come before ./tasks"),
        "{e}"
    );
    // Offline: the library's Hub tasks are listed as not loadable without asking the network.
    let o = common::command_in(&root(), &["tasks", "--tasks-dir", dir])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("| shadowed: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with("| two_digit_addition |")
            && line.contains("tasks/two_digit_addition.yaml"),
        "{line}"
    );
}

/// `--format mcqa` letters a multiple-choice task's choices: the prompt is the one written here
/// by hand (the cue line `Sentiment:` gives way to the lettered choices and `Answer:`, each
/// demonstration answers with its letter), and the letters are what is scored.
#[test]
fn mcqa_prompts_are_the_hand_written_ones() {
    let o = icl_eval(&[
        "prompt",
        "--task",
        "sentiment_reviews",
        "--shots",
        "2",
        "--seed",
        "1",
        "--format",
        "mcqa",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = "Review: I love this keyboard; typing on it is a genuine pleasure.\n\
                    A. negative\nB. positive\nAnswer: B\n\n\
                    Review: A smart, thoughtful book that changed the way I think about work.\n\
                    A. negative\nB. positive\nAnswer: B\n\n\
                    Review: A beautifully written novel with characters I will remember for a long time.\n\
                    A. negative\nB. positive\nAnswer:";
    assert_eq!(String::from_utf8_lossy(&o.stdout), expected);
    assert!(stderr(&o).contains(r#"[" A", " B"]"#), "{}", stderr(&o));
    // The same command without --format is the task as written (cloze).
    let cloze = icl_eval(&[
        "prompt",
        "--task",
        "sentiment_reviews",
        "--shots",
        "2",
        "--seed",
        "1",
    ]);
    let cloze = String::from_utf8_lossy(&cloze.stdout).into_owned();
    assert!(cloze.ends_with("for a long time.\nSentiment:"), "{cloze}");
    assert!(cloze.contains("Sentiment: positive\n\n"), "{cloze}");
}

/// Bad formulations are one-line errors naming the fix.
#[test]
fn bad_formats_are_one_line_errors() {
    let o = icl_eval(&[
        "prompt",
        "--task",
        "sentiment_reviews",
        "--format",
        "letters",
    ]);
    assert_one_line_error(&o, &["--format", "cloze", "mcqa"]);
    let d = tmp("mcqa-on-generation");
    write(
        &d,
        "gen.yaml",
        "task: gen\ndataset: {path: d.jsonl}\ndoc_to_text: \"{{ q }}\"\ndoc_to_target: \"{{ a }}\"\n\
         output_type: generate_until\ntest_split: all\nformat: mcqa\n",
    );
    write(&d, "d.jsonl", "{\"q\": \"1+1=\", \"a\": \"2\"}\n");
    let o = icl_eval(&[
        "prompt",
        "--task",
        &d.join("gen.yaml").display().to_string(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("gen.yaml") && e.contains("format: mcqa") && e.contains("multiple_choice"),
        "{e}"
    );
}

/// A template that would run for hours or build a gigabyte string stops at its limits at the
/// first doc, with one line naming the field and the limit.
#[test]
fn runaway_templates_stop_at_their_limits() {
    let d = tmp("template-limits");
    let docs: String = (0..200)
        .map(|_| "{\"q\": \"1+1=\", \"a\": \"2\"}\n")
        .collect();
    write(&d, "d.jsonl", &docs);
    let task = |name: &str, text: &str| {
        write(
            &d,
            &format!("{name}.yaml"),
            &format!(
                "task: {name}\ndataset: {{path: d.jsonl}}\ntest_split: all\ndoc_to_text: \"{text}\"\n\
                 doc_to_target: \"{{{{ a }}}}\"\noutput_type: generate_until\n"
            ),
        )
    };
    let nested = task(
        "nested",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ q }}",
    );
    let doubling = task(
        "doubling",
        "{% set ns = namespace(s='aaaaaaaa') %}{% for i in range(22) %}{% set ns.s = ns.s ~ ns.s %}\
         {% endfor %}{{ ns.s }}",
    );
    for (path, says) in [(&nested, "steps"), (&doubling, "MiB")] {
        let start = std::time::Instant::now();
        let o = icl_eval(&["prompt", "--task", path]);
        assert_one_line_error(&o, &["doc_to_text", "doc 0", says]);
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    }
}

/// Ctrl-C while tasks are still loading (nothing written yet) stops at once, instead of waiting
/// for a batch of docs that has not begun.
#[test]
#[cfg(unix)]
fn a_signal_while_tasks_load_stops_at_once() {
    let d = tmp("signal-loading");
    // 3,000 docs whose template takes ~1M steps each: tens of seconds to load.
    let docs: String = (0..3000)
        .map(|_| "{\"q\": \"1+1=\", \"a\": \"2\"}\n")
        .collect();
    write(&d, "d.jsonl", &docs);
    let task = write(
        &d,
        "slow.yaml",
        "task: slow\ndataset: {path: d.jsonl}\ntest_split: all\n\
         doc_to_text: \"{% for i in range(100000) %}{% for j in range(3) %}{% endfor %}{% endfor %}{{ q }}\"\n\
         doc_to_target: \"{{ a }}\"\noutput_type: generate_until\n",
    );
    let out = d.join("run");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_icl-eval"))
        .args([
            "run", "--tasks", &task, "--models", "x.gguf", "--shots", "0", "--output",
        ])
        .arg(&out)
        .current_dir(root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "still loading");
    let signalled = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        signalled.elapsed().as_secs() < 5,
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(o.status.code(), Some(130));
    assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
    assert!(!out.exists());
}

/// A task file nested thousands of brackets deep (which the YAML parser reads in quadratic
/// time) or larger than a task file may be is refused in a linear scan, naming the file and line:
/// finding the other tasks of the folder stays fast.
#[test]
fn deeply_nested_or_huge_task_files_are_refused_fast() {
    let d = tmp("hostile-yaml");
    write(&d, "d.jsonl", "{\"q\": \"1+1=\", \"a\": \"2\"}\n");
    write(
        &d,
        "base.yaml",
        "task: base\ndataset: {path: d.jsonl}\ntest_split: all\ndoc_to_text: \"{{ q }}\"\n\
         doc_to_target: \"{{ a }}\"\noutput_type: generate_until\n",
    );
    let deep = format!(
        "task: deep\nmetadata: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_path = write(&d, "deep.yaml", &deep);
    let huge = format!("task: huge\n# {}\n", "x".repeat(5 << 20));
    let huge_path = write(&d, "huge.yaml", &huge);
    let dir = d.display().to_string();
    let start = std::time::Instant::now();
    let o = common::command_in(&root(), &["prompt", "--task", "base", "--tasks-dir", &dir])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
    let o = icl_eval(&["prompt", "--task", &deep_path]);
    assert_one_line_error(&o, &["deep.yaml:2", "nested", "flatten"]);
    let o = icl_eval(&["prompt", "--task", &huge_path]);
    assert_one_line_error(&o, &["huge.yaml", "MiB a task file may hold"]);
}

/// `include:` takes task files only (a system file read as YAML had its first line quoted back
/// in the error), and a task name that would break tables (`|`, a line break) is refused.
#[test]
fn includes_of_other_files_and_names_that_break_tables_are_refused() {
    let d = tmp("include-secret");
    write(&d, "secret.txt", "root:s3cr3t-hash:20228:0:99999:7:::\n");
    let inc = write(&d, "inc.yaml", "include: secret.txt\ntask: inc\n");
    let o = icl_eval(&["prompt", "--task", &inc]);
    assert_one_line_error(&o, &["secret.txt", "not a task file"]);
    assert!(!stderr(&o).contains("s3cr3t"), "{}", stderr(&o));
    write(&d, "d.jsonl", "{\"q\": \"1+1=\", \"a\": \"2\"}\n");
    let piped = write(
        &d,
        "piped.yaml",
        "task: \"a|b\"\ndataset: {path: d.jsonl}\ntest_split: all\ndoc_to_text: \"{{ q }}\"\n\
         doc_to_target: \"{{ a }}\"\noutput_type: generate_until\n",
    );
    let o = icl_eval(&["prompt", "--task", &piped]);
    assert_one_line_error(&o, &["piped.yaml", "field `task`", "`|`"]);
}
