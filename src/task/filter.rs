//! `filter_list`: lm-evaluation-harness's answer-extraction pipelines over a doc's generations,
//! with its built-in filters and their semantics (`lm_eval/filters/`), so an imported task scores
//! what lm-eval scores. Each named pipeline turns the doc's responses into the one answer its
//! metrics see; metrics are then reported per pipeline (`exact_match,strict-match`).
//!
//! Patterns are Python `re` patterns: lm-eval's use lookarounds and `(?P<name>…)`, so they are
//! compiled with `fancy-regex`, which reads both.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use fancy_regex::Regex;
use serde::Deserialize;

/// One `filter_list` entry as written: a name and its steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    pub filter: Vec<StepSpec>,
}

/// One step as written: `function` and the arguments lm-eval's filter of that name takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub function: String,
    pub regex_pattern: Option<String>,
    pub group_select: Option<i64>,
    pub fallback: Option<String>,
    pub ignore_case: Option<bool>,
    pub ignore_punctuation: Option<bool>,
    pub regexes_to_ignore: Option<Vec<String>>,
    pub k: Option<usize>,
    pub mapping_dict: Option<BTreeMap<String, serde_yaml::Value>>,
    pub default_value: Option<serde_yaml::Value>,
}

/// The filter functions icl-eval runs, with lm-eval's names.
pub const FUNCTIONS: &[&str] = &[
    "regex",
    "multi_choice_regex",
    "take_first",
    "take_first_k",
    "remove_whitespace",
    "lowercase",
    "uppercase",
    "map",
    "majority_vote",
];

/// A compiled pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The name metrics are reported under (`exact_match,NAME`).
    pub name: String,
    pub steps: Vec<Step>,
}

/// A compiled filter step.
#[derive(Debug, Clone)]
pub enum Step {
    /// `regex`: per response, the `group_select`-th `findall` match (negative counts from the
    /// end), its first non-empty group when the pattern has several, stripped; else `fallback`.
    Regex(Extract),
    /// `multi_choice_regex`: `regex`, then the doc's `choices` texts found in the response mapped
    /// to `(A)`, `(B)`, …, then a bare letter after a colon; else `fallback`.
    MultiChoiceRegex {
        extract: Extract,
        ignore: Ignore,
    },
    /// Keeps the first response.
    TakeFirst,
    /// Keeps the first `k` responses.
    TakeFirstK(usize),
    /// Strips surrounding whitespace of each response.
    RemoveWhitespace,
    Lowercase,
    Uppercase,
    /// Each response through a table; `default` (Python's `None` when unset) otherwise.
    Map {
        table: BTreeMap<String, String>,
        default: String,
    },
    /// The most frequent response (the first seen among equals, as `Counter.most_common`).
    MajorityVote,
}

/// A pattern with lm-eval's `group_select` and `fallback`.
#[derive(Debug, Clone)]
pub struct Extract {
    pub regex: Regex,
    pub group_select: i64,
    pub fallback: String,
}

/// `multi_choice_regex`'s normalisation of choices and responses before the choice search.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    pub regexes: Vec<Regex>,
    pub case: bool,
    pub punctuation: bool,
}

/// Compiles a Python `re` pattern; the error says what is wrong with it.
pub fn python_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("`{pattern}` is not a valid regex: {e}"))
}

/// lm-eval's default `regex_pattern` (GSM8K's `#### N`).
const DEFAULT_PATTERN: &str = r"#### (\-?[0-9\.\,]+)";

