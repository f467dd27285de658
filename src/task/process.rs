//! `process_docs`: declarative steps applied to every doc after loading and before templates, in
//! YAML rather than code (lm-eval needs a Python `!function` for these): rename fields, map values,
//! pull fields out of a text with a regex, split a text into a list.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

/// One step of `process_docs`, written as a one-key mapping (`- extract: {...}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "StepSpec")]
pub enum Step {
    /// `rename: {old: new, ...}`.
    Rename(BTreeMap<String, String>),
    /// `map: {field: label, values: {"0": World, ...}, into: topic}` (`into` defaults to `field`).
    Map(MapStep),
    /// `extract: {field: text, pattern: '(?P<context>.*) (?P<word>\S+)$'}`: each named group becomes
    /// a field.
    Extract(ExtractStep),
    /// `split: {field: options, pattern: '\s*Answer\d+:\s*', into: choices}`: the non-empty pieces
    /// become a list.
    Split(SplitStep),
}

/// The YAML form of a step (serde_yaml reads externally tagged enums only from `!tags`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    rename: Option<BTreeMap<String, String>>,
    map: Option<MapStep>,
    extract: Option<ExtractStep>,
    split: Option<SplitStep>,
}

impl TryFrom<StepSpec> for Step {
    type Error = String;

    fn try_from(s: StepSpec) -> Result<Self, String> {
        let mut steps = Vec::new();
        steps.extend(s.rename.map(Step::Rename));
        steps.extend(s.map.map(Step::Map));
        steps.extend(s.extract.map(Step::Extract));
        steps.extend(s.split.map(Step::Split));
        match steps.len() {
            1 => Ok(steps.remove(0)),
            _ => {
                Err("each `process_docs` step is exactly one of rename, map, extract, split".into())
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapStep {
    pub field: String,
    pub values: BTreeMap<String, Value>,
    pub into: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractStep {
    pub field: String,
    pub pattern: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitStep {
    pub field: String,
    pub pattern: String,
    pub into: String,
}

/// A field's text: strings as they are, numbers and booleans printed.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Applies `steps` to the docs of one split, in place; each error names the step, the doc (row
/// counted from 1) and the field.
pub fn apply(steps: &[Step], split: &str, docs: &mut [Value]) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let at = |row: usize, what: String| {
            format!(
                "field `process_docs[{i}]`: split `{split}`, row {}: {what}",
                row + 1
            )
        };
        let compiled = match step {
            Step::Extract(e) => Some(&e.pattern),
            Step::Split(s) => Some(&s.pattern),
            _ => None,
        }
        .map(|p| Regex::new(p));
        let re = match compiled {
            Some(Ok(re)) => Some(re),
            Some(Err(e)) => {
                return Err(vec![format!(
                    "field `process_docs[{i}].pattern`: invalid regex: {e}"
                )]);
            }
            None => None,
        };
        for (row, doc) in docs.iter_mut().enumerate() {
            let Value::Object(m) = doc else { continue };
            match step {
                Step::Rename(pairs) => {
                    for (old, new) in pairs {
                        match m.remove(old) {
                            Some(v) => {
                                m.insert(new.clone(), v);
                            }
                            None => errs.push(at(row, format!("no field `{old}` to rename"))),
                        }
                    }
                }
                Step::Map(s) => match m.get(&s.field).and_then(text) {
                    Some(key) => match s.values.get(&key) {
                        Some(v) => {
                            m.insert(s.into.clone().unwrap_or(s.field.clone()), v.clone());
                        }
                        None => errs.push(at(
                            row,
                            format!(
                                "`{}` is `{key}`, which `values` does not map (it maps: {})",
                                s.field,
                                s.values.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        )),
                    },
                    None => errs.push(at(row, format!("no text field `{}`", s.field))),
                },
                Step::Extract(s) => {
                    let re = re.as_ref().expect("compiled above");
                    let Some(t) = m.get(&s.field).and_then(text) else {
                        errs.push(at(row, format!("no text field `{}`", s.field)));
                        continue;
                    };
                    match re.captures(&t) {
                        Some(c) => {
                            for name in re.capture_names().flatten() {
                                let v = c.name(name).map_or("", |g| g.as_str());
                                m.insert(name.to_string(), Value::String(v.to_string()));
                            }
                        }
                        None => {
                            errs.push(at(row, format!("`{}` does not match the pattern", s.field)))
                        }
                    }
                }
                Step::Split(s) => {
                    let re = re.as_ref().expect("compiled above");
                    let Some(t) = m.get(&s.field).and_then(text) else {
                        errs.push(at(row, format!("no text field `{}`", s.field)));
                        continue;
                    };
                    let parts: Vec<Value> = re
                        .split(&t)
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(|p| Value::String(p.to_string()))
                        .collect();
                    m.insert(s.into.clone(), Value::Array(parts));
                }
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn steps(yaml: &str) -> Vec<Step> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn extract_split_map_and_rename() {
        let s = steps(
            r#"
- extract: {field: q, pattern: '(?s)^Q: (?P<question>.*?)\n\n(?P<options>Answer1: .*)$'}
- split: {field: options, pattern: '\s*Answer\d+:\s*', into: choices}
- map: {field: answer, values: {answer1: 0, answer2: 1}, into: gold}
- rename: {question: stem}
"#,
        );
        let mut docs = vec![json!({
            "q": "Q: Why?\n\nAnswer1: Sun. Answer2: Rain, of course.",
            "answer": "answer2"
        })];
        apply(&s, "test", &mut docs).unwrap();
        assert_eq!(docs[0]["stem"], "Why?");
        assert_eq!(docs[0]["choices"], json!(["Sun.", "Rain, of course."]));
        assert_eq!(docs[0]["gold"], 1);
        assert!(docs[0].get("question").is_none());
    }

    #[test]
    fn errors_name_the_step_row_and_field() {
        let s = steps("- map: {field: label, values: {a: 0}}");
        let mut docs = vec![json!({"label": "a"}), json!({"label": "zz"}), json!({})];
        let e = apply(&s, "train", &mut docs).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(
            e[0].contains("process_docs[0]")
                && e[0].contains("split `train`, row 2")
                && e[0].contains("`label` is `zz`"),
            "{e:?}"
        );
        assert!(e[1].contains("row 3: no text field `label`"), "{e:?}");
        let bad = steps("- extract: {field: x, pattern: '('}");
        let e = apply(&bad, "t", &mut docs).unwrap_err();
        assert!(e[0].contains("invalid regex"), "{e:?}");
    }
}
