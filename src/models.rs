//! Model references: what `--models` accepts and where the weights are.
//!
//! A reference is a `.gguf` path, a checkpoint folder, a name from the models file (`models.yaml`:
//! name → source, sha256, display name), or `hf:ORG/REPO[/FILE]` fetched with `hf-hub` into the
//! standard Hugging Face cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::backend::candle::{self, hf};

/// Default models file, looked up in the working directory.
pub const MODELS_FILE: &str = "models.yaml";

/// One entry of the models file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// A `.gguf` file or checkpoint folder (relative to the models file), or `hf:ORG/REPO[/FILE]`.
    pub source: String,
    /// Expected sha256 of the GGUF file (of the config + weight files' digests for a folder).
    pub sha256: Option<String>,
    /// Name in tables and charts; defaults to the entry's name.
    pub display_name: Option<String>,
    /// The command that fetches the weights, shown when they are missing.
    pub fetch: Option<String>,
    /// The model family the size chart draws one line for (`pythia`, `qwen2.5`); defaults to the
    /// architecture, which for a GGUF file is often only `llama`.
    pub family: Option<String>,
}

/// The models file: named models a run can refer to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsFile {
    /// Entries in file order.
    pub models: indexmap::IndexMap<String, ModelEntry>,
    /// Folder the sources are relative to.
    #[serde(skip)]
    pub base: PathBuf,
}

impl ModelsFile {
    /// Reads a models file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the models file", path.display()))?;
        let mut f: ModelsFile =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        f.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(f)
    }

    /// The models file at `path`, or `models.yaml` in the working directory when it exists.
    pub fn find(path: Option<&Path>) -> Result<Option<Self>> {
        match path {
            Some(p) => Ok(Some(Self::read(p)?)),
            None if Path::new(MODELS_FILE).is_file() => {
                Ok(Some(Self::read(Path::new(MODELS_FILE))?))
            }
            None => Ok(None),
        }
    }
}

pub use crate::hub::HubOptions;

/// A `--models` entry resolved to local weights.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// What the user wrote.
    pub reference: String,
    /// A `.gguf` file or checkpoint folder.
    pub path: PathBuf,
    /// Name for tables and charts, when the reference names one.
    pub display_name: Option<String>,
    /// sha256 the weights must have.
    pub sha256: Option<String>,
    /// The family the models file names, if it does.
    pub family: Option<String>,
}

impl ResolvedModel {
    /// Name in tables and charts: the display name, else the file stem or folder name.
    pub fn name(&self) -> String {
        self.display_name.clone().unwrap_or_else(|| {
            let part = if self.path.is_dir() {
                self.path.file_name()
            } else {
                self.path.file_stem()
            };
            part.map_or_else(
                || self.reference.clone(),
                |s| s.to_string_lossy().into_owned(),
            )
        })
    }
}

/// A parsed `hf:ORG/REPO[/FILE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub repo: String,
    pub file: Option<String>,
}

impl HubRef {
    /// Parses the part after `hf:`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            bail!("`hf:{s}`: expected hf:ORG/REPO or hf:ORG/REPO/FILE");
        }
        Ok(Self {
            repo: format!("{}/{}", parts[0], parts[1]),
            file: (parts.len() > 2).then(|| parts[2..].join("/")),
        })
    }

    /// Default display name: the file stem, or the repository name.
    pub fn display_name(&self) -> String {
        match &self.file {
            Some(f) => Path::new(f)
                .file_stem()
                .map_or_else(|| f.clone(), |s| s.to_string_lossy().into_owned()),
            None => self
                .repo
                .rsplit('/')
                .next()
                .unwrap_or(&self.repo)
                .to_string(),
        }
    }
}

