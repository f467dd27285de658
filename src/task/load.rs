//! Loading one task file: YAML (with its includes) into the typed spec, templates compiled,
//! data read and split (`splits`), every doc rendered (`render`). Collects every problem it finds,
//! each naming the file, field, line or doc, so `validate` can report them all at once.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::include::TaskRef;
use super::problems::Ctx;
use super::render::{Renderer, blank_strings, render_split, template_context, template_source};
use super::spec::{ChoiceSpec, OutputType, TaskSpec};
use super::splits::load_splits;
use super::{Metric, Task};
use super::{include, process};

/// Loads and validates a task (running no Python); the error lists every problem found.
pub fn load_task(path: &Path, data_dir: Option<&Path>) -> Result<Task> {
    load_task_with(path, data_dir, None)
}

/// [`load_task`], running the task's Python hooks with `python` when the user opted in.
pub fn load_task_with(path: &Path, data_dir: Option<&Path>, python: Option<&Path>) -> Result<Task> {
    let hub = crate::hub::HubOptions::from_env();
    load_task_using(
        path,
        &LoadOptions {
            data_dir,
            python,
            hub,
        },
    )
}

/// The task (when it could be built) and every problem found reading it, each naming file/field.
pub fn load_with_problems(path: &Path, data_dir: Option<&Path>) -> (Option<Task>, Vec<String>) {
    load_with_problems_with(path, data_dir, None)
}

/// [`load_with_problems`], running the task's Python hooks with `python` when the user opted in.
pub fn load_with_problems_with(
    path: &Path,
    data_dir: Option<&Path>,
    python: Option<&Path>,
) -> (Option<Task>, Vec<String>) {
    let hub = crate::hub::HubOptions::from_env();
    load_with_problems_using(
        path,
        &LoadOptions {
            data_dir,
            python,
            hub,
        },
    )
}

/// Everything loading a task reads besides its file: the data folder, the Python that may run
/// its hooks (only when the user opted in), and the Hugging Face Hub its datasets come from.
#[derive(Debug, Clone)]
pub struct LoadOptions<'a> {
    /// `${DATA_DIR}`.
    pub data_dir: Option<&'a Path>,
    /// `--allow-python`'s interpreter; `None` runs no Python.
    pub python: Option<&'a Path>,
    /// Endpoint, cache, offline mode and token for Hub datasets.
    pub hub: crate::hub::HubOptions,
}

/// [`load_task`] with every option given rather than read from the environment.
pub fn load_task_using(path: &Path, options: &LoadOptions) -> Result<Task> {
    load_ref(&TaskRef::file(path), options)
}

/// [`load_task_using`] for a task file or a task a group file defines or sets keys of.
pub fn load_ref(r: &TaskRef, options: &LoadOptions) -> Result<Task> {
    let (task, problems) = load_ref_with_problems(r, options);
    match task {
        Some(t) if problems.is_empty() => Ok(t),
        _ => bail!("{}", problems.join("\n")),
    }
}

/// [`load_with_problems`] with every option given rather than read from the environment.
pub fn load_with_problems_using(path: &Path, options: &LoadOptions) -> (Option<Task>, Vec<String>) {
    load_ref_with_problems(&TaskRef::file(path), options)
}

