//! `include:` in task YAMLs, as lm-evaluation-harness has it: a file names a base YAML (relative to
//! itself) whose keys it inherits and may override, so a family of tasks (MMLU's 57 subjects)
//! shares one definition.

use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// Includes deeper than this are taken for a cycle.
const MAX_DEPTH: usize = 8;

/// Where one task's YAML is read: a task file, or keys a group file gives in its place (a task
/// defined inside the group, or a task file's keys overridden by the group, lm-eval's
/// `{task: NAME, KEY: VALUE}`).
#[derive(Debug, Clone)]
pub struct TaskRef {
    /// The task's name.
    pub name: String,
    /// The file relative names resolve against: the task file, or the group file defining it.
    pub path: PathBuf,
    /// Keys read in place of the file's (their `include:` relative to `path`), and the groups
    /// that gave them (outermost first); `None`: the file as it is.
    pub yaml: Option<(Value, String)>,
}

/// The same task read the same way: its file and keys (which groups gave the keys, and how a file
/// named by path is called before loading, do not matter).
impl PartialEq for TaskRef {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.yaml.as_ref().map(|(v, _)| v) == other.yaml.as_ref().map(|(v, _)| v)
    }
}

impl TaskRef {
    /// The task file at `path`, as it is, named by its file stem (loading reads its `task:`).
    pub fn file(path: &Path) -> Self {
        TaskRef {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            yaml: None,
        }
    }

    /// [`TaskRef::file`] named by the file's `task:` (its stem when it has none), for selections
    /// that compare tasks by name before loading.
    pub fn named(path: &Path) -> Self {
        let mut r = TaskRef::file(path);
        if let Some(name) = read_merged(path)
            .ok()
            .and_then(|(v, _)| v.get("task").and_then(Value::as_str).map(str::to_string))
        {
            r.name = name;
        }
        r
    }

    /// How errors name it: the file it is read from, the task, and the groups whose keys it has.
    pub fn shown(&self) -> String {
        match &self.yaml {
            None => self.path.display().to_string(),
            Some((_, groups)) => format!(
                "{} (task `{}` with keys from group {groups})",
                self.path.display(),
                self.name
            ),
        }
    }
}

/// The YAML of a [`TaskRef`] with its includes merged in, the texts read (for hashing) and the
/// notes of [`read_merged_noting`].
pub fn read_ref_noting(r: &TaskRef) -> Result<(Value, Vec<String>, Vec<String>), String> {
    let Some((v, _)) = &r.yaml else {
        return read_merged_noting(&r.path);
    };
    let shown = r.shown();
    let text = serde_yaml::to_string(v).map_err(|e| format!("{shown}: {e}"))?;
    let mut texts = vec![text];
    let mut notes = Vec::new();
    let v = merge_includes(&r.path, &shown, v.clone(), 0, &mut texts, &mut notes)?;
    Ok((v, texts, notes))
}

/// The YAML of `path` with its includes merged in (the including file's keys win), and the text
/// of every file read, for hashing.
pub fn read_merged(path: &Path) -> Result<(Value, Vec<String>), String> {
    read_merged_noting(path).map(|(v, texts, _)| (v, texts))
}

/// [`read_merged`], with a note for each duplicate key read as PyYAML reads it (see
/// [`last_key_wins`]).
pub fn read_merged_noting(path: &Path) -> Result<(Value, Vec<String>, Vec<String>), String> {
    let mut texts = Vec::new();
    let mut notes = Vec::new();
    let v = read_level(path, 0, &mut texts, &mut notes)?;
    Ok((v, texts, notes))
}

