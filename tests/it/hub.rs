//! `hf:` model references against a local server that answers the way the Hugging Face hub does
//! (`/api/models/ORG/REPO/revision/main`, `/ORG/REPO/resolve/main/FILE` with ETag, X-Repo-Commit and
//! Content-Range), then again offline from the cache it filled.

use crate::common;
use common::fake_hub::{COMMIT, FakeHub, Served};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn tiny_llama_files() -> HashMap<String, Vec<u8>> {
    let dir = common::reference_dir().join("tiny-hf/llama");
    ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

fn run_with_hub(endpoint: &str, cache: &Path, offline: bool, model: &str, out: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
    c.args([
        "run",
        "--tasks",
        "sentiment_reviews",
        "--models",
        model,
        "--shots",
        "0,1",
        "--limit",
        "3",
        "--output",
    ])
    .arg(out)
    .current_dir(common::root())
    .env("ICL_EVAL_NO_CACHE", "1");
    common::fake_hub::hub_env(&mut c, endpoint, cache, offline);
    c.output().unwrap()
}

fn snapshot(cache: &Path) -> PathBuf {
    cache.join(format!("models--tiny--llama/snapshots/{COMMIT}"))
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn hub_checkpoint_downloads_then_runs_offline_from_the_cache() {
    let hub = FakeHub::model("tiny/llama", tiny_llama_files());
    let tmp = common::tmp("hub");
    let cache = tmp.join("cache");
    let o = run_with_hub(
        &hub.endpoint(),
        &cache,
        false,
        "hf:tiny/llama",
        &tmp.join("online"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(snapshot(&cache).join(f).is_file(), "{f} not in the cache");
    }
    let served = hub.requests.lock().unwrap().clone();
    assert!(
        served.contains(&"/api/models/tiny/llama/revision/main".to_string()),
        "{served:?}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("online/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["models"][0]["name"], "llama");
    assert_eq!(config["models"][0]["reference"], "hf:tiny/llama");
    assert_eq!(config["models"][0]["parameters"], 139_584);

    // Offline, with no server at all: the cache answers, and the results are the same.
    let o = run_with_hub(
        "http://127.0.0.1:9",
        &cache,
        true,
        "hf:tiny/llama",
        &tmp.join("offline"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |d: &str| std::fs::read_to_string(tmp.join(d).join("samples.jsonl")).unwrap();
    assert_eq!(read("online"), read("offline"));
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn hub_single_file_and_missing_files() {
    let hub = FakeHub::model("tiny/llama", tiny_llama_files());
    let tmp = common::tmp("hub-file");
    let cache = tmp.join("cache");
    let mut opts = icl_eval::models::HubOptions::from_env();
    opts.endpoint = hub.endpoint();
    opts.cache_dir = cache.clone();
    opts.offline = false;
    opts.token = None;
    let r = icl_eval::models::resolve("hf:tiny/llama/config.json", None, &opts).unwrap();
    assert_eq!(r.path, snapshot(&cache).join("config.json"));
    assert_eq!(
        std::fs::read(&r.path).unwrap(),
        tiny_llama_files()["config.json"]
    );
    let e = icl_eval::models::resolve("hf:tiny/llama/absent.gguf", None, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hf:tiny/llama/absent.gguf") && e.contains("404"),
        "{e}"
    );
    opts.offline = true;
    let e = icl_eval::models::resolve("hf:tiny/other", None, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("offline"), "{e}");
}

/// A parquet file of an ARC-shaped split (a nested `choices: {text, label}` feature, as the Hub's
/// `allenai/ai2_arc` has), written with polars.
fn arc_parquet(rows: &[(&str, [&str; 3], &str)]) -> Vec<u8> {
    use polars::prelude::*;
    let docs: Vec<serde_json::Value> = rows
        .iter()
        .enumerate()
        .map(|(i, (q, choices, key))| {
            serde_json::json!({
                "id": format!("q{i}"),
                "question": q,
                "choices": {"text": choices, "label": ["A", "B", "C"]},
                "answerKey": key,
            })
        })
        .collect();
    let jsonl: String = docs.iter().map(|d| format!("{d}\n")).collect();
    let mut df = JsonReader::new(std::io::Cursor::new(jsonl.into_bytes()))
        .with_json_format(JsonFormat::JsonLines)
        .finish()
        .unwrap();
    let mut out = Vec::new();
    ParquetWriter::new(&mut out).finish(&mut df).unwrap();
    out
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn a_hub_dataset_is_read_from_its_parquet_conversion_then_offline_from_the_cache() {
    let test = [
        ("Which is a colour?", ["red", "run", "seven"], "A"),
        ("Which is a number?", ["blue", "seven", "walk"], "B"),
        ("Which is a verb?", ["green", "nine", "jump"], "C"),
    ];
    let train = [("Which is an animal?", ["cat", "rock", "two"], "A")];
    let files = HashMap::from([
        ("ARC-Easy/test/0000.parquet".to_string(), arc_parquet(&test)),
        // The large-split layout: files under `partial-{split}`.
        (
            "ARC-Easy/partial-train/0000.parquet".to_string(),
            arc_parquet(&train),
        ),
        (
            "ARC-Challenge/test/0000.parquet".to_string(),
            arc_parquet(&train),
        ),
    ]);
    let hub = FakeHub::dataset("allenai/ai2_arc", files);
    let tmp = common::tmp("hub-dataset");
    let cache = tmp.join("cache");
    let tasks = tmp.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(
        tasks.join("arc_hub.yaml"),
        "task: arc_hub\ndataset:\n  hub: allenai/ai2_arc\n  name: ARC-Easy\ntest_split: test\n\
         fewshot_split: train\ndoc_to_text: \"Question: {{ question }}\\nAnswer:\"\n\
         doc_to_choice: \"{{ choices.text }}\"\n\
         doc_to_target: \"{{ choices.label.index(answerKey) }}\"\noutput_type: multiple_choice\n",
    )
    .unwrap();
    let model = common::reference_dir().join("tiny-hf/llama");
    let run = |offline: bool, out: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
        c.args(["run", "--tasks-dir"])
            .arg(&tasks)
            .args(["--tasks", "arc_hub", "--models"])
            .arg(&model)
            .args(["--shots", "0,1", "--output"])
            .arg(tmp.join(out))
            .env("ICL_EVAL_NO_CACHE", "1");
        hub.env(&mut c, &cache, offline);
        c.output().unwrap()
    };
    let o = run(false, "online");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let served = hub.requests.lock().unwrap().clone();
    assert!(
        served.contains(
            &"/api/datasets/allenai/ai2_arc/revision/refs%2Fconvert%2Fparquet".to_string()
        ),
        "{served:?}"
    );
    assert!(
        !served.iter().any(|p| p.contains("ARC-Challenge")),
        "only the config's files are fetched: {served:?}"
    );
    let online = common::read_samples(&tmp.join("online"));
    assert_eq!(online.len(), 3 * 2, "3 test docs at K = 0 and 1");
    // The nested feature reached the template: three choices, gold from the label list; the
    // demonstration came from the `partial-train` folder.
    let s = online.iter().find(|s| s.doc_id == 1).unwrap();
    assert_eq!(s.logprobs.as_ref().map(Vec::len), Some(3), "{s:?}");
    assert_eq!(s.gold, "seven");
    let examples = std::fs::read_to_string(tmp.join("online/examples.json")).unwrap();
    assert!(examples.contains("Which is an animal?"), "{examples}");

    // config.json names each file read: the dataset, the conversion's commit, the file, its hash.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("online/config.json")).unwrap())
            .unwrap();
    let data = &config["tasks"][0]["data"];
    let test_file = "ARC-Easy/test/0000.parquet";
    assert_eq!(
        data[0]["source"],
        format!("hf://datasets/allenai/ai2_arc@{COMMIT}/{test_file}")
    );
    let bytes = arc_parquet(&test);
    assert_eq!(data[0]["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(data.as_array().unwrap().len(), 2, "{data}");

    let before = hub.requests.lock().unwrap().len();
    let o = run(true, "offline");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        hub.requests.lock().unwrap().len(),
        before,
        "offline: no request"
    );
    let offline = common::read_samples(&tmp.join("offline"));
    assert_eq!(
        serde_json::to_string(&offline).unwrap(),
        serde_json::to_string(&online).unwrap()
    );

    // lm-eval's own arc_easy.yaml, unchanged, read in place from a task folder: the same prompts,
    // choices and gold as the hand-written task, so the same numbers.
    let lm_eval = tmp.join("lm_eval_tasks");
    std::fs::create_dir_all(&lm_eval).unwrap();
    std::fs::copy(
        common::root().join("tests/fixtures/lm_eval/arc_easy.yaml"),
        lm_eval.join("arc_easy.yaml"),
    )
    .unwrap();
    let in_folder = |dir: &std::path::Path, out: &str, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_icl-eval"))
            .current_dir(&tmp)
            .args(["run", "--tasks-dir"])
            .arg(dir)
            .args(["--tasks", "arc_easy", "--models"])
            .arg(&model)
            .args(["--shots", "0,1", "--offline", "--output"])
            .arg(tmp.join(out))
            .args(extra)
            .env("ICL_EVAL_NO_CACHE", "1")
            .env("HF_HUB_CACHE", &cache)
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("ICL_EVAL_DATA_DIR")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    in_folder(&lm_eval, "in-place", &[]);
    let in_place = common::read_samples(&tmp.join("in-place"));
    assert_eq!(in_place.len(), online.len());
    for (a, b) in in_place.iter().zip(&online) {
        assert_eq!(a.task, "arc_easy");
        assert_eq!(
            (a.doc_id, a.k, &a.logprobs, &a.gold, &a.prediction),
            (b.doc_id, b.k, &b.logprobs, &b.gold, &b.prediction)
        );
    }

    // A task's identity is its source bytes, not its folder: the same file in a second folder
    // (another machine's lm-eval install) runs shard 2/2 of the run whose shard 1/2 ran from the
    // first, and the two merge into the unsharded run's folder.
    let elsewhere = tmp.join("elsewhere").join("lm_eval").join("tasks");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(
        lm_eval.join("arc_easy.yaml"),
        elsewhere.join("arc_easy.yaml"),
    )
    .unwrap();
    in_folder(&lm_eval, "shard-1", &["--shard", "1/2"]);
    in_folder(&elsewhere, "shard-2", &["--shard", "2/2"]);
    let o = Command::new(env!("CARGO_BIN_EXE_icl-eval"))
        .args(["merge", "--output"])
        .arg(tmp.join("merged"))
        .arg(tmp.join("shard-1"))
        .arg(tmp.join("shard-2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(tmp.join("merged").join("samples.jsonl")).unwrap(),
        std::fs::read(tmp.join("in-place").join("samples.jsonl")).unwrap()
    );

    // A split the conversion lacks, offline and online: one line naming dataset, config and split.
    std::fs::write(
        tasks.join("arc_hub.yaml"),
        std::fs::read_to_string(tasks.join("arc_hub.yaml"))
            .unwrap()
            .replace("test_split: test", "test_split: validation"),
    )
    .unwrap();
    for (offline, want) in [(true, "offline mode is on"), (false, "has no files for it")] {
        let o = run(offline, "missing");
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("arc_hub.yaml")
                && e.contains("allenai/ai2_arc")
                && e.contains("`ARC-Easy`")
                && e.contains("`validation`")
                && e.contains(want),
            "{e}"
        );
    }
}

/// A Hub dataset's bad input, each a short error naming the task file, the dataset and the field
/// or file at fault: a split the conversion lacks, a column the template names that the parquet
/// lacks, a dataset the Hub does not have, a file that is not parquet, and offline without a copy.
#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn hub_dataset_problems_name_the_task_dataset_and_field() {
    let rows = [("Which is a colour?", ["red", "run", "seven"], "A")];
    let files = HashMap::from([
        ("ARC-Easy/test/0000.parquet".to_string(), arc_parquet(&rows)),
        (
            "ARC-Easy/train/0000.parquet".to_string(),
            arc_parquet(&rows),
        ),
        (
            "Broken/test/0000.parquet".to_string(),
            b"PAR1 not really".to_vec(),
        ),
    ]);
    let hub = FakeHub::dataset("allenai/ai2_arc", files);
    let tmp = common::tmp("hub-problems");
    let tasks = tmp.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let task = |name: &str, repo: &str, config: &str, split: &str, text: &str| {
        let p = tasks.join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "task: {name}\ndataset:\n  hub: {repo}\n  name: {config}\ntest_split: {split}\n\
                 fewshot_split: {split}\ndoc_to_text: \"{text}\"\n\
                 doc_to_choice: \"{{{{ choices.text }}}}\"\n\
                 doc_to_target: \"{{{{ choices.label.index(answerKey) }}}}\"\noutput_type: multiple_choice\n"
            ),
        )
        .unwrap();
        p
    };
    let validate = |path: &Path, offline: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
        c.arg("validate").arg(path);
        hub.env(&mut c, &tmp.join("cache"), offline);
        let o = c.output().unwrap();
        assert!(
            !o.status.success(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    let q = "{{ question }}";
    for (path, expected) in [
        (
            task("no_split", "allenai/ai2_arc", "ARC-Easy", "validation", q),
            vec!["no_split.yaml", "allenai/ai2_arc", "validation"],
        ),
        (
            task(
                "no_column",
                "allenai/ai2_arc",
                "ARC-Easy",
                "test",
                "{{ stem }}",
            ),
            vec!["no_column.yaml", "doc_to_text", "`stem`"],
        ),
        (
            task("no_dataset", "nobody/nothing", "default", "test", q),
            vec!["no_dataset.yaml", "nobody/nothing"],
        ),
        (
            task("broken", "allenai/ai2_arc", "Broken", "test", q),
            vec!["broken.yaml", "Broken/test/0000.parquet"],
        ),
    ] {
        let e = validate(&path, false);
        for x in expected {
            assert!(e.contains(x), "{x} not named in:\n{e}");
        }
        assert!(e.lines().count() <= 3, "short errors:\n{e}");
    }
    let fresh = task("offline", "allenai/ai2_arc", "ARC-Challenge", "test", q);
    let e = validate(&fresh, true);
    assert!(
        e.contains("allenai/ai2_arc") && e.contains("offline"),
        "offline without a copy names the dataset and how to fetch it:\n{e}"
    );
}

/// lm-eval's `data_files` beside a Hub `dataset_path` (e.g. MMLU-SR's csv files without a header,
/// named by `column_names`): the repository's own files at `main`, downloaded into the cache and
/// read from it offline.
#[test]
fn a_hub_repositorys_own_csv_files_are_read_by_their_names() {
    let files = HashMap::from([
        (
            "answer_only_dev/x_dev.csv".to_string(),
            b"What is 1+1?,1,2,3,4,B\n".to_vec(),
        ),
        (
            "answer_only_test/x_test.csv".to_string(),
            b"What is 2+2?,2,3,4,5,C\nWhat is 0+1?,0,1,2,3,B\n".to_vec(),
        ),
    ]);
    let hub = FakeHub::serving(vec![Served::dataset_main("org/sr", files)]);
    let tmp = common::tmp("hub-repo-files");
    let tasks = tmp.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(
        tasks.join("sr.yaml"),
        "task: sr\ndataset_path: org/sr\ndataset_kwargs:\n  data_files:\n    train: answer_only_dev/x_dev.csv\n\
         \x20   test: answer_only_test/x_test.csv\n  column_names: [question, choice1, choice2, choice3, choice4, answer]\n\
         \x20 header: null\ntest_split: test\nfewshot_split: train\noutput_type: multiple_choice\n\
         doc_to_text: \"{{question}}\\nAnswer:\"\ndoc_to_choice: [A, B, C, D]\ndoc_to_target: answer\n\
         fewshot_config:\n  sampler: first_n\nmetric_list:\n  - metric: acc\n",
    )
    .unwrap();
    let prompt = |offline: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
        c.args(["prompt", "--tasks-dir"])
            .arg(&tasks)
            .args(["--task", "sr", "--shots", "1", "--doc", "1"]);
        hub.env(&mut c, &tmp.join("cache"), offline);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let online = prompt(false);
    assert!(
        online.starts_with("What is 1+1?\nAnswer: B\n\nWhat is 0+1?\nAnswer:"),
        "{online}"
    );
    assert_eq!(prompt(true), online, "offline from the cache");
}

/// lm-eval's `dataset_kwargs.revision` with `data_files` (indicxnli reads the parquet
/// conversion's own files by name): the files at that revision, offline from the cache; without
/// `data_files` a revision is refused, naming what to write.
#[test]
fn data_files_are_read_at_the_revision_a_task_pins() {
    let test = [
        ("Which is a colour?", ["red", "run", "seven"], "A"),
        ("Which is a verb?", ["green", "nine", "jump"], "C"),
    ];
    let train = [("Which is an animal?", ["cat", "rock", "two"], "A")];
    let files = HashMap::from([
        ("gu/test/0000.parquet".to_string(), arc_parquet(&test)),
        ("gu/train/0000.parquet".to_string(), arc_parquet(&train)),
    ]);
    // Served at `refs/convert/parquet` only: a read at `main` would fail.
    let hub = FakeHub::serving(vec![Served::parquet("org/pinned", files)]);
    let tmp = common::tmp("hub-revision");
    let tasks = tmp.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let task = |kwargs: &str| {
        format!(
            "task: pinned\ndataset_path: org/pinned\ndataset_kwargs:\n{kwargs}output_type: multiple_choice\n\
             training_split: train\ntest_split: test\ndoc_to_text: \"{{{{question}}}}\\nAnswer:\"\n\
             doc_to_choice: \"{{{{choices.text}}}}\"\ndoc_to_target: \"{{{{choices.label.index(answerKey)}}}}\"\n\
             fewshot_config:\n  sampler: first_n\nmetric_list:\n  - metric: acc\n"
        )
    };
    std::fs::write(
        tasks.join("pinned.yaml"),
        task(
            "  revision: refs/convert/parquet\n  data_files:\n    train: gu/train/0000.parquet\n\
             \x20   test: gu/test/0000.parquet\n",
        ),
    )
    .unwrap();
    let prompt = |offline: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
        c.args(["prompt", "--tasks-dir"])
            .arg(&tasks)
            .args(["--task", "pinned", "--shots", "1", "--doc", "1"]);
        hub.env(&mut c, &tmp.join("cache"), offline);
        c.output().unwrap()
    };
    let o = prompt(false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let online = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        online,
        "Which is an animal?\nAnswer: cat\n\nWhich is a verb?\nAnswer:"
    );
    let o = prompt(true);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        online,
        "offline from the cache"
    );
    std::fs::write(tasks.join("pinned.yaml"), task("  revision: 0123abc\n")).unwrap();
    let e = String::from_utf8_lossy(&prompt(false).stderr).to_string();
    assert!(
        e.contains("dataset_kwargs.revision") && e.contains("name the files as `data_files`"),
        "{e}"
    );
}
