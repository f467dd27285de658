//! Rendering docs through the task's templates (strict minijinja): each doc's text, target and
//! choices once at load, gold answers resolved, each failure named with its split and doc.

use std::fs;
use std::path::PathBuf;

use minijinja::{Environment, Value as JValue};
use serde_json::Value;
use sha2::Digest;

use super::problems::{Ctx, MAX_DOC_PROBLEMS};
use super::spec::{ChoiceSpec, OutputType};
use super::{Answer, Item};

/// What templates see: the doc's fields as variables, and the whole doc as `doc` (unless it has a
/// field of that name) for fields whose names are not identifiers, e.g. `doc["Class Index"]`.
pub(super) fn template_context(doc: &Value) -> JValue {
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
pub(super) fn blank_strings(doc: &Value, with: &str) -> Value {
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
pub(super) fn template_source(cx: &mut Ctx, field: &str, src: &str) -> Option<String> {
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

/// The task's compiled templates, applied doc by doc.
pub(super) struct Renderer<'e> {
    pub env: &'e Environment<'e>,
    pub choices: Option<&'e ChoiceSpec>,
    pub output_type: OutputType,
    /// With `gen_prefix` (a template named so): the target delimiter joining it to the input.
    pub gen_prefix_delimiter: Option<&'e str>,
}

impl Renderer<'_> {
    /// One template rendered for one doc.
    pub(super) fn render(&self, name: &str, doc: &JValue) -> Result<String, String> {
        let t = self.env.get_template(name).map_err(|e| format!("{e}"))?;
        let text = t.render(doc.clone()).map_err(|e| {
            if e.kind() == minijinja::ErrorKind::OutOfFuel {
                return format!(
                    "field `{name}`: {OVER_LIMIT}the template ran past {} steps (a loop over a \
                     huge range, or loops nested without need); simplify it",
                    super::TEMPLATE_FUEL
                );
            }
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
        })?;
        if text.len() > super::MAX_RENDERED {
            return Err(format!(
                "field `{name}`: {OVER_LIMIT}it rendered {} bytes, more than the {} MiB a prompt \
                 part may hold; shorten the template or its data",
                text.len(),
                super::MAX_RENDERED >> 20
            ));
        }
        Ok(text)
    }

    /// A doc rendered into an item: its text, answer and choices.
    pub(super) fn item(&self, id: usize, doc: &Value) -> Result<Item, String> {
        let ctx = template_context(doc);
        let mut text = self.render("doc_to_text", &ctx)?;
        // lm-eval's `gen_prefix` starts the answer: input, the target delimiter where neither
        // side has whitespace, then the prefix (the answer follows it, `build_qa_turn`).
        if let Some(delimiter) = self.gen_prefix_delimiter {
            let prefix = self.render("gen_prefix", &ctx)?;
            if super::needs_delimiter(&text, &prefix) {
                text.push_str(delimiter);
            }
            text.push_str(&prefix);
        }
        let description = self.render("description", &ctx)?;
        let target = self.render("doc_to_target", &ctx)?;
        let (text, answer) = match self.output_type {
            OutputType::GenerateUntil => (text, Answer::Text(target)),
            OutputType::Loglikelihood => (text, Answer::Continuation(target)),
            OutputType::LoglikelihoodRolling => (text, Answer::Document(target)),
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

/// How an error over one of the rendering limits begins: the split stops at the first, since
/// every later doc would spend the same time or memory to fail the same way.
const OVER_LIMIT: &str = "over a limit: ";

/// Every doc of a split rendered; each distinct failure reported once, with the docs it hit.
pub(super) fn render_split(
    cx: &mut Ctx,
    r: &Renderer,
    split: &str,
    docs: &[Value],
) -> Option<Vec<Item>> {
    let mut items = Vec::with_capacity(docs.len());
    // The same mistake usually hits every doc: report each distinct error once, with the docs it hit.
    let mut failures: Vec<(String, Vec<usize>)> = Vec::new();
    for (id, doc) in docs.iter().enumerate() {
        match r.item(id, doc) {
            Ok(it) => items.push(it),
            Err(e) if e.contains(OVER_LIMIT) => {
                failures.push((e.replacen(OVER_LIMIT, "", 1), vec![id]));
                break;
            }
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