impl PipelineSpec {
    /// Compiles the pipeline; the error names the step and argument at fault.
    pub fn compile(&self) -> Result<Pipeline, String> {
        if self.filter.is_empty() {
            return Err(format!("filter `{}` has no steps", self.name));
        }
        let steps = self
            .filter
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.compile().map_err(|e| {
                    format!(
                        "filter `{}`, step {} (`{}`): {e}",
                        self.name,
                        i + 1,
                        s.function
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pipeline {
            name: self.name.clone(),
            steps,
        })
    }
}

impl StepSpec {
    fn compile(&self) -> Result<Step, String> {
        let allowed: &[&str] = match self.function.as_str() {
            "regex" => &["regex_pattern", "group_select", "fallback"],
            "multi_choice_regex" => &[
                "regex_pattern",
                "group_select",
                "fallback",
                "ignore_case",
                "ignore_punctuation",
                "regexes_to_ignore",
            ],
            "take_first_k" => &["k"],
            "map" => &["mapping_dict", "default_value"],
            "take_first" | "remove_whitespace" | "lowercase" | "uppercase" | "majority_vote" => &[],
            other => {
                return Err(format!(
                    "unknown filter function `{other}` (known: {})",
                    FUNCTIONS.join(", ")
                ));
            }
        };
        for (name, set) in [
            ("regex_pattern", self.regex_pattern.is_some()),
            ("group_select", self.group_select.is_some()),
            ("fallback", self.fallback.is_some()),
            ("ignore_case", self.ignore_case.is_some()),
            ("ignore_punctuation", self.ignore_punctuation.is_some()),
            ("regexes_to_ignore", self.regexes_to_ignore.is_some()),
            ("k", self.k.is_some()),
            ("mapping_dict", self.mapping_dict.is_some()),
            ("default_value", self.default_value.is_some()),
        ] {
            if set && !allowed.contains(&name) {
                return Err(format!("takes no argument `{name}`"));
            }
        }
        let extract = || -> Result<Extract, String> {
            Ok(Extract {
                regex: python_regex(self.regex_pattern.as_deref().unwrap_or(DEFAULT_PATTERN))?,
                group_select: self.group_select.unwrap_or(0),
                fallback: self.fallback.clone().unwrap_or_else(|| "[invalid]".into()),
            })
        };
        Ok(match self.function.as_str() {
            "regex" => Step::Regex(extract()?),
            "multi_choice_regex" => Step::MultiChoiceRegex {
                extract: extract()?,
                ignore: Ignore {
                    regexes: self
                        .regexes_to_ignore
                        .iter()
                        .flatten()
                        .map(|r| python_regex(r))
                        .collect::<Result<_, _>>()?,
                    case: self.ignore_case.unwrap_or(false),
                    punctuation: self.ignore_punctuation.unwrap_or(false),
                },
            },
            "take_first" => Step::TakeFirst,
            "take_first_k" => Step::TakeFirstK(self.k.ok_or("needs `k`")?),
            "remove_whitespace" => Step::RemoveWhitespace,
            "lowercase" => Step::Lowercase,
            "uppercase" => Step::Uppercase,
            "map" => Step::Map {
                table: self
                    .mapping_dict
                    .iter()
                    .flatten()
                    .map(|(k, v)| Ok((k.clone(), python_str(v)?)))
                    .collect::<Result<_, String>>()?,
                default: match &self.default_value {
                    Some(v) => python_str(v)?,
                    None => "None".into(),
                },
            },
            "majority_vote" => Step::MajorityVote,
            _ => unreachable!("checked above"),
        })
    }
}

/// A YAML scalar as Python's `str()` writes it (the text metrics then compare).
fn python_str(v: &serde_yaml::Value) -> Result<String, String> {
    Ok(match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        serde_yaml::Value::Null => "None".into(),
        _ => return Err("map values must be strings, numbers or booleans".into()),
    })
}

impl Pipeline {
    /// The answer its metrics see: the responses through every step, then the first left (an
    /// empty string when a step left none).
    ///
    /// lm-eval hands metrics what its last step returns: after `take_first` a string, otherwise
    /// the list. Steps after `take_first` then iterate a string's characters; icl-eval keeps a
    /// one-element list instead, which agrees wherever that string is one character or the step
    /// keeps each element whole, the cases lm-eval's task files rely on.
    pub fn apply(&self, responses: &[String], doc_choices: &[String]) -> String {
        let mut r: Vec<String> = responses.to_vec();
        for step in &self.steps {
            r = step.apply(r, doc_choices);
        }
        r.into_iter().next().unwrap_or_default()
    }

