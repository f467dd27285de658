//! Finding tasks: the task YAMLs under the task folders, by `task:` name or `tag:`, and what
//! `--tasks` selects among them. Reads only the YAML's name, tags and leading comment.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use serde_yaml::{Mapping, Value};

use super::include::{self, TaskRef};
use super::spec;

/// A task file found on disk, or a task defined inside a group file.
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
    /// A group file (lm-eval's `group:` with a `task:` list) instead of a task.
    pub group: Option<GroupFile>,
    /// A task defined inside the group file at `path` (a `{task: NAME, ...}` member whose name no
    /// task file has): its keys, read as a task file there would be, and the group's name.
    pub inline: Option<(Mapping, String)>,
}

impl TaskSource {
    /// Where the task is read from, as it is.
    pub fn task_ref(&self) -> TaskRef {
        task_ref(self, &Mapping::new(), None)
    }
}

/// A group file: `group: NAME` and `task:` a list of task, tag or group names (or inline groups),
/// in lm-evaluation-harness's vocabulary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupFile {
    /// `group_alias`, the name reports may show.
    pub alias: Option<String>,
    /// Its tasks, tags and groups, in file order.
    pub members: Vec<Member>,
    /// `aggregate_metric_list`: `weight_by_size` per metric (`true`: a mean over docs, lm-eval's
    /// micro; `false`: a mean over members).
    pub weight_by_size: Vec<(String, bool)>,
    /// The group's other keys: task settings lm-eval applies to every member (a member's own
    /// keys win over them).
    pub overrides: Mapping,
}

/// A group member: a task, tag or group name, and the task keys the group sets for it (lm-eval's
/// `{task: NAME, KEY: VALUE}`); where no task file has the name, the keys define the task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Member {
    pub name: String,
    pub keys: Mapping,
}

/// Keys a group file may carry besides the task settings it passes to its members.
const GROUP_KEYS: &[&str] = &[
    "group",
    "group_alias",
    "task",
    "aggregate_metric_list",
    "metadata",
    "tag",
];

/// Keys of a member that change nothing icl-eval runs: its name and a display name. Kept out of
/// the settings, so `{task: x, task_alias: X}` is task `x` itself.
const INERT_MEMBER_KEYS: &[&str] = &["task", "task_alias"];

/// Reads the group files of one YAML (the file's own group, then inline groups among its
/// members, each registered under its own name); the error names the file and key.
pub fn read_groups(path: &Path, v: &serde_yaml::Value) -> Result<Vec<(String, GroupFile)>, String> {
    let shown = path.display();
    let mut out = Vec::new();
    group_of(v, &mut out).map_err(|e| format!("{shown}: {e}"))?;
    // The task keys a group sets name Python beside the group file, wherever the task's own file
    // is (lm-eval resolves `!function` from the YAML that holds it).
    let dir = path.parent().unwrap_or(Path::new("."));
    for (_, g) in &mut out {
        functions_beside(&mut g.overrides, dir);
        for m in &mut g.members {
            functions_beside(&mut m.keys, dir);
        }
    }
    Ok(out)
}

/// `!function MODULE.function` values in `keys` rewritten to the module's path in `dir`
/// (`!function DIR/MODULE.function`), so they resolve there from any task file.
fn functions_beside(keys: &mut Mapping, dir: &Path) {
    fn walk(v: &mut Value, dir: &Path) {
        match v {
            Value::Tagged(t) => {
                if let Some((module, function)) = t
                    .value
                    .as_str()
                    .filter(|s| !s.contains('/'))
                    .and_then(|s| s.rsplit_once('.'))
                {
                    let file = dir.join(module.replace('.', "/"));
                    t.value = Value::String(format!("{}.{function}", file.display()));
                }
            }
            Value::Sequence(s) => s.iter_mut().for_each(|x| walk(x, dir)),
            Value::Mapping(m) => m.iter_mut().for_each(|(_, x)| walk(x, dir)),
            _ => {}
        }
    }
    keys.iter_mut().for_each(|(_, v)| walk(v, dir));
}