/// Parses `text`; where a mapping repeats a key, lm-eval's files mean what PyYAML reads: the last
/// value wins (kmmlu's `regex_pattern` twice in one filter). serde_yaml refuses such a file, so each
/// earlier occurrence (the key and its indented value) is dropped and named in `notes`. Files in
/// icl-eval's own format (`dataset:` or `metrics:`) keep the error: there a repeated key is a slip.
fn last_key_wins(text: &str, shown: &str, notes: &mut Vec<String>) -> Result<Value, String> {
    let first_error = match serde_yaml::from_str::<Value>(text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut lines: Vec<&str> = text.lines().collect();
    let mut dropped = Vec::new();
    for _ in 0..64 {
        let mut joined = lines.join("\n");
        if text.ends_with('\n') {
            joined.push('\n');
        }
        let parsed = serde_yaml::from_str::<Value>(&joined);
        let e = match parsed {
            Ok(v) if dropped.is_empty() => return Ok(v),
            Ok(v) => {
                let own = v.get("dataset").is_some() || v.get("metrics").is_some();
                if own {
                    break;
                }
                notes.extend(dropped);
                return Ok(v);
            }
            Err(e) => e,
        };
        // serde_yaml names the key and where its mapping starts.
        let message = e.to_string();
        let Some(key) = message
            .split_once("duplicate entry with key ")
            .and_then(|(_, rest)| rest.split(" at line").next())
            .map(|k| k.trim_matches('"').to_string())
        else {
            break;
        };
        let Some(loc) = e.location() else {
            break;
        };
        let indent = loc.column() - 1;
        let Some(earlier) = first_of_repeated(&lines, loc.line() - 1, indent, &key) else {
            break;
        };
        let mut end = earlier + 1;
        while end < lines.len() {
            let l = lines[end];
            let t = l.trim_start();
            let deeper = l.len() - t.len() > indent;
            // A block list may sit at its key's own indent (`until:` then `- "\n"`); comments
            // inside the value go with it.
            let own_list = l.len() - t.len() == indent && (t == "-" || t.starts_with("- "));
            if !(t.is_empty() || t.starts_with('#') || deeper || own_list) {
                break;
            }
            end += 1;
        }
        dropped.push(format!(
            "{shown}: key `{key}` appears twice in one mapping (from line {}); the later one \
             wins, as in PyYAML",
            loc.line()
        ));
        lines.drain(earlier..end);
    }
    Err(format!("{shown}: {first_error}"))
}

/// The first line of the mapping starting at (`line`, `col`) that holds `key`; `None` when the
/// key opens a list item (`- key:`, which is not dropped) or is not found.
fn first_of_repeated(lines: &[&str], line: usize, col: usize, key: &str) -> Option<usize> {
    for (j, l) in lines.iter().enumerate().skip(line) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let indent = l.len() - t.len();
        let here = if j == line {
            l.get(col..)?
        } else if indent == col {
            t
        } else if indent < col {
            return None;
        } else {
            continue;
        };
        let token = here.split(':').next().unwrap_or("").trim();
        if token.trim_matches(|c| c == '"' || c == '\'') == key {
            return (indent == col).then_some(j);
        }
    }
    None
}

/// The largest task file read (YAML and includes): a task's YAML is settings and templates,
/// kilobytes; data lives in data files.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// How deep `[` and `{` may nest in a task file: lm-eval's deepest files nest 4; the YAML parser
/// takes time quadratic in the depth.
pub const MAX_FLOW_DEPTH: usize = 64;

/// The depth and 1-based line where flow brackets first nest deeper than [`MAX_FLOW_DEPTH`],
/// outside quoted strings and comments.
fn deep_flow(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut single, mut double, mut comment, mut escaped) = (false, false, false, false);
    let mut prev = '\n';
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
        } else if comment {
        } else if double {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                double = false;
            }
        } else if single {
            // `''` inside single quotes is a quote: it closes and reopens, which this toggling
            // reads the same way.
            single = c != '\'';
        } else {
            match c {
                '#' if prev.is_whitespace() => comment = true,
                '"' => double = true,
                '\'' => single = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some((depth, line));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = c;
    }
    None
}