/// Resolves one reference: `hf:` first, then an existing path, then a models-file name.
pub fn resolve(
    reference: &str,
    file: Option<&ModelsFile>,
    hub: &HubOptions,
) -> Result<ResolvedModel> {
    if let Some(rest) = reference.strip_prefix("hf:") {
        let r = HubRef::parse(rest)?;
        return Ok(ResolvedModel {
            reference: reference.to_string(),
            path: fetch_from_hub(&r, hub)?,
            display_name: Some(r.display_name()),
            sha256: None,
            family: None,
        });
    }
    let path = Path::new(reference);
    if path.exists() {
        return Ok(ResolvedModel {
            reference: reference.to_string(),
            path: path.to_path_buf(),
            display_name: None,
            sha256: None,
            family: None,
        });
    }
    let Some((f, entry)) = file.and_then(|f| f.models.get(reference).map(|e| (f, e))) else {
        let known = file
            .map(|f| f.models.keys().cloned().collect::<Vec<_>>().join(", "))
            .filter(|k| !k.is_empty())
            .map_or_else(
                || format!("no {MODELS_FILE} in the working directory"),
                |k| format!("known names: {k}"),
            );
        bail!(
            "model `{reference}`: no such file or folder, and not a name in the models file ({known}); \
             --models takes a .gguf file, a checkpoint folder, a name or hf:ORG/REPO[/FILE]"
        );
    };
    let display_name = Some(
        entry
            .display_name
            .clone()
            .unwrap_or_else(|| reference.to_string()),
    );
    if let Some(rest) = entry.source.strip_prefix("hf:") {
        let r = HubRef::parse(rest)?;
        return Ok(ResolvedModel {
            reference: reference.to_string(),
            path: fetch_from_hub(&r, hub)?,
            display_name,
            sha256: entry.sha256.clone(),
            family: entry.family.clone(),
        });
    }
    let path = f.base.join(&entry.source);
    if !path.exists() {
        let hint = entry
            .fetch
            .as_deref()
            .map_or_else(String::new, |c| format!("; fetch it with `{c}`"));
        bail!("model `{reference}`: {} is not there{hint}", path.display());
    }
    Ok(ResolvedModel {
        reference: reference.to_string(),
        path,
        display_name,
        sha256: entry.sha256.clone(),
        family: entry.family.clone(),
    })
}

/// Files a checkpoint folder needs besides its weights.
const CHECKPOINT_FILES: &[&str] = &["config.json", "tokenizer.json"];

/// A cached snapshot folder holding a complete checkpoint, if there is one.
fn cached_checkpoint(cache: &hf_hub::CacheRepo) -> Option<PathBuf> {
    let config = cache.get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    let complete = CHECKPOINT_FILES.iter().all(|f| dir.join(f).is_file())
        && std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"));
    complete.then_some(dir)
}

/// Downloads (or finds in the cache) a hub file or checkpoint; returns the local path.
fn fetch_from_hub(r: &HubRef, hub: &HubOptions) -> Result<PathBuf> {
    let cache = hf_hub::Cache::new(hub.cache_dir.clone()).model(r.repo.clone());
    let shown = match &r.file {
        Some(f) => format!("hf:{}/{f}", r.repo),
        None => format!("hf:{}", r.repo),
    };
    // An existing cache entry is used as is: no network, as with the hub's own tools.
    let cached = match &r.file {
        Some(f) => cache.get(f),
        None => cached_checkpoint(&cache),
    };
    if let Some(p) = cached {
        return Ok(p);
    }
    if hub.offline {
        bail!(
            "{shown} is not in the Hugging Face cache {} and offline mode is on (HF_HUB_OFFLINE \
             or --offline); run once online to download it",
            hub.cache_dir.display()
        );
    }
    let api = crate::hub::api(hub)?;
    let repo = api.model(r.repo.clone());
    let fail = |e: hf_hub::api::sync::ApiError| {
        anyhow::anyhow!("{shown}: download from {} failed: {e}", hub.endpoint)
    };
    match &r.file {
        Some(f) => repo.get(f).map_err(fail),
        None => {
            let info = repo.info().map_err(fail)?;
            let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
            let weights: Vec<&String> = files
                .iter()
                .filter(|f| f.ends_with(".safetensors"))
                .collect();
            if weights.is_empty() {
                bail!(
                    "{shown}: the repository has no *.safetensors weights; name a GGUF file with \
                     hf:ORG/REPO/FILE"
                );
            }
            let mut dir = None;
            for f in CHECKPOINT_FILES
                .iter()
                .copied()
                .chain(weights.iter().map(|s| s.as_str()))
            {
                let p = repo.get(f).map_err(fail)?;
                dir = p.parent().map(Path::to_path_buf);
            }
            dir.context("no file downloaded")
        }
    }
}

/// One row of `icl-eval models`.
#[derive(Debug, Clone)]
pub struct ModelListing {
    pub name: String,
    pub architecture: Option<String>,
    /// The models file's `family`, else the architecture's.
    pub family: Option<String>,
    pub parameters: Option<u64>,
    pub quantization: Option<String>,
    pub context_length: Option<usize>,
    pub path: String,
    /// Whether the weights are on this machine; otherwise how to get them.
    pub present: std::result::Result<(), String>,
}

