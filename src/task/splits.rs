//! Reading a task's data: files (resolved against the task folder or `${DATA_DIR}`, hashed),
//! cut into splits by file, row range or column, or generated.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use serde_json::Value;
use sha2::Digest;

use super::problems::Ctx;
use super::spec::DatasetSpec;
use super::{dataset, generators};

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

/// The dataset's docs by split name, from its files, one file cut by rows or by a column, a
/// generator, or the Hub (only the `wanted` splits are read from there).
pub(super) fn load_splits(
    cx: &mut Ctx,
    ds: &DatasetSpec,
    wanted: &[&str],
) -> Option<BTreeMap<String, Vec<Value>>> {
    // `hub` with `files` reads the repository's own files: one source.
    let sources = usize::from(ds.path.is_some())
        + usize::from(ds.files.is_some() && ds.hub.is_none())
        + usize::from(ds.generator.is_some())
        + usize::from(ds.hub.is_some());
    if sources != 1 {
        cx.problem("field `dataset`: give exactly one of `path`, `files`, `generator` or `hub`");
        return None;
    }
    if ds.name.is_some() && ds.hub.is_none() {
        cx.problem("field `dataset.name` (the Hub configuration) applies only with `dataset.hub`");
        return None;
    }
    if ds.revision.is_some() && ds.hub.is_none() {
        cx.problem("field `dataset.revision` applies only with `dataset.hub` and its `files`");
        return None;
    }
    if let Some(repo) = &ds.hub {
        if let Some(files) = &ds.files {
            return load_repo_files(cx, ds, repo, files, wanted);
        }
        return load_hub_splits(cx, ds, repo, wanted);
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

/// The `wanted` splits of a Hub dataset read from its own files (`files: {split: path in the
/// repository}`, lm-eval's `data_files` beside a Hub `dataset_path`), read by their extension.
fn load_repo_files(
    cx: &mut Ctx,
    ds: &DatasetSpec,
    repo: &str,
    files: &BTreeMap<String, String>,
    wanted: &[&str],
) -> Option<BTreeMap<String, Vec<Value>>> {
    if ds.name.is_some() {
        cx.problem("field `dataset.name` applies to the Hub's parquet conversion, not to `files`");
        return None;
    }
    let mut out = BTreeMap::new();
    for split in wanted {
        if out.contains_key(*split) {
            continue;
        }
        let Some(path) = files.get(*split) else {
            cx.problem(format!(
                "field `dataset.files`: no file for split `{split}` (files for: {})",
                files.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
            return None;
        };
        let revision = ds.revision.as_deref().unwrap_or(crate::hub::MAIN_REVISION);
        let (commit, local) = match crate::hub::dataset_file(&cx.hub, repo, revision, path) {
            Ok(f) => f,
            Err(e) => {
                cx.problem(format!("field `dataset.files.{split}`: {e:#}"));
                return None;
            }
        };
        let shown = format!("{repo}/{path}");
        let bytes = match fs::read(&local) {
            Ok(b) => b,
            Err(e) => {
                cx.problem(format!("{shown}: {e}"));
                return None;
            }
        };
        cx.read_data(format!("hf://datasets/{repo}@{commit}/{path}"), &bytes);
        match dataset::read(std::path::Path::new(&shown), &bytes, ds) {
            Ok(d) => {
                out.insert(split.to_string(), d);
            }
            Err(errs) => {
                cx.problems_capped(errs, &format!("{shown}: rows"));
                return None;
            }
        }
    }
    Some(out)
}

/// The `wanted` splits of a Hub dataset: each split's parquet files, concatenated in name order.
fn load_hub_splits(
    cx: &mut Ctx,
    ds: &DatasetSpec,
    repo: &str,
    wanted: &[&str],
) -> Option<BTreeMap<String, Vec<Value>>> {
    let config = ds.name.as_deref().unwrap_or("default");
    if let Some(r) = &ds.revision {
        cx.problem(format!(
            "field `dataset.revision` ({r}) pins a repository's own `files`; the Hub's parquet \
             conversion is made from its latest commit, so name the files to read them at {r}"
        ));
        return None;
    }
    if ds.format.is_some() || ds.columns.is_some() || ds.split_column.is_some() {
        cx.problem(
            "field `dataset.hub`: the Hub's parquet files take no `format`, `columns` or \
             `split_column`",
        );
        return None;
    }
    let mut out = BTreeMap::new();
    for split in wanted {
        if out.contains_key(*split) {
            continue;
        }
        let found = match crate::hub::dataset_split(&cx.hub, repo, config, split) {
            Ok(f) => f,
            Err(e) => {
                cx.problem(format!("field `dataset.hub`: {e:#}"));
                return None;
            }
        };
        cx.hasher
            .update(format!("hub:{repo}:{config}:{split}:{}", found.commit).as_bytes());
        let mut docs = Vec::new();
        for f in &found.files {
            let shown = format!("{repo}/{config}/{}", crate::hub::file_label(f));
            let bytes = match fs::read(f) {
                Ok(b) => b,
                Err(e) => {
                    cx.problem(format!("{shown}: {e}"));
                    return None;
                }
            };
            cx.read_data(
                format!(
                    "hf://datasets/{repo}@{}/{config}/{}",
                    found.commit,
                    crate::hub::file_label(f)
                ),
                &bytes,
            );
            match dataset::read(std::path::Path::new(&shown), &bytes, ds) {
                Ok(d) => docs.extend(d),
                Err(errs) => {
                    cx.problems_capped(errs, &format!("{shown}: rows"));
                    return None;
                }
            }
        }
        out.insert(split.to_string(), docs);
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
    cx.read_data(shown.clone(), &bytes);
    let mut extra = Vec::new();
    for (field, raw) in ds.column_files.iter().flatten() {
        let path = resolve_path(cx, raw)?;
        match fs::read(&path) {
            Ok(b) => {
                cx.read_data(path.display().to_string(), &b);
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