    /// Whether a step reads the doc's `choices` field.
    pub fn needs_choices(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::MultiChoiceRegex { .. }))
    }

    /// Whether the pipeline reads more than the first response (so sampling several pays off).
    pub fn uses_all_responses(&self) -> bool {
        for s in &self.steps {
            match s {
                Step::TakeFirst => return false,
                Step::TakeFirstK(_) | Step::MajorityVote => return true,
                _ => {}
            }
        }
        false
    }
}

impl Step {
    fn apply(&self, r: Vec<String>, doc_choices: &[String]) -> Vec<String> {
        match self {
            Step::Regex(x) => r
                .iter()
                .map(|s| x.find(s).unwrap_or_else(|| x.fallback.clone()))
                .collect(),
            Step::MultiChoiceRegex { extract, ignore } => r
                .iter()
                .map(|s| multi_choice(extract, ignore, s, doc_choices))
                .collect(),
            Step::TakeFirst => r.into_iter().take(1).collect(),
            Step::TakeFirstK(k) => r.into_iter().take(*k).collect(),
            Step::RemoveWhitespace => r.iter().map(|s| s.trim().to_string()).collect(),
            Step::Lowercase => r.iter().map(|s| s.to_lowercase()).collect(),
            Step::Uppercase => r.iter().map(|s| s.to_uppercase()).collect(),
            Step::Map { table, default } => r
                .iter()
                .map(|s| table.get(s).unwrap_or(default).clone())
                .collect(),
            Step::MajorityVote => majority(&r).into_iter().collect(),
        }
    }
}

/// Python's `re.findall(pattern, text)` as strings: the whole match without groups, group 1 with
/// one, and with several the first non-empty group (lm-eval's reading of the tuple; `None` when
/// all are empty).
fn findall(re: &Regex, text: &str) -> Vec<Option<String>> {
    let groups = re.captures_len() - 1;
    re.captures_iter(text)
        .filter_map(Result::ok)
        .map(|c| match groups {
            0 => c.get(0).map(|m| m.as_str().to_string()),
            1 => Some(c.get(1).map_or("", |m| m.as_str()).to_string()),
            n => (1..=n)
                .filter_map(|g| c.get(g).map(|m| m.as_str()))
                .find(|s| !s.is_empty())
                .map(str::to_string),
        })
        .collect()
}

impl Extract {
    /// The `group_select`-th of `findall`'s matches (negative from the end), Python's list
    /// indexing; `None` past the matches, where Python raises IndexError (lm-eval's task files
    /// never select there, and a missing answer is the fallback's job).
    fn select(&self, mut all: Vec<Option<String>>) -> Option<Option<String>> {
        let n = all.len() as i64;
        let i = if self.group_select < 0 {
            n + self.group_select
        } else {
            self.group_select
        };
        let i = usize::try_from(i).ok().filter(|&i| i < all.len())?;
        Some(all.swap_remove(i))
    }

    /// lm-eval's `RegexFilter` on one response; `None` where it would return the fallback.
    fn find(&self, text: &str) -> Option<String> {
        let picked = self.select(findall(&self.regex, text))?;
        Some(picked.map_or_else(|| self.fallback.clone(), |s| s.trim().to_string()))
    }

    /// `MultiChoiceRegexFilter.find_match`: like `find` but an all-empty tuple is "", and the
    /// stripped match is translated through `convert`.
    fn find_converted(&self, re: &Regex, text: &str, convert: &BTreeMap<String, String>) -> String {
        let Some(Some(m)) = self.select(findall(re, text)) else {
            return String::new();
        };
        let m = m.trim().to_string();
        convert.get(&m).cloned().unwrap_or(m)
    }
}