/// `m` without the keys in `drop`.
fn without(m: &Mapping, drop: &[&str]) -> Mapping {
    m.iter()
        .filter(|(k, _)| !k.as_str().is_some_and(|k| drop.contains(&k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn group_of(v: &serde_yaml::Value, out: &mut Vec<(String, GroupFile)>) -> Result<String, String> {
    use serde_yaml::Value;
    let map = v.as_mapping().ok_or("a group is a mapping")?;
    let name = v
        .get("group")
        .and_then(Value::as_str)
        .ok_or("key `group` is missing: a `task:` list needs a group name")?
        .to_string();
    let list = v
        .get("task")
        .and_then(Value::as_sequence)
        .ok_or_else(|| format!("group `{name}`: key `task` should be a list"))?;
    let mut g = GroupFile {
        alias: v
            .get("group_alias")
            .and_then(Value::as_str)
            .map(str::to_string),
        overrides: without(&without(map, GROUP_KEYS), INERT_MEMBER_KEYS),
        ..GroupFile::default()
    };
    for (i, m) in list.iter().enumerate() {
        let member = match m {
            Value::String(s) => Member {
                name: s.clone(),
                keys: Mapping::new(),
            },
            // An inline group, or `{group: NAME, KEY: VALUE}` setting keys of a group defined
            // elsewhere.
            Value::Mapping(mm) if mm.contains_key("group") => match m.get("task") {
                Some(_) => Member {
                    name: group_of(m, out)?,
                    keys: Mapping::new(),
                },
                None => Member {
                    name: m
                        .get("group")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            format!("group `{name}`: key `task[{i}].group` should be a name")
                        })?
                        .to_string(),
                    keys: without(mm, &["group", "group_alias", "task_alias"]),
                },
            },
            Value::Mapping(mm) => {
                let task = m.get("task").and_then(Value::as_str).ok_or_else(|| {
                    format!(
                        "group `{name}`: key `task[{i}]` has neither `task` (a task's name) nor \
                         `group`; lm-eval reads no such member either"
                    )
                })?;
                Member {
                    name: task.to_string(),
                    keys: without(mm, INERT_MEMBER_KEYS),
                }
            }
            _ => {
                return Err(format!(
                    "group `{name}`: key `task[{i}]` should be a name or a mapping"
                ));
            }
        };
        g.members.push(member);
    }
    let aggs = match v.get("aggregate_metric_list") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(s)) => s.clone(),
        Some(one @ Value::Mapping(_)) => vec![one.clone()],
        Some(_) => {
            return Err(format!(
                "group `{name}`: key `aggregate_metric_list` should be a list"
            ));
        }
    };
    for a in &aggs {
        let metric = a.get("metric").and_then(Value::as_str).ok_or_else(|| {
            format!("group `{name}`: each `aggregate_metric_list` entry names a `metric`")
        })?;
        if let Some(agg) = a.get("aggregation").and_then(Value::as_str)
            && agg != "mean"
        {
            return Err(format!(
                "group `{name}`: `aggregate_metric_list` aggregation `{agg}`: icl-eval's group \
                 means are means"
            ));
        }
        let weight = a
            .get("weight_by_size")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        g.weight_by_size.push((metric.to_string(), weight));
    }
    out.push((name.clone(), g));
    Ok(name)
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
                Err(e) => (Err(e), leading_text(&path)),
            };
            let about = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .map(|l| l.trim_start_matches('#').trim())
                .collect::<Vec<_>>()
                .join(" ");
            if let Ok(v) = &merged
                && v.get("task").is_some_and(serde_yaml::Value::is_sequence)
            {
                match read_groups(&path, v) {
                    Ok(groups) => found.extend(groups.into_iter().map(|(name, g)| TaskSource {
                        name,
                        path: path.clone(),
                        about: about.clone(),
                        problem: None,
                        tags: Vec::new(),
                        group: Some(g),
                        inline: None,
                    })),
                    Err(e) => found.push(TaskSource {
                        name: stem,
                        path,
                        about,
                        problem: Some(e),
                        tags: Vec::new(),
                        group: None,
                        inline: None,
                    }),
                }
                continue;
            }
            let name = merged
                .as_ref()
                .ok()
                .and_then(|v| v.get("task").and_then(|t| t.as_str()).map(str::to_string));
            let tags = merged.as_ref().map(tags_of).unwrap_or_default();
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
                group: None,
                inline: None,
            });
        }
    }
    define_inline_tasks(&mut found);
    Ok(found)
}

/// The `tag:` names of a task's keys (none when absent or malformed; loading names the problem).
fn tags_of(v: &Value) -> Vec<String> {
    v.get("tag")
        .cloned()
        .and_then(|t| serde_yaml::from_value::<spec::Tags>(t).ok())
        .map(spec::Tags::into_vec)
        .unwrap_or_default()
}

