//! `include:` in task YAMLs, as lm-evaluation-harness has it: a file names a base YAML (relative to
//! itself) whose keys it inherits and may override, so a family of tasks (MMLU's 57 subjects)
//! shares one definition.

use std::fs;
use std::path::Path;

use serde_yaml::{Mapping, Value};

/// Includes deeper than this are taken for a cycle.
const MAX_DEPTH: usize = 8;

/// The YAML of `path` with its includes merged in (the including file's keys win), and the text
/// of every file read, for hashing.
pub fn read_merged(path: &Path) -> Result<(Value, Vec<String>), String> {
    let mut texts = Vec::new();
    let v = read_level(path, 0, &mut texts)?;
    Ok((v, texts))
}

fn read_level(path: &Path, depth: usize, texts: &mut Vec<String>) -> Result<Value, String> {
    let shown = path.display();
    if depth > MAX_DEPTH {
        return Err(format!(
            "{shown}: `include` nested more than {MAX_DEPTH} deep (a cycle?)"
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let mut v: Value = serde_yaml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    texts.push(text);
    let Some(map) = v.as_mapping_mut() else {
        return Ok(v);
    };
    let Some(inc) = map.remove("include") else {
        return Ok(v);
    };
    let Some(name) = inc.as_str() else {
        return Err(format!(
            "{shown}: field `include` must be a file name (a YAML beside this one)"
        ));
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(name);
    if !base_path.is_file() {
        return Err(format!(
            "{shown}: field `include`: {} does not exist",
            base_path.display()
        ));
    }
    let base = read_level(&base_path, depth + 1, texts)?;
    let Value::Mapping(mut merged) = base else {
        return Err(format!(
            "{}: an included file must be a mapping of task fields",
            base_path.display()
        ));
    };
    let own: Mapping = std::mem::take(map);
    for (k, val) in own {
        merged.insert(k, val);
    }
    Ok(Value::Mapping(merged))
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
}
