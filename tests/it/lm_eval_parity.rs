//! icl-eval against lm-evaluation-harness itself, item by item: lm-eval 0.4.13's own `gsm8k.yaml`
//! (dataset lines pointed at local data, `first_n` demonstrations) run by lm-eval on the bundled
//! SmolLM2 dequantized to float32, its logged samples kept as a fixture by
//! `scripts/lm-eval-parity.py`. icl-eval reads the same YAML in place and must give the same
//! prompt, generation, answer under each filter (`strict-match`, `flexible-extract`) and
//! `exact_match` (with the file's `ignore_case` and `regexes_to_ignore`) on every item. Also its
//! `lambada_openai.yaml` (log-likelihoods, `perplexity`) and `translation/wmt16_de-en.yaml`
//! (generations, corpus `bleu`, `chrf`, `ter`).

use crate::common;
use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// A fixture task read in place: its data files copied beside a `tasks/` folder holding its YAML
/// (`DATA/` pointed at them), and lm-eval's logged samples.
fn fixture_task(task: &str, data: &[&str], samples: &str) -> (PathBuf, PathBuf, serde_json::Value) {
    let fixtures = common::root().join("tests/fixtures/lm_eval_parity");
    let d = common::tmp(task);
    let tasks = d.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    for f in data {
        std::fs::copy(fixtures.join(f), d.join(f)).unwrap();
    }
    let yaml = std::fs::read_to_string(fixtures.join(format!("{task}.yaml"))).unwrap();
    std::fs::write(
        tasks.join(format!("{task}.yaml")),
        yaml.replace("DATA/", &format!("{}/", d.display())),
    )
    .unwrap();
    let logged =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join(samples)).unwrap()).unwrap();
    (d, tasks, logged)
}

/// icl-eval's samples of `task` on float32 SmolLM2 with `first_n` demonstrations at `shots`, by
/// (doc, K).
fn run_first_n(
    tasks: &std::path::Path,
    task: &str,
    out: &std::path::Path,
    shots: &str,
    extra: &[&str],
) -> BTreeMap<(u64, u64), icl_eval::record::Sample> {
    let mut args = vec!["--weights", "f32", "--sampler", "first_n", "--shots", shots];
    args.extend(extra);
    common::run_smollm2(tasks, task, out, &args)
        .into_iter()
        .map(|s| ((s.doc_id as u64, s.k as u64), s))
        .collect()
}

/// A logged item's (doc, K).
fn item_key(item: &serde_json::Value) -> (u64, u64) {
    (
        item["doc_id"].as_u64().unwrap(),
        item["k"].as_u64().unwrap(),
    )
}

#[test]
#[ignore = "needs the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn gsm8k_matches_lm_evals_logged_samples_item_by_item() {
    let (d, tasks, logged) = fixture_task(
        "gsm8k_parity",
        &["train.jsonl", "test.jsonl"],
        "samples.json",
    );
    let items = logged["items"].as_array().unwrap();
    let docs = 1 + items
        .iter()
        .map(|i| i["doc_id"].as_u64().unwrap())
        .max()
        .unwrap();
    let mut shots: Vec<u64> = items.iter().map(|i| i["k"].as_u64().unwrap()).collect();
    shots.sort();
    shots.dedup();
    let shots: Vec<String> = shots.iter().map(u64::to_string).collect();
    let ours = run_first_n(
        &tasks,
        "gsm8k_parity",
        &d.join("run"),
        &shots.join(","),
        &["--limit", &docs.to_string()],
    );
    let mut differ = Vec::new();
    for item in items {
        let key = item_key(item);
        let s = &ours[&key];
        let filter = item["filtered"].as_object().unwrap();
        let (name, answer) = filter.iter().next().unwrap();
        let prompt_hash = &item["prompt_sha256"].as_str().unwrap()[..16];
        let ours_prompt = s.prompt_hash.as_deref().unwrap();
        let expected_hash = hex::encode(Sha256::digest(item["prompt"].as_str().unwrap()));
        assert_eq!(&expected_hash[..16], prompt_hash, "the fixture's own hash");
        let same = ours_prompt == prompt_hash
            && s.generated.as_deref() == item["generation"].as_str()
            && s.filtered.as_ref().unwrap()[name].as_str() == answer.as_str().unwrap()
            && s.metrics[&format!("exact_match,{name}")]
                == item["metrics"]["exact_match"].as_f64().unwrap();
        if !same {
            differ.push(format!(
                "doc {} K={} {name}: lm-eval {:?} → {answer} ({}); icl-eval {:?} → {:?} ({:?}), prompt {}",
                key.0,
                key.1,
                item["generation"],
                item["metrics"]["exact_match"],
                s.generated,
                s.filtered.as_ref().unwrap().get(name),
                s.metrics.get(&format!("exact_match,{name}")),
                if ours_prompt == prompt_hash { "same" } else { "differs" }
            ));
        }
    }
    // The bar is 99% of items; on these 48 that is every one.
    assert!(
        differ.len() * 100 <= items.len(),
        "{} of {} items differ from lm-eval:\n{}",
        differ.len(),
        items.len(),
        differ.join("\n")
    );
}

