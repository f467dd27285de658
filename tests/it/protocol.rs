//! The in-context-learning protocol end to end: samplers, seeds, label studies, orderings and
//! calibration through the real binary; bad settings are one-line errors.

use crate::common;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{icl_eval, read_samples, root, smollm2, tmp};
use icl_eval::record::Sample;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_error(o: &std::process::Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure; stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    assert_eq!(
        e.trim_end().lines().count(),
        1,
        "one-line error expected:\n{e}"
    );
    for n in needles {
        assert!(e.contains(n), "error should mention {n:?}: {e}");
    }
}

/// A sentiment task over the bundled reviews, scored with every multiple-choice metric.
fn sentiment_task(dir: &Path) -> PathBuf {
    let data = root().join("tasks/data/sentiment_reviews.jsonl");
    let p = dir.join("sentiment.yaml");
    fs::write(
        &p,
        format!(
            "task: sentiment\ndataset: {{path: \"{}\", split_column: split}}\ntest_split: test\n\
             fewshot_split: train\ndoc_to_text: \"Review: {{{{ text }}}}\\nSentiment:\"\n\
             doc_to_target: \"{{{{ label }}}}\"\ndoc_to_choice: [negative, positive]\n\
             output_type: multiple_choice\nmetrics: [acc, acc_calibrated, acc_pmi]\n",
            data.display()
        ),
    )
    .unwrap();
    p
}