impl Ignore {
    fn apply(&self, text: &str) -> String {
        let mut t = text.to_string();
        for re in &self.regexes {
            t = re.replace_all(&t, "").into_owned();
        }
        if self.case {
            t = t.to_lowercase();
        }
        if self.punctuation {
            // lm-eval removes every character of Unicode category P*.
            static PUNCTUATION: LazyLock<regex::Regex> =
                LazyLock::new(|| regex::Regex::new(r"\p{P}").expect("a valid pattern"));
            t = PUNCTUATION.replace_all(&t, "").into_owned();
        }
        t
    }
}

/// `MultiChoiceRegexFilter` on one response.
fn multi_choice(x: &Extract, ignore: &Ignore, resp: &str, choices: &[String]) -> String {
    let mut to_letter = BTreeMap::new();
    let mut branches = Vec::new();
    let mut letters = Vec::new();
    let mut bare_to_target = BTreeMap::new();
    for (i, c) in choices.iter().enumerate() {
        let letter = char::from_u32('A' as u32 + i as u32).unwrap_or('?');
        let m = ignore.apply(c.trim());
        branches.push(fancy_regex::escape(&m).into_owned());
        to_letter.insert(m, format!("({letter})"));
        letters.push(letter.to_string());
        bare_to_target.insert(letter.to_string(), format!("({letter})"));
    }
    // Longest first, so a choice that is a prefix of another cannot shadow it (lm-eval sorts
    // the escaped branches by length, stably).
    branches.sort_by_key(|b| std::cmp::Reverse(b.len()));
    let none = BTreeMap::new();
    let mut m = x.find_converted(&x.regex, resp, &none);
    if m.is_empty()
        && let Ok(re) = Regex::new(&branches.join("|"))
    {
        m = x.find_converted(&re, &ignore.apply(resp), &to_letter);
    }
    if m.is_empty()
        && let Ok(re) = Regex::new(&format!(r":[\s]*({})", letters.join("|")))
    {
        m = x.find_converted(&re, resp, &bare_to_target);
    }
    if m.is_empty() { x.fallback.clone() } else { m }
}