/// Registers the tasks group files define inline: a `{task: NAME, ...}` member whose name no
/// task file, group or tag has (lm-eval's rule); the first definition of a name wins, as the
/// first file of a name does.
fn define_inline_tasks(found: &mut Vec<TaskSource>) {
    let mut defined = Vec::new();
    for src in found.iter() {
        let Some(g) = &src.group else { continue };
        for m in g.members.iter().filter(|m| !m.keys.is_empty()) {
            // Files that are no task (a base without `task:`) take no name, as in lm-eval's index.
            let taken = |n: &str| {
                found
                    .iter()
                    .filter(|t| t.problem.is_none())
                    .any(|t| t.name == n || t.tags.iter().any(|x| x == n))
                    || defined.iter().any(|t: &TaskSource| t.name == n)
            };
            if taken(&m.name) {
                continue;
            }
            // lm-eval builds it over its group's own task keys, run by name too.
            let mut keys = overlay(&g.overrides, &m.keys);
            keys.insert("task".into(), m.name.clone().into());
            defined.push(TaskSource {
                name: m.name.clone(),
                path: src.path.clone(),
                about: format!("defined inside group `{}`", src.name),
                problem: None,
                tags: tags_of(&Value::Mapping(keys.clone())),
                group: None,
                inline: Some((keys, src.name.clone())),
            });
        }
    }
    found.extend(defined);
}

/// The first 64 KiB of a file that failed to load, for its leading comment (it may be huge).
fn leading_text(path: &Path) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let _ = fs::File::open(path).and_then(|f| f.take(64 << 10).read_to_end(&mut head));
    String::from_utf8_lossy(&head).into_owned()
}

/// Every `*.yaml` / `*.yml` under `dir`; files named `_*` only where they are group files
/// (lm-eval names its groups `_mmlu.yaml`; other `_*` files are bases that tasks include).
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || (name.starts_with('_') && !is_group_file(&path)) {
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

/// Whether a YAML file is a group file (a `task:` list); unreadable files are not.
fn is_group_file(path: &Path) -> bool {
    path.is_file()
        && include::read_merged(path)
            .is_ok_and(|(v, _)| v.get("task").is_some_and(serde_yaml::Value::is_sequence))
}

/// A tag named on `--tasks`: its tasks are reported one by one and as a group mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    /// Task names, sorted.
    pub tasks: Vec<String>,
}

/// What `--tasks` selects: the tasks, and the groups among the names (tags).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub tasks: Vec<TaskRef>,
    pub groups: Vec<Group>,
}

/// Resolves `--tasks` entries: YAML paths are taken as they are, names are looked up in `dirs`.
pub fn resolve(names: &[String], dirs: &[PathBuf]) -> Result<Vec<TaskRef>> {
    Ok(select(names, dirs)?.tasks)
}

/// Resolves `--tasks` entries like [`resolve`], keeping each tag and group named as a group
/// (nested groups each as their own). A task reached through several groups runs once; reached
/// with different settings (a group's keys for it), it is an error naming both.
pub fn select(names: &[String], dirs: &[PathBuf]) -> Result<Selection> {
    let mut known: Option<Vec<TaskSource>> = None;
    let mut out: Vec<TaskRef> = Vec::with_capacity(names.len());
    let mut groups = Vec::new();
    for n in names {
        let p = Path::new(n);
        if p.is_file() {
            let r = TaskRef::named(p);
            if out.contains(&r) {
                bail!("--tasks: {} is listed twice", p.display());
            }
            out.push(r);
            continue;
        }
        if known.is_none() {
            known = Some(discover(dirs)?);
        }
        let known = known.as_deref().unwrap_or_default();
        let mut stack = Vec::new();
        let found = expand(n, &Mapping::new(), known, dirs, &mut stack, &mut groups)?;
        if found.is_empty() {
            bail!("--tasks: group `{n}` holds no task");
        }
        if names.iter().filter(|m| *m == n).count() > 1 {
            bail!("--tasks: `{n}` is listed twice");
        }
        for t in found {
            if out.contains(&t) {
                continue;
            }
            if let Some(other) = out.iter().find(|o| o.name == t.name) {
                bail!(
                    "--tasks: task `{}` is reached twice with different settings: {} and {}; \
                     results are keyed by task name, so run them separately",
                    t.name,
                    describe(other),
                    describe(&t)
                );
            }
            out.push(t);
        }
    }
    groups.dedup_by(|a, b| a.name == b.name);
    Ok(Selection { tasks: out, groups })
}

/// A selected task for an error message: its file, or the group keys it was given.
fn describe(r: &TaskRef) -> String {
    match &r.yaml {
        None => format!("as {} has it", r.path.display()),
        Some((v, groups)) => format!(
            "with keys from group {groups}: {}",
            serde_yaml::to_string(v)
                .unwrap_or_default()
                .trim()
                .replace('\n', ", ")
        ),
    }
}

/// `base` with `keys` set over it.
fn overlay(base: &Mapping, keys: &Mapping) -> Mapping {
    let mut m = base.clone();
    for (k, v) in keys {
        m.insert(k.clone(), v.clone());
    }
    m
}

