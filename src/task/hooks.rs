//! lm-eval's `!function` hooks (`process_docs`, `doc_to_text`, `doc_to_target`, `doc_to_choice`),
//! run through the user's own Python, and only when they asked for it (`--allow-python`): the
//! docs go to a small driver (`hooks.py`) as JSON and come back processed, each with the hooks'
//! answers in fields the task's templates then read (`__icl_text`, `__icl_target`,
//! `__icl_choices`). The one scoring hook run (with the same opt-in) is a Python aggregation of
//! `f1` / `mcc` over the (gold, predicted) choice pairs icl-eval scored itself (scikit-learn's
//! weighted F1 in ~900 of lm-eval's files); `process_results` and custom filters or per-doc
//! metrics are refused even with the opt-in.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

use super::problems::Ctx;

/// `python:` in a task YAML: each hook as `FILE.py:function` (the file relative to the YAML).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    pub process_docs: Option<String>,
    pub doc_to_text: Option<String>,
    pub doc_to_target: Option<String>,
    pub doc_to_choice: Option<String>,
    /// lm-eval's `fewshot_config.samples: !function …`: called without arguments, it lists the
    /// demonstration docs (then rendered like any doc).
    pub fewshot_samples: Option<String>,
    /// lm-eval's `fewshot_config.doc_to_text: !function …`: the demonstrations' input.
    pub fewshot_doc_to_text: Option<String>,
    /// lm-eval's `fewshot_config.doc_to_target: !function …`: the demonstrations' answer.
    pub fewshot_doc_to_target: Option<String>,
    /// lm-eval's `metric_list` `aggregation: !function …` of `f1` or `mcc`, by metric name: called
    /// with a cell's (gold, predicted) choice pairs, it gives the cell's score.
    pub aggregations: Option<BTreeMap<String, String>>,
}

/// The fields the driver fills, which the translated templates read.
pub const TEXT_FIELD: &str = "__icl_text";
pub const TARGET_FIELD: &str = "__icl_target";
pub const CHOICES_FIELD: &str = "__icl_choices";
pub const FEWSHOT_TEXT_FIELD: &str = "__icl_fewshot_text";
pub const FEWSHOT_TARGET_FIELD: &str = "__icl_fewshot_target";

/// The hook names lm-eval's `!function` may stand for that icl-eval can run.
pub const HOOKS: &[&str] = &[
    "process_docs",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
];

const DRIVER: &str = include_str!("hooks.py");

impl HookSpec {
    /// The hooks set, by name.
    pub fn named(&self) -> Vec<(&'static str, &str)> {
        [
            ("process_docs", &self.process_docs),
            ("doc_to_text", &self.doc_to_text),
            ("doc_to_target", &self.doc_to_target),
            ("doc_to_choice", &self.doc_to_choice),
            ("fewshot_samples", &self.fewshot_samples),
            ("fewshot_doc_to_text", &self.fewshot_doc_to_text),
            ("fewshot_doc_to_target", &self.fewshot_doc_to_target),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.as_deref().map(|v| (n, v)))
        .collect()
    }
}

/// Runs the hooks over `splits` with `python` (`None`: the user did not opt in, a problem saying
/// how to); listed few-shot samples become the split `samples_split`. Hashes each hook's source
/// file into the task hash and returns the hooks run, as the run records them; `None` after
/// recording a problem.
pub(super) fn run(
    cx: &mut Ctx,
    python: Option<&Path>,
    spec: &HookSpec,
    splits: &mut BTreeMap<String, Vec<Value>>,
    samples_split: &str,
) -> Option<Vec<String>> {
    let named = spec.named();
    if named.is_empty() {
        return Some(Vec::new());
    }
    let Some(python) = python else {
        cx.problem(format!(
            "runs Python (`{}`); pass --allow-python to run it with your own Python and lm-eval's \
             hooks, or rewrite it as templates and `process_docs` steps",
            named
                .iter()
                .map(|(n, v)| format!("{n}: {v}"))
                .collect::<Vec<_>>()
                .join("`, `")
        ));
        return None;
    };
    let mut hooks = serde_json::Map::new();
    let mut ran = Vec::new();
    for (name, v) in named {
        let (path, function) = hook_file(cx, &format!("python.{name}"), v)?;
        hooks.insert(
            name.into(),
            Value::String(format!("{}:{function}", path.display())),
        );
        ran.push(format!("{name}: {}:{function}", path.display()));
    }
    let request = serde_json::json!({
        "hooks": hooks,
        "splits": &*splits,
        "samples_split": samples_split,
    });
    match drive(python, &request) {
        Ok(out) => {
            *splits = out;
            Some(ran)
        }
        Err(e) => {
            cx.problem(format!("Python hooks ({}): {e}", ran.join(", ")));
            None
        }
    }
}