/// The most common response, ties to the one seen first.
fn majority(r: &[String]) -> Option<String> {
    let mut counts: Vec<(&String, usize)> = Vec::new();
    for s in r {
        match counts.iter_mut().find(|(t, _)| *t == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts
        .into_iter()
        .find(|(_, n)| *n == best)
        .map(|(s, _)| s.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(yaml: &str) -> Pipeline {
        serde_yaml::from_str::<PipelineSpec>(yaml)
            .unwrap()
            .compile()
            .unwrap()
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// GSM8K's two pipelines (lm-eval 0.4.13 `gsm8k.yaml`) on outputs worked by hand with Python's
    /// `re.findall`.
    #[test]
    fn gsm8k_strict_and_flexible_extract_as_lm_eval() {
        let strict = pipeline(
            "name: strict-match\nfilter:\n  - function: regex\n    regex_pattern: \"#### (\\\\-?[0-9\\\\.\\\\,]+)\"\n  - function: take_first\n",
        );
        let flexible = pipeline(
            "name: flexible-extract\nfilter:\n  - function: regex\n    group_select: -1\n    regex_pattern: \"(-?[$0-9.,]{2,})|(-?[0-9]+)\"\n  - function: take_first\n",
        );
        let out = "She sells 16 - 3 - 4 = 9 eggs, 9 * 2 = $18.\n#### 18";
        assert_eq!(strict.apply(&strs(&[out]), &[]), "18");
        // findall → [('16', ''), ('', '3'), ('', '4'), ('', '9'), ('', '9'), ('', '2'), ('$18.', ''), ('18', '')]
        assert_eq!(flexible.apply(&strs(&[out]), &[]), "18");
        let no_hashes = "So the total is $1,234.50 dollars";
        assert_eq!(strict.apply(&strs(&[no_hashes]), &[]), "[invalid]");
        assert_eq!(flexible.apply(&strs(&[no_hashes]), &[]), "$1,234.50");
        assert_eq!(flexible.apply(&strs(&["no digits"]), &[]), "[invalid]");
    }

    #[test]
    fn lookarounds_and_the_whole_match_without_groups() {
        let p = pipeline(
            "name: x\nfilter:\n  - function: lowercase\n  - function: regex\n    regex_pattern: \"(?=(female|woman|man|male))\"\n",
        );
        // findall of a zero-width lookahead with one group returns the group.
        assert_eq!(p.apply(&strs(&["The Woman"]), &[]), "woman");
        let whole = pipeline(
            "name: x\nfilter:\n  - function: regex\n    regex_pattern: \"[A-D]\"\n    fallback: none\n",
        );
        assert_eq!(whole.apply(&strs(&["answer: C or D"]), &[]), "C");
        assert_eq!(whole.apply(&strs(&["answer: e"]), &[]), "none");
    }

    #[test]
    fn majority_vote_ties_go_to_the_first_seen() {
        let p = pipeline(
            "name: maj\nfilter:\n  - function: take_first_k\n    k: 4\n  - function: majority_vote\n  - function: take_first\n",
        );
        assert_eq!(p.apply(&strs(&["b", "a", "a", "b", "a"]), &[]), "b");
        assert_eq!(p.apply(&strs(&["b", "a", "a", "c"]), &[]), "a");
        assert!(p.uses_all_responses());
    }

    #[test]
    fn map_remove_whitespace_and_uppercase() {
        let p = pipeline(
            "name: m\nfilter:\n  - function: remove_whitespace\n  - function: uppercase\n  - function: map\n    mapping_dict: {A: 0, B: 1}\n    default_value: -1\n",
        );
        assert_eq!(p.apply(&strs(&["  b \n"]), &[]), "1");
        assert_eq!(p.apply(&strs(&["c"]), &[]), "-1");
    }

    /// `multi_choice_regex` as lm-eval's MMLU-Pro/BBH configs use it: the pattern first, then the
    /// choice texts (longest first), then a bare letter after a colon.
    #[test]
    fn multi_choice_regex_falls_back_to_choice_texts_then_letters() {
        let p = pipeline(
            "name: flex\nfilter:\n  - function: multi_choice_regex\n    group_select: 0\n    ignore_case: true\n    ignore_punctuation: true\n    regex_pattern: \"(\\\\([A-D]\\\\))\"\n  - function: take_first\n",
        );
        let choices = strs(&["Guilty", "Guilty of Romance", "Paris", "Rome"]);
        assert_eq!(p.apply(&strs(&["I pick (C)."]), &choices), "(C)");
        assert_eq!(
            p.apply(&strs(&["It is guilty of romance!"]), &choices),
            "(B)"
        );
        assert_eq!(p.apply(&strs(&["answer: D"]), &choices), "(D)");
        assert_eq!(p.apply(&strs(&["no idea"]), &choices), "[invalid]");
        assert!(p.needs_choices());
    }

    #[test]
    fn bad_steps_are_named() {
        let spec: PipelineSpec =
            serde_yaml::from_str("name: s\nfilter:\n  - function: regex\n    k: 3\n").unwrap();
        let e = spec.compile().unwrap_err();
        assert!(
            e.contains("filter `s`, step 1 (`regex`): takes no argument `k`"),
            "{e}"
        );
        let spec: PipelineSpec = serde_yaml::from_str(
            "name: s\nfilter:\n  - function: regex\n    regex_pattern: \"(\"\n",
        )
        .unwrap();
        assert!(spec.compile().unwrap_err().contains("not a valid regex"));
        let spec: PipelineSpec =
            serde_yaml::from_str("name: s\nfilter:\n  - function: pick_best\n").unwrap();
        assert!(
            spec.compile()
                .unwrap_err()
                .contains("unknown filter function `pick_best`")
        );
    }
}