/// Lists the models file's entries (without downloading anything), reading only file headers.
pub fn list(file: &ModelsFile, hub: &HubOptions) -> Vec<ModelListing> {
    file.models
        .iter()
        .map(|(name, entry)| {
            let local = match entry.source.strip_prefix("hf:") {
                Some(rest) => HubRef::parse(rest).ok().and_then(|r| {
                    let cache = hf_hub::Cache::new(hub.cache_dir.clone()).model(r.repo.clone());
                    match &r.file {
                        Some(f) => cache.get(f),
                        None => cached_checkpoint(&cache),
                    }
                }),
                None => Some(file.base.join(&entry.source)).filter(|p| p.exists()),
            };
            let mut row = ModelListing {
                name: name.clone(),
                architecture: None,
                family: entry.family.clone(),
                parameters: None,
                quantization: None,
                context_length: None,
                path: local
                    .as_ref()
                    .map_or_else(|| entry.source.clone(), |p| p.display().to_string()),
                present: Err(entry
                    .fetch
                    .clone()
                    .unwrap_or_else(|| "not downloaded".into())),
            };
            if let Some(p) = local {
                match inspect(&p) {
                    Ok((arch, params, quant, ctx)) => {
                        row.family = row
                            .family
                            .or_else(|| Some(candle::families::family_name(&arch)));
                        row.architecture = Some(arch);
                        row.parameters = Some(params);
                        row.quantization = Some(quant);
                        row.context_length = Some(ctx);
                        row.present = Ok(());
                    }
                    Err(e) => row.present = Err(format!("unreadable: {e:#}")),
                }
            }
            row
        })
        .collect()
}

/// Architecture, parameters, quantization and context length from headers only.
fn inspect(path: &Path) -> Result<(String, u64, String, usize)> {
    if path.is_dir() {
        let s = hf::inspect(path)?;
        Ok((
            s.architecture,
            s.parameters.total,
            s.quantization,
            s.context_length,
        ))
    } else {
        let s = candle::inspect_gguf(path)?;
        Ok((
            s.architecture,
            s.parameters.total,
            s.quantization,
            s.context_length,
        ))
    }
}

/// `icl-eval models` as a Markdown table.
pub fn render_listing(rows: &[ModelListing]) -> String {
    let mut out = String::from(
        "| name | architecture | family | parameters | quantization | context | present | path |\n|---|---|---|---:|---|---:|---|---|\n",
    );
    let dash = || "-".to_string();
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.architecture.clone().unwrap_or_else(dash),
            r.family.clone().unwrap_or_else(dash),
            r.parameters
                .map_or_else(dash, |p| format!("{:.0}M", p as f64 / 1e6)),
            r.quantization.clone().unwrap_or_else(dash),
            r.context_length.map_or_else(dash, |c| c.to_string()),
            match &r.present {
                Ok(()) => "yes".to_string(),
                Err(why) => format!("no: {why}"),
            },
            r.path
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_references_parse() {
        assert_eq!(
            HubRef::parse("org/repo").unwrap(),
            HubRef {
                repo: "org/repo".into(),
                file: None
            }
        );
        let r = HubRef::parse("org/repo/sub/model.Q4.gguf").unwrap();
        assert_eq!(r.file.as_deref(), Some("sub/model.Q4.gguf"));
        assert_eq!(r.display_name(), "model.Q4");
        assert!(HubRef::parse("org").is_err());
        assert!(HubRef::parse("org//x").is_err());
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let f: ModelsFile = serde_yaml::from_str(
            "models:\n  small:\n    source: nowhere/small.gguf\n    fetch: get-it small\n",
        )
        .unwrap();
        let hub = HubOptions::from_env();
        let err = resolve("big", Some(&f), &hub).unwrap_err().to_string();
        assert!(err.contains("known names: small"), "{err}");
        let err = resolve("small", Some(&f), &hub).unwrap_err().to_string();
        assert!(err.contains("fetch it with `get-it small`"), "{err}");
    }

    #[test]
    fn models_file_rejects_unknown_fields() {
        let e = serde_yaml::from_str::<ModelsFile>("models:\n  a:\n    sorce: x\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `sorce`"), "{e}");
    }
}