/// [`load_with_problems_using`] for a task file or a task a group file defines or sets keys of.
pub fn load_ref_with_problems(r: &TaskRef, options: &LoadOptions) -> (Option<Task>, Vec<String>) {
    let LoadOptions {
        data_dir, python, ..
    } = *options;
    let path = r.path.as_path();
    let file = r.shown();
    let (mut merged, mut texts, repeated) = match include::read_ref_noting(r) {
        Ok(m) => m,
        Err(e) => return (None, vec![e]),
    };
    // PyYAML's last-key-wins is lm-eval's reading; in icl-eval's own format a repeated key is a
    // slip, whichever file of the includes holds it.
    if !repeated.is_empty() && !is_lm_eval(&merged) {
        let errors = repeated
            .into_iter()
            .map(|n| format!("{n}; icl-eval's own task files may not repeat a key"))
            .collect();
        return (None, errors);
    }
    // A task's identity is the bytes it was read from (here the YAML files, below the templates,
    // hook files and data), never generated text or a path: the same folder at two paths is one
    // task, so shards run from either merge and a moved folder resumes.
    let source = texts.clone();
    // An lm-eval task file found in a task folder is read in place: translated as `tasks import`
    // would write it (refusals are the load's problems), then loaded from its own folder.
    if is_lm_eval(&merged) {
        match super::import::translate(r, std::mem::take(&mut merged), repeated, python.is_some()) {
            Ok(imported) => texts = vec![imported.yaml],
            Err(problems) => return (None, problems),
        }
    }
    // Without an include, parsing the text itself keeps line numbers in the errors.
    // (serde_yaml reads `{step: {...}}` enums from text only, so a merged file goes back to text.)
    let parsed = match texts.as_slice() {
        [text] => serde_yaml::from_str(text),
        _ => serde_yaml::to_string(&merged).and_then(|t| serde_yaml::from_str(&t)),
    };
    let spec: TaskSpec = match parsed {
        Ok(s) => s,
        Err(e) => return (None, vec![format!("{file}: {e}")]),
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cx = Ctx {
        file,
        base,
        data_dir,
        problems: Vec::new(),
        hasher: Sha256::new(),
        missing_data_dir_reported: false,
        hub: options.hub.clone(),
        data: Vec::new(),
    };
    for text in &source {
        cx.hasher.update(text.as_bytes());
    }
    let task = build_spec(&mut cx, spec, path, python);
    (task, cx.problems)
}

/// Keys only lm-evaluation-harness task files have (icl-eval's own spell the dataset and metrics
/// `dataset:` and `metrics:`).
const LM_EVAL_KEYS: &[&str] = &[
    "dataset_path",
    "metric_list",
    "training_split",
    "validation_split",
];

/// Whether a (merged) task YAML is an lm-eval task file.
fn is_lm_eval(merged: &serde_yaml::Value) -> bool {
    LM_EVAL_KEYS.iter().any(|k| merged.get(*k).is_some())
}

/// The spec checked and rendered into a task; `None` when any problem was found. The order of
/// reads (templates, then data) is the order of the task hash.
/// A task's compiled templates: the test docs', and the demonstrations' own where lm-eval's
/// `fewshot_config.doc_to_*` gives them.
struct Templates {
    env: Environment<'static>,
    choices: Option<ChoiceSpec>,
    fewshot_env: Option<Environment<'static>>,
    /// Every template compiled.
    ok: bool,
}

/// Compiles the task's templates, each problem recorded.
fn compile_templates(cx: &mut Ctx, spec: &TaskSpec) -> Templates {
    let mut env = template_env();
    let mut ok = add_template(cx, &mut env, "description", &spec.description);
    ok &= add_template(cx, &mut env, "doc_to_text", &spec.doc_to_text);
    ok &= add_template(cx, &mut env, "doc_to_target", &spec.doc_to_target);
    let choices = choice_spec(cx, &mut env, spec, &mut ok);
    if let Some(gp) = &spec.gen_prefix {
        ok &= add_template(cx, &mut env, "gen_prefix", gp);
        if spec.output_type == OutputType::MultipleInput {
            cx.problem("field `gen_prefix` does not apply to output_type multiple_input");
        }
    }
    // Demonstrations with templates of their own (lm-eval's `fewshot_config.doc_to_*`).
    let fewshot_env = (spec.fewshot.doc_to_text.is_some() || spec.fewshot.doc_to_target.is_some())
        .then(|| {
            let mut e = template_env();
            let text = spec
                .fewshot
                .doc_to_text
                .as_ref()
                .unwrap_or(&spec.doc_to_text);
            let target = spec
                .fewshot
                .doc_to_target
                .as_ref()
                .unwrap_or(&spec.doc_to_target);
            ok &= add_template(cx, &mut e, "description", &spec.description);
            ok &= add_template(cx, &mut e, "doc_to_text", text);
            ok &= add_template(cx, &mut e, "doc_to_target", target);
            if let Some(gp) = &spec.gen_prefix {
                ok &= add_template(cx, &mut e, "gen_prefix", gp);
            }
            choice_spec(cx, &mut e, spec, &mut ok);
            e
        });
    Templates {
        env,
        choices,
        fewshot_env,
        ok,
    }
}

/// A generation's stop sequences and token budget (the few-shot delimiter and 32 by default).
fn generation_limits(cx: &mut Ctx, spec: &TaskSpec) -> (Vec<String>, usize) {
    let (until, max_tokens) = match &spec.generation {
        Some(g) => (
            g.until
                .clone()
                .unwrap_or_else(|| vec![spec.fewshot_delimiter.clone()]),
            g.max_tokens,
        ),
        None => (vec![spec.fewshot_delimiter.clone()], 32),
    };
    if max_tokens == 0 {
        cx.problem("field `generation.max_tokens` must be at least 1");
    }
    (until, max_tokens)
}

/// The splits a task reads, as raw docs: loaded, run through its Python hooks (with
/// `--allow-python`), inline samples added, `process_docs` applied; with the few-shot split's name,
/// the Python aggregations and the hooks that ran.
struct Splits {
    docs: BTreeMap<String, Vec<serde_json::Value>>,
    fewshot: String,
    aggregations: BTreeMap<String, String>,
    python: Vec<String>,
}

fn read_splits(
    cx: &mut Ctx,
    spec: &TaskSpec,
    python: Option<&Path>,
    metrics: &[Metric],
) -> Option<Splits> {
    let inline = spec.fewshot.samples.clone();
    let hooked_samples = spec
        .python
        .as_ref()
        .is_some_and(|h| h.fewshot_samples.is_some());
    if inline.is_some() && spec.fewshot_split.is_some() {
        cx.problem(
            "fields `fewshot.samples` and `fewshot_split` both name the demonstrations; keep one",
        );
    }
    let listed_samples = inline.is_some() || hooked_samples;
    let fewshot_split = match &spec.fewshot_split {
        _ if listed_samples => super::spec::INLINE_SAMPLES.to_string(),
        Some(f) => f.clone(),
        None => spec.test_split.clone(),
    };
    let wanted: Vec<&str> = if listed_samples {
        vec![&spec.test_split]
    } else {
        vec![&spec.test_split, &fewshot_split]
    };
    let mut splits = load_splits(cx, &spec.dataset, &wanted)?;
    let aggregations = match &spec.python {
        Some(h) => super::hooks::aggregations(cx, python, h, metrics)?,
        None => BTreeMap::new(),
    };
    let python_ran = match &spec.python {
        Some(h) => super::hooks::run(cx, python, h, &mut splits, super::spec::INLINE_SAMPLES)?,
        None => Vec::new(),
    };
    if let Some(samples) = inline {
        if samples.iter().any(|d| !d.is_object()) {
            cx.problem("field `fewshot.samples`: each sample is a mapping of the doc's fields");
            return None;
        }
        splits.insert(fewshot_split.clone(), samples);
    }
    for (name, docs) in &mut splits {
        if let Err(errs) = process::apply(&spec.process_docs, name, docs) {
            cx.problems_capped(errs, &format!("split `{name}`: docs"));
            return None;
        }
    }
    Some(Splits {
        docs: splits,
        fewshot: fewshot_split,
        aggregations,
        python: python_ran,
    })
}

/// Choice counts the metrics need: lm-eval's `f1` is scikit-learn's binary F1 (of choice 1),
/// which refuses more labels; a metric that compares choices by position across docs
/// (`same_choices` in its table entry) needs every doc to have as many. False (a problem
/// recorded) when a doc breaks either.
fn choice_counts_fit(
    cx: &mut Ctx,
    metrics: &[Metric],
    aggregations: &std::collections::BTreeMap<String, String>,
    test: &Option<Vec<super::Item>>,
) -> bool {
    let items = || test.iter().flatten();
    let count = |i: &super::Item| i.options().map_or(0, <[String]>::len);
    // A task's own Python aggregation of `f1` (lm-eval's `cb_multi_fi`, a macro F1 over three
    // labels) decides what F1 means over its labels.
    if metrics.contains(&Metric::F1)
        && !aggregations.contains_key(Metric::F1.name())
        && let Some(item) = items().find(|i| count(i) > 2)
    {
        cx.problem(format!(
            "field `metrics`: `f1` is binary (scikit-learn's default, as lm-eval calls it), but doc \
             {} has {} choices; use `f1_weighted` or `mcc`",
            item.id,
            count(item)
        ));
        return false;
    }
    if let Some(m) = metrics.iter().find(|m| m.spec().same_choices)
        && let Some(first) = items().next()
        && let Some(item) = items().find(|i| count(i) != count(first))
    {
        cx.problem(format!(
            "field `metrics`: `{}` compares choices by position across docs, but doc {} has {} \
             choices and doc {} has {}; give every doc the same choices or drop the metric",
            m.name(),
            first.id,
            count(first),
            item.id,
            count(item)
        ));
        return false;
    }
    true
}

fn build_spec(
    cx: &mut Ctx,
    mut spec: TaskSpec,
    path: &Path,
    python: Option<&Path>,
) -> Option<Task> {
    let Templates {
        env,
        choices,
        fewshot_env,
        mut ok,
    } = compile_templates(cx, &spec);
    if spec.generation.is_some() && spec.output_type != OutputType::GenerateUntil {
        cx.problem("field `generation` applies only to output_type generate_until");
    }
    let mut metrics = metrics(cx, &spec);
    let exact_match = exact_match_options(cx, &spec);
    let filters = filters(cx, &spec);
    let (until, max_tokens) = generation_limits(cx, &spec);
    let sampling = sampling(cx, &spec);
    let Splits {
        docs: splits,
        fewshot: fewshot_split,
        aggregations,
        python: python_ran,
    } = read_splits(cx, &spec, python, &metrics)?;
    ok &= check_splits(cx, &spec, &splits, &fewshot_split);
    if !ok || !cx.problems.is_empty() {
        return None;
    }
    if spec.output_type == OutputType::MultipleChoice
        && inputs_named_by_index(&env, &splits[&spec.test_split])
    {
        spec.output_type = OutputType::MultipleInput;
        // The metrics were read as multiple choice's; now they must fit the inputs.
        metrics = self::metrics(cx, &spec);
        if !cx.problems.is_empty() {
            return None;
        }
    }
    let render = Renderer {
        env: &env,
        choices: choices.as_ref(),
        output_type: spec.output_type,
        gen_prefix_delimiter: spec
            .gen_prefix
            .as_ref()
            .map(|_| spec.target_delimiter.as_str()),
    };
    let test = render_split(cx, &render, &spec.test_split, &splits[&spec.test_split]);
    let fewshot = if let Some(fs_env) = &fewshot_env {
        let fs_render = Renderer {
            env: fs_env,
            ..render
        };
        render_split(cx, &fs_render, &fewshot_split, &splits[&fewshot_split])
    } else if fewshot_split == spec.test_split {
        test.clone()
    } else {
        render_split(cx, &render, &fewshot_split, &splits[&fewshot_split])
    };
    if !cx.problems.is_empty() {
        return None;
    }
    if spec.task.trim().is_empty() || spec.task.contains(|c: char| c == '|' || c.is_control()) {
        cx.problem(format!(
            "field `task`: {:?} cannot name a task: a name holds no `|`, line break or other \
             control character (it labels tables, charts and files)",
            spec.task
        ));
        return None;
    }
    if spec.format == super::Formulation::Mcqa && spec.output_type != OutputType::MultipleChoice {
        cx.problem(format!(
            "field `format: mcqa` applies to output_type multiple_choice only (this task is {}); \
             remove it",
            spec.output_type.name()
        ));
        return None;
    }
    if !choice_counts_fit(cx, &metrics, &aggregations, &test) {
        return None;
    }
    // Only `acc_calibrated` reads them; other tasks' templates may need real values (an `int`).
    let content_free = if metrics
        .iter()
        .any(|m| m.spec().needs == crate::metric::Needs::ContentFree)
    {
        content_free_inputs(cx, &render, splits[&spec.test_split].first())?
    } else {
        Vec::new()
    };
    let doc_choices = if filters.iter().any(|f| f.needs_choices()) {
        doc_choices(cx, &spec.test_split, &splits[&spec.test_split])?
    } else {
        Vec::new()
    };
    Some(Task {
        name: spec.task,
        source: path.to_path_buf(),
        hash: hex::encode(std::mem::take(&mut cx.hasher).finalize()),
        output_type: spec.output_type,
        target_delimiter: spec.target_delimiter,
        fewshot_delimiter: spec.fewshot_delimiter,
        until,
        max_tokens,
        metrics,
        test: test?,
        fewshot: fewshot?,
        fewshot_is_test: fewshot_split == spec.test_split,
        sampler: spec.fewshot.sampler,
        demo_order: spec.fewshot.order,
        content_free,
        data: std::mem::take(&mut cx.data),
        version: spec.metadata.get("version").and_then(|v| match v {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }),
        python: python_ran,
        aggregations,
        exact_match,
        filters,
        doc_choices,
        repeats: spec.repeats,
        gen_prefix: spec.gen_prefix.is_some(),
        sampling,
        num_fewshot: spec.num_fewshot,
        format: spec.format,
    })
}

/// `generation.do_sample` with its temperature and top-p, checked, and `repeats`; a temperature
/// of 0 is greedy decoding, as in lm-eval.
fn sampling(cx: &mut Ctx, spec: &TaskSpec) -> Option<(f64, f64)> {
    if spec.repeats == 0 {
        cx.problem("field `repeats` must be at least 1");
    }
    if spec.repeats > 1 && spec.output_type != OutputType::GenerateUntil {
        cx.problem("field `repeats` applies only to output_type generate_until");
    }
    let g = spec.generation.as_ref()?;
    if !g.do_sample {
        if g.temperature.is_some_and(|t| t != 0.0) || g.top_p.is_some() {
            cx.problem(
                "fields `generation.temperature` / `generation.top_p` need `generation.do_sample: true`",
            );
        }
        return None;
    }
    let t = g.temperature.unwrap_or(1.0);
    let p = g.top_p.unwrap_or(1.0);
    if !(t >= 0.0 && t.is_finite()) {
        cx.problem(format!(
            "field `generation.temperature`: {t} is not a temperature (≥ 0)"
        ));
    }
    if !(p > 0.0 && p <= 1.0) {
        cx.problem(format!("field `generation.top_p`: {p} is not in (0, 1]"));
    }
    (t > 0.0).then_some((t, p))
}

/// `filter_list:` compiled; each bad step is a problem naming the filter and step.
fn filters(cx: &mut Ctx, spec: &TaskSpec) -> Vec<super::filter::Pipeline> {
    if !spec.filter_list.is_empty() && spec.output_type != OutputType::GenerateUntil {
        cx.problem("field `filter_list` applies only to output_type generate_until");
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for p in &spec.filter_list {
        if !seen.insert(p.name.clone()) {
            cx.problem(format!(
                "field `filter_list`: two filters are named `{}`",
                p.name
            ));
        }
        if p.name.contains(',') {
            cx.problem(format!(
                "field `filter_list`: filter name `{}` may not contain a comma (results name \
                 metrics `metric,filter`)",
                p.name
            ));
        }
        match p.compile() {
            Ok(c) => out.push(c),
            Err(e) => cx.problem(format!("field `filter_list`: {e}")),
        }
    }
    out
}

/// Each test doc's `choices` field as texts, for `multi_choice_regex`; `None` after naming the
/// first doc that lacks it.
fn doc_choices(cx: &mut Ctx, split: &str, docs: &[Value]) -> Option<Vec<Vec<String>>> {
    let mut out = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        let list = d.get("choices").and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
        });
        match list {
            Some(l) => out.push(l),
            None => {
                cx.problem(format!(
                    "split `{split}`, doc {i}: a `multi_choice_regex` filter reads the doc's \
                     `choices` field, a list, which this doc lacks"
                ));
                return None;
            }
        }
    }
    Some(out)
}

