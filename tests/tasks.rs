//! The shipped task library: every task in `tasks/` loads from the shared data, renders 0-, 1- and
//! 5-shot prompts for 3 docs and is scored with SmolLM2 through the real binary; gold answers of a
//! few docs are checked against the data files by hand.

mod common;

use std::collections::BTreeMap;

use icl_eval::task::load::discover;

#[test]
#[ignore = "needs the shared benchmark data and the bundled SmolLM2 (scripts/fetch-models.sh)"]
fn every_task_loads_renders_and_scores_with_smollm2() {
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
    let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
    assert!(names.len() >= 90, "{} tasks", names.len());
    let d = common::tmp("tasks");
    let model = common::smollm2();
    let o = common::icl_eval(&[
        "run",
        "--tasks",
        &names.join(","),
        "--models",
        model.to_str().unwrap(),
        "--shots",
        "0,1,5",
        "--limit",
        "3",
        "--data-dir",
        common::data_dir().to_str().unwrap(),
        "--output",
        d.join("run").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = common::read_samples(&d.join("run"));
    assert_eq!(samples.len(), names.len() * 3 * 3);
    for s in &samples {
        assert!(
            s.skipped.is_none() && s.k_effective == Some(s.k) && s.prediction.is_some(),
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