fn generation_task(dir: &Path) -> String {
    let p = dir.join("gen.yaml");
    fs::write(
        &p,
        "task: gen\ndataset:\n  generator: {name: two_digit_addition, splits: {train: 20, test: 20}}\n\
         test_split: test\nfewshot_split: train\ndoc_to_text: \"{{ a }} + {{ b }} =\"\n\
         doc_to_target: \"{{ answer }}\"\noutput_type: generate_until\n",
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn impossible_protocols_are_one_line_errors() {
    let d = tmp("protocol-errors");
    let g = generation_task(&d);
    let run = |extra: &[&str]| {
        let mut a = vec!["run", "--tasks", &g, "--models", "x.gguf", "--shots", "0,1"];
        a.extend_from_slice(extra);
        icl_eval(&a)
    };
    assert_error(&run(&["--seeds", "0"]), &["--seeds", "at least 1"]);
    assert_error(&run(&["--permutations", "0"]), &["--permutations"]);
    assert_error(
        &run(&["--sampler", "balanced"]),
        &["task `gen`", "balanced", "generate_until"],
    );
    assert_error(
        &run(&["--demo-labels", "gold,flipped"]),
        &["--demo-labels flipped", "task `gen`"],
    );
    assert_error(
        &run(&["--sampler", "knn", "--encoder", "/nonexistent/encoder"]),
        &["--sampler knn", "fetch-models.sh minilm"],
    );
    let e = icl_eval(&[
        "run",
        "--tasks",
        &g,
        "--models",
        "x.gguf",
        "--sampler",
        "nearest",
    ]);
    assert!(
        !e.status.success() && stderr(&e).contains("random"),
        "{}",
        stderr(&e)
    );
}

fn run_ok(args: &[&str]) {
    let o = icl_eval(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

type Key = (usize, u64, usize, String, usize);

fn by_key(samples: Vec<Sample>) -> BTreeMap<Key, Sample> {
    samples
        .into_iter()
        .map(|s| {
            (
                (
                    s.doc_id,
                    s.seed,
                    s.permutation,
                    s.demo_labels.name().to_string(),
                    s.k,
                ),
                s,
            )
        })
        .collect()
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn every_sampler_gives_a_doc_the_same_result_whatever_limit_threads_batch_or_cache() {
    let d = tmp("sampler-invariance");
    let task = sentiment_task(&d);
    let task = task.to_str().unwrap();
    let model = smollm2();
    let model = model.to_str().unwrap();
    for sampler in ["random", "fixed", "balanced", "first_n", "bm25", "knn"] {
        let small = d.join(format!("{sampler}-small"));
        let big = d.join(format!("{sampler}-big"));
        let common = [
            "run",
            "--tasks",
            task,
            "--models",
            model,
            // K = 0 prompts do not depend on the sampler.
            "--shots",
            "1,4",
            "--seeds",
            "2",
            "--sampler",
            sampler,
        ];
        let mut a = common.to_vec();
        a.extend([
            "--limit",
            "2",
            "--threads",
            "1",
            "--kv-cache-mb",
            "0",
            "--batch-size",
            "1",
            "--output",
        ]);
        a.push(small.to_str().unwrap());
        run_ok(&a);
        let mut b = common.to_vec();
        b.extend([
            "--limit",
            "3",
            "--threads",
            "2",
            "--batch-size",
            "4",
            "--output",
        ]);
        b.push(big.to_str().unwrap());
        run_ok(&b);
        let small = by_key(read_samples(&small));
        let big = by_key(read_samples(&big));
        assert_eq!(small.len(), 2 * 2 * 2);
        for (key, s) in &small {
            let other = &big[key];
            assert_eq!(s.prompt_hash, other.prompt_hash, "{sampler} {key:?}");
            assert_eq!(s.logprobs, other.logprobs, "{sampler} {key:?}: logprobs");
            assert_eq!(s.calibration, other.calibration, "{sampler} {key:?}");
            assert_eq!(s.unconditional, other.unconditional, "{sampler} {key:?}");
            assert_eq!(s.metrics, other.metrics, "{sampler} {key:?}");
            assert_eq!(s.sampler.name(), sampler);
        }
        // Shared samplers show every doc the same demonstrations; per-doc ones differ by doc.
        // The demonstrations are the prompt before its query (after the last `\n\n`).
        let demos: std::collections::BTreeSet<String> = (0..5)
            .map(|doc| {
                let o = icl_eval(&[
                    "prompt",
                    "--task",
                    task,
                    "--shots",
                    "4",
                    "--seed",
                    "1234",
                    "--sampler",
                    sampler,
                    "--doc",
                    &doc.to_string(),
                ]);
                assert!(o.status.success(), "{sampler} doc {doc}: {}", stderr(&o));
                let p = String::from_utf8(o.stdout).unwrap();
                let (demos, query) = p.rsplit_once("\n\n").expect("a 4-shot prompt");
                assert!(
                    query.starts_with("Review: "),
                    "{sampler} doc {doc}: {query}"
                );
                assert_eq!(
                    demos.matches("\nSentiment: ").count(),
                    4,
                    "{sampler}: {demos}"
                );
                demos.to_string()
            })
            .collect();
        let shared = matches!(sampler, "fixed" | "first_n");
        if shared {
            assert_eq!(demos.len(), 1, "{sampler}: one set for every doc");
        } else {
            assert!(demos.len() > 1, "{sampler}: a draw per doc");
        }
    }
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn seeds_label_studies_and_orderings_become_summary_columns() {
    let d = tmp("protocol-study");
    let task = sentiment_task(&d);
    let out = d.join("run");
    run_ok(&[
        "run",
        "--tasks",
        task.to_str().unwrap(),
        "--models",
        smollm2().to_str().unwrap(),
        "--shots",
        "0,4",
        "--limit",
        "4",
        "--seeds",
        "2",
        "--sampler",
        "fixed",
        "--demo-labels",
        "gold,flipped,none",
        "--permutations",
        "2",
        "--output",
        out.to_str().unwrap(),
    ]);
    let samples = read_samples(&out);
    assert_eq!(samples.len(), 4 * 2 * 3 * 2 * 2);
    // Calibration is stored with every sample and reproduces the metric.
    for s in &samples {
        let cal = s
            .calibration
            .as_ref()
            .expect("acc_calibrated stores its prior");
        let p: f64 = cal.iter().map(|x| x.exp()).sum();
        assert!(
            (p - 1.0).abs() < 1e-9,
            "the prior is a distribution: {cal:?}"
        );
        let lp = s.logprobs.as_ref().unwrap();
        let pick = if lp[0] - cal[0] >= lp[1] - cal[1] {
            0
        } else {
            1
        };
        let gold = usize::from(s.gold == "positive");
        assert_eq!(
            s.metrics["acc_calibrated"],
            f64::from(u8::from(pick == gold))
        );
        assert!(s.unconditional.is_some());
    }
    // 0-shot prompts do not depend on the seed, the labels shown or the ordering.
    let zero: std::collections::BTreeSet<_> = samples
        .iter()
        .filter(|s| s.k == 0 && s.doc_id == 0)
        .map(|s| s.prompt_hash.clone())
        .collect();
    assert_eq!(zero.len(), 1);
    let four: std::collections::BTreeSet<_> = samples
        .iter()
        .filter(|s| s.k == 4 && s.doc_id == 0)
        .map(|s| s.prompt_hash.clone())
        .collect();
    assert_eq!(four.len(), 2 * 3 * 2, "seeds × label studies × orderings");
    let md = fs::read_to_string(out.join("summary.md")).unwrap();
    for needle in [
        "| sampler | labels |",
        "± std over seeds (seeds)",
        "± std over orderings",
        "| fixed | flipped | 4 | acc_calibrated |",
        "### Predicted labels",
    ] {
        assert!(md.contains(needle), "summary.md lacks {needle:?}:\n{md}");
    }
    let csv = fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("seed_std"), "{csv}");
    assert!(out.join("labels.csv").is_file());
    assert!(out.join("calibration.png").is_file() && out.join("calibration.svg").is_file());
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["seeds"], serde_json::json!([1234, 1235]));
    assert_eq!(cfg["tasks"][0]["sampler"], "fixed");
}
