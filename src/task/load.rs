//! The only reader of task YAML, templates and data files. Collects every problem it finds, each
//! naming the file, field, line or doc, so `validate` can report them all at once.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use minijinja::{Environment, UndefinedBehavior, Value as JValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::spec::{self, ChoiceSpec, DatasetSpec, OutputType, TaskSpec};
use super::{Answer, Item, Metric, Task};
use super::{dataset, generators, include, process};

/// Problems stop reporting after this many per kind, so a broken 10k-doc file stays readable.
const MAX_DOC_PROBLEMS: usize = 5;

/// A task file found on disk.
#[derive(Debug, Clone)]
pub struct TaskSource {
    pub name: String,
    pub path: PathBuf,
    /// The YAML's leading `#` comment, which describes the task for people.
    pub about: String,
    /// Why the file is not a usable task, if it is not.
    pub problem: Option<String>,
    /// Its `tag:` names: `--tasks TAG` runs every task carrying it.
    pub tags: Vec<String>,
}

/// Task YAMLs in `dirs` and their subfolders (files named `_*` are only included by others), by
/// their `task:` name. A file that cannot be read or has no `task:` is listed under its file stem
/// with the problem, so one broken draft hides nothing else.
pub fn discover(dirs: &[PathBuf]) -> Result<Vec<TaskSource>> {
    let mut found = Vec::new();
    for dir in dirs {
        let mut paths = Vec::new();
        yaml_files(dir, &mut paths)
            .map_err(|e| anyhow!("{}: cannot list tasks: {e}", dir.display()))?;
        paths.sort();
        for path in paths {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The file's own text comes first among those read; a file that fails is read once
            // more, for its leading comment only.
            let (merged, text) = match include::read_merged(&path) {
                Ok((v, texts)) => (Ok(v), texts.into_iter().next().unwrap_or_default()),
                Err(e) => (Err(e), fs::read_to_string(&path).unwrap_or_default()),
            };
            let name = merged
                .as_ref()
                .ok()
                .and_then(|v| v.get("task").and_then(|t| t.as_str()).map(str::to_string));
            let tags = merged
                .as_ref()
                .ok()
                .and_then(|v| v.get("tag").cloned())
                .and_then(|t| serde_yaml::from_value::<spec::Tags>(t).ok())
                .map(spec::Tags::into_vec)
                .unwrap_or_default();
            let about = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .map(|l| l.trim_start_matches('#').trim())
                .collect::<Vec<_>>()
                .join(" ");
            found.push(TaskSource {
                problem: match (&merged, &name) {
                    (Err(e), _) => Some(e.clone()),
                    (Ok(_), None) => Some("not a task YAML with a `task:` name".to_string()),
                    _ => None,
                },
                name: name.unwrap_or(stem),
                path,
                about,
                tags,
            });
        }
    }
    Ok(found)
}

/// Every `*.yaml` / `*.yml` under `dir`, except files named `_*`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// A tag named on `--tasks`: its tasks are reported one by one and as a group mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    /// Task names, sorted.
    pub tasks: Vec<String>,
}

/// What `--tasks` selects: task files, and the groups among the names (tags).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub paths: Vec<PathBuf>,
    pub groups: Vec<Group>,
}

/// Resolves `--tasks` entries: YAML paths are taken as they are, names are looked up in `dirs`.
pub fn resolve(names: &[String], dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(select(names, dirs)?.paths)
}

/// Resolves `--tasks` entries like [`resolve`], keeping each tag named as a group.
pub fn select(names: &[String], dirs: &[PathBuf]) -> Result<Selection> {
    let mut known: Option<Vec<TaskSource>> = None;
    let mut out = Vec::with_capacity(names.len());
    let mut groups = Vec::new();
    for n in names {
        let p = Path::new(n);
        if p.is_file() {
            out.push(p.to_path_buf());
            continue;
        }
        if known.is_none() {
            known = Some(discover(dirs)?);
        }
        let known = known.as_deref().unwrap_or_default();
        let hit = known.iter().find(|t| &t.name == n && t.problem.is_none());
        let tagged: Vec<&TaskSource> = known
            .iter()
            .filter(|t| t.problem.is_none() && t.tags.contains(n))
            .collect();
        if hit.is_none() && !tagged.is_empty() {
            let mut tagged = tagged;
            tagged.sort_by(|a, b| a.name.cmp(&b.name));
            groups.push(Group {
                name: n.clone(),
                tasks: tagged.iter().map(|t| t.name.clone()).collect(),
            });
            out.extend(tagged.into_iter().map(|t| t.path.clone()));
            continue;
        }
        let Some(t) = hit else {
            let list: Vec<&str> = known
                .iter()
                .filter(|t| t.problem.is_none())
                .map(|t| t.name.as_str())
                .collect();
            bail!(
                "--tasks: no task named `{n}` in {} (known: {}); pass a YAML path or --tasks-dir",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                list.join(", ")
            );
        };
        out.push(t.path.clone());
    }
    if let Some(dup) = out
        .iter()
        .enumerate()
        .find_map(|(i, p)| out[..i].contains(p).then_some(p))
    {
        bail!("--tasks: {} is listed twice", dup.display());
    }
    Ok(Selection { paths: out, groups })
}

