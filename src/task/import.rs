//! `icl-eval tasks import`: an lm-evaluation-harness task YAML (with its `include:` bases) → the
//! equivalent icl-eval task YAML, or the list of keys that cannot be translated and why.
//!
//! A key that changes prompts or scores and has no equivalent (Python `!function` hooks, sampling,
//! answer-extraction filters, metrics icl-eval lacks) fails the import; keys without effect on
//! scores (`metadata`, decontamination) are dropped with a note.

use std::path::Path;

use serde_yaml::{Mapping, Value};

use super::include;

/// A translated task: its name, the YAML to write, and what a reader should know about it.
#[derive(Debug, Clone)]
pub struct Imported {
    pub task: String,
    pub yaml: String,
    pub notes: Vec<String>,
}

/// Translates the lm-eval task YAML at `path`. `Err` lists every key that could not be translated.
pub fn import_lm_eval(path: &Path) -> Result<Imported, Vec<String>> {
    import_lm_eval_with(path, false)
}

/// [`import_lm_eval`]; with `allow_python`, `!function` hooks that build docs, text, target or
/// choices become `python:` hooks (run by `--allow-python`) instead of refusals.
pub fn import_lm_eval_with(path: &Path, allow_python: bool) -> Result<Imported, Vec<String>> {
    import_lm_eval_ref(&include::TaskRef::file(path), allow_python)
}

/// [`import_lm_eval_with`] for a task file or a task a group file defines or sets keys of.
pub fn import_lm_eval_ref(
    r: &include::TaskRef,
    allow_python: bool,
) -> Result<Imported, Vec<String>> {
    let (merged, _, yaml_notes) = include::read_ref_noting(r).map_err(|e| vec![e])?;
    translate(r, merged, yaml_notes, allow_python)
}

/// [`import_lm_eval_ref`] of keys already read (`merged`, its includes merged in, with the notes
/// of reading them), so a loader that read them need not read them again.
pub fn translate(
    r: &include::TaskRef,
    merged: Value,
    yaml_notes: Vec<String>,
    allow_python: bool,
) -> Result<Imported, Vec<String>> {
    if merged.get("task").is_some_and(Value::is_sequence) {
        return import_group(&r.path, &merged, allow_python);
    }
    import_merged(r, merged, yaml_notes, allow_python)
}

/// The translation of one task's merged keys.
fn import_merged(
    r: &include::TaskRef,
    merged: Value,
    yaml_notes: Vec<String>,
    allow_python: bool,
) -> Result<Imported, Vec<String>> {
    let path = r.path.as_path();
    let Some(map) = merged.as_mapping() else {
        return Err(vec![format!(
            "{}: not an lm-eval task (a mapping of keys)",
            r.shown()
        )]);
    };
    let mut t = Translation::default();
    t.notes.extend(yaml_notes);
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default().to_string();
        // `fewshot_config`'s `samples`, `doc_to_text` and `doc_to_target` may be Python too.
        if key == "fewshot_config" && allow_python && function_tag(v).is_some() {
            let mut rest = v.clone();
            for (sub, hook) in [
                ("samples", "fewshot_samples"),
                ("doc_to_text", "fewshot_doc_to_text"),
                ("doc_to_target", "fewshot_doc_to_target"),
            ] {
                if let Some(Value::Tagged(f)) = v.get(sub) {
                    t.hook(hook, f, path);
                    rest = strip(&rest, sub);
                }
            }
            if function_tag(&rest).is_none() {
                t.fewshot_config(&rest);
                continue;
            }
        }
        // A Python aggregation of lm-eval's `f1` or `mcc` (scikit-learn's weighted F1, …) runs
        // over the (gold, prediction) pairs icl-eval records, when the user opts in.
        if key == "metric_list" && function_tag(v).is_some() {
            // A stock helper icl-eval computes itself needs no Python at all.
            let rest = t.stock_aggregations(v, path);
            let rest = if allow_python {
                t.aggregation_hooks(&rest, path)
            } else {
                rest
            };
            if function_tag(&rest).is_none() {
                t.key(&key, &rest);
                continue;
            }
        }
        if let Some(tag) = function_tag(v) {
            let hook = super::hooks::HOOKS.contains(&key.as_str());
            match (hook, allow_python, v) {
                (true, true, Value::Tagged(f)) => t.hook(&key, f, path),
                (true, false, _) => t.problem(
                    &key,
                    format!(
                        "is `{tag}`, Python code; run it with --allow-python (your own Python \
                         runs lm-eval's hook), or write it as a Jinja template or `process_docs` \
                         steps (rename, map, extract, split)"
                    ),
                ),
                _ => t.problem(
                    &key,
                    format!(
                        "is `{tag}`, Python code that icl-eval does not run even with \
                         --allow-python: hooks may build docs, text, target and choices \
                         ({}); scores are icl-eval's own",
                        super::hooks::HOOKS.join(", ")
                    ),
                ),
            }
            continue;
        }
        t.key(&key, v);
    }
    t.finish(&r.shown())
}

/// A group file: icl-eval reads lm-eval's group vocabulary as it is, so the import checks it and
/// writes it back with its includes merged; the tasks it defines inside (lm-eval's inline
/// members) are checked as tasks and written with their own includes merged, so the copy stands
/// alone.
fn import_group(path: &Path, merged: &Value, allow_python: bool) -> Result<Imported, Vec<String>> {
    let groups = super::discover::read_groups(path, merged).map_err(|e| vec![e])?;
    let name = groups.last().map(|(n, _)| n.clone()).unwrap_or_default();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let whole = inline_tasks(path, merged, allow_python, &mut problems, &mut notes);
    if !problems.is_empty() {
        return Err(problems);
    }
    let body = serde_yaml::to_string(&whole).map_err(|e| vec![e.to_string()])?;
    Ok(Imported {
        task: name,
        yaml: format!(
            "# Imported from the lm-evaluation-harness group {} by `icl-eval tasks import`.\n{body}",
            path.display()
        ),
        notes,
    })
}

/// Keys a member defining a task inside the group has (its data, or a base it includes); other
/// members set keys of a task defined elsewhere, which the import cannot see, so they are kept
/// as written.
const DEFINING_KEYS: &[&str] = &["dataset_path", "include"];

