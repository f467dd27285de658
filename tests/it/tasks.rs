//! The shipped task library: every task in `tasks/` loads its dataset from a local fake Hugging
//! Face Hub (the shared data in the Hub's schemas, `scripts/make-fake-hub.py`), renders 0- and
//! 2-shot prompts for 2 docs and is scored with SmolLM2 through the real binary; gold answers of a
//! few docs are checked against the data files by hand.

use crate::common;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::fake_hub::FakeHub;
use icl_eval::backend::Backend;
use icl_eval::backend::candle::{CandleBackend, WeightsChoice};
use icl_eval::task::Answer;
use icl_eval::task::{LoadOptions, discover, load_task, load_task_using};

/// Every shipped task's name, after asserting that each one loads.
fn task_names() -> Vec<String> {
    let found = discover(&[common::root().join("tasks")]).unwrap();
    let broken: Vec<String> = found
        .iter()
        .filter_map(|t| {
            t.problem
                .as_ref()
                .map(|p| format!("{}: {p}", t.path.display()))
        })
        .collect();
    assert!(broken.is_empty(), "{broken:#?}");
    let names: Vec<String> = found.iter().map(|t| t.name.clone()).collect();
    assert!(names.len() >= 90, "{} tasks", names.len());
    names
}

/// One run of every shipped task at K = 0 and 2 on 2 docs with SmolLM2, shared by the tests of
/// this file (one model load, one pass over the library). MMLU is named by its tag, so the run also
/// reports it as a group.
fn library_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let mut tasks = vec!["mmlu".to_string()];
        tasks.extend(task_names().into_iter().filter(|n| !n.starts_with("mmlu_")));
        let out = common::tmp("tasks").join("run");
        let model = common::smollm2();
        let hub = FakeHub::datasets();
        let mut run = common::command_in(
            &common::root(),
            &[
                "run",
                "--tasks",
                &tasks.join(","),
                "--models",
                model.to_str().unwrap(),
                // K = 2 shows both delimiters (between demonstrations and before the query).
                "--shots",
                "0,2",
                "--limit",
                "2",
                // Story Cloze only: every other task reads the Hub.
                "--data-dir",
                common::data_dir().to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
        );
        let o = hub
            .env(&mut run, &out.with_file_name("hf-cache"), false)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    })
}

#[test]
#[ignore = "needs the shared benchmark data and the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn every_task_loads_renders_and_scores_with_smollm2() {
    let names = task_names();
    let samples = common::read_samples(library_run());
    assert_eq!(samples.len(), names.len() * 2 * 2);
    let ran: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.task.as_str()).collect();
    assert_eq!(ran.len(), names.len(), "every task, each once");
    for s in &samples {
        assert!(
            s.skipped.is_none() && s.k_effective == Some(s.k) && !s.metrics.is_empty(),
            "{} doc {} K={}: {:?}",
            s.task,
            s.doc_id,
            s.k,
            s.skipped
        );
    }
    // Gold answers read off the data files by hand.
    let gold: BTreeMap<(&str, usize), &str> = samples
        .iter()
        .filter(|s| s.k == 0)
        .map(|s| ((s.task.as_str(), s.doc_id), s.gold.as_str()))
        .collect();
    for (task, doc, expected) in [
        // cb/val.jsonl line 1: "contradiction".
        ("cb", 0, "False"),
        // hellaswag: the first record's label line is 3.
        ("hellaswag", 0, "starts pulling up roofing on a roof."),
        // piqa: valid-labels.lst line 1 is 0 (sol1).
        (
            "piqa",
            0,
            "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.",
        ),
        // trec/test.txt line 1: "NUM:dist How far is it from Denver to Aspen ?".
        ("trec", 0, "Number"),
        // gpt3 two_digit_addition.jsonl line 1: " 143".
        ("arithmetic_2da", 0, "143"),
        // winogrande.jsonl line 1: gold 1, the second of the context options.
        (
            "winogrande",
            0,
            "Sarah was a much better surgeon than Maria so Maria",
        ),
        // lambada_test.jsonl line 1 ends "... I don't care about signs".
        ("lambada", 0, " signs"),
        // mmlu anatomy_test.csv row 1: answer 0.
        ("mmlu_anatomy", 0, "A"),
        // ARC-Easy test.json item 0: "answer1" (options parsed out of the instruction).
        (
            "arc_easy",
            0,
            "Sunlight is the source of energy for nearly all ecosystems.",
        ),
    ] {
        assert_eq!(
            gold.get(&(task, doc)).copied(),
            Some(expected),
            "{task} doc {doc}"
        );
    }
}