/// The aggregation hooks of `spec`, each checked to name one of `metrics` (`f1` or `mcc`), its
/// file hashed into the task: metric name → `ABSOLUTE_FILE.py:function`. Needs the opt-in, as every
/// hook does; `None` after recording a problem.
pub(super) fn aggregations(
    cx: &mut Ctx,
    python: Option<&Path>,
    spec: &HookSpec,
    metrics: &[super::Metric],
) -> Option<BTreeMap<String, String>> {
    let Some(aggs) = &spec.aggregations else {
        return Some(BTreeMap::new());
    };
    if python.is_none() {
        cx.problem(format!(
            "runs Python to aggregate its scores (`{}`); pass --allow-python to run it with your \
             own Python",
            aggs.iter()
                .map(|(m, h)| format!("{m}: {h}"))
                .collect::<Vec<_>>()
                .join("`, `")
        ));
        return None;
    }
    let mut out = BTreeMap::new();
    for (metric, hook) in aggs {
        let known = metrics
            .iter()
            .any(|m| m.name() == metric && matches!(m, super::Metric::F1 | super::Metric::Mcc));
        if !known {
            cx.problem(format!(
                "field `python.aggregations.{metric}`: only the task's own `f1` or `mcc` of \
                 choices can have a Python aggregation"
            ));
            return None;
        }
        let (path, function) = hook_file(cx, &format!("python.aggregations.{metric}"), hook)?;
        out.insert(metric.clone(), format!("{}:{function}", path.display()));
    }
    Some(out)
}

/// Scores cells with their Python aggregations: each `(FILE.py:function, pairs)` is called with
/// its (gold, predicted) choice pairs, as lm-eval calls an aggregation with its items; one Python
/// process for all of them.
pub fn aggregate(
    python: &Path,
    cells: &[(String, Vec<(usize, usize)>)],
) -> Result<Vec<f64>, String> {
    let request = serde_json::json!({
        "aggregate": cells
            .iter()
            .map(|(hook, items)| serde_json::json!({"hook": hook, "items": items}))
            .collect::<Vec<_>>(),
    });
    let out: Value = drive_raw(python, &request)?;
    let values: Vec<Option<f64>> =
        serde_json::from_value(out).map_err(|e| format!("unreadable answer from Python: {e}"))?;
    if values.len() != cells.len() {
        return Err(format!(
            "Python answered {} aggregations for {} cells",
            values.len(),
            cells.len()
        ));
    }
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// The file and function of a hook written `FILE.py:function` (the file relative to the task),
/// its source hashed into the task; `None` after recording a problem naming `field`.
fn hook_file<'h>(cx: &mut Ctx, field: &str, hook: &'h str) -> Option<(PathBuf, &'h str)> {
    let Some((file, function)) = hook.rsplit_once(':') else {
        cx.problem(format!(
            "field `{field}`: `{hook}` should be FILE.py:function"
        ));
        return None;
    };
    let path = resolve(&cx.base, file);
    match std::fs::read(&path) {
        Ok(bytes) => {
            use sha2::Digest;
            cx.hasher.update(&bytes);
            Some((path, function))
        }
        Err(e) => {
            cx.problem(format!(
                "field `{field}`: cannot read {}: {e}",
                path.display()
            ));
            None
        }
    }
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Sends the request to the driver and reads the processed splits back.
fn drive(python: &Path, request: &Value) -> Result<BTreeMap<String, Vec<Value>>, String> {
    let out = drive_raw(python, request)?;
    serde_json::from_value(out).map_err(|e| format!("unreadable answer from Python: {e}"))
}

/// Sends the request to the driver and reads its JSON answer.
fn drive_raw(python: &Path, request: &Value) -> Result<Value, String> {
    let mut child = Command::new(python)
        .args(["-c", DRIVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {}: {e}; install Python 3 or name it with --python",
                python.display()
            )
        })?;
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().ok_or("no stdin to the driver")?;
    // Written from a thread: a large request would otherwise fill the pipe while the driver
    // fills its own output pipe, and both would wait.
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    writer
        .join()
        .map_err(|_| "the writer thread panicked".to_string())?
        .map_err(|e| format!("writing the docs to Python: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!("{} failed: {last}", python.display()));
    }
    // What the driver says beside its answer (a cell an aggregation failed on).
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if !line.trim().is_empty() {
            eprintln!("note: Python: {line}");
        }
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable answer from Python: {e}"))
}