/// `exact_match:` compiled; a bad regex is a problem naming it.
fn exact_match_options(cx: &mut Ctx, spec: &TaskSpec) -> super::ExactMatch {
    let Some(o) = &spec.exact_match else {
        return Default::default();
    };
    if spec.output_type != OutputType::GenerateUntil {
        cx.problem("field `exact_match` applies only to output_type generate_until");
    }
    let mut regexes = Vec::new();
    for (i, r) in o.regexes_to_ignore.iter().enumerate() {
        match super::filter::python_regex(r) {
            Ok(re) => regexes.push(re),
            Err(e) => cx.problem(format!("field `exact_match.regexes_to_ignore[{i}]`: {e}")),
        }
    }
    super::ExactMatch {
        regexes_to_ignore: regexes,
        ignore_case: o.ignore_case,
        ignore_punctuation: o.ignore_punctuation,
    }
}

/// minijinja-contrib's Python methods, plus `list.index(x)` (ARC's
/// `choices.label.index(answerKey)`), which it lacks.
fn python_methods(
    state: &mut minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, minijinja::Error> {
    use minijinja::value::ValueKind;
    if method == "index" && value.kind() == ValueKind::Seq && args.len() == 1 {
        for (i, item) in value.try_iter()?.enumerate() {
            if item == args[0] {
                return Ok(minijinja::Value::from(i));
            }
        }
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("{} is not in the list", args[0]),
        ));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `text | regex_replace(pattern, replacement)`: Python's `re.sub` for templates (HellaSwag's
/// clean-up of WikiHow markup needs it; lm-eval does it in Python). `\1` in the replacement is
/// the first group, as in Python.
fn regex_replace(text: &str, pattern: &str, replacement: &str) -> Result<String, minijinja::Error> {
    thread_local! {
        static COMPILED: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> =
            Default::default();
    }
    let re = COMPILED.with_borrow_mut(|c| {
        if let Some(re) = c.get(pattern) {
            return Ok::<_, minijinja::Error>(re.clone());
        }
        let re = regex::Regex::new(pattern).map_err(|e| {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("regex_replace: invalid pattern {pattern:?}: {e}"),
            )
        })?;
        c.insert(pattern.to_string(), re.clone());
        Ok(re)
    })?;
    // Python's replacement syntax in the regex crate's: `\12` and `\g<name>` become `${12}` and
    // `${name}`, `\\`, `\n`, `\t` their characters; a literal `$` stays literal.
    let mut expand = String::with_capacity(replacement.len());
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('$', _) => expand.push_str("$$"),
            ('\\', Some(d)) if d.is_ascii_digit() => {
                let mut group = String::new();
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    group.push(d);
                }
                expand.push_str(&format!("${{{group}}}"));
            }
            ('\\', Some('g')) => {
                chars.next();
                if chars.next_if_eq(&'<').is_some() {
                    let group: String = chars.by_ref().take_while(|&c| c != '>').collect();
                    expand.push_str(&format!("${{{group}}}"));
                } else {
                    expand.push_str("\\g");
                }
            }
            ('\\', Some(e @ ('\\' | 'n' | 't'))) => {
                chars.next();
                expand.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    _ => '\\',
                });
            }
            _ => expand.push(c),
        }
    }
    Ok(re.replace_all(text, expand.as_str()).into_owned())
}