/// The group `v` with each task defined inside it (here or in a nested group) merged with its
/// includes and checked by the translation.
fn inline_tasks(
    path: &Path,
    v: &Value,
    allow_python: bool,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Value {
    let mut v = v.clone();
    let group = v
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(list) = v.get_mut("task").and_then(Value::as_sequence_mut) else {
        return v;
    };
    for m in list.iter_mut().filter(|m| m.is_mapping()) {
        if m.get("group").is_some() {
            *m = inline_tasks(path, m, allow_python, problems, notes);
            continue;
        }
        let Some(name) = m.get("task").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        if !DEFINING_KEYS.iter().any(|k| m.get(*k).is_some()) {
            continue;
        }
        let r = include::TaskRef {
            name: name.clone(),
            path: path.to_path_buf(),
            yaml: Some((m.clone(), format!("`{group}`"))),
        };
        let (full, _, yaml_notes) = match include::read_ref_noting(&r) {
            Ok(read) => read,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        match import_merged(&r, full.clone(), yaml_notes, allow_python) {
            Ok(imported) => notes.extend(
                imported
                    .notes
                    .into_iter()
                    .map(|n| format!("task `{name}` (inside group `{group}`): {n}")),
            ),
            Err(p) => problems.extend(p),
        }
        *m = full;
    }
    v
}

/// A mapping without one key.
fn strip(v: &Value, key: &str) -> Value {
    let mut m = v.as_mapping().cloned().unwrap_or_default();
    m.remove(key);
    Value::Mapping(m)
}

/// `!function MODULE.function`'s file and function: lm-eval finds `MODULE.py` beside the YAML
/// that names it.
fn module_file<'f>(
    f: &'f serde_yaml::value::TaggedValue,
    path: &Path,
) -> Option<(std::path::PathBuf, &'f str)> {
    let (module, function) = f.value.as_str()?.rsplit_once('.')?;
    // A path (a group's keys name modules beside the group file, see `discover`) is taken as it
    // is; a dotted module name lies beside the YAML.
    if module.contains('/') {
        return Some((std::path::PathBuf::from(format!("{module}.py")), function));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    Some((
        dir.join(format!("{}.py", module.replace('.', "/"))),
        function,
    ))
}

/// The `!function …` tag inside a value, if any.
fn function_tag(v: &Value) -> Option<String> {
    match v {
        Value::Tagged(t) => Some(format!(
            "{} {}",
            t.tag,
            scalar(&t.value).unwrap_or_default()
        )),
        Value::Sequence(s) => s.iter().find_map(function_tag),
        Value::Mapping(m) => m.values().find_map(function_tag),
        _ => None,
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// lm-eval takes a bare feature name (`label`) as that field of the doc; icl-eval takes templates.
fn field_or_template(v: &Value) -> Option<(String, bool)> {
    let s = scalar(v)?;
    let is_field = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    Some(if is_field {
        (format!("{{{{ {s} }}}}"), true)
    } else {
        (s, false)
    })
}

#[derive(Default)]
struct Translation {
    task: Option<String>,
    tags: Vec<String>,
    description: Option<String>,
    dataset_path: Option<String>,
    /// `dataset_kwargs.revision`: the commit or branch a Hub repository's own files are read at.
    revision: Option<String>,
    dataset_name: Option<String>,
    data_files: Option<Value>,
    splits: [Option<String>; 4],
    doc_to_text: Option<String>,
    doc_to_target: Option<String>,
    doc_to_choice: Option<Value>,
    target_delimiter: Option<String>,
    fewshot_delimiter: Option<String>,
    output_type: Option<String>,
    until: Option<Value>,
    max_tokens: Option<u64>,
    /// `generation_kwargs.max_new_tokens`, used when `max_gen_toks` is absent.
    max_new_tokens: Option<u64>,
    do_sample: Option<bool>,
    /// `temperature` and `top_p` as written.
    sampling: Mapping,
    /// lm-eval's `repeats`.
    repeats: Option<u64>,
    /// `num_fewshot`: the task's own K, which `--shots task` runs.
    num_fewshot: Option<u64>,
    /// A Hugging Face evaluate mean became `exact_match`, which must then compare exactly.
    hf_equality: bool,
    /// `dataset_kwargs.column_names` (csv without a header row) and `header: null`.
    columns: Option<Value>,
    headerless: bool,
    /// `metadata.version`.
    version: Option<Value>,
    /// `gen_prefix`, as a template.
    gen_prefix: Option<String>,
    /// `!function` hooks run with `--allow-python`: name → `FILE.py:function`.
    hooks: Mapping,
    metrics: Vec<String>,
    /// lm-eval's `filter_list`, checked, written as it is.
    filter_list: Option<Value>,
    /// `exact_match`'s options from `metric_list`.
    exact_match: Mapping,
    sampler: Option<&'static str>,
    /// `fewshot_config.samples`: demonstration docs written in the file.
    samples: Option<Value>,
    /// `fewshot_config.doc_to_text` / `doc_to_target`: the demonstrations' own templates.
    fewshot_text: Option<String>,
    fewshot_target: Option<String>,
    problems: Vec<String>,
    notes: Vec<String>,
}

const TRAIN: usize = 0;
const VALIDATION: usize = 1;
const TEST: usize = 2;
const FEWSHOT: usize = 3;

impl Translation {
    fn problem(&mut self, key: &str, why: impl std::fmt::Display) {
        self.problems.push(format!("key `{key}` {why}"));
    }

    /// `!function MODULE.function` as `FILE.py:function` (see [`module_file`]).
    fn hook_file(
        &mut self,
        key: &str,
        f: &serde_yaml::value::TaggedValue,
        path: &Path,
    ) -> Option<String> {
        let Some((file, function)) = module_file(f, path) else {
            self.problem(key, "should be `!function MODULE.function`");
            return None;
        };
        let file = std::fs::canonicalize(&file).unwrap_or(file);
        Some(format!("{}:{function}", file.display()))
    }

    /// `metric_list` with each entry aggregated by a recognized lm-eval helper (`stock.rs`) turned
    /// into the icl-eval metric computing the same.
    fn stock_aggregations(&mut self, v: &Value, path: &Path) -> Value {
        let Some(list) = v.as_sequence() else {
            return v.clone();
        };
        let mut out = Vec::new();
        for entry in list {
            let name = entry.get("metric").and_then(scalar).unwrap_or_default();
            if let Some(Value::Tagged(f)) = entry.get("aggregation")
                && let Some((file, function)) = module_file(f, path)
                && let Some(metric) = super::stock::metric_of(&file, function)
                && name == "f1"
            {
                self.notes.push(format!(
                    "`{name}` aggregated by {} (recognized: scikit-learn's weighted F1) is \
                     icl-eval's `{metric}`; no Python runs",
                    f.value.as_str().unwrap_or_default()
                ));
                let mut e = strip(entry, "aggregation");
                if let Value::Mapping(m) = &mut e {
                    m.insert("metric".into(), metric.into());
                }
                out.push(e);
                continue;
            }
            out.push(entry.clone());
        }
        Value::Sequence(out)
    }

    /// `metric_list` with each `f1` / `mcc` entry's `aggregation: !function …` taken out into the
    /// `python.aggregations` hooks; whatever Python is left stays for the caller to refuse.
    fn aggregation_hooks(&mut self, v: &Value, path: &Path) -> Value {
        let Some(list) = v.as_sequence() else {
            return v.clone();
        };
        let mut out = Vec::new();
        for entry in list {
            let name = entry.get("metric").and_then(scalar).unwrap_or_default();
            if let (true, Some(Value::Tagged(f))) =
                (name == "f1" || name == "mcc", entry.get("aggregation"))
                && let Some(hook) = self.hook_file("metric_list", f, path)
            {
                let aggs = self
                    .hooks
                    .entry("aggregations".into())
                    .or_insert_with(|| Value::Mapping(Mapping::new()));
                if let Value::Mapping(m) = aggs {
                    m.insert(name.clone().into(), hook.into());
                }
                out.push(strip(entry, "aggregation"));
                continue;
            }
            out.push(entry.clone());
        }
        Value::Sequence(out)
    }

    /// A `!function MODULE.function` hook; the template then reads the field the driver fills.
    fn hook(&mut self, key: &str, f: &serde_yaml::value::TaggedValue, path: &Path) {
        let Some(hook) = self.hook_file(key, f, path) else {
            return;
        };
        self.hooks.insert(key.into(), hook.into());
        let field = |f: &str| format!("{{{{ {f} }}}}");
        match key {
            "fewshot_doc_to_text" => {
                self.fewshot_text = Some(field(super::hooks::FEWSHOT_TEXT_FIELD))
            }
            "fewshot_doc_to_target" => {
                self.fewshot_target = Some(field(super::hooks::FEWSHOT_TARGET_FIELD))
            }
            "doc_to_text" => self.doc_to_text = Some(field(super::hooks::TEXT_FIELD)),
            "doc_to_target" => self.doc_to_target = Some(field(super::hooks::TARGET_FIELD)),
            "doc_to_choice" => {
                self.doc_to_choice = Some(Value::String(field(super::hooks::CHOICES_FIELD)))
            }
            _ => {}
        }
    }

    fn string(&mut self, key: &str, v: &Value) -> Option<String> {
        let s = scalar(v);
        if s.is_none() {
            self.problem(key, "should be a string");
        }
        s
    }

    fn key(&mut self, key: &str, v: &Value) {
        match key {
            "task" => match v {
                Value::String(s) => self.task = Some(s.clone()),
                _ => self.problem(key, "is a list: that is an lm-eval group; import its tasks one by one"),
            },
            "tag" | "group" => {
                let names: Vec<String> = match v {
                    Value::Sequence(s) => s.iter().filter_map(scalar).collect(),
                    other => scalar(other).into_iter().collect(),
                };
                if key == "group" {
                    self.notes.push(format!(
                        "`group: {}` (lm-eval's old spelling of a tag) became `tag:`",
                        names.join(", ")
                    ));
                }
                self.tags.extend(names);
            }
            "task_alias" => self.notes.push("`task_alias` dropped: results use the task name".into()),
            "dataset_path" => self.dataset_path = self.string(key, v),
            "dataset_name" => self.dataset_name = scalar(v),
            "dataset_kwargs" => self.dataset_kwargs(v),
            "training_split" => self.splits[TRAIN] = scalar(v),
            "validation_split" => self.splits[VALIDATION] = scalar(v),
            "test_split" => self.splits[TEST] = scalar(v),
            "fewshot_split" => self.splits[FEWSHOT] = scalar(v),
            "doc_to_text" | "doc_to_target" => {
                let Some((template, was_field)) = field_or_template(v) else {
                    self.problem(key, "should be a template, a field name or an index");
                    return;
                };
                if was_field {
                    self.notes.push(format!(
                        "`{key}: {}` is read as the doc's field `{}` (lm-eval's feature name), \
                         written `{template}`",
                        scalar(v).unwrap_or_default(),
                        scalar(v).unwrap_or_default()
                    ));
                }
                if key == "doc_to_text" {
                    self.doc_to_text = Some(template);
                } else {
                    self.doc_to_target = Some(template);
                }
            }
            "doc_to_choice" => match v {
                Value::Sequence(s) if s.iter().all(|x| scalar(x).is_some()) => {
                    self.doc_to_choice = Some(Value::Sequence(
                        s.iter().filter_map(scalar).map(Value::String).collect(),
                    ));
                }
                Value::Mapping(_) | Value::Sequence(_) => {
                    self.problem(key, "should be a list of strings, a field name or a template")
                }
                other => {
                    let (t, was_field) = field_or_template(other).unwrap_or_default();
                    if was_field {
                        self.notes.push(format!(
                            "`doc_to_choice: {}` is read as the doc's list field, written `{t}`",
                            scalar(other).unwrap_or_default()
                        ));
                    }
                    self.doc_to_choice = Some(Value::String(t));
                }
            },
            "description" => self.description = self.string(key, v),
            // A template (lm-eval would read a bare feature name as that field; its files write
            // templates or sentences).
            "gen_prefix" => self.gen_prefix = self.string(key, v),
            "target_delimiter" => self.target_delimiter = self.string(key, v),
            "fewshot_delimiter" => self.fewshot_delimiter = self.string(key, v),
            "output_type" => match v.as_str() {
                Some(
                    o @ ("multiple_choice" | "generate_until" | "loglikelihood"
                    | "loglikelihood_rolling"),
                ) => {
                    self.output_type = Some(o.into())
                }
                Some(o) => self.problem(
                    key,
                    format!("`{o}` has no icl-eval equivalent (multiple_choice, generate_until, loglikelihood, loglikelihood_rolling)"),
                ),
                None => self.problem(key, "should be a string"),
            },
            "generation_kwargs" => self.generation(v),
            "metric_list" => self.metric_list(v),
            "num_fewshot" => match v {
                Value::Null => {}
                _ => match v.as_u64() {
                    Some(n) => self.num_fewshot = Some(n),
                    None => self.problem(key, "should be a whole number of demonstrations"),
                },
            },
            "fewshot_config" => self.fewshot_config(v),
            "repeats" => match v.as_u64() {
                Some(n) if n >= 1 => self.repeats = Some(n),
                _ => self.problem(key, "should be a whole number ≥ 1"),
            },
            "metadata" => {
                if let Some(v) = v.get("version").filter(|v| scalar(v).is_some()) {
                    self.version = Some(v.clone());
                }
            }
            "should_decontaminate" | "doc_to_decontamination_query" => {
                self.notes.push(format!("`{key}` dropped: it does not change prompts or scores"))
            }
            "filter_list" => self.filter_list(v),
            "process_docs" | "process_results" => self.problem(key, "is Python code"),
            "use_prompt" => self.problem(key, "names a promptsource prompt; write its template out"),
            other => self.problem(other, "is not an lm-eval task key icl-eval knows how to translate"),
        }
    }

    /// `dataset_kwargs`: local `data_files`; `trust_remote_code` has nothing to trust here, since
    /// icl-eval reads the Hub's parquet conversion and runs no dataset script.
    fn dataset_kwargs(&mut self, v: &Value) {
        if v.is_null() {
            return;
        }
        let Some(m) = v.as_mapping() else {
            return self.problem("dataset_kwargs", "should be a mapping");
        };
        for (k, val) in m {
            match k.as_str().unwrap_or_default() {
                "data_files" => self.data_files = Some(val.clone()),
                // csv without a header row: the names of its columns.
                "column_names" => match val.as_sequence() {
                    Some(s) if s.iter().all(Value::is_string) => self.columns = Some(val.clone()),
                    _ => self.problem("dataset_kwargs.column_names", "should be a list of names"),
                },
                "header" if val.is_null() => self.headerless = true,
                "revision" => self.revision = self.string("dataset_kwargs.revision", val),
                "streaming" => self.notes.push(
                    "`dataset_kwargs.streaming` dropped: how `datasets` reads the data, not which"
                        .into(),
                ),
                "trust_remote_code" => self.notes.push(
                    "`dataset_kwargs.trust_remote_code` dropped: icl-eval reads the Hub's parquet \
                     conversion and runs no dataset script"
                        .into(),
                ),
                other => self.problem(
                    &format!("dataset_kwargs.{other}"),
                    "is not read by icl-eval (it reads `data_files`, or the Hub's parquet conversion)",
                ),
            }
        }
    }

    /// `filter_list`: lm-eval's pipelines run as they are (`task::filter`); each is checked here
    /// so a refusal names the step.
    fn filter_list(&mut self, v: &Value) {
        let specs: Vec<super::filter::PipelineSpec> = match serde_yaml::from_value(v.clone()) {
            Ok(s) => s,
            Err(e) => return self.problem("filter_list", format!("cannot be read: {e}")),
        };
        for s in &specs {
            if let Err(e) = s.compile() {
                self.problem("filter_list", e);
            }
        }
        self.filter_list = Some(v.clone());
    }

    fn generation(&mut self, v: &Value) {
        let Some(m) = v.as_mapping() else {
            return self.problem("generation_kwargs", "should be a mapping");
        };
        for (k, val) in m {
            match k.as_str().unwrap_or_default() {
                "until" => {
                    self.until = Some(match val {
                        Value::String(s) => Value::Sequence(vec![Value::String(s.clone())]),
                        other => other.clone(),
                    })
                }
                "max_gen_toks" => self.max_tokens = val.as_u64(),
                // Handed to Hugging Face's `generate`, where it bounds the generation as
                // `max_gen_toks` would; `max_gen_toks` wins when both are given.
                "max_new_tokens" if val.as_u64().is_some() => {
                    self.max_new_tokens = val.as_u64();
                }
                "do_sample" if val.as_bool().is_some() => self.do_sample = val.as_bool(),
                "temperature" | "top_p" if val.as_f64().is_some() => {
                    self.sampling.insert(k.clone(), val.clone());
                }
                // One beam is greedy (or plain sampling): what icl-eval decodes anyway.
                "num_beams" if val.as_u64() == Some(1) => {}
                other => self.problem(
                    &format!("generation_kwargs.{other}"),
                    "is not translated: icl-eval decodes greedily with no other settings",
                ),
            }
        }
    }

    fn metric_list(&mut self, v: &Value) {
        let Some(list) = v.as_sequence() else {
            return self.problem("metric_list", "should be a list");
        };
        for entry in list {
            let name = entry.get("metric").and_then(scalar).unwrap_or_default();
            if entry.get("hf_evaluate").and_then(Value::as_bool) == Some(true)
                && entry.get("aggregation").and_then(Value::as_str) == Some("mean")
            {
                self.hf_evaluate_mean(entry, &name);
                continue;
            }
            // lm-eval's metrics that icl-eval computes: the metric table's entries lm-eval has.
            let Some(spec) = super::Metric::from_name(&name)
                .map(super::Metric::spec)
                .filter(|s| s.lm_eval.is_some())
            else {
                let known: Vec<&str> = crate::metric::SPECS
                    .iter()
                    .filter(|s| s.lm_eval.is_some())
                    .map(|s| s.name)
                    .collect();
                self.problem(
                    "metric_list",
                    format!(
                        "has metric `{name}`, which icl-eval does not compute ({})",
                        known.join(", ")
                    ),
                );
                continue;
            };
            for (k, val) in entry.as_mapping().into_iter().flatten() {
                match (k.as_str().unwrap_or_default(), val) {
                    ("metric", _) => {}
                    // An aggregation that computes what icl-eval does: a mean of per-doc values
                    // (not of a corpus metric's per-doc items), icl-eval's exp(−mean) perplexity,
                    // or lm-eval's corpus aggregations (the metric table's `lm_eval`).
                    ("aggregation", Value::String(a))
                        if spec.lm_eval.is_some_and(|aggs| aggs.contains(&a.as_str())) => {}
                    // icl-eval knows each metric's direction; the flag changes nothing scored.
                    ("higher_is_better", Value::Bool(_)) => {}
                    // lm-eval reads `weight_by_size` only in a group's aggregate_metric_list.
                    ("weight_by_size", Value::Bool(_)) => {}
                    (opt @ ("ignore_case" | "ignore_punctuation"), Value::Bool(_))
                        if name == "exact_match" =>
                    {
                        self.exact_match.insert(opt.into(), val.clone());
                    }
                    ("regexes_to_ignore", Value::Sequence(rs))
                        if name == "exact_match" && rs.iter().all(|r| r.is_string()) =>
                    {
                        self.exact_match
                            .insert("regexes_to_ignore".into(), val.clone());
                    }
                    // lm-eval scores choices and log-likelihoods itself (`acc`, `f1`, …): the
                    // options of these metrics reach no function. Their aggregation does.
                    (opt, _) if name != "exact_match" && opt != "aggregation" => {
                        self.notes.push(format!(
                            "`metric_list.{name}.{opt}` dropped: lm-eval's {name} takes no options"
                        ))
                    }
                    (opt, _) => self.problem(
                        &format!("metric_list.{name}.{opt}"),
                        "is not translated: icl-eval's metric has no such option",
                    ),
                }
            }
            if name == "exact_match" {
                self.notes.push(
                    "exact_match: icl-eval compares after trimming surrounding whitespace; lm-eval \
                     compares the strings as they are"
                        .into(),
                );
            }
            self.add_metric(name);
        }
    }

    /// Reports `name`, once however often the file lists it.
    fn add_metric(&mut self, name: String) {
        if !self.metrics.contains(&name) {
            self.metrics.push(name);
        }
    }

    /// A Hugging Face `evaluate` metric lm-eval runs on each doc's one (gold, prediction) pair,
    /// averaged (`hf_evaluate: true`, `aggregation: mean`): `accuracy`, and `f1` averaged over
    /// the labels present (`micro`, `macro`, `weighted`), are 1 where the two are equal and 0
    /// elsewhere, so the mean is the generation's exact_match (lm-eval casts the gold to the
    /// prediction's type; both are compared here as the text the filters give).
    fn hf_evaluate_mean(&mut self, entry: &Value, name: &str) {
        let average = entry.get("average").and_then(Value::as_str);
        let per_doc_equality = match name {
            "accuracy" => average.is_none(),
            "f1" => matches!(average, Some("micro" | "macro" | "weighted")),
            _ => false,
        };
        if !per_doc_equality {
            return self.problem(
                &format!("metric_list.{name}"),
                format!(
                    "is Hugging Face evaluate's `{name}`{} averaged over docs, which icl-eval does \
                     not compute (it reads `accuracy`, and `f1` with average micro, macro or \
                     weighted: per doc, whether the prediction equals the gold)",
                    average
                        .map(|a| format!(" (average {a})"))
                        .unwrap_or_default()
                ),
            );
        }
        for k in entry
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str())
        {
            if !matches!(
                k,
                "metric" | "aggregation" | "hf_evaluate" | "average" | "higher_is_better"
            ) {
                self.problem(
                    &format!("metric_list.{name}.{k}"),
                    "is not translated: Hugging Face evaluate's metric is read without options",
                );
            }
        }
        self.notes.push(format!(
            "Hugging Face evaluate's `{name}` on each doc's (gold, prediction) pair, averaged, is \
             1 where they are equal: scored as exact_match"
        ));
        self.add_metric("exact_match".into());
        self.hf_equality = true;
    }

    fn fewshot_config(&mut self, v: &Value) {
        for (k, val) in v.as_mapping().into_iter().flatten() {
            match (k.as_str().unwrap_or_default(), val.as_str()) {
                ("samples", _)
                    if val
                        .as_sequence()
                        .is_some_and(|s| s.iter().all(Value::is_mapping)) =>
                {
                    self.samples = Some(val.clone())
                }
                ("sampler", Some("first_n")) => self.sampler = Some("first_n"),
                ("doc_to_text", Some(_)) => {
                    self.fewshot_text = field_or_template(val).map(|(t, _)| t)
                }
                ("doc_to_target", Some(_)) => {
                    self.fewshot_target = field_or_template(val).map(|(t, _)| t)
                }
                ("sampler", Some("default")) => {
                    self.sampler = Some("random");
                    self.notes.push(
                        "fewshot_config.sampler `default` became `random`: a seeded draw per doc, \
                         not lm-eval's draw, so the demonstrations differ"
                            .into(),
                    );
                }
                (other, _) => self.problem(
                    &format!("fewshot_config.{other}"),
                    "is not translated (icl-eval draws demonstrations from `fewshot_split`)",
                ),
            }
        }
    }

    fn finish(mut self, shown: &str) -> Result<Imported, Vec<String>> {
        self.check_keys();
        let Some((test, fewshot, dataset)) = self.test_and_fewshot() else {
            return Err(self.located(shown));
        };
        if !self.problems.is_empty() {
            return Err(self.located(shown));
        }
        let task = self.task.clone().unwrap_or_default();
        let mut out = Mapping::new();
        let mut put = |k: &str, v: Value| {
            out.insert(Value::String(k.into()), v);
        };
        put("task", Value::String(task.clone()));
        if !self.tags.is_empty() {
            put(
                "tag",
                Value::Sequence(self.tags.iter().cloned().map(Value::String).collect()),
            );
        }
        if let Some(d) = self.description.take() {
            put("description", Value::String(d));
        }
        if let Some(g) = self.gen_prefix.take() {
            put("gen_prefix", Value::String(g));
        }
        put("dataset", dataset);
        if !self.hooks.is_empty() {
            put("python", Value::Mapping(std::mem::take(&mut self.hooks)));
        }
        put("test_split", Value::String(test.clone()));
        // Inline samples are the demonstrations; lm-eval then reads no few-shot split.
        if self.samples.is_none() && !self.hooks.contains_key("fewshot_samples") {
            put("fewshot_split", Value::String(fewshot));
        }
        for (k, v) in [
            ("doc_to_text", self.doc_to_text.take()),
            ("doc_to_target", self.doc_to_target.take()),
        ] {
            put(k, Value::String(v.unwrap_or_default()));
        }
        if let Some(c) = self.doc_to_choice.take() {
            put("doc_to_choice", c);
        }
        let output_type = self.output_type.clone().unwrap_or_default();
        // lm-eval scores a loglikelihood target as it is (the template carries its own space);
        // icl-eval puts the target delimiter before every continuation.
        if output_type == "loglikelihood" {
            self.notes.push(
                "loglikelihood: `target_delimiter` is \"\", as lm-eval scores the target \
                 without one (demonstrations then show input and target with nothing between)"
                    .into(),
            );
            self.target_delimiter = Some(String::new());
        }
        // lm-eval's default target delimiter is the same " "; its few-shot delimiter is "\n\n" too.
        for (k, v) in [
            ("target_delimiter", self.target_delimiter.take()),
            ("fewshot_delimiter", self.fewshot_delimiter.take()),
        ] {
            if let Some(v) = v {
                put(k, Value::String(v));
            }
        }
        put("output_type", Value::String(output_type.clone()));
        if output_type == "generate_until" {
            put("generation", self.generation_block());
        }
        if let Some(m) = self.headline_first(&output_type) {
            put("metrics", m);
        }
        if !self.rest(&mut out, &output_type) {
            return Err(self.located(shown));
        }
        let body = serde_yaml::to_string(&Value::Mapping(out)).map_err(|e| vec![e.to_string()])?;
        let mut yaml = format!(
            "# Imported from the lm-evaluation-harness task {shown} by `icl-eval tasks import`.\n"
        );
        for n in &self.notes {
            yaml.push_str(&format!("# Note: {n}\n"));
        }
        yaml.push_str(&body);
        Ok(Imported {
            task,
            yaml,
            notes: self.notes,
        })
    }

    /// lm-eval's default output type, the keys every task needs, and metrics this output type
    /// cannot score.
    fn check_keys(&mut self) {
        // lm-eval's `TaskConfig` defaults the output type to a generation (FLD's files omit it).
        if self.output_type.is_none() && self.task.is_some() {
            self.output_type = Some("generate_until".into());
            self.notes
                .push("no `output_type`: lm-eval's default, generate_until".into());
        }
        for (field, missing) in [
            ("task", self.task.is_none()),
            ("doc_to_text", self.doc_to_text.is_none()),
            ("doc_to_target", self.doc_to_target.is_none()),
        ] {
            if missing {
                self.problems.push(format!("key `{field}` is missing"));
            }
        }
        // A metric icl-eval computes, but not for this output type (`perplexity` of a generation).
        let output = self.output_type.as_deref().and_then(|o| {
            serde_yaml::from_value::<super::spec::OutputType>(Value::String(o.into())).ok()
        });
        if let Some(o) = output {
            for m in &self.metrics {
                if let Err(e) = super::Metric::parse(m, o) {
                    self.problems.push(format!(
                        "key `metric_list` has metric `{m}`, which icl-eval cannot score here: {e}"
                    ));
                }
            }
        }
    }

    /// The test split, the few-shot split and the `dataset:` block; `None` when nothing is
    /// evaluated.
    fn test_and_fewshot(&mut self) -> Option<(String, String, Value)> {
        let test = self.splits[TEST]
            .clone()
            .or(self.splits[VALIDATION].clone());
        let fewshot = self.splits[FEWSHOT]
            .clone()
            .or(self.splits[TRAIN].clone())
            .or(self.splits[VALIDATION].clone())
            .or(test.clone());
        let Some(test) = test else {
            self.problems.push(
                "neither `test_split` nor `validation_split` is set: nothing to evaluate".into(),
            );
            return None;
        };
        let fewshot = fewshot.unwrap_or_else(|| test.clone());
        let checked = if self.samples.is_some() || self.hooks.contains_key("fewshot_samples") {
            test.clone()
        } else {
            fewshot.clone()
        };
        let dataset = self.dataset(&test, &checked);
        Some((test, fewshot, dataset))
    }

    /// A generation's `generation:` block: stop sequences, budget, sampling.
    fn generation_block(&mut self) -> Value {
        let mut g = Mapping::new();
        if let Some(u) = self.until.take() {
            g.insert("until".into(), u);
        }
        // lm-eval's default budget (max_gen_toks) is 256.
        let max = self.max_tokens.or(self.max_new_tokens).unwrap_or(256);
        g.insert("max_tokens".into(), max.into());
        if self.do_sample == Some(true) {
            g.insert("do_sample".into(), true.into());
            g.extend(std::mem::take(&mut self.sampling));
            self.notes.push(
                "do_sample: icl-eval draws each generation from its own seeded generator, so \
                     sampled answers repeat run to run but are not lm-eval's (torch's) draws"
                    .into(),
            );
        } else if self.sampling.get("top_p").is_some()
            || self
                .sampling
                .get("temperature")
                .and_then(Value::as_f64)
                .is_some_and(|t| t != 0.0)
        {
            self.notes.push(
                "`temperature` / `top_p` dropped: without `do_sample` lm-eval decodes greedily"
                    .into(),
            );
        }
        Value::Mapping(g)
    }

    /// The metrics, the headline first (an accuracy before any lower-is-better metric).
    fn headline_first(&mut self, output_type: &str) -> Option<Value> {
        // icl-eval's headline (first) metric decides each doc's `correct`, so lower-is-better
        // metrics (Brier score, perplexity, TER) go last, after an accuracy; a rolling task's
        // perplexities decide nothing and stay as they are.
        let rolling = output_type == "loglikelihood_rolling";
        let (lower, mut higher): (Vec<String>, Vec<String>) = std::mem::take(&mut self.metrics)
            .into_iter()
            .partition(|m| {
                !rolling && super::Metric::from_name(m).is_some_and(super::Metric::lower_is_better)
            });
        if higher.is_empty() && !lower.is_empty() {
            let headline = if output_type == "generate_until" {
                "exact_match"
            } else {
                "acc"
            };
            higher.push(headline.into());
            self.notes.push(format!(
                "`{headline}` added before `{}`: the first metric is the headline",
                lower.join("`, `")
            ));
        }
        higher.extend(lower);
        self.metrics = higher;
        (!self.metrics.is_empty())
            .then(|| Value::Sequence(self.metrics.iter().cloned().map(Value::String).collect()))
    }

    /// The keys after the metrics (repeats, num_fewshot, metadata, filters, exact-match options,
    /// the few-shot block) into `out`; false when one is a problem (pushed).
    fn rest(&mut self, out: &mut Mapping, output_type: &str) -> bool {
        let mut put = |k: &str, v: Value| {
            out.insert(Value::String(k.into()), v);
        };
        if let Some(n) = self.repeats.filter(|&n| n > 1) {
            if output_type != "generate_until" {
                self.problems
                    .push("key `repeats` applies only to output_type generate_until".into());
                return false;
            }
            put("repeats", n.into());
        }
        if let Some(n) = self.num_fewshot {
            put("num_fewshot", n.into());
        }
        if self.hf_equality && !self.exact_match.is_empty() {
            self.problems.push(
                "key `metric_list`: a Hugging Face evaluate `accuracy`/`f1` (exact equality) and \
                 an `exact_match` with options (case, punctuation, regexes) would be one metric \
                 here; icl-eval scores them as one `exact_match`, so it cannot give both"
                    .into(),
            );
            return false;
        }
        if let Some(v) = self.version.take() {
            let mut m = Mapping::new();
            m.insert("version".into(), v);
            put("metadata", Value::Mapping(m));
        }
        if let Some(f) = self.filter_list.take() {
            if output_type != "generate_until" {
                self.problems
                    .push("key `filter_list` applies only to output_type generate_until".into());
                return false;
            }
            put("filter_list", f);
        }
        if !self.exact_match.is_empty() {
            put(
                "exact_match",
                Value::Mapping(std::mem::take(&mut self.exact_match)),
            );
        }
        if self.sampler.is_some()
            || self.samples.is_some()
            || self.fewshot_text.is_some()
            || self.fewshot_target.is_some()
        {
            let mut f = Mapping::new();
            if let Some(s) = self.sampler {
                f.insert("sampler".into(), s.into());
            }
            if let Some(t) = self.fewshot_text.take() {
                f.insert("doc_to_text".into(), t.into());
            }
            if let Some(t) = self.fewshot_target.take() {
                f.insert("doc_to_target".into(), t.into());
            }
            if let Some(samples) = self.samples.take() {
                f.insert("samples".into(), samples);
            }
            put("fewshot", Value::Mapping(f));
        }
        true
    }

    /// `dataset:` — lm-eval's local `data_files`, or the Hugging Face Hub dataset itself.
    fn dataset(&mut self, test: &str, fewshot: &str) -> Value {
        if self.data_files.is_none()
            && let Some(hub) = self.dataset_path.clone()
        {
            let mut d = Mapping::new();
            d.insert("hub".into(), hub.into());
            if let Some(n) = self.dataset_name.take() {
                d.insert("name".into(), n.into());
            }
            if let Some(r) = self.revision.take() {
                self.problem(
                    "dataset_kwargs.revision",
                    format!(
                        "({r}) pins the repository's own files, but without `data_files` icl-eval \
                         reads the Hub's parquet conversion, made from the latest commit; name the \
                         files as `data_files` to read them at {r}"
                    ),
                );
            }
            return Value::Mapping(d);
        }
        let mut files = Mapping::new();
        match self.data_files.take() {
            Some(Value::String(one)) => {
                // datasets puts a single data file in the split `train`.
                files.insert("train".into(), one.into());
            }
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    match scalar(&v) {
                        Some(f) => {
                            files.insert(k, f.into());
                        }
                        None => self.problem(
                            "dataset_kwargs.data_files",
                            "should map each split to one file",
                        ),
                    }
                }
            }
            Some(_) => self.problem(
                "dataset_kwargs.data_files",
                "should be one file or a mapping of split to file",
            ),
            None => self.problems.push("key `dataset_path` is missing".into()),
        }
        for split in [test, fewshot] {
            if !files.is_empty() && !files.contains_key(split) {
                self.problems.push(format!(
                    "key `dataset_kwargs.data_files` has no file for split `{split}`"
                ));
            }
        }
        let mut d = Mapping::new();
        // Beside a Hub dataset (not a `datasets` builder name), data files are the repository's.
        if let Some(repo) = self
            .dataset_path
            .clone()
            .filter(|p| !matches!(p.as_str(), "json" | "csv" | "parquet" | "text" | "arrow"))
        {
            d.insert("hub".into(), repo.into());
            if let Some(r) = self.revision.take() {
                d.insert("revision".into(), r.into());
            }
        }
        if let Some(r) = self.revision.take() {
            self.notes.push(format!(
                "`dataset_kwargs.revision` ({r}) dropped: the data files are local"
            ));
        }
        d.insert("files".into(), Value::Mapping(files));
        match (self.columns.take(), self.headerless) {
            (Some(c), _) => {
                d.insert("columns".into(), c);
            }
            (None, true) => self.problem(
                "dataset_kwargs.header",
                "is null without `column_names`: icl-eval needs the columns' names",
            ),
            (None, false) => {}
        }
        Value::Mapping(d)
    }

    fn located(self, shown: &str) -> Vec<String> {
        self.problems
            .into_iter()
            .map(|p| format!("{shown}: {p}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("icl-eval-import-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Hugging Face evaluate's `accuracy` and micro `f1` on one pair a doc, averaged (polemo2),
    /// are the generation's exact_match, scored once; a binary `f1` per doc is no such thing.
    #[test]
    fn hf_evaluate_means_of_one_pair_are_exact_match() {
        let d = tmp("hf-evaluate");
        let task = |metrics: &str| {
            format!(
                "task: t\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: t.jsonl, train: t.jsonl}}}}\n\
                 test_split: test\ntraining_split: train\noutput_type: generate_until\n\
                 doc_to_text: \"{{{{q}}}}\"\ndoc_to_target: \"{{{{a}}}}\"\nmetric_list:\n{metrics}"
            )
        };
        let y = d.join("t.yaml");
        fs::write(
            &y,
            task("  - {metric: f1, aggregation: mean, hf_evaluate: true, average: micro}\n  \
                  - {metric: accuracy, aggregation: mean, hf_evaluate: true, higher_is_better: true}\n"),
        )
        .unwrap();
        let imported = import_lm_eval(&y).unwrap();
        let v: Value = serde_yaml::from_str(&imported.yaml).unwrap();
        assert_eq!(
            v["metrics"],
            serde_yaml::from_str::<Value>("[exact_match]").unwrap()
        );
        assert_eq!(
            imported
                .notes
                .iter()
                .filter(|n| n.contains("Hugging Face evaluate"))
                .count(),
            2
        );
        fs::write(
            &y,
            task("  - {metric: f1, aggregation: mean, hf_evaluate: true}\n"),
        )
        .unwrap();
        let e = import_lm_eval(&y).unwrap_err().join("\n");
        assert!(
            e.contains("metric_list.f1") && e.contains("average micro"),
            "{e}"
        );
    }

    /// A group file's tasks defined inside it are checked as tasks and written with their
    /// includes merged (the copy stands alone); members setting keys of other tasks are kept.
    #[test]
    fn a_groups_inline_tasks_are_checked_and_written_whole() {
        let d = tmp("group-inline");
        fs::write(
            d.join("_base_yaml"),
            "dataset_path: super_glue\ndataset_name: rte\ntest_split: validation\n\
             output_type: generate_until\ndoc_to_target: \"{{label}}\"\n",
        )
        .unwrap();
        let g = d.join("g.yaml");
        fs::write(
            &g,
            "group: g\ntask:\n  - task: p0\n    include: _base_yaml\n    doc_to_text: \"{{q}}\"\n\
             \x20 - task: arc_easy\n    fewshot_split: train\n",
        )
        .unwrap();
        let imported = import_lm_eval(&g).unwrap();
        let v: Value = serde_yaml::from_str(&imported.yaml).unwrap();
        assert_eq!(v["task"][0]["dataset_name"], "rte");
        assert!(v["task"][0].get("include").is_none());
        assert_eq!(v["task"][1]["fewshot_split"], "train");
        fs::write(
            &g,
            "group: g\ntask:\n  - task: p0\n    include: _base_yaml\n    doc_to_text: \"{{q}}\"\n\
             \x20   metric_list: [{metric: rouge}]\n",
        )
        .unwrap();
        let e = import_lm_eval(&g).unwrap_err().join("\n");
        assert!(
            e.contains("g.yaml (task `p0` with keys from group `g`)") && e.contains("rouge"),
            "{e}"
        );
    }

    #[test]
    fn a_hub_task_with_an_include_becomes_an_icl_eval_task() {
        let d = tmp("hub");
        fs::write(
            d.join("_base.yaml"),
            "dataset_path: super_glue\noutput_type: multiple_choice\ntraining_split: train\n\
             validation_split: validation\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    \
             higher_is_better: true\nmetadata:\n  version: 2.0\n",
        )
        .unwrap();
        fs::write(
            d.join("boolq.yaml"),
            "include: _base.yaml\ntag: [super-glue-lm-eval-v1]\ntask: boolq\ndataset_name: boolq\n\
             doc_to_text: \"{{passage}}\\nQuestion: {{question}}?\\nAnswer:\"\ndoc_to_target: label\n\
             doc_to_choice: ['no', 'yes']\nshould_decontaminate: true\ndoc_to_decontamination_query: passage\n",
        )
        .unwrap();
        let i = import_lm_eval(&d.join("boolq.yaml")).unwrap();
        let spec: super::super::spec::TaskSpec = serde_yaml::from_str(&i.yaml).unwrap();
        assert_eq!(spec.task, "boolq");
        assert_eq!(spec.doc_to_target, "{{ label }}");
        assert_eq!(
            spec.doc_to_text,
            "{{passage}}\nQuestion: {{question}}?\nAnswer:"
        );
        assert_eq!(
            (spec.test_split.as_str(), spec.fewshot_split.as_deref()),
            ("validation", Some("train"))
        );
        assert_eq!(
            (spec.dataset.hub.as_deref(), spec.dataset.name.as_deref()),
            (Some("super_glue"), Some("boolq"))
        );
        assert_eq!(spec.metrics.unwrap(), vec!["acc"]);
        assert_eq!(spec.metadata["version"], serde_yaml::Value::from(2.0));
        assert!(i.yaml.starts_with("# Imported from"));
    }

    #[test]
    fn exact_match_options_become_the_tasks_own() {
        let d = tmp("em");
        fs::write(
            d.join("t.yaml"),
            "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files: {test: t.jsonl}\n\
             test_split: test\noutput_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\n\
             metric_list:\n  - metric: exact_match\n    ignore_case: true\n    \
             ignore_punctuation: false\n    regexes_to_ignore: [',', '\\$']\n",
        )
        .unwrap();
        let i = import_lm_eval(&d.join("t.yaml")).unwrap();
        let spec: super::super::spec::TaskSpec = serde_yaml::from_str(&i.yaml).unwrap();
        let em = spec.exact_match.unwrap();
        assert!(em.ignore_case && !em.ignore_punctuation);
        assert_eq!(em.regexes_to_ignore, vec![",", "\\$"]);
    }

    #[test]
    fn untranslatable_keys_are_each_named() {
        let d = tmp("bad");
        fs::write(
            d.join("t.yaml"),
            "task: t\ndataset_path: gsm8k\ntest_split: test\noutput_type: generate_until\n\
             process_docs: !function utils.process_docs\ndoc_to_text: q\ndoc_to_target: a\n\
             generation_kwargs:\n  until: ['Q:']\n  do_sample: true\n\
             filter_list:\n  - name: strict\n    filter: []\nmetric_list:\n  - metric: f1\n  - metric: exact_match\n    ignore_case: true\n    ignore_numbers: true\n",
        )
        .unwrap();
        let errs = import_lm_eval(&d.join("t.yaml")).unwrap_err();
        let all = errs.join("\n");
        for expected in [
            "key `process_docs` is `!function utils.process_docs`, Python code",
            "filter `strict` has no steps",
            "has metric `f1`",
            "key `metric_list.exact_match.ignore_numbers` is not translated",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
        assert!(errs.iter().all(|e| e.contains("t.yaml: ")), "{errs:?}");
    }

    /// lm-eval's own `weighted_f1_score` aggregation (re-exported by the task's module) is
    /// computed natively, with no Python; another Python aggregation needs the opt-in and then
    /// becomes a `python.aggregations` hook.
    #[test]
    fn stock_aggregations_need_no_python_and_others_the_opt_in() {
        let d = tmp("aggregations");
        fs::write(
            d.join("utils.py"),
            "from lm_eval.utils import weighted_f1_score  # noqa: F401\n\ndef mine(items):\n    return 0.5\n",
        )
        .unwrap();
        let yaml = |agg: &str| {
            format!(
                "task: t\ndataset_path: org/t\ntest_split: test\noutput_type: multiple_choice\n\
                 doc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\nmetric_list:\n  \
                 - metric: f1\n    aggregation: !function utils.{agg}\n    average: weighted\n"
            )
        };
        fs::write(d.join("t.yaml"), yaml("weighted_f1_score")).unwrap();
        let out = import_lm_eval(&d.join("t.yaml")).unwrap();
        assert!(
            out.yaml.contains("metrics:\n- f1_weighted\n"),
            "{}",
            out.yaml
        );
        assert!(!out.yaml.contains("python:"), "{}", out.yaml);
        fs::write(d.join("t.yaml"), yaml("mine")).unwrap();
        let errs = import_lm_eval(&d.join("t.yaml")).unwrap_err().join("\n");
        assert!(errs.contains("utils.mine"), "{errs}");
        let out = import_lm_eval_with(&d.join("t.yaml"), true).unwrap();
        assert!(
            out.yaml.contains("aggregations:") && out.yaml.contains("utils.py:mine"),
            "{}",
            out.yaml
        );
        // A mean of a corpus metric's per-doc items, or an aggregation icl-eval lacks, is refused.
        for (metric, agg) in [("f1", "mean"), ("acc", "median")] {
            fs::write(
                d.join("t.yaml"),
                yaml("x").replace(
                    "  - metric: f1\n    aggregation: !function utils.x\n",
                    &format!("  - metric: {metric}\n    aggregation: {agg}\n"),
                ),
            )
            .unwrap();
            let errs = import_lm_eval(&d.join("t.yaml")).unwrap_err().join("\n");
            assert!(
                errs.contains(&format!("metric_list.{metric}.aggregation")),
                "{errs}"
            );
        }
    }
}