/// WinoGrande's partial scoring and LAMBADA's greedy match, recomputed request by request with the
/// backend itself (whose log-probabilities `parity.rs` checks against transformers): each input's
/// score is the shared continuation's log-likelihood after it, and a LAMBADA word counts exactly
/// when greedy generation of as many tokens produces it.
#[test]
#[ignore = "needs the shared benchmark data and the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn partial_scoring_and_greedy_match_are_the_backends_own_numbers() {
    let d = common::tmp("partial");
    let model = common::smollm2();
    let hub = FakeHub::datasets();
    let cache = d.join("hf-cache");
    let mut run = common::command_in(
        &common::root(),
        &[
            "run",
            "--tasks",
            "winogrande,lambada",
            "--models",
            model.to_str().unwrap(),
            "--shots",
            "0",
            "--limit",
            "6",
            "--output",
            d.join("run").to_str().unwrap(),
        ],
    );
    let o = hub.env(&mut run, &cache, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = common::read_samples(&d.join("run"));
    assert_eq!(samples.len(), 12);
    let tasks = common::root().join("tasks");
    let options = LoadOptions {
        data_dir: None,
        python: None,
        hub: hub.options(&cache),
    };
    let wino = load_task_using(&tasks.join("commonsense/winogrande.yaml"), &options).unwrap();
    let lambada = load_task_using(&tasks.join("language_modeling/lambada.yaml"), &options).unwrap();
    let mut b = CandleBackend::load(&model, WeightsChoice::Auto).unwrap();
    let mut greedy = 0;
    for s in &samples {
        let logprobs = s.logprobs.as_ref().unwrap();
        match s.task.as_str() {
            "winogrande" => {
                let Answer::Inputs {
                    inputs,
                    continuation,
                    ..
                } = &wino.test[s.doc_id].answer
                else {
                    panic!("winogrande is multiple_input")
                };
                let mut best = (f64::NEG_INFINITY, 0);
                for (i, input) in inputs.iter().enumerate() {
                    let ll = b
                        .loglikelihood(input, &[], &[format!(" {continuation}")])
                        .unwrap()[0]
                        .logprob;
                    assert!(
                        (ll - logprobs[i]).abs() < 1e-6,
                        "doc {} input {i}",
                        s.doc_id
                    );
                    if ll > best.0 {
                        best = (ll, i);
                    }
                }
                assert_eq!(s.prediction.as_deref(), Some(inputs[best.1].as_str()));
                assert_eq!(s.correct, Some(inputs[best.1] == s.gold));
            }
            "lambada" => {
                let item = &lambada.test[s.doc_id];
                let word = item.target_text();
                let ll = b
                    .loglikelihood(&item.text, &[], &[word.to_string()])
                    .unwrap()[0]
                    .clone();
                assert!((ll.logprob - logprobs[0]).abs() < 1e-6, "doc {}", s.doc_id);
                let generated = b.generate_until(&item.text, &[], &[], ll.n_tokens).unwrap();
                assert_eq!(
                    s.metrics["acc"] == 1.0,
                    generated == word,
                    "doc {}: generated {generated:?}, target {word:?}",
                    s.doc_id
                );
                greedy += usize::from(generated == word);
            }
            other => panic!("unexpected task {other}"),
        }
    }
    // Both outcomes occur among these docs, so the check above is not vacuous.
    assert!(
        (1..6).contains(&greedy),
        "{greedy} of 6 LAMBADA words greedy"
    );
}

/// `--tasks mmlu` names a group: its 57 subjects are reported one by one and as group means, micro
/// (over docs) and macro (over subjects), both recomputed here from the samples.
#[test]
#[ignore = "needs the shared benchmark data and the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn a_tag_on_the_command_line_is_reported_as_group_means() {
    let run = library_run();
    let samples: Vec<_> = common::read_samples(run)
        .into_iter()
        .filter(|s| s.task.starts_with("mmlu_") && s.k == 0)
        .collect();
    assert_eq!(samples.len(), 57 * 2);
    let mut per_task: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in &samples {
        per_task.entry(&s.task).or_default().push(s.metrics["acc"]);
    }
    let all: Vec<f64> = per_task.values().flatten().copied().collect();
    let micro = all.iter().sum::<f64>() / all.len() as f64;
    let macro_ = per_task
        .values()
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .sum::<f64>()
        / per_task.len() as f64;
    let csv = std::fs::read_to_string(run.join("groups.csv")).unwrap();
    let row = csv
        .lines()
        .find(|l| l.starts_with("mmlu,") && l.contains(",0,acc,"))
        .unwrap_or_else(|| panic!("no mmlu acc row in\n{csv}"));
    let f: Vec<&str> = row.split(',').collect();
    let parse = |i: usize| f[i].parse::<f64>().unwrap();
    assert!((parse(6) - micro).abs() < 1e-9, "{row} vs micro {micro}");
    assert!((parse(8) - macro_).abs() < 1e-9, "{row} vs macro {macro_}");
    assert_eq!((f[10], f[11]), ("57", "114"), "{row}");
    let md = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(md.contains("Group means"), "{md}");
}