/// Strict minijinja with Python's string methods, as lm-eval's Jinja2 templates expect.
fn template_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(super::TEMPLATE_FUEL));
    // Python's string and list methods (`text.split(' ')`, `.strip()`), which lm-eval templates
    // use because lm-eval renders them with Jinja2 over Python objects.
    env.set_unknown_method_callback(python_methods);
    env.add_filter("regex_replace", regex_replace);
    // Inline templates mean what they say: `description: "Translate:\n"` keeps its newline.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

/// Compiles one template field (inline or `file:NAME`); false after recording a problem.
fn add_template(cx: &mut Ctx, env: &mut Environment<'static>, field: &str, src: &str) -> bool {
    let Some(src) = template_source(cx, field, src) else {
        return false;
    };
    match env.add_template_owned(field.to_string(), src) {
        Ok(()) => true,
        Err(e) => {
            cx.problem(format!("field `{field}`: invalid template: {e}"));
            false
        }
    }
}

/// `doc_to_choice` checked against the output type, its list entries compiled as templates.
fn choice_spec(
    cx: &mut Ctx,
    env: &mut Environment<'static>,
    spec: &TaskSpec,
    ok: &mut bool,
) -> Option<ChoiceSpec> {
    let takes_choices = matches!(
        spec.output_type,
        OutputType::MultipleChoice | OutputType::MultipleInput
    );
    match &spec.doc_to_choice {
        Some(_) if !takes_choices => {
            cx.problem(format!(
                "field `doc_to_choice` applies only to output_type multiple_choice or \
                 multiple_input, not {}",
                spec.output_type.name()
            ));
            *ok = false;
            None
        }
        Some(ChoiceSpec::List(list)) => {
            for (i, c) in list.iter().enumerate() {
                *ok &= add_template(cx, env, &format!("doc_to_choice[{i}]"), c);
            }
            Some(ChoiceSpec::List(list.clone()))
        }
        Some(ChoiceSpec::Expression(e)) => {
            let inner = e
                .trim()
                .strip_prefix("{{")
                .and_then(|s| s.strip_suffix("}}"))
                .map(str::trim);
            match inner {
                Some(expr) => Some(ChoiceSpec::Expression(expr.to_string())),
                None => {
                    cx.problem("field `doc_to_choice`: give a list of choices or one `{{ expression }}` yielding a list");
                    *ok = false;
                    None
                }
            }
        }
        None if takes_choices => {
            cx.problem(format!(
                "field `doc_to_choice` is required for output_type {}",
                spec.output_type.name()
            ));
            *ok = false;
            None
        }
        None => None,
    }
}

/// The metrics named (or the output type's defaults), each checked against the output type.
fn metrics(cx: &mut Ctx, spec: &TaskSpec) -> Vec<Metric> {
    match &spec.metrics {
        None => Metric::defaults(spec.output_type),
        Some(list) if list.is_empty() => {
            cx.problem("field `metrics` is empty; list at least one metric or leave it out");
            Vec::new()
        }
        Some(list) => {
            let parsed: Vec<Metric> = list
                .iter()
                .filter_map(|m| {
                    Metric::parse(m, spec.output_type)
                        .map_err(|e| cx.problem(format!("field `metrics`: {e}")))
                        .ok()
                })
                .collect();
            // The headline decides each doc's `correct`; a lower-is-better score cannot (a
            // rolling task's perplexities decide none).
            if let Some(m) = parsed
                .first()
                .filter(|m| m.lower_is_better())
                .filter(|_| spec.output_type != OutputType::LoglikelihoodRolling)
            {
                cx.problem(format!(
                    "field `metrics`: `{}` cannot be the headline (first) metric, since lower is \
                     better; list an accuracy first",
                    m.name()
                ));
            }
            parsed
        }
    }
}