/// Loads and validates a task; the error lists every problem found.
pub fn load_task(path: &Path, data_dir: Option<&Path>) -> Result<Task> {
    let (task, problems) = build(path, data_dir);
    match task {
        Some(t) if problems.is_empty() => Ok(t),
        _ => bail!("{}", problems.join("\n")),
    }
}

/// Every problem with a task file (empty when it is fine), including rendering a 0- and a 1-shot
/// prompt of its first doc.
pub fn validate_task(path: &Path, data_dir: Option<&Path>) -> Vec<String> {
    let (task, mut problems) = build(path, data_dir);
    if let Some(task) = task {
        // The sampler must suit the task (knn's encoder is checked when a run loads it).
        if task.sampler != crate::sampler::Sampler::Knn
            && let Err(e) =
                crate::sampler::Selector::new(&task, task.sampler, task.demo_order, None)
        {
            problems.push(format!("{}: field `fewshot.sampler`: {e}", path.display()));
        }
        if task.test.is_empty() {
            problems.push(format!("{}: test split has no docs", path.display()));
        } else if task.fewshot.len() < 1 + usize::from(task.fewshot_is_test) {
            problems.push(format!(
                "{}: few-shot split has no doc to use as a demonstration",
                path.display()
            ));
        } else {
            let draw: Vec<_> = task
                .fewshot
                .iter()
                .filter(|d| !(task.fewshot_is_test && d.id == task.test[0].id))
                .take(1)
                .map(crate::sampler::Demo::gold)
                .collect();
            for k in [0, 1] {
                let p = crate::prompt::build(&task, &task.test[0], &draw[..k]);
                if p.is_empty() {
                    problems.push(format!(
                        "{}: the {k}-shot prompt of doc 0 is empty",
                        path.display()
                    ));
                }
            }
        }
    }
    problems
}

struct Ctx<'a> {
    file: String,
    base: PathBuf,
    data_dir: Option<&'a Path>,
    problems: Vec<String>,
    hasher: Sha256,
    /// The missing data directory is reported once, not once per file.
    missing_data_dir_reported: bool,
}

impl Ctx<'_> {
    fn problem(&mut self, msg: impl std::fmt::Display) {
        self.problems.push(format!("{}: {msg}", self.file));
    }

    /// The first few of many similar problems, then how many more `what` (e.g. "lines") fail.
    fn problems_capped(&mut self, errs: Vec<String>, what: &str) {
        let n = errs.len();
        for e in errs.into_iter().take(MAX_DOC_PROBLEMS) {
            self.problem(e);
        }
        if n > MAX_DOC_PROBLEMS {
            self.problem(format!(
                "{what}: {} more fail the same way",
                n - MAX_DOC_PROBLEMS
            ));
        }
    }
}

fn build(path: &Path, data_dir: Option<&Path>) -> (Option<Task>, Vec<String>) {
    let file = path.display().to_string();
    let (merged, texts) = match include::read_merged(path) {
        Ok(m) => m,
        Err(e) => return (None, vec![e]),
    };
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
    };
    for text in &texts {
        cx.hasher.update(text.as_bytes());
    }
    let task = build_spec(&mut cx, spec, path);
    (task, cx.problems)
}