/// lm-eval task YAMLs (written here in its format, one with an `include:` base, one with Python
/// string methods in its templates) import through the binary into tasks whose every prompt and
/// answer equal the shipped tasks'; a YAML with untranslatable keys is refused naming each.
#[test]
#[ignore = "needs the shared benchmark data"]
fn lm_eval_yamls_import_into_the_shipped_tasks() {
    let d = common::tmp("import");
    let data = common::data_dir();
    let fixtures = common::root().join("tests/fixtures/lm_eval");
    for f in std::fs::read_dir(&fixtures).unwrap() {
        let f = f.unwrap().path();
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.replace("DATA/", &format!("{}/", data.display()));
        std::fs::write(d.join(f.file_name().unwrap()), text).unwrap();
    }
    let tasks = common::root().join("tasks");
    // The shipped tasks read the same data from the fake Hub.
    let hub = FakeHub::datasets();
    let shipped_options = LoadOptions {
        data_dir: None,
        python: None,
        hub: hub.options(&d.join("hf-cache")),
    };
    for (lm_eval, shipped) in [
        ("cb.yaml", "superglue/cb.yaml"),
        ("lambada.yaml", "language_modeling/lambada.yaml"),
    ] {
        let out = d.join(format!("imported-{lm_eval}"));
        let o = common::icl_eval(&[
            "tasks",
            "import",
            d.join(lm_eval).to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ours = load_task(&out, Some(&data)).unwrap();
        let theirs = load_task_using(&tasks.join(shipped), &shipped_options).unwrap();
        assert_eq!(ours.output_type, theirs.output_type, "{lm_eval}");
        assert_eq!(
            (&ours.target_delimiter, &ours.fewshot_delimiter),
            (&theirs.target_delimiter, &theirs.fewshot_delimiter),
            "{lm_eval}"
        );
        for (a, b) in [(&ours.test, &theirs.test), (&ours.fewshot, &theirs.fewshot)] {
            assert_eq!(a.len(), b.len(), "{lm_eval}");
            for (x, y) in a.iter().zip(b) {
                assert_eq!((&x.text, &x.answer), (&y.text, &y.answer), "{lm_eval}");
            }
        }
    }
    let o = common::icl_eval(&[
        "tasks",
        "import",
        d.join("gsm8k_like.yaml").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for key in [
        "`process_docs`",
        "`metric_list.exact_match.ignore_numbers`",
        "metric `perplexity`",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

/// lm-eval task and group files read in place (`--tasks-dir`), as a user of lm-eval writes them:
/// a `_group.yaml` over two tasks, `filter_list` pipelines, `fewshot_config.samples` and local
/// json data. On SmolLM2 the run reports each filter's exact match, its answer per sample equals
/// the pipeline worked by hand on the model's own generation, the inline samples are the
/// demonstrations, and the group is reported beside its tasks.
#[test]
#[ignore = "needs the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn lm_eval_filters_groups_and_inline_samples_run_in_place() {
    let d = common::tmp("lm-eval-in-place");
    let tasks = d.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let docs: String = [(12, 7), (30, 45), (8, 9), (61, 22)]
        .iter()
        .map(|(a, b)| format!("{{\"a\": {a}, \"b\": {b}, \"sum\": \"{}\"}}\n", a + b))
        .collect();
    std::fs::write(tasks.join("sums.jsonl"), docs).unwrap();
    let task = |name: &str, words: &str| {
        format!(
            "task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {dir}/sums.jsonl\n\
             test_split: test\noutput_type: generate_until\n\
             doc_to_text: \"Question: What is {{{{a}}}} {words} {{{{b}}}}?\\nAnswer:\"\ndoc_to_target: \"{{{{sum}}}}\"\n\
             fewshot_config:\n  sampler: first_n\n  samples:\n    - {{a: 2, b: 3, sum: '5'}}\n    - {{a: 10, b: 4, sum: '14'}}\n\
             generation_kwargs:\n  until: [\"\\n\"]\n  do_sample: false\n  max_gen_toks: 8\n\
             filter_list:\n  - name: first-number\n    filter:\n      - function: regex\n        regex_pattern: \"(\\\\d+)\"\n      - function: take_first\n\
             \x20 - name: last-number\n    filter:\n      - function: regex\n        group_select: -1\n        regex_pattern: \"(\\\\d+)\"\n        fallback: none\n      - function: take_first\n\
             metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n",
            dir = tasks.display()
        )
    };
    std::fs::write(tasks.join("plus.yaml"), task("sums_plus", "plus")).unwrap();
    std::fs::write(tasks.join("and.yaml"), task("sums_and", "and")).unwrap();
    std::fs::write(
        tasks.join("_sums.yaml"),
        "group: sums\ntask:\n  - sums_plus\n  - task: sums_and\n    task_alias: and\n\
         aggregate_metric_list:\n  - metric: exact_match\n    weight_by_size: true\nmetadata:\n  version: 1\n",
    )
    .unwrap();
    let out = d.join("run");
    let samples = common::run_smollm2(&tasks, "sums", &out, &["--shots", "0,2", "--limit", "4"]);
    assert_eq!(samples.len(), 2 * 2 * 4);
    let number = regex::Regex::new(r"(\d+)").unwrap();
    for s in &samples {
        let generated = s.generated.as_deref().unwrap();
        let all: Vec<&str> = number.find_iter(generated).map(|m| m.as_str()).collect();
        let f = s.filtered.as_ref().unwrap();
        assert_eq!(
            f["first-number"],
            all.first().copied().unwrap_or("[invalid]"),
            "{s:?}"
        );
        assert_eq!(
            f["last-number"],
            all.last().copied().unwrap_or("none"),
            "{s:?}"
        );
        for name in ["first-number", "last-number"] {
            let hit = f64::from(u8::from(f[name] == s.gold));
            assert_eq!(s.metrics[&format!("exact_match,{name}")], hit, "{s:?}");
        }
        assert_eq!(s.prediction.as_deref(), Some(f["first-number"].as_str()));
    }
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("exact_match,first-number"), "{config}");
    let record: serde_json::Value = serde_json::from_str(&config).unwrap();
    let versions: Vec<&str> = record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.0", "1.0"], "metadata.version recorded");
    let examples = std::fs::read_to_string(out.join("examples.json")).unwrap();
    assert!(
        examples.contains("What is 2 plus 3?\\nAnswer: 5\\n\\nQuestion: What is 10 plus 4?"),
        "the inline samples, in order, are the 2-shot demonstrations:\n{examples}"
    );
    let groups = std::fs::read_to_string(out.join("groups.csv")).unwrap();
    assert!(
        groups
            .lines()
            .any(|l| l.starts_with("sums,") && l.contains("exact_match,first-number")),
        "{groups}"
    );

    // A group setting its members' keys (lm-eval's `{task: NAME, num_fewshot: K}`, and a
    // `description` for all of them), run with `--shots task`: each task at its own K, the group
    // averaged across them.
    std::fs::write(
        tasks.join("_board.yaml"),
        "group: board\ndescription: \"Add the numbers.\\n\\n\"\ntask:\n  - task: sums_plus\n    num_fewshot: 2\n\
         \x20 - task: sums_and\n    num_fewshot: 1\n",
    )
    .unwrap();
    let out = d.join("board");
    let samples = common::run_smollm2(&tasks, "board", &out, &["--shots", "task", "--limit", "2"]);
    let ks: std::collections::BTreeSet<(&str, usize)> =
        samples.iter().map(|s| (s.task.as_str(), s.k)).collect();
    assert_eq!(
        ks.into_iter().collect::<Vec<_>>(),
        [("sums_and", 1), ("sums_plus", 2)]
    );
    let examples = std::fs::read_to_string(out.join("examples.json")).unwrap();
    assert!(
        examples.contains("Add the numbers.\\n\\nQuestion: What is 2 plus 3?"),
        "{examples}"
    );
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"task_shots\": true"), "{config}");
    let groups = std::fs::read_to_string(out.join("groups.csv")).unwrap();
    assert!(
        groups
            .lines()
            .any(|l| l.starts_with("board,") && l.contains(",,\"exact_match,first-number\",")),
        "one row across the two tasks' own K, its K empty:\n{groups}"
    );
    let o = common::icl_eval(&[
        "run",
        "--tasks-dir",
        tasks.to_str().unwrap(),
        "--tasks",
        "board",
        "--models",
        "x.gguf",
        "--shots",
        "task,1",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("give it alone"), "{e}");
}

/// lm-eval's `!function` hooks run only when the user opts in: without `--allow-python` the task
/// is refused naming the hooks and the flag; with it, the user's Python builds the docs
/// (`process_docs` on a `datasets.Dataset`), the text, target and choices, the run records the
/// hooks, and scoring hooks (`process_results`) stay refused.
#[test]
#[ignore = "needs the bundled SmolLM2 and the venv of scripts/install-llama-server.sh"]
fn python_hooks_run_only_when_allowed_and_are_recorded() {
    let python = common::hooks_python();
    let d = common::tmp("python-hooks");
    let tasks = d.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(
        tasks.join("docs.jsonl"),
        "{\"q\": \"sky colour\", \"opts\": [\"blue\", \"green\"], \"ans\": \"blue\"}\n\
         {\"q\": \"grass colour\", \"opts\": [\"red\", \"green\"], \"ans\": \"green\"}\n\
         {\"q\": \"snow colour\", \"opts\": [\"white\", \"black\"], \"ans\": \"white\"}\n",
    )
    .unwrap();
    std::fs::write(
        tasks.join("utils.py"),
        "def process_docs(dataset):\n    return dataset.map(lambda d: {\"q\": d[\"q\"].title()})\n\n\
         def doc_to_text(doc):\n    return f\"What is the {doc['q']}?\\nAnswer:\"\n\n\
         def doc_to_target(doc):\n    return doc[\"opts\"].index(doc[\"ans\"])\n\n\
         def doc_to_choice(doc):\n    return [o.upper() for o in doc[\"opts\"]]\n\n\
         def list_fewshot_samples():\n    return [{\"q\": \"sun colour\", \"opts\": [\"blue\", \"yellow\"], \"ans\": \"yellow\"}]\n\n\
         def agreement(items):\n    return sum(g == p for g, p in items) / len(items)\n",
    )
    .unwrap();
    let yaml = format!(
        "task: colours\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}/docs.jsonl\n\
         test_split: test\noutput_type: multiple_choice\nprocess_docs: !function utils.process_docs\n\
         doc_to_text: !function utils.doc_to_text\ndoc_to_target: !function utils.doc_to_target\n\
         doc_to_choice: !function utils.doc_to_choice\nmetric_list:\n  - metric: acc\n\
         \x20 - metric: f1\n    aggregation: !function utils.agreement\n\
         fewshot_config:\n  sampler: first_n\n  samples: !function utils.list_fewshot_samples\n",
        tasks.display()
    );
    std::fs::write(tasks.join("colours.yaml"), &yaml).unwrap();
    let dir = tasks.to_str().unwrap();
    let o = common::icl_eval(&[
        "prompt",
        "--tasks-dir",
        dir,
        "--task",
        "colours",
        "--shots",
        "1",
        "--doc",
        "0",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--allow-python") && err.contains("utils.process_docs"),
        "{err}"
    );

    let py = python.to_str().unwrap();
    let o = common::icl_eval(&[
        "prompt",
        "--tasks-dir",
        dir,
        "--task",
        "colours",
        "--shots",
        "1",
        "--doc",
        "0",
        "--allow-python",
        "--python",
        py,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let prompt = String::from_utf8_lossy(&o.stdout);
    assert!(
        prompt.contains("What is the Sky Colour?\nAnswer:"),
        "process_docs then doc_to_text:\n{prompt}"
    );
    assert!(
        prompt.starts_with("What is the sun colour?\nAnswer: YELLOW\n\n"),
        "the listed samples, as they are (lm-eval runs no process_docs on them):\n{prompt}"
    );

    let out = d.join("run");
    let samples = common::run_smollm2(
        &tasks,
        "colours",
        &out,
        &["--shots", "0,1", "--allow-python", "--python", py],
    );
    assert_eq!(samples.len(), 6);
    let golds: Vec<&str> = samples
        .iter()
        .filter(|s| s.k == 0)
        .map(|s| s.gold.as_str())
        .collect();
    assert_eq!(golds, ["BLUE", "GREEN", "WHITE"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let hooks: Vec<&str> = config["tasks"][0]["python"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(hooks.len(), 5, "{hooks:?}");
    assert!(hooks[0].starts_with("process_docs: ") && hooks[0].ends_with("utils.py:process_docs"));
    // The Python aggregation of `f1` (here the share of docs whose prediction is the gold
    // choice, so it must equal `acc`) ran on each cell's pairs, is recorded, and runs again only
    // when a rebuilt report is allowed Python.
    assert!(
        config["tasks"][0]["aggregations"]["f1"]
            .as_str()
            .is_some_and(|h| h.ends_with("utils.py:agreement")),
        "{config}"
    );
    let metric_values = |dir: &std::path::Path| -> BTreeMap<(String, String), String> {
        std::fs::read_to_string(dir.join("summary.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                ((f[6].to_string(), f[7].to_string()), f[8].to_string())
            })
            .collect()
    };
    let values = metric_values(&out);
    for k in ["0", "1"] {
        let acc = &values[&(k.to_string(), "acc".to_string())];
        assert_eq!(
            &values[&(k.to_string(), "f1".to_string())],
            acc,
            "K={k}: {values:?}"
        );
    }
    let rebuilt = d.join("rebuilt");
    let o = common::icl_eval(&[
        "report",
        out.to_str().unwrap(),
        "--output",
        rebuilt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("runs only with --allow-python"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        metric_values(&rebuilt)[&("0".to_string(), "f1".to_string())],
        ""
    );
    let o = common::icl_eval(&[
        "report",
        out.to_str().unwrap(),
        "--output",
        rebuilt.to_str().unwrap(),
        "--allow-python",
        "--python",
        py,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(metric_values(&rebuilt), values);

    std::fs::write(
        tasks.join("colours.yaml"),
        format!("{yaml}process_results: !function utils.process_docs\n"),
    )
    .unwrap();
    let o = common::icl_eval(&[
        "prompt",
        "--tasks-dir",
        dir,
        "--task",
        "colours",
        "--shots",
        "0",
        "--doc",
        "0",
        "--allow-python",
        "--python",
        py,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`process_results`") && err.contains("scores are icl-eval's own"),
        "{err}"
    );
}

/// Sampled generations (`do_sample`, `temperature`, `repeats`) on SmolLM2 are the same whatever
/// the batch size or `--limit`, differ between repeats, and feed the majority vote.
#[test]
#[ignore = "needs the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn sampled_repeats_are_reproducible_across_batches_and_limits() {
    let d = common::tmp("sampled");
    let tasks = d.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let docs: String = (0..3)
        .map(|i| format!("{{\"a\": {}, \"b\": {}}}\n", 10 + i, 3 * i + 2))
        .collect();
    std::fs::write(tasks.join("sums.jsonl"), docs).unwrap();
    std::fs::write(
        tasks.join("sampled.yaml"),
        "task: sampled\ndataset: {path: sums.jsonl}\ntest_split: all\n\
         doc_to_text: \"Q: What is {{ a }} plus {{ b }}?\\nA:\"\ndoc_to_target: \"{{ a + b }}\"\n\
         output_type: generate_until\ngeneration: {until: [\"\\n\"], max_tokens: 4, do_sample: true, temperature: 1.0, top_p: 0.95}\n\
         repeats: 4\nfilter_list:\n  - name: maj\n    filter:\n      - function: regex\n        regex_pattern: \"(\\\\d+)\"\n\
         \x20     - function: majority_vote\n      - function: take_first\n",
    )
    .unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec!["--shots", "0,1", "--no-cache"];
        args.extend(extra);
        common::run_smollm2(&tasks, "sampled", &d.join(out), &args)
    };
    let a = run("a", &["--batch-size", "1"]);
    let b = run("b", &["--batch-size", "8", "--limit", "2"]);
    assert_eq!(a.len(), 6);
    for s in &b {
        let t = a
            .iter()
            .find(|x| (x.doc_id, x.k) == (s.doc_id, s.k))
            .unwrap();
        assert_eq!(s.generations, t.generations, "doc {} K={}", s.doc_id, s.k);
        assert_eq!(s.filtered, t.filtered);
    }
    let differ = a
        .iter()
        .filter(|s| {
            let g = s.generations.as_ref().unwrap();
            g.iter().any(|x| x != &g[0])
        })
        .count();
    assert!(
        differ > 0,
        "sampling at T = 1 varies between repeats: {a:?}"
    );
}

/// lm-eval's `loglikelihood_rolling` (its pile files' shape, read in place): each document is
/// scored alone, the same at every K; its log-likelihood is the sum over lm-eval's disjoint
/// windows (`get_rolling_token_windows`, ported here and scored window by window with one plain
/// forward pass each); with a window longer than the document it is one pass after the start
/// token; the summary's perplexities are Σ log-likelihood over Σ words or bytes.
#[test]
#[ignore = "needs the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn loglikelihood_rolling_scores_each_document_whole_in_windows() {
    let d = common::tmp("rolling");
    let tasks = d.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let texts = [
        "The quick brown fox jumps over the lazy dog. It was not amused.",
        "Paris is the capital of France.\nBerlin is the capital of Germany.",
        "1 2 3 4 5 6 7 8 9 10",
    ];
    let docs: String = texts
        .iter()
        .map(|t| format!("{}\n", serde_json::json!({ "text": t })))
        .collect();
    std::fs::write(tasks.join("docs.jsonl"), docs).unwrap();
    std::fs::write(
        tasks.join("ppl.yaml"),
        format!(
            "task: ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}/docs.jsonl\n\
             output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: \"\"\n\
             doc_to_target: \"{{{{text}}}}\"\nmetric_list:\n  - metric: word_perplexity\n    \
             aggregation: weighted_perplexity\n    higher_is_better: false\n  - metric: byte_perplexity\n    \
             aggregation: weighted_perplexity\n    higher_is_better: false\n  - metric: bits_per_byte\n    \
             aggregation: bits_per_byte\n    higher_is_better: false\n",
            tasks.display()
        ),
    )
    .unwrap();
    let model = common::smollm2();
    let out = d.join("run");
    let samples = common::run_smollm2(&tasks, "ppl", &out, &["--shots", "0,2"]);
    assert_eq!(samples.len(), 6);
    let ll = |doc: usize, k: usize| {
        let s = samples
            .iter()
            .find(|s| s.doc_id == doc && s.k == k)
            .unwrap();
        assert_eq!(s.k_effective, Some(0), "a document is scored alone");
        s.logprobs.as_ref().unwrap()[0]
    };
    let b = CandleBackend::load(&model, WeightsChoice::Auto).unwrap();
    let start = b.start_token().unwrap();
    let (mut total_ll, mut words, mut bytes) = (0.0, 0.0, 0.0);
    for (doc, text) in texts.iter().enumerate() {
        assert_eq!(ll(doc, 0), ll(doc, 2), "doc {doc}: the same at every K");
        let mut tokens = b.encode(text).unwrap();
        if tokens.first() == Some(&start) {
            tokens.remove(0);
        }
        // One pass after the start token.
        let mut ids = vec![start];
        ids.extend(&tokens);
        let one: f64 = b
            .next_token_logprobs(&ids)
            .unwrap()
            .0
            .iter()
            .map(|&x| x as f64)
            .sum();
        assert!(
            (ll(doc, 0) - one).abs() < 1e-3,
            "doc {doc}: {} vs {one}",
            ll(doc, 0)
        );
        // lm-eval's windows of 5 tokens, each scored by a plain pass over context + targets.
        let window = 5;
        let mut pairs: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
        let first = window.min(tokens.len());
        let mut ctx = vec![start];
        ctx.extend(&tokens[..first - 1]);
        pairs.push((ctx, tokens[..first].to_vec()));
        let mut predicted = first;
        while predicted < tokens.len() {
            let n = (tokens.len() - predicted).min(window);
            let end = predicted + n;
            pairs.push((
                tokens[end - window - 1..end - 1].to_vec(),
                tokens[end - n..end].to_vec(),
            ));
            predicted = end;
        }
        let mut windowed = 0.0;
        for (a, cont) in &pairs {
            // make_disjoint_window: the context loses its overlap with the targets.
            let ctx = &a[..a.len() - (cont.len() - 1)];
            let mut ids = ctx.to_vec();
            ids.extend(cont);
            let lp = b.next_token_logprobs(&ids).unwrap().0;
            windowed += lp[ctx.len() - 1..].iter().map(|&x| x as f64).sum::<f64>();
        }
        let ours = b.rolling_logprob(text, window).unwrap();
        assert!(
            (ours - windowed).abs() < 1e-3,
            "doc {doc}: {ours} vs {windowed}"
        );
        assert!(pairs.len() > 2, "doc {doc}: several windows");
        total_ll += ll(doc, 0);
        words += text.split_whitespace().count() as f64;
        bytes += text.len() as f64;
    }
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let value = |metric: &str| -> f64 {
        summary
            .lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f[6] == "0" && f[7] == metric)
            .unwrap_or_else(|| panic!("no {metric} in {summary}"))[8]
            .parse()
            .unwrap()
    };
    assert!((value("word_perplexity") - (-total_ll / words).exp()).abs() < 1e-6);
    assert!((value("byte_perplexity") - (-total_ll / bytes).exp()).abs() < 1e-9);
    assert!((value("bits_per_byte") - -total_ll / bytes / std::f64::consts::LN_2).abs() < 1e-9);
}

/// lm-eval's SuperGLUE `cb` — its `default.yaml` metric list and `aggregate.py` as lm-eval ships
/// them (`f1` aggregated by `cb_multi_fi`, scikit-learn's binary F1 of each of the three labels,
/// averaged) — runs under `--allow-python` on a hand-made three-label split, and its `f1` is the
/// macro F1 computed here from the run's own predictions.
#[test]
#[ignore = "needs the bundled SmolLM2 and the venv of scripts/install-llama-server.sh"]
fn lm_evals_cb_runs_with_its_python_macro_f1() {
    let python = common::hooks_python();
    let d = common::tmp("cb-macro-f1");
    let tasks = d.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let rows = [
        ("It is raining hard.", "It is wet outside", 0),
        ("The shop closed at noon.", "The shop is open at night", 1),
        ("Tom bought a car.", "Tom likes red", 2),
        ("The cat sleeps on the mat.", "The cat is resting", 0),
        ("Ann never eats meat.", "Ann ate a steak", 1),
        ("The train left early.", "The driver is tall", 2),
        ("All birds in the cage sing.", "A bird in the cage sings", 0),
        ("The lake froze last night.", "The lake is warm", 1),
        ("Sam reads a book.", "The book is new", 2),
    ];
    let jsonl: String = rows
        .iter()
        .map(|(p, h, l)| {
            format!("{{\"premise\": \"{p}\", \"hypothesis\": \"{h}\", \"label\": {l}}}\n")
        })
        .collect();
    std::fs::write(tasks.join("cb.jsonl"), jsonl).unwrap();
    std::fs::write(
        tasks.join("aggregate.py"),
        "import numpy as np\n\n\ndef cb_multi_fi(items):\n    from sklearn.metrics import f1_score\n\n\
         \x20   preds, golds = zip(*items)\n    preds = np.array(preds)\n    golds = np.array(golds)\n\
         \x20   f11 = f1_score(y_true=golds == 0, y_pred=preds == 0)\n\
         \x20   f12 = f1_score(y_true=golds == 1, y_pred=preds == 1)\n\
         \x20   f13 = f1_score(y_true=golds == 2, y_pred=preds == 2)\n\
         \x20   avg_f1 = np.mean([f11, f12, f13])\n    return avg_f1\n",
    )
    .unwrap();
    std::fs::write(
        tasks.join("cb.yaml"),
        format!(
            "task: cb_hand\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {}/cb.jsonl\n\
             output_type: multiple_choice\nvalidation_split: validation\n\
             doc_to_text: \"{{{{premise}}}}\\nQuestion: {{{{hypothesis}}}}. True, False, or Neither?\\nAnswer:\"\n\
             doc_to_target: label\ndoc_to_choice: ['True', 'False', 'Neither']\n\
             metric_list:\n  - metric: acc\n  - metric: f1\n    aggregation: !function \"aggregate.cb_multi_fi\"\n\
             metadata:\n  version: 1.0\n",
            tasks.display()
        ),
    )
    .unwrap();
    let dir = tasks.to_str().unwrap();
    let py = python.to_str().unwrap();
    let listed = common::icl_eval(&[
        "tasks",
        "--tasks-dir",
        dir,
        "--allow-python",
        "--python",
        py,
    ]);
    let listing = String::from_utf8_lossy(&listed.stdout);
    let row = listing
        .lines()
        .find(|l| l.starts_with("| cb_hand "))
        .unwrap_or_default();
    assert!(
        row.contains("multiple_choice") && row.contains("| 9 |"),
        "{listing}"
    );
    let out = d.join("run");
    let o = common::icl_eval(&[
        "run",
        "--tasks-dir",
        dir,
        "--tasks",
        "cb_hand",
        "--allow-python",
        "--python",
        py,
        "--models",
        common::smollm2().to_str().unwrap(),
        "--shots",
        "0,2",
        "--output",
        out.to_str().unwrap(),
        "--no-cache",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = common::read_samples(&out);
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    for k in [0usize, 2] {
        let pairs: Vec<(usize, usize)> = samples
            .iter()
            .filter(|s| s.k == k)
            .map(|s| {
                let label = |t: &str| {
                    ["True", "False", "Neither"]
                        .iter()
                        .position(|c| *c == t)
                        .unwrap()
                };
                (label(&s.gold), label(s.prediction.as_deref().unwrap()))
            })
            .collect();
        // scikit-learn's binary F1 of one label, 0 where it is never predicted nor true.
        let f1 = |c: usize| {
            let tp = pairs.iter().filter(|(g, p)| *g == c && *p == c).count() as f64;
            let fp = pairs.iter().filter(|(g, p)| *g != c && *p == c).count() as f64;
            let fn_ = pairs.iter().filter(|(g, p)| *g == c && *p != c).count() as f64;
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            }
        };
        let expected = (f1(0) + f1(1) + f1(2)) / 3.0;
        let got: f64 = summary
            .lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f[6] == k.to_string() && f[7] == "f1")
            .unwrap_or_else(|| panic!("no f1 at K={k}: {summary}"))[8]
            .parse()
            .unwrap();
        assert!(
            (got - expected).abs() < 1e-9,
            "K={k}: {got} vs {expected} ({pairs:?})"
        );
    }
}