/// The test and few-shot splits exist and hold docs; false after recording the problems.
fn check_splits(
    cx: &mut Ctx,
    spec: &TaskSpec,
    splits: &BTreeMap<String, Vec<Value>>,
    fewshot_split: &str,
) -> bool {
    let known: Vec<&str> = splits.keys().map(String::as_str).collect();
    let mut ok = true;
    for (field, split) in [
        ("test_split", spec.test_split.as_str()),
        ("fewshot_split", fewshot_split),
    ] {
        match splits.get(split) {
            None => {
                cx.problem(format!(
                    "field `{field}`: no split `{split}` in the dataset (splits: {})",
                    known.join(", ")
                ));
                ok = false;
            }
            Some(docs) if docs.is_empty() => {
                let file = spec
                    .dataset
                    .files
                    .as_ref()
                    .and_then(|f| f.get(split))
                    .or(spec.dataset.path.as_ref())
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default();
                cx.problem(format!(
                    "field `{field}`: split `{split}`{file} has no docs; point it at a file with data"
                ));
                ok = false;
            }
            Some(_) => {}
        }
    }
    ok
}

/// lm-eval's rule for a `multiple_choice` task: when `doc_to_text` gives a number (WinoGrande's
/// Python returns the gold option's index), the choices are inputs and `doc_to_target` the
/// continuation they share (`multiple_input`). Decided on the first test doc, as lm-eval does.
fn inputs_named_by_index(env: &Environment<'static>, docs: &[Value]) -> bool {
    let Some(doc) = docs.first() else {
        return false;
    };
    let Ok(template) = env.get_template("doc_to_text") else {
        return false;
    };
    template
        .render(template_context(doc))
        .is_ok_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
}