fn build_spec(cx: &mut Ctx, spec: TaskSpec, path: &Path) -> Option<Task> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Python's string and list methods (`text.split(' ')`, `.strip()`), which lm-eval templates
    // use because lm-eval renders them with Jinja2 over Python objects.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // Inline templates mean what they say: `description: "Translate:\n"` keeps its newline.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    let mut add = |cx: &mut Ctx, field: &str, src: &str| {
        let src = template_source(cx, field, src)?;
        match env.add_template_owned(field.to_string(), src) {
            Ok(()) => Some(()),
            Err(e) => {
                cx.problem(format!("field `{field}`: invalid template: {e}"));
                None
            }
        }
    };
    let mut ok = add(cx, "description", &spec.description).is_some();
    ok &= add(cx, "doc_to_text", &spec.doc_to_text).is_some();
    ok &= add(cx, "doc_to_target", &spec.doc_to_target).is_some();
    let takes_choices = matches!(
        spec.output_type,
        OutputType::MultipleChoice | OutputType::MultipleInput
    );
    let choices = match &spec.doc_to_choice {
        Some(_) if !takes_choices => {
            cx.problem(format!(
                "field `doc_to_choice` applies only to output_type multiple_choice or \
                 multiple_input, not {}",
                spec.output_type.name()
            ));
            ok = false;
            None
        }
        Some(ChoiceSpec::List(list)) => {
            for (i, c) in list.iter().enumerate() {
                ok &= add(cx, &format!("doc_to_choice[{i}]"), c).is_some();
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
                    ok = false;
                    None
                }
            }
        }
        None if takes_choices => {
            cx.problem(format!(
                "field `doc_to_choice` is required for output_type {}",
                spec.output_type.name()
            ));
            ok = false;
            None
        }
        None => None,
    };
    if spec.generation.is_some() && spec.output_type != OutputType::GenerateUntil {
        cx.problem("field `generation` applies only to output_type generate_until");
    }
    let metrics = match &spec.metrics {
        None => Metric::defaults(spec.output_type),
        Some(list) if list.is_empty() => {
            cx.problem("field `metrics` is empty; list at least one metric or leave it out");
            Vec::new()
        }
        Some(list) => list
            .iter()
            .filter_map(|m| {
                Metric::parse(m, spec.output_type)
                    .map_err(|e| cx.problem(format!("field `metrics`: {e}")))
                    .ok()
            })
            .collect(),
    };
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
    let mut splits = load_splits(cx, &spec.dataset)?;
    for (name, docs) in &mut splits {
        if let Err(errs) = process::apply(&spec.process_docs, name, docs) {
            cx.problems_capped(errs, &format!("split `{name}`: docs"));
            return None;
        }
    }
    let fewshot_split = spec
        .fewshot_split
        .clone()
        .unwrap_or_else(|| spec.test_split.clone());
    let known: Vec<&str> = splits.keys().map(String::as_str).collect();
    for (field, split) in [
        ("test_split", &spec.test_split),
        ("fewshot_split", &fewshot_split),
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
    if !ok || !cx.problems.is_empty() {
        return None;
    }
    let render = Renderer {
        env: &env,
        choices: choices.as_ref(),
        output_type: spec.output_type,
    };
    let test = render_split(cx, &render, &spec.test_split, &splits[&spec.test_split]);
    let fewshot = if fewshot_split == spec.test_split {
        test.clone()
    } else {
        render_split(cx, &render, &fewshot_split, &splits[&fewshot_split])
    };
    if !cx.problems.is_empty() {
        return None;
    }
    let content_free = match splits[&spec.test_split].first() {
        Some(doc) => super::CONTENT_FREE
            .iter()
            .map(|cf| {
                let ctx = template_context(&blank_strings(doc, cf));
                render.render("doc_to_text", &ctx)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cx.problem(format!("content-free input for acc_calibrated: {e}")))
            .ok()?,
        None => Vec::new(),
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
    })
}

/// What templates see: the doc's fields as variables, and the whole doc as `doc` (unless it has a
/// field of that name) for fields whose names are not identifiers, e.g. `doc["Class Index"]`.
fn template_context(doc: &Value) -> JValue {
    match doc {
        Value::Object(o) if !o.contains_key("doc") => {
            let mut with = o.clone();
            with.insert("doc".into(), doc.clone());
            JValue::from(minijinja::value::Serde(&Value::Object(with)))
        }
        _ => JValue::from(minijinja::value::Serde(doc)),
    }
}

