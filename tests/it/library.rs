//! The shipped task library reads the Hugging Face Hub's datasets in their own schemas: against a
//! local fake Hub holding them (converted from the shared benchmark data by
//! `scripts/make-fake-hub.py`), every task but Story Cloze loads with no data folder, and each
//! task written after an lm-eval task file renders the same prompts, choices and gold answers, doc
//! by doc over both the test and the few-shot split, as lm-eval's own file read in place
//! (`tests/fixtures/lm_eval_tasks`, with `--allow-python` where lm-eval builds them in Python).

use crate::common;
use common::fake_hub::FakeHub;
use icl_eval::task::{LoadOptions, Task, discover, load_task_using};

/// The shipped task and the lm-eval file it follows; `true` where that file needs its Python.
const PAIRS: &[(&str, &str, bool)] = &[
    ("arc/arc_easy.yaml", "arc/arc_easy.yaml", false),
    ("arc/arc_challenge.yaml", "arc/arc_challenge.yaml", false),
    (
        "commonsense/hellaswag.yaml",
        "hellaswag/hellaswag.yaml",
        true,
    ),
    ("commonsense/piqa.yaml", "piqa/piqa.yaml", false),
    (
        "commonsense/openbookqa.yaml",
        "openbookqa/openbookqa.yaml",
        false,
    ),
    (
        "commonsense/winogrande.yaml",
        "winogrande/default.yaml",
        true,
    ),
    (
        "superglue/boolq.yaml",
        "super_glue/boolq/default.yaml",
        false,
    ),
    ("superglue/cb.yaml", "super_glue/cb/default.yaml", false),
    ("superglue/copa.yaml", "super_glue/copa/default.yaml", true),
    ("superglue/rte.yaml", "super_glue/rte/default.yaml", false),
    (
        "classification/sst2_glue.yaml",
        "glue/sst2/default.yaml",
        false,
    ),
    (
        "language_modeling/lambada.yaml",
        "lambada/lambada_openai.yaml",
        false,
    ),
    (
        "mmlu/astronomy.yaml",
        "mmlu/default/mmlu_astronomy.yaml",
        false,
    ),
    (
        "mmlu/professional_law.yaml",
        "mmlu/default/mmlu_professional_law.yaml",
        false,
    ),
    (
        "mmlu/high_school_us_history.yaml",
        "mmlu/default/mmlu_high_school_us_history.yaml",
        false,
    ),
];

/// Where the two tasks' docs first differ, if they do.
fn difference(ours: &Task, theirs: &Task) -> Option<String> {
    if (
        ours.output_type,
        &ours.target_delimiter,
        &ours.fewshot_delimiter,
    ) != (
        theirs.output_type,
        &theirs.target_delimiter,
        &theirs.fewshot_delimiter,
    ) {
        return Some("output type or delimiters".into());
    }
    for (split, a, b) in [
        ("test", &ours.test, &theirs.test),
        ("few-shot", &ours.fewshot, &theirs.fewshot),
    ] {
        if a.len() != b.len() {
            return Some(format!("{split} split: {} vs {} docs", a.len(), b.len()));
        }
        for (x, y) in a.iter().zip(b.iter()) {
            if (&x.text, &x.answer, &x.description) != (&y.text, &y.answer, &y.description) {
                return Some(format!(
                    "{split} doc {}:\n  ours   {:?} {:?} {:?}\n  theirs {:?} {:?} {:?}",
                    x.id, x.description, x.text, x.answer, y.description, y.text, y.answer
                ));
            }
        }
    }
    None
}

#[test]
#[ignore = "needs the shared benchmark data and the venv with `datasets` (scripts/install-llama-server.sh)"]
fn the_library_reads_the_hub_and_matches_lm_evals_own_files() {
    let hub = FakeHub::datasets();
    let hub_options = hub.options(&common::tmp("library-hub").join("cache"));
    let options = |python| LoadOptions {
        data_dir: None,
        python,
        hub: hub_options.clone(),
    };
    let tasks = common::root().join("tasks");
    let found = discover(std::slice::from_ref(&tasks)).unwrap();
    let mut failed = Vec::new();
    for t in &found {
        if t.name == "storycloze" {
            continue; // on local files by design (released on request only)
        }
        if let Err(e) = load_task_using(&t.path, &options(None)) {
            failed.push(format!("{}: {e:#}", t.path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "library tasks that do not load from the Hub alone:\n{}",
        failed.join("\n")
    );
    assert!(found.len() >= 90, "{} tasks", found.len());

    let lm_eval = common::root().join("tests/fixtures/lm_eval_tasks");
    let python = common::hooks_python();
    let mut differ = Vec::new();
    for (shipped, theirs, needs_python) in PAIRS {
        let ours = load_task_using(&tasks.join(shipped), &options(None)).unwrap();
        let python = needs_python.then_some(python.as_path());
        let theirs_task = load_task_using(&lm_eval.join(theirs), &options(python))
            .unwrap_or_else(|e| panic!("{theirs}: {e:#}"));
        assert!(
            !ours.test.is_empty() && !ours.fewshot.is_empty(),
            "{shipped}"
        );
        if let Some(d) = difference(&ours, &theirs_task) {
            differ.push(format!("{shipped} vs lm-eval's {theirs}: {d}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