/// `doc_to_text` of the first test doc with every string blanked to each content-free input
/// (for `acc_calibrated`).
fn content_free_inputs(
    cx: &mut Ctx,
    render: &Renderer,
    first: Option<&Value>,
) -> Option<Vec<String>> {
    let Some(doc) = first else {
        return Some(Vec::new());
    };
    super::CONTENT_FREE
        .iter()
        .map(|cf| {
            let ctx = template_context(&blank_strings(doc, cf));
            render.render("doc_to_text", &ctx)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cx.problem(format!("content-free input for acc_calibrated: {e}")))
        .ok()
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::task::Answer;
    use crate::task::discover::*;

    /// The files of resolved tasks read as they are.
    fn files(refs: Vec<TaskRef>) -> Vec<PathBuf> {
        assert!(refs.iter().all(|r| r.yaml.is_none()), "{refs:?}");
        refs.into_iter().map(|r| r.path).collect()
    }

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, body).unwrap();
        p
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icl-eval-load-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn exact_match_options_compile_and_a_bad_regex_is_named() {
        let d = tmp("em");
        write(&d, "g.jsonl", "{\"q\": \"2+2\", \"a\": \"4\"}\n");
        let body = "task: g\ndataset: {path: g.jsonl}\ntest_split: all\noutput_type: generate_until\n\
                    doc_to_text: \"{{ q }}\"\ndoc_to_target: \"{{ a }}\"\n\
                    exact_match: {ignore_case: true, regexes_to_ignore: [',', '(']}\n";
        let y = write(&d, "g.yaml", body);
        let err = format!("{:#}", load_task(&y, None).unwrap_err());
        assert!(
            err.contains("exact_match.regexes_to_ignore[1]") && err.contains("g.yaml"),
            "{err}"
        );
        let y = write(&d, "g.yaml", &body.replace(", '('", ""));
        let t = load_task(&y, None).unwrap();
        assert!(t.exact_match.ignore_case && !t.exact_match.ignore_punctuation);
        assert_eq!(t.exact_match.regexes_to_ignore.len(), 1);
    }

    const DOCS: &str = "{\"q\": \"good\", \"label\": 1}\n{\"q\": \"bad\", \"label\": 0}\n{\"q\": \"fine\", \"label\": 1}\n";

    #[test]
    fn loads_a_small_multiple_choice_task() {
        let d = tmp("ok");
        write(&d, "docs.jsonl", DOCS);
        let y = write(
            &d,
            "t.yaml",
            "task: t\ndataset: {path: docs.jsonl}\ntest_split: all\ndoc_to_text: \"Review: {{ q }}\\nSentiment:\"\n\
             doc_to_target: \"{{ label }}\"\ndoc_to_choice: [negative, positive]\noutput_type: multiple_choice\n",
        );
        let t = load_task(&y, None).unwrap();
        assert_eq!(t.test.len(), 3);
        assert!(t.fewshot_is_test);
        assert_eq!(t.test[1].text, "Review: bad\nSentiment:");
        assert_eq!(
            t.test[1].answer,
            Answer::Choice {
                choices: vec!["negative".into(), "positive".into()],
                gold: 0
            }
        );
        assert_eq!(t.metrics, vec![Metric::Acc, Metric::AccNorm]);
    }

    #[test]
    fn multiple_input_and_loglikelihood_tasks() {
        let d = tmp("partial");
        write(
            &d,
            "w.jsonl",
            "{\"opts\": [\"Ann beat Bo so Ann\", \"Ann beat Bo so Bo\"], \"rest\": \"cried.\", \"g\": 1}\n\
             {\"opts\": [\"X or Y\", \"X or Z\"], \"rest\": \"won.\", \"g\": 7}\n",
        );
        let y = write(
            &d,
            "w.yaml",
            "task: w\ndataset: {path: w.jsonl}\ntest_split: all\noutput_type: multiple_input\n\
             doc_to_choice: \"{{ opts }}\"\ndoc_to_text: \"{{ g }}\"\ndoc_to_target: \"{{ rest }}\"\n",
        );
        let err = format!("{:#}", load_task(&y, None).unwrap_err());
        assert!(
            err.contains("doc 1: field `doc_to_text`: index 7 is out of range for 2 choices"),
            "{err}"
        );
        write(
            &d,
            "w.jsonl",
            "{\"opts\": [\"Ann beat Bo so Ann\", \"Ann beat Bo so Bo\"], \"rest\": \"cried.\", \"g\": 1}\n",
        );
        let t = load_task(&y, None).unwrap();
        let item = &t.test[0];
        // A demonstration shows the gold input; the sample records it as the gold answer.
        assert_eq!(
            (item.text.as_str(), item.target_text()),
            ("Ann beat Bo so Bo", "cried.")
        );
        assert_eq!(item.gold_text(), "Ann beat Bo so Bo");
        assert_eq!(t.metrics, vec![Metric::Acc]);
        let acc_norm = write(
            &d,
            "n.yaml",
            &fs::read_to_string(&y)
                .unwrap()
                .replace("task: w", "task: n\nmetrics: [acc_norm]"),
        );
        let err = format!("{:#}", load_task(&acc_norm, None).unwrap_err());
        assert!(err.contains("metric `acc_norm` does not apply"), "{err}");

        write(&d, "l.jsonl", "{\"text\": \"the cat sat on the mat\"}\n");
        let y = write(
            &d,
            "l.yaml",
            "task: l\ndataset: {path: l.jsonl}\ntest_split: all\noutput_type: loglikelihood\n\
             doc_to_text: \"{{ (text | split(' '))[:-1] | join(' ') }}\"\n\
             doc_to_target: \" {{ text | split(' ') | last }}\"\ntarget_delimiter: \"\"\n",
        );
        let t = load_task(&y, None).unwrap();
        assert_eq!(t.test[0].text, "the cat sat on the");
        assert_eq!(t.test[0].answer, Answer::Continuation(" mat".into()));
        let with_choices = write(
            &d,
            "c.yaml",
            &fs::read_to_string(&y)
                .unwrap()
                .replace("task: l", "task: c\ndoc_to_choice: [a, b]"),
        );
        let err = format!("{:#}", load_task(&with_choices, None).unwrap_err());
        assert!(
            err.contains("`doc_to_choice` applies only to output_type multiple_choice or multiple_input, not loglikelihood"),
            "{err}"
        );
    }

    #[test]
    fn inline_templates_keep_trailing_newlines_and_files_drop_one() {
        let d = tmp("newline");
        write(&d, "docs.jsonl", DOCS);
        fs::create_dir_all(d.join("prompts")).unwrap();
        write(&d.join("prompts"), "q.jinja", "Q: {{ q }}\n");
        let y = write(
            &d,
            "t.yaml",
            "task: t\ndescription: \"Translate:\\n\"\ndataset: {path: docs.jsonl}\ntest_split: all\n\
             doc_to_text: \"file:q.jinja\"\ndoc_to_target: \"{{ label }}\\n\"\noutput_type: generate_until\n",
        );
        let t = load_task(&y, None).unwrap();
        assert_eq!(t.test[0].description, "Translate:\n");
        assert_eq!(t.test[0].text, "Q: good");
        assert_eq!(t.test[0].target_text(), "1\n");
    }

    #[test]
    fn split_rows_doc_alias_and_content_free_inputs() {
        let d = tmp("rows");
        write(
            &d,
            "all.csv",
            "Class Index,Title\n1,alpha\n2,beta\n1,gamma\n2,delta\n",
        );
        let y = write(
            &d,
            "t.yaml",
            "task: t\ndataset: {path: all.csv, split_rows: {test: [0, 3], train: [3, 4]}}\n\
             fewshot_split: train\ndoc_to_text: \"Title: {{ doc['Title'] }}\"\n\
             doc_to_target: \"{{ doc['Class Index'] | int - 1 }}\"\ndoc_to_choice: [a, b]\n\
             output_type: multiple_choice\nmetrics: [acc, acc_calibrated]\nfewshot: {sampler: fixed}\n",
        );
        let t = load_task(&y, None).unwrap();
        assert_eq!((t.test.len(), t.fewshot.len()), (3, 1));
        assert_eq!(t.test[1].text, "Title: beta");
        assert_eq!(t.test[1].target_text(), "b");
        assert_eq!(t.fewshot[0].text, "Title: delta");
        assert_eq!(t.sampler, crate::task::fewshot::Sampler::Fixed);
        assert_eq!(
            t.content_free,
            vec!["Title: N/A", "Title: ", "Title: [MASK]"]
        );
        let bad = write(
            &d,
            "b.yaml",
            "task: b\ndataset: {path: all.csv, split_rows: {test: [0, 3], train: [2, 9]}}\n\
             fewshot_split: train\ndoc_to_text: x\ndoc_to_target: y\noutput_type: generate_until\n\
             fewshot: {sampler: balanced}\n",
        );
        let all = load_with_problems(&bad, None).1.join("\n");
        assert!(
            all.contains("split_rows.train") && all.contains("4 rows"),
            "{all}"
        );
        assert!(all.contains("overlap"), "{all}");
    }

    #[test]
    fn reports_every_problem_with_file_and_field() {
        let d = tmp("bad");
        let y = write(
            &d,
            "t.yaml",
            "task: t\ndataset: {path: missing.jsonl}\ndoc_to_text: \"{{ q \"\ndoc_to_target: x\n\
             output_type: multiple_choice\nmetrics: [acc, bleu]\n",
        );
        let problems = load_with_problems(&y, None).1;
        let all = problems.join("\n");
        assert!(all.contains("doc_to_text"), "{all}");
        assert!(all.contains("doc_to_choice"), "{all}");
        assert!(all.contains("bleu"), "{all}");
        assert!(all.contains("missing.jsonl"), "{all}");
        assert!(
            problems
                .iter()
                .all(|p| p.starts_with(&y.display().to_string())),
            "{all}"
        );
    }

    #[test]
    fn unknown_field_and_undefined_variable_are_errors() {
        let d = tmp("strict");
        write(&d, "docs.jsonl", DOCS);
        let y = write(
            &d,
            "u.yaml",
            "task: t\ncolour: red\ndataset: {path: docs.jsonl}\ndoc_to_text: x\ndoc_to_target: y\noutput_type: generate_until\n",
        );
        let e = load_task(&y, None).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `colour`") && e.contains("u.yaml"),
            "{e}"
        );
        let y = write(
            &d,
            "v.yaml",
            "task: t\ndataset: {path: docs.jsonl}\ntest_split: all\ndoc_to_text: \"{{ question }}\"\ndoc_to_target: y\noutput_type: generate_until\n",
        );
        let e = load_task(&y, None).unwrap_err().to_string();
        assert!(
            e.contains("doc 0") && e.contains("doc_to_text") && e.contains("undefined"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_errors_name_the_line_and_data_dir_is_required() {
        let d = tmp("lines");
        write(&d, "docs.jsonl", "{\"q\": 1}\nnot json\n");
        let y = write(
            &d,
            "t.yaml",
            "task: t\ndataset: {path: docs.jsonl}\ndoc_to_text: x\ndoc_to_target: y\noutput_type: generate_until\n",
        );
        let e = load_task(&y, None).unwrap_err().to_string();
        assert!(e.contains("docs.jsonl:2: invalid JSON"), "{e}");
        let y = write(
            &d,
            "s.yaml",
            "task: s\ndataset: {path: \"${DATA_DIR}/x.jsonl\"}\ndoc_to_text: x\ndoc_to_target: y\noutput_type: generate_until\n",
        );
        let e = load_task(&y, None).unwrap_err().to_string();
        assert!(
            e.contains("--data-dir") && e.contains("ICL_EVAL_DATA_DIR"),
            "{e}"
        );
    }

    #[test]
    fn csv_values_stay_text_and_broken_drafts_hide_nothing() {
        let d = tmp("csv");
        write(&d, "docs.csv", "q,a,split\nwho,007,test\nwhat,010,test\n");
        let y = write(
            &d,
            "c.yaml",
            "task: c\ndataset: {path: docs.csv, split_column: split}\ndoc_to_text: \"{{ q }}\"\n\
             doc_to_target: \"{{ a }}\"\noutput_type: generate_until\n",
        );
        let t = load_task(&y, None).unwrap();
        assert_eq!(t.test[0].target_text(), "007");
        write(&d, "draft.yaml", "this: [is not closed\n");
        let found = discover(std::slice::from_ref(&d)).unwrap();
        assert!(
            found
                .iter()
                .any(|s| s.name == "draft" && s.problem.is_some())
        );
        assert_eq!(
            files(resolve(&["c".into()], std::slice::from_ref(&d)).unwrap()),
            vec![y.clone()]
        );
        let e = resolve(&["c".into(), y.display().to_string()], &[d])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn bad_data_names_the_split_doc_and_field() {
        let d = tmp("bad-data");
        write(
            &d,
            "d.jsonl",
            "{\"q\": \"a\", \"label\": 0}\n{\"label\": 1}\n{\"q\": \"c\", \"label\": 7}\n",
        );
        write(&d, "empty.jsonl", "");
        let task = |train: &str| {
            format!(
                "task: bad\ndataset:\n  files: {{test: d.jsonl, train: {train}}}\nfewshot_split: train\n\
                 doc_to_text: \"{{{{ q }}}}\"\ndoc_to_target: \"{{{{ label }}}}\"\ndoc_to_choice: [no, yes]\n\
                 output_type: multiple_choice\n"
            )
        };
        let y = write(&d, "t.yaml", &task("d.jsonl"));
        let e = load_task(&y, None).unwrap_err().to_string();
        assert!(
            e.contains("split `test`, doc 1: field `doc_to_text`: the doc has no field `q`"),
            "{e}"
        );
        assert!(
            e.contains("split `test`, doc 2: field `doc_to_target`: index 7 is out of range"),
            "{e}"
        );
        let y = write(&d, "e.yaml", &task("empty.jsonl"));
        let e = load_task(&y, None).unwrap_err().to_string();
        assert!(
            e.contains("field `fewshot_split`: split `train` (empty.jsonl) has no docs"),
            "{e}"
        );
    }

    #[test]
    fn subfolders_includes_and_tags() {
        let d = tmp("tags");
        let sub = d.join("group");
        fs::create_dir_all(&sub).unwrap();
        write(&d, "docs.jsonl", DOCS);
        write(
            &sub,
            "_base.yaml",
            "tag: [fam, all]\ndataset: {path: ../docs.jsonl}\ntest_split: all\ndoc_to_text: \"{{ q }}\"\n\
             doc_to_target: \"{{ label }}\"\ndoc_to_choice: [no, yes]\noutput_type: multiple_choice\n",
        );
        let b = write(&sub, "b.yaml", "include: _base.yaml\ntask: b\n");
        let a = write(&sub, "a.yaml", "include: _base.yaml\ntask: a\ntag: all\n");
        let found = discover(std::slice::from_ref(&d)).unwrap();
        let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b"],
            "the base is no task; subfolders are searched"
        );
        assert_eq!(
            files(resolve(&["fam".into()], std::slice::from_ref(&d)).unwrap()),
            vec![b.clone()],
            "a's own `tag` replaces the base's"
        );
        assert_eq!(
            files(resolve(&["all".into()], std::slice::from_ref(&d)).unwrap()),
            vec![a.clone(), b.clone()]
        );
        let t = load_task(&a, None).unwrap();
        assert_eq!((t.test.len(), t.test[0].target_text()), (3, "yes"));
    }

    /// lm-eval's group files: nested (inline) groups, `{task, task_alias}` members, tags as
    /// members, each group reported with its tasks; a cycle is an error naming the file.
    #[test]
    fn group_files_nest_and_cycles_are_named() {
        let d = tmp("groups");
        write(&d, "docs.jsonl", DOCS);
        let base = "dataset: {path: docs.jsonl}\ntest_split: all\ndoc_to_text: \"{{ q }}\"\n\
                    doc_to_target: \"{{ label }}\"\ndoc_to_choice: [no, yes]\noutput_type: multiple_choice\n";
        let a = write(&d, "a.yaml", &format!("task: a\n{base}"));
        let b = write(&d, "b.yaml", &format!("task: b\ntag: bt\n{base}"));
        let c = write(&d, "c.yaml", &format!("task: c\n{base}"));
        write(
            &d,
            "g.yaml",
            "group: g\ngroup_alias: G\ntask:\n  - a\n  - group: inner\n    task:\n      - bt\n      - task: c\n        task_alias: see\n\
             aggregate_metric_list:\n  - metric: acc\n    weight_by_size: false\nmetadata: {version: 1}\n",
        );
        let sel =
            super::super::discover::select(&["g".into(), "a".into()], std::slice::from_ref(&d));
        let sel = sel.unwrap();
        let files: Vec<&PathBuf> = sel.tasks.iter().map(|t| &t.path).collect();
        assert_eq!(files, vec![&a, &b, &c], "a once");
        assert!(
            sel.tasks.iter().all(|t| t.yaml.is_none()),
            "an alias sets nothing"
        );
        let groups: Vec<(&str, Vec<&str>)> = sel
            .groups
            .iter()
            .map(|g| {
                (
                    g.name.as_str(),
                    g.tasks.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            [("inner", vec!["b", "c"]), ("g", vec!["a", "b", "c"])]
        );
        let found = discover(std::slice::from_ref(&d)).unwrap();
        let g = found
            .iter()
            .find(|t| t.name == "g")
            .unwrap()
            .group
            .clone()
            .unwrap();
        assert_eq!(g.alias.as_deref(), Some("G"));
        assert_eq!(g.weight_by_size, vec![("acc".to_string(), false)]);

        write(&d, "x.yaml", "group: x\ntask: [a, y]\n");
        write(&d, "y.yaml", "group: y\ntask: [x]\n");
        let e = resolve(&["x".into()], std::slice::from_ref(&d))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("group cycle x → y → x") && e.contains("y.yaml"),
            "{e}"
        );

        write(
            &d,
            "z.yaml",
            "group: z\ntask:\n  - dataset_path: foo\n    use_prompt: promptsource\n",
        );
        let found = discover(std::slice::from_ref(&d)).unwrap();
        let z = found.iter().find(|t| t.path.ends_with("z.yaml")).unwrap();
        let problem = z.problem.as_deref().unwrap();
        assert!(
            problem.contains("z.yaml: group `z`: key `task[0]` has neither `task`"),
            "{problem}"
        );
    }

    /// lm-eval's group members with keys: `{task: NAME, KEY: VALUE}` sets keys of a task file
    /// (the group's own task keys too, the member's winning), a name no file has is a task
    /// defined in the group (its `include:` beside the group file), and one task reached with
    /// two settings is an error naming both.
    #[test]
    fn group_members_set_keys_and_define_tasks() {
        let d = tmp("group-keys");
        write(&d, "docs.jsonl", DOCS);
        let base = "dataset: {path: docs.jsonl}\ntest_split: all\ndoc_to_text: \"{{ q }}\"\n\
                    doc_to_target: \"{{ label }}\"\ndoc_to_choice: [no, yes]\noutput_type: multiple_choice\n";
        write(&d, "a.yaml", &format!("task: a\ndescription: own\n{base}"));
        write(&d, "b.yaml", &format!("task: b\n{base}"));
        fs::create_dir_all(d.join("g")).unwrap();
        write(&d.join("g"), "_base_yaml", base);
        // Relative paths of a task defined in a group are the group file's.
        write(&d.join("g"), "docs.jsonl", DOCS);
        write(
            &d.join("g"),
            "g.yaml",
            "group: g\ndescription: \"group says \"\ntask:\n  - task: a\n    task_alias: A\n\
             \x20 - task: b\n    description: \"b says \"\n    num_fewshot: 3\n\
             \x20 - task: q\n    include: _base_yaml\n    doc_to_text: \"Q: {{ q }}\"\n",
        );
        let dirs = std::slice::from_ref(&d);
        let sel = select(&["g".into()], dirs).unwrap();
        let names: Vec<&str> = sel.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "q"]);
        let options = LoadOptions {
            data_dir: None,
            python: None,
            hub: crate::hub::HubOptions::from_env(),
        };
        let tasks: Vec<Task> = sel
            .tasks
            .iter()
            .map(|r| load_ref(r, &options).unwrap())
            .collect();
        let descriptions: Vec<&str> = tasks
            .iter()
            .map(|t| t.test[0].description.as_str())
            .collect();
        assert_eq!(descriptions, ["group says ", "b says ", "group says "]);
        assert_eq!(tasks[2].test[0].text, "Q: good");
        // The task files themselves are unchanged, and a defined task runs by its name too.
        let plain = load_ref(&resolve(&["a".into()], dirs).unwrap()[0], &options).unwrap();
        assert_eq!(plain.test[0].description, "own");
        let q = resolve(&["q".into()], dirs).unwrap();
        let alone = load_ref(&q[0], &options).unwrap();
        assert_eq!(alone.test[0].text, "Q: good");
        assert_eq!(
            alone.test[0].description, "group says ",
            "its group's keys too"
        );
        assert_eq!(
            select(&["g".into(), "q".into()], dirs).unwrap().tasks.len(),
            3
        );
        // The same keys reached through two groups, or a file named by path and by name: once.
        write(
            &d,
            "g2.yaml",
            "group: g2\ntask:\n  - task: a\n    description: \"group says \"\n",
        );
        let both = select(&["g".into(), "g2".into()], dirs).unwrap();
        assert_eq!(both.tasks.len(), 3, "{:?}", both.tasks);
        let a_path = d.join("a.yaml").display().to_string();
        assert_eq!(resolve(&[a_path, "a".into()], dirs).unwrap().len(), 1);
        // Python a group names lies beside the group file, wherever the task's file is.
        write(
            &d.join("g"),
            "py.yaml",
            "group: py\nprocess_docs: !function utils.docs\ntask: [a]\n",
        );
        let found = discover(dirs).unwrap();
        let py = found.iter().find(|t| t.name == "py").unwrap();
        let hook = &py.group.as_ref().unwrap().overrides["process_docs"];
        let want = format!("{}.docs", d.join("g").join("utils").display());
        assert!(
            matches!(hook, serde_yaml::Value::Tagged(t) if t.value == want.as_str()),
            "{hook:?}"
        );
        // Two settings of one task in one run cannot share its results.
        let e = select(&["g".into(), "a".into()], dirs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("task `a` is reached twice with different settings")
                && e.contains("group `g`")
                && e.contains("a.yaml"),
            "{e}"
        );
        // A problem in a member's keys names the group file and the task.
        write(
            &d,
            "h.yaml",
            "group: h\ntask:\n  - task: b\n    doc_to_txt: x\n",
        );
        let r = &resolve(&["h".into()], dirs).unwrap()[0];
        let e = load_ref(r, &options).unwrap_err().to_string();
        assert!(
            e.contains("b.yaml (task `b` with keys from group `h`)") && e.contains("doc_to_txt"),
            "{e}"
        );
    }

    /// `fewshot.doc_to_text` / `doc_to_target` (lm-eval's `fewshot_config.doc_to_*`) render the
    /// demonstrations only, even when they come from the test split itself.
    #[test]
    fn demonstrations_may_have_templates_of_their_own() {
        let d = tmp("fewshot-templates");
        write(&d, "docs.jsonl", DOCS);
        let y = write(
            &d,
            "t.yaml",
            "task: t\ndataset: {path: docs.jsonl}\ntest_split: all\ndoc_to_text: \"{{ q }}\"\n\
             doc_to_target: \"{{ label }}\"\noutput_type: generate_until\n\
             fewshot: {doc_to_text: \"Demo: {{ q }}\", doc_to_target: \"{{ label }}!\"}\n",
        );
        let t = load_task(&y, None).unwrap();
        assert_eq!(
            (t.test[0].text.as_str(), t.test[0].target_text()),
            ("good", "1")
        );
        assert_eq!(
            (t.fewshot[0].text.as_str(), t.fewshot[0].target_text()),
            ("Demo: good", "1!")
        );
        assert!(t.fewshot_is_test);
    }

    #[test]
    fn regex_and_split_column_formats() {
        let d = tmp("regex");
        write(&d, "train.txt", "1 a fine film .\n0 a dull film .\n");
        write(&d, "test.txt", "1 lovely .\n");
        let y = write(
            &d,
            "r.yaml",
            "task: r\ndataset:\n  format: regex\n  pattern: '^(?P<label>[01]) (?P<sentence>.*)$'\n  files: {train: train.txt, test: test.txt}\n\
             fewshot_split: train\ndoc_to_text: \"{{ sentence }}\"\ndoc_to_target: \"{{ label }}\"\ndoc_to_choice: [negative, positive]\noutput_type: multiple_choice\n",
        );
        let t = load_task(&y, None).unwrap();
        assert_eq!(
            (t.test.len(), t.fewshot.len(), t.fewshot_is_test),
            (1, 2, false)
        );
        assert_eq!(t.fewshot[1].target_text(), "negative");
        write(
            &d,
            "all.jsonl",
            "{\"x\": \"a\", \"split\": \"train\"}\n{\"x\": \"b\", \"split\": \"test\"}\n",
        );
        let y = write(
            &d,
            "c.yaml",
            "task: c\ndataset: {path: all.jsonl, split_column: split}\nfewshot_split: train\ndoc_to_text: \"{{ x }}\"\ndoc_to_target: \"{{ x }}\"\noutput_type: generate_until\n",
        );
        let t = load_task(&y, None).unwrap();
        assert_eq!(t.test[0].text, "b");
        assert_eq!(t.fewshot[0].text, "a");
    }

    /// `regex_replace` reads Python's replacement syntax: numbered and named groups, escapes.
    #[test]
    fn regex_replace_is_pythons_re_sub() {
        let r = |text: &str, pattern: &str, with: &str| regex_replace(text, pattern, with).unwrap();
        assert_eq!(r("a [title] b [x]", r"\[.*?\]", ""), "a  b ");
        assert_eq!(r("2024-05", r"(\d+)-(\d+)", r"\2/\1 $5"), "05/2024 $5");
        assert_eq!(r("ab", r"(?P<x>a)(b)", r"\g<x>\g<2>\n\\"), "ab\n\\");
        assert!(regex_replace("a", "(", "").is_err());
    }
}