/// lm-eval's own `lambada_openai.yaml` on 40 LAMBADA passages: every doc's log-likelihood of the
/// last word within 1e-3 nats of lm-eval's and the same greedy verdict (`acc`), and the cell's
/// `perplexity` (exp(−mean log-likelihood), not a mean of per-doc values) equal to lm-eval's.
#[test]
#[ignore = "needs the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn lambada_perplexity_and_acc_match_lm_eval() {
    let (d, tasks, logged) =
        fixture_task("lambada_parity", &["lambada.jsonl"], "lambada_samples.json");
    let out = d.join("run");
    let ours: BTreeMap<usize, icl_eval::record::Sample> = common::run_smollm2(
        &tasks,
        "lambada_parity",
        &out,
        &["--weights", "f32", "--shots", "0"],
    )
    .into_iter()
    .map(|s| (s.doc_id, s))
    .collect();
    let items = logged["items"].as_array().unwrap();
    assert_eq!(ours.len(), items.len());
    for item in items {
        let s = &ours[&(item["doc_id"].as_u64().unwrap() as usize)];
        let ll = item["loglikelihood"].as_f64().unwrap();
        assert!(
            (s.metrics["perplexity"] - ll).abs() < 1e-3,
            "doc {}: {} vs lm-eval {ll}",
            s.doc_id,
            s.metrics["perplexity"]
        );
        assert_eq!(
            s.metrics["acc"],
            item["acc"].as_f64().unwrap(),
            "doc {}",
            s.doc_id
        );
    }
    let value = summary_value(&out, "0", "perplexity");
    let theirs = logged["perplexity"].as_f64().unwrap();
    assert!(
        (value / theirs - 1.0).abs() < 1e-4,
        "perplexity {value} vs lm-eval {theirs}"
    );
}

/// A value of the run's `summary.csv`: the row of K `k` and metric `metric`.
fn summary_value(out: &std::path::Path, k: &str, metric: &str) -> f64 {
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let header: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row: Vec<&str> = summary
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|r| r[col("k")] == k && r[col("metric")] == metric)
        .unwrap_or_else(|| panic!("no K={k} {metric} in\n{summary}"));
    row[col("value")].parse().unwrap()
}

/// lm-eval's own `translation/wmt16_de-en.yaml` (with `wmt_common_yaml`) on generated
/// German-English pairs, K = 0 and 2 (`first_n`): the same prompt and generation on every item,
/// and the cell's corpus BLEU, chrF and TER (sacreBLEU's, over the cell's docs together) equal to
/// lm-eval's, which reports them in points.
#[test]
#[ignore = "needs the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn wmt16_generations_and_corpus_scores_match_lm_eval() {
    let (d, tasks, logged) = fixture_task(
        "wmt16_parity",
        &[
            "wmt16_train.jsonl",
            "wmt16_validation.jsonl",
            "wmt16_test.jsonl",
        ],
        "wmt16_samples.json",
    );
    let out = d.join("run");
    let ours = run_first_n(&tasks, "wmt16_parity", &out, "0,2", &[]);
    let items = logged["items"].as_array().unwrap();
    assert_eq!(ours.len(), items.len());
    let mut differ = Vec::new();
    for item in items {
        let key = item_key(item);
        let s = &ours[&key];
        let prompt = &item["prompt_sha256"].as_str().unwrap()[..16];
        if s.prompt_hash.as_deref() != Some(prompt)
            || s.generated.as_deref() != item["generation"].as_str()
        {
            differ.push(format!(
                "doc {} K={}: lm-eval {:?}, icl-eval {:?}",
                key.0, key.1, item["generation"], s.generated
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    for (k, scores) in logged["scores"].as_object().unwrap() {
        for metric in ["bleu", "chrf", "ter"] {
            let theirs = scores[metric].as_f64().unwrap();
            let value = 100.0 * summary_value(&out, k, metric);
            assert!(
                (value - theirs).abs() < 1e-9,
                "K={k} {metric}: {value} vs lm-eval {theirs}"
            );
        }
    }
}