fn read_level(
    path: &Path,
    depth: usize,
    texts: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Value, String> {
    let shown = path.display();
    if depth > MAX_DEPTH {
        return Err(format!(
            "{shown}: `include` nested more than {MAX_DEPTH} deep (a cycle?)"
        ));
    }
    let len = fs::metadata(path).map_or(0, |m| m.len());
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "{shown}: {len} bytes, more than the {} MiB a task file may hold; put data in a data \
             file (`dataset:`) and long text in a template file (`file:NAME`)",
            MAX_FILE_BYTES >> 20
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if let Some((depth, line)) = deep_flow(&text) {
        return Err(format!(
            "{shown}:{line}: brackets nested {depth} deep, more than the {MAX_FLOW_DEPTH} a task \
             file may nest (the YAML parser slows down quadratically with depth); flatten it"
        ));
    }
    let v = last_key_wins(&text, &shown.to_string(), notes)?;
    texts.push(text);
    merge_includes(path, &shown.to_string(), v, depth, texts, notes)
}

/// `v` (read from, or given in place of, `path`) with its `include:` files merged in.
fn merge_includes(
    path: &Path,
    shown: &str,
    mut v: Value,
    depth: usize,
    texts: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Value, String> {
    let Some(map) = v.as_mapping_mut() else {
        return Ok(v);
    };
    let Some(inc) = map.remove("include") else {
        return Ok(v);
    };
    // lm-eval also takes a list: each file is merged in from the last to the first, so the first
    // listed wins over the later ones, and the including file over all.
    let names: Vec<&str> = match &inc {
        Value::String(name) => vec![name.as_str()],
        Value::Sequence(list) if !list.is_empty() && list.iter().all(Value::is_string) => {
            list.iter().rev().filter_map(Value::as_str).collect()
        }
        _ => {
            return Err(format!(
                "{shown}: field `include` must be a file name (a YAML beside this one) or a list \
                 of them"
            ));
        }
    };
    let mut merged = Mapping::new();
    for name in names {
        let base_path = path.parent().unwrap_or(Path::new(".")).join(name);
        if !base_path.is_file() {
            return Err(format!(
                "{shown}: field `include`: {} does not exist",
                base_path.display()
            ));
        }
        // Only task files: a system file (`/etc/shadow`) read as YAML would have its content
        // quoted back in the errors. lm-eval names some bases `_default_template_yaml`.
        if !(name.ends_with("yaml") || name.ends_with(".yml")) {
            return Err(format!(
                "{shown}: field `include`: {} is not a task file (a name ending in yaml or .yml)",
                base_path.display()
            ));
        }
        let base = read_level(&base_path, depth + 1, texts, notes)?;
        let Value::Mapping(base) = base else {
            return Err(format!(
                "{}: an included file must be a mapping of task fields",
                base_path.display()
            ));
        };
        for (k, val) in base {
            merged.insert(k, val);
        }
    }
    let own: Mapping = std::mem::take(map);
    for (k, val) in own {
        merged.insert(k, val);
    }
    Ok(Value::Mapping(merged))
}

#[cfg(test)]
mod flow_tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_found_outside_strings_and_comments() {
        assert_eq!(deep_flow("a: [[1, {b: [2]}]]\n"), None);
        let deep = format!("x: 1\nmetadata: {}{}\n", "[".repeat(65), "]".repeat(65));
        assert_eq!(deep_flow(&deep), Some((65, 2)));
        let quoted = format!(
            "t: \"{}\"\nu: '{}'\n# {}\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert_eq!(deep_flow(&quoted), None);
        assert_eq!(deep_flow(&"[]".repeat(10_000)), None, "wide is fine");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn including_file_overrides_and_cycles_are_named() {
        let d = std::env::temp_dir().join(format!("icl-include-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("_base.yaml"),
            "output_type: multiple_choice\ndescription: base\n",
        )
        .unwrap();
        fs::write(
            d.join("a.yaml"),
            "include: _base.yaml\ntask: a\ndescription: mine\n",
        )
        .unwrap();
        let (v, texts) = read_merged(&d.join("a.yaml")).unwrap();
        assert_eq!(v["task"], Value::from("a"));
        assert_eq!(v["description"], Value::from("mine"));
        assert_eq!(v["output_type"], Value::from("multiple_choice"));
        assert!(v.get("include").is_none());
        assert_eq!(texts.len(), 2);
        fs::write(d.join("x.yaml"), "include: y.yaml\n").unwrap();
        fs::write(d.join("y.yaml"), "include: x.yaml\n").unwrap();
        let e = read_merged(&d.join("x.yaml")).unwrap_err();
        assert!(e.contains("a cycle"), "{e}");
        fs::write(d.join("z.yaml"), "include: nope.yaml\n").unwrap();
        let e = read_merged(&d.join("z.yaml")).unwrap_err();
        assert!(e.contains("nope.yaml does not exist"), "{e}");
    }

    /// A key twice in one mapping: in an lm-eval file the later value wins, as PyYAML reads it,
    /// with a note; in icl-eval's own format it stays an error.
    #[test]
    fn a_repeated_key_is_the_last_one_in_lm_eval_files_only() {
        let lm_eval = "task: t\ndataset_path: x\nfilter_list:\n  - name: get\n    filter:\n      \
                       - function: regex\n        regex_pattern: first\n        regex_pattern: second\n      \
                       - function: take_first\ndoc_to_text: a\ndoc_to_text: |\n  b\n  c\n\
                       until:\n- a\n# one more\n-\n- b\nuntil: [c]\n";
        let mut notes = Vec::new();
        let v = last_key_wins(lm_eval, "t.yaml", &mut notes).unwrap();
        assert_eq!(v["filter_list"][0]["filter"][0]["regex_pattern"], "second");
        assert_eq!(v["filter_list"][0]["filter"][1]["function"], "take_first");
        assert_eq!(v["doc_to_text"], "b\nc\n");
        // The earlier list went whole, its comment and bare item too.
        assert_eq!(v["until"], serde_yaml::from_str::<Value>("[c]").unwrap());
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("regex_pattern") && notes[0].contains("PyYAML"));
        let own = "task: t\ndataset: {path: x.jsonl}\ndoc_to_text: a\ndoc_to_text: b\n";
        let e = last_key_wins(own, "t.yaml", &mut Vec::new()).unwrap_err();
        assert!(e.contains("t.yaml") && e.contains("duplicate"), "{e}");
    }

    /// `include:` as a list, as lm-eval reads it: the first file listed wins over the later ones,
    /// the including file over all.
    #[test]
    fn a_list_of_includes_merges_first_wins() {
        let d = std::env::temp_dir().join(format!("icl-include-list-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("a_yaml"), "x: a\ny: a\n").unwrap();
        fs::write(d.join("b_yaml"), "x: b\ny: b\nz: b\n").unwrap();
        fs::write(d.join("t.yaml"), "include: [a_yaml, b_yaml]\ny: own\n").unwrap();
        let (v, texts) = read_merged(&d.join("t.yaml")).unwrap();
        assert_eq!(
            (&v["x"], &v["y"], &v["z"]),
            (&"a".into(), &"own".into(), &"b".into())
        );
        assert_eq!(texts.len(), 3);
    }
}
