//! The Hugging Face Hub as Hugging Face's own tools see it: endpoint, cache, offline mode and token
//! from the environment; models (`models.rs`) and datasets (task loading) are read through it.
//!
//! Datasets come from the Hub's parquet conversion (revision `refs/convert/parquet`), whose files
//! are `{config}/{split}/NNNN.parquet` (or `{config}/partial-{split}/…` for a large split): the
//! listing says which exist, nothing is guessed.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use hf_hub::{Repo, RepoType};

/// Where the hub is and what may be downloaded.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE=1` or `--offline`: only the cache is read.
    pub offline: bool,
    /// `HF_TOKEN`; sent to the hub only, never written anywhere.
    pub token: Option<String>,
}

/// `--offline` for the whole process: datasets read deep in task loading obey it too.
static FORCED_OFFLINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns offline mode on for every later [`HubOptions::from_env`] (the command line's `--offline`).
pub fn set_offline() {
    FORCED_OFFLINE.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl HubOptions {
    /// The settings Hugging Face's own tools read from the environment.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = env("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        let cache_dir = env("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            env("HF_HOME")
                .map_or_else(|| home.join(".cache/huggingface"), PathBuf::from)
                .join("hub")
        });
        Self {
            endpoint: env("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache_dir,
            offline: env("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && v != "false")
                || FORCED_OFFLINE.load(std::sync::atomic::Ordering::Relaxed),
            token: env("HF_TOKEN"),
        }
    }
}

/// A client for `hub`'s endpoint, cache and token.
pub fn api(hub: &HubOptions) -> Result<hf_hub::api::sync::Api> {
    hf_hub::api::sync::ApiBuilder::new()
        .with_endpoint(hub.endpoint.clone())
        .with_cache_dir(hub.cache_dir.clone())
        .with_progress(false)
        .with_token(hub.token.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the Hugging Face hub client: {e}"))
}

/// The revision holding the Hub's parquet conversion of every dataset.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

/// The parquet files of one split of a Hub dataset, downloaded into (or found in) the cache.
#[derive(Debug, Clone)]
pub struct DatasetFiles {
    /// The commit of the parquet conversion they come from.
    pub commit: String,
    /// Local paths, in file-name order.
    pub files: Vec<PathBuf>,
}

/// Whether a file of the parquet conversion belongs to `config`'s `split`.
fn in_split(file: &str, config: &str, split: &str) -> bool {
    let Some(rest) = file.strip_prefix(&format!("{config}/")) else {
        return false;
    };
    let Some((folder, name)) = rest.split_once('/') else {
        return false;
    };
    (folder == split || folder == format!("partial-{split}"))
        && !name.contains('/')
        && name.ends_with(".parquet")
}

/// `config`'s `split` of the dataset `repo`: from the cache when it holds the conversion (always
/// when offline), else listed and downloaded from the Hub.
pub fn dataset_split(
    hub: &HubOptions,
    repo: &str,
    config: &str,
    split: &str,
) -> Result<DatasetFiles> {
    let shown = format!("dataset {repo} (config `{config}`, split `{split}`)");
    if let Some(found) = cached_split(hub, repo, config, split) {
        return Ok(found);
    }
    let remote = online_dataset(hub, repo, PARQUET_REVISION, &shown)?;
    let fail = |e: hf_hub::api::sync::ApiError| {
        anyhow::anyhow!("{shown}: the Hub at {} answered: {e}", hub.endpoint)
    };
    let info = remote.info().map_err(fail)?;
    let mut names: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| in_split(f, config, split))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!(
            "{shown}: the Hub's parquet conversion has no files for it; check `dataset_name` \
             and the split names on the dataset's page"
        );
    }
    let mut files = Vec::with_capacity(names.len());
    for n in &names {
        eprintln!("downloading {repo}/{n}");
        files.push(remote.get(n).map_err(fail)?);
    }
    Ok(DatasetFiles {
        commit: info.sha,
        files,
    })
}