/// Where task `t` is read from, with `keys` (a group's settings, named by `via`) over its own.
fn task_ref(t: &TaskSource, keys: &Mapping, via: Option<&str>) -> TaskRef {
    let via = via.unwrap_or_default().to_string();
    let yaml = match &t.inline {
        // The definition's own keys win over the settings of groups around it.
        Some((def, group)) => {
            let mut m = overlay(keys, def);
            m.insert("task".into(), t.name.clone().into());
            let groups = match via.as_str() {
                "" => format!("`{group}`"),
                chain => format!("`{chain}`"),
            };
            Some((Value::Mapping(m), groups))
        }
        None if keys.is_empty() => None,
        None => {
            let mut m = Mapping::new();
            let file = t.path.file_name().map(|f| f.to_string_lossy().into_owned());
            m.insert("include".into(), file.unwrap_or_default().into());
            Some((Value::Mapping(overlay(&m, keys)), format!("`{via}`")))
        }
    };
    TaskRef {
        name: t.name.clone(),
        path: t.path.clone(),
        yaml,
    }
}

/// The tasks a name stands for: a task itself, a group's members (recursively), or the tasks
/// carrying a tag; groups and tags are recorded in `groups`. `keys` are the settings the groups
/// around give it; `stack` holds the groups being expanded, so a cycle is an error naming it.
fn expand(
    n: &str,
    keys: &Mapping,
    known: &[TaskSource],
    dirs: &[PathBuf],
    stack: &mut Vec<String>,
    groups: &mut Vec<Group>,
) -> Result<Vec<TaskRef>> {
    let usable = |t: &&TaskSource| t.problem.is_none();
    let chain = stack.join(" › ");
    let via = (!stack.is_empty()).then_some(chain.as_str());
    if let Some(t) = known
        .iter()
        .filter(usable)
        .find(|t| t.name == n && t.group.is_none())
    {
        // The first folder in precedence wins; say so when another file has the name too.
        if stack.is_empty()
            && let Some(other) = known
                .iter()
                .filter(usable)
                .find(|o| o.name == n && o.path != t.path && o.group.is_none())
        {
            eprintln!(
                "note: task `{n}` is in {} and {}; running the first (--tasks-dir folders come \
                 before ./tasks)",
                t.path.display(),
                other.path.display()
            );
        }
        return Ok(vec![task_ref(t, keys, via)]);
    }
    if let Some(src) = known.iter().filter(usable).find(|t| t.name == n)
        && let Some(g) = &src.group
    {
        if let Some(at) = stack.iter().position(|s| s == n) {
            bail!(
                "{}: group cycle {} → {n}: a group may not contain itself",
                src.path.display(),
                stack[at..].join(" → ")
            );
        }
        stack.push(n.to_string());
        // The caller's settings win over the group's own.
        let passed = overlay(&g.overrides, keys);
        let mut tasks: Vec<TaskRef> = Vec::new();
        for m in &g.members {
            for t in expand(
                &m.name,
                &overlay(&passed, &m.keys),
                known,
                dirs,
                stack,
                groups,
            )
            .map_err(|e| anyhow!("{e}\n(in group `{n}`, {})", src.path.display()))?
            {
                if !tasks.contains(&t) {
                    tasks.push(t);
                }
            }
        }
        stack.pop();
        let mut names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
        names.sort();
        names.dedup();
        groups.push(Group {
            name: n.to_string(),
            tasks: names,
        });
        return Ok(tasks);
    }
    let mut tagged: Vec<&TaskSource> = known
        .iter()
        .filter(usable)
        .filter(|t| t.group.is_none() && t.tags.iter().any(|x| x == n))
        .collect();
    if !tagged.is_empty() {
        tagged.sort_by(|a, b| a.name.cmp(&b.name));
        // A tag inside a group only lists tasks (lm-eval aggregates groups, not tags); named on
        // the command line it is reported as a group.
        if stack.is_empty() {
            groups.push(Group {
                name: n.to_string(),
                tasks: tagged.iter().map(|t| t.name.clone()).collect(),
            });
        }
        return Ok(tagged.into_iter().map(|t| task_ref(t, keys, via)).collect());
    }
    let list: Vec<&str> = known
        .iter()
        .filter(usable)
        .map(|t| t.name.as_str())
        .collect();
    // lm-eval's folder holds thousands of names; a few show the spelling.
    let shown = if list.len() > 40 {
        format!(
            "{}, … and {} more: `icl-eval tasks` lists them",
            list[..40].join(", "),
            list.len() - 40
        )
    } else {
        list.join(", ")
    };
    bail!(
        "--tasks: no task, group or tag named `{n}` in {} (known: {}); pass a YAML path or \
         --tasks-dir",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        shown
    )
}
