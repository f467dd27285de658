//! Finding tasks: the task YAMLs under the task folders, by `task:` name or `tag:`, and what
//! `--tasks` selects among them. Reads only the YAML's name, tags and leading comment.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{include, spec};

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