/// The dataset `repo` at `revision` on the Hub; offline (when the cache lacked what `shown`
/// names), the error saying so.
fn online_dataset(
    hub: &HubOptions,
    repo: &str,
    revision: &str,
    shown: &str,
) -> Result<hf_hub::api::sync::ApiRepo> {
    if hub.offline {
        bail!(
            "{shown} is not in the Hugging Face cache {} and offline mode is on (HF_HUB_OFFLINE \
             or --offline); run once online to download it",
            hub.cache_dir.display()
        );
    }
    Ok(api(hub)?.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Dataset,
        revision.to_string(),
    )))
}

/// Where the Hugging Face cache keeps the dataset `repo`.
fn dataset_cache(hub: &HubOptions, repo: &str) -> PathBuf {
    hub.cache_dir
        .join(format!("datasets--{}", repo.replace('/', "--")))
}

/// The revision a dataset repository's own files are read at.
pub const MAIN_REVISION: &str = "main";

/// One of a dataset repository's own files (`path` in the repo at `revision`), from the cache
/// when it holds it (always when offline), else downloaded: its commit and local path.
pub fn dataset_file(
    hub: &HubOptions,
    repo: &str,
    revision: &str,
    path: &str,
) -> Result<(String, PathBuf)> {
    let shown = if revision == MAIN_REVISION {
        format!("dataset {repo}, file `{path}`")
    } else {
        format!("dataset {repo} at {revision}, file `{path}`")
    };
    let root = dataset_cache(hub, repo);
    // A commit is its own snapshot (Python's `huggingface_hub` writes no ref for one).
    let commit = match revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        true => Some(revision.to_string()),
        false => std::fs::read_to_string(root.join("refs").join(revision))
            .ok()
            .map(|c| c.trim().to_string()),
    };
    if let Some(commit) = commit {
        let local = root.join("snapshots").join(&commit).join(path);
        if local.is_file() {
            return Ok((commit, local));
        }
    }
    let remote = online_dataset(hub, repo, revision, &shown)?;
    let fail = |e: hf_hub::api::sync::ApiError| {
        anyhow::anyhow!("{shown}: the Hub at {} answered: {e}", hub.endpoint)
    };
    let info = remote.info().map_err(fail)?;
    if !info.siblings.iter().any(|s| s.rfilename == path) {
        bail!("{shown}: the repository has no such file; check `data_files` against its file list");
    }
    eprintln!("downloading {repo}/{path}");
    let local = remote.get(path).map_err(fail)?;
    Ok((info.sha, local))
}

/// The split's files in the cache's snapshot of the conversion, if it holds any.
fn cached_split(hub: &HubOptions, repo: &str, config: &str, split: &str) -> Option<DatasetFiles> {
    let root = dataset_cache(hub, repo);
    let commit = std::fs::read_to_string(root.join("refs").join(PARQUET_REVISION)).ok()?;
    let commit = commit.trim().to_string();
    let snapshot = root.join("snapshots").join(&commit).join(config);
    let mut files = Vec::new();
    for folder in [split.to_string(), format!("partial-{split}")] {
        let dir = snapshot.join(&folder);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        files.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "parquet")),
        );
    }
    files.sort();
    (!files.is_empty()).then_some(DatasetFiles { commit, files })
}

/// The file name of `path` relative to the split's folder, for records.
pub fn file_label(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let folder = path
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned());
    match (folder, name) {
        (Some(f), Some(n)) => format!("{f}/{n}"),
        (_, Some(n)) => n,
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_files_are_the_configs_split_and_partial_folders() {
        assert!(in_split("ARC-Easy/test/0000.parquet", "ARC-Easy", "test"));
        assert!(in_split(
            "default/partial-train/0003.parquet",
            "default",
            "train"
        ));
        assert!(!in_split(
            "ARC-Easy/test/0000.parquet",
            "ARC-Challenge",
            "test"
        ));
        assert!(!in_split(
            "ARC-Easy/validation/0000.parquet",
            "ARC-Easy",
            "test"
        ));
        assert!(!in_split("ARC-Easy/test/README.md", "ARC-Easy", "test"));
        assert!(!in_split(
            "ARC-Easy/test/x/0000.parquet",
            "ARC-Easy",
            "test"
        ));
    }
}