/// `doc` with every string (at any depth) replaced by `with`: the doc's shape without its content.
fn blank_strings(doc: &Value, with: &str) -> Value {
    match doc {
        Value::String(_) => Value::String(with.to_string()),
        Value::Array(a) => Value::Array(a.iter().map(|v| blank_strings(v, with)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), blank_strings(v, with)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Inline template text, or the contents of `prompts/NAME` for `file:NAME`.
fn template_source(cx: &mut Ctx, field: &str, src: &str) -> Option<String> {
    let Some(name) = src.strip_prefix("file:") else {
        return Some(src.to_string());
    };
    // prompts/ beside the task, or beside a folder above it (tasks/GROUP/x.yaml → prompts/).
    let candidates: Vec<PathBuf> = cx
        .base
        .ancestors()
        .take(4)
        .map(|a| a.join("prompts").join(name.trim()))
        .collect();
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => match fs::read_to_string(p) {
            Ok(s) => {
                cx.hasher.update(s.as_bytes());
                // Files end with a newline by convention; it is not part of the prompt.
                Some(s.strip_suffix('\n').unwrap_or(&s).to_string())
            }
            Err(e) => {
                cx.problem(format!("field `{field}`: cannot read {}: {e}", p.display()));
                None
            }
        },
        None => {
            cx.problem(format!(
                "field `{field}`: template file `{}` not found in prompts/",
                name.trim()
            ));
            None
        }
    }
}

struct Renderer<'e> {
    env: &'e Environment<'e>,
    choices: Option<&'e ChoiceSpec>,
    output_type: OutputType,
}

impl Renderer<'_> {
    fn render(&self, name: &str, doc: &JValue) -> Result<String, String> {
        let t = self.env.get_template(name).map_err(|e| format!("{e}"))?;
        t.render(doc.clone()).map_err(|e| {
            // Strict undefined says only "undefined value": name the doc fields the template
            // uses that this doc lacks.
            let mut missing: Vec<String> = t
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| doc.get_attr(v).is_ok_and(|x| x.is_undefined()))
                .collect();
            missing.sort();
            match missing.as_slice() {
                [] => format!("field `{name}`: {e}"),
                m => format!(
                    "field `{name}`: the doc has no field {} ({e})",
                    m.iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        })
    }

    fn item(&self, id: usize, doc: &Value) -> Result<Item, String> {
        let ctx = template_context(doc);
        let text = self.render("doc_to_text", &ctx)?;
        let description = self.render("description", &ctx)?;
        let target = self.render("doc_to_target", &ctx)?;
        let (text, answer) = match self.output_type {
            OutputType::GenerateUntil => (text, Answer::Text(target)),
            OutputType::Loglikelihood => (text, Answer::Continuation(target)),
            OutputType::MultipleChoice => {
                let choices = self.choices(&ctx)?;
                let gold = resolve_gold("doc_to_target", &target, &choices)?;
                (text, Answer::Choice { choices, gold })
            }
            // lm-eval's convention: doc_to_text names the gold input, which is also the text a
            // demonstration of this doc shows.
            OutputType::MultipleInput => {
                let inputs = self.choices(&ctx)?;
                let gold = resolve_gold("doc_to_text", &text, &inputs)?;
                let text = inputs[gold].clone();
                let answer = Answer::Inputs {
                    inputs,
                    gold,
                    continuation: target,
                };
                (text, answer)
            }
        };
        Ok(Item {
            id,
            text,
            answer,
            description,
        })
    }

    fn choices(&self, ctx: &JValue) -> Result<Vec<String>, String> {
        let choices = match self.choices {
            Some(ChoiceSpec::List(list)) => (0..list.len())
                .map(|i| self.render(&format!("doc_to_choice[{i}]"), ctx))
                .collect::<Result<Vec<_>, _>>()?,
            Some(ChoiceSpec::Expression(expr)) => {
                let e = self
                    .env
                    .compile_expression(expr)
                    .map_err(|e| format!("field `doc_to_choice`: {e}"))?;
                let v = e
                    .eval(ctx.clone())
                    .map_err(|e| format!("field `doc_to_choice`: {e}"))?;
                let items = v
                    .try_iter()
                    .map_err(|_| format!("field `doc_to_choice`: `{expr}` is not a list"))?;
                items.map(|x| x.to_string()).collect()
            }
            None => return Err("field `doc_to_choice` is missing".into()),
        };
        if choices.len() < 2 {
            return Err(format!(
                "field `doc_to_choice`: {} choice(s); {} needs at least 2",
                choices.len(),
                self.output_type.name()
            ));
        }
        Ok(choices)
    }
}

/// The gold answer rendered by `field` (`doc_to_target` of a multiple-choice doc, `doc_to_text` of
/// a multiple-input doc): a choice index, or the text of one choice.
fn resolve_gold(field: &str, target: &str, choices: &[String]) -> Result<usize, String> {
    let t = target.trim();
    if let Ok(i) = t.parse::<usize>() {
        return if i < choices.len() {
            Ok(i)
        } else {
            Err(format!(
                "field `{field}`: index {i} is out of range for {} choices",
                choices.len()
            ))
        };
    }
    choices
        .iter()
        .position(|c| c == target || c.trim() == t)
        .ok_or_else(|| {
            format!(
                "field `{field}`: `{target}` is neither an index nor one of the choices {choices:?}"
            )
        })
}

fn render_split(cx: &mut Ctx, r: &Renderer, split: &str, docs: &[Value]) -> Option<Vec<Item>> {
    let mut items = Vec::with_capacity(docs.len());
    // The same mistake usually hits every doc: report each distinct error once, with the docs it hit.
    let mut failures: Vec<(String, Vec<usize>)> = Vec::new();
    for (id, doc) in docs.iter().enumerate() {
        match r.item(id, doc) {
            Ok(it) => items.push(it),
            Err(e) => match failures.iter_mut().find(|(m, _)| *m == e) {
                Some((_, ids)) => ids.push(id),
                None => failures.push((e, vec![id])),
            },
        }
    }
    let distinct = failures.len();
    for (msg, ids) in failures.iter().take(MAX_DOC_PROBLEMS) {
        let which = match ids.len() {
            1 => format!("doc {}", ids[0]),
            n => format!("doc {} and {} more", ids[0], n - 1),
        };
        cx.problem(format!("split `{split}`, {which}: {msg}"));
    }
    if distinct > MAX_DOC_PROBLEMS {
        cx.problem(format!(
            "split `{split}`: {} more distinct errors",
            distinct - MAX_DOC_PROBLEMS
        ));
    }
    failures.is_empty().then_some(items)
}

/// `dataset.split_rows`: disjoint half-open row ranges of one file.
fn split_by_rows(
    cx: &mut Ctx,
    ds: &DatasetSpec,
    docs: Vec<Value>,
    rows: &BTreeMap<String, [usize; 2]>,
) -> Option<BTreeMap<String, Vec<Value>>> {
    if ds.split_column.is_some() {
        cx.problem("field `dataset`: give `split_column` or `split_rows`, not both");
        return None;
    }
    let mut ranges: Vec<(&String, [usize; 2])> = rows.iter().map(|(k, v)| (k, *v)).collect();
    ranges.sort_by_key(|(_, r)| r[0]);
    let mut ok = true;
    for (name, [a, b]) in &ranges {
        if a >= b || *b > docs.len() {
            cx.problem(format!(
                "field `dataset.split_rows.{name}`: [{a}, {b}] must be a non-empty range within the \
                 file's {} rows",
                docs.len()
            ));
            ok = false;
        }
    }
    for w in ranges.windows(2) {
        if w[1].1[0] < w[0].1[1] {
            cx.problem(format!(
                "field `dataset.split_rows`: `{}` and `{}` overlap; a doc must not be both a test \
                 doc and a demonstration",
                w[0].0, w[1].0
            ));
            ok = false;
        }
    }
    ok.then(|| {
        ranges
            .into_iter()
            .map(|(name, [a, b])| (name.clone(), docs[a..b].to_vec()))
            .collect()
    })
}

fn load_splits(cx: &mut Ctx, ds: &DatasetSpec) -> Option<BTreeMap<String, Vec<Value>>> {
    let sources = usize::from(ds.path.is_some())
        + usize::from(ds.files.is_some())
        + usize::from(ds.generator.is_some());
    if sources != 1 {
        cx.problem("field `dataset`: give exactly one of `path`, `files` or `generator`");
        return None;
    }
    if let Some(g) = &ds.generator {
        cx.hasher
            .update(format!("generator:{}:{:?}:{}", g.name, g.splits, g.seed).as_bytes());
        return generators::generate(&g.name, &g.splits, g.seed)
            .map_err(|e| cx.problem(format!("field `dataset.generator.name`: {e}")))
            .ok();
    }
    if let Some(files) = &ds.files {
        if ds.split_column.is_some() {
            cx.problem("field `dataset.split_column` applies only to a single `path`");
        }
        let mut out = BTreeMap::new();
        for (split, f) in files {
            if let Some(docs) = read_file(cx, ds, f) {
                out.insert(split.clone(), docs);
            }
        }
        return (out.len() == files.len()).then_some(out);
    }
    let docs = read_file(cx, ds, ds.path.as_deref()?)?;
    if let Some(rows) = &ds.split_rows {
        return split_by_rows(cx, ds, docs, rows);
    }
    let Some(col) = &ds.split_column else {
        return Some(BTreeMap::from([("all".to_string(), docs)]));
    };
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (i, d) in docs.into_iter().enumerate() {
        match d.get(col).and_then(Value::as_str) {
            Some(s) => out.entry(s.to_string()).or_default().push(d),
            None => {
                cx.problem(format!(
                    "field `dataset.split_column`: row {} has no string column `{col}`",
                    i + 1
                ));
                return None;
            }
        }
    }
    Some(out)
}

fn resolve_path(cx: &mut Ctx, raw: &str) -> Option<PathBuf> {
    match raw.strip_prefix("${DATA_DIR}") {
        Some(rest) => match cx.data_dir {
            Some(d) => Some(d.join(rest.trim_start_matches('/'))),
            None => {
                if !cx.missing_data_dir_reported {
                    cx.missing_data_dir_reported = true;
                    cx.problem(format!(
                        "dataset `{raw}` lives in the data directory, which is not set: pass --data-dir DIR or set ICL_EVAL_DATA_DIR"
                    ));
                }
                None
            }
        },
        None => Some(cx.base.join(raw)),
    }
}

fn read_file(cx: &mut Ctx, ds: &DatasetSpec, raw: &str) -> Option<Vec<Value>> {
    let path = resolve_path(cx, raw)?;
    let shown = path.display().to_string();
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            cx.problem(format!("dataset file {shown}: {e}"));
            return None;
        }
    };
    cx.hasher.update(&bytes);
    let mut extra = Vec::new();
    for (field, raw) in ds.column_files.iter().flatten() {
        let path = resolve_path(cx, raw)?;
        match fs::read(&path) {
            Ok(b) => {
                cx.hasher.update(&b);
                extra.push((field.clone(), path.display().to_string(), b));
            }
            Err(e) => {
                cx.problem(format!(
                    "field `dataset.column_files.{field}`: {}: {e}",
                    path.display()
                ));
                return None;
            }
        }
    }
    let result = dataset::read(&path, &bytes, ds)
        .and_then(|docs| dataset::add_column_files(docs, &shown, &extra));
    result
        .map_err(|errs| cx.problems_capped(errs, &format!("{shown}: lines")))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(t.sampler, crate::sampler::Sampler::Fixed);
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
        let all = validate_task(&bad, None).join("\n");
        assert!(
            all.contains("split_rows.train") && all.contains("4 rows"),
            "{all}"
        );
        assert!(all.contains("overlap"), "{all}");
        let generation = write(
            &d,
            "g.yaml",
            "task: g\ndataset: {path: all.csv, split_rows: {test: [0, 3], train: [3, 4]}}\n\
             fewshot_split: train\ndoc_to_text: x\ndoc_to_target: y\noutput_type: generate_until\n\
             fewshot: {sampler: balanced}\n",
        );
        let all = validate_task(&generation, None).join("\n");
        assert!(
            all.contains("fewshot.sampler") && all.contains("balanced"),
            "{all}"
        );
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
        let problems = validate_task(&y, None);
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
            resolve(&["c".into()], std::slice::from_ref(&d)).unwrap(),
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
            resolve(&["fam".into()], std::slice::from_ref(&d)).unwrap(),
            vec![b.clone()],
            "a's own `tag` replaces the base's"
        );
        assert_eq!(
            resolve(&["all".into()], std::slice::from_ref(&d)).unwrap(),
            vec![a.clone(), b.clone()]
        );
        let t = load_task(&a, None).unwrap();
        assert_eq!((t.test.len(), t.test[0].target_text()), (3, "yes"));
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
}
