//! Continuing an interrupted run: find its folder, keep its finished samples, skip their cells.
//!
//! A run streams each sample to `samples.jsonl.partial` as it finishes (one line, flushed), so a
//! run killed at any point leaves every finished sample on disk and at most one torn last line.
//! Started again with the same command, it finds that folder (by `run_id`, a hash of everything
//! that decides the results), drops the torn line and scores only the cells still missing. The
//! evaluation order is fixed, so the finished samples are a prefix of it and the resumed folder
//! ends identical to an uninterrupted run's.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::record::Sample;
use crate::record::{RunRecord, write_atomic};
use crate::sampler::DemoLabels;
use crate::shard::Shard;
use crate::task::Formulation;

/// The name of the file samples stream to until the run is complete.
pub const PARTIAL: &str = "samples.jsonl.partial";

/// An unfinished run folder of the same command, and what it already holds.
#[derive(Debug)]
pub struct Unfinished {
    pub dir: PathBuf,
    pub record: RunRecord,
    pub samples: Vec<Sample>,
}

/// Where a run goes: an unfinished folder of the same command (to resume), or a fresh one.
///
/// With `output` given, that folder is used: resumed when it holds an unfinished run of the same
/// command, refused when it holds a finished run or another command's unfinished run with samples
/// (one that stopped before its first sample is simply replaced). Without it, the newest
/// unfinished folder of the same command under `results_root` is resumed, if any.
pub fn locate(
    output: Option<&Path>,
    results_root: &Path,
    run_id: &str,
    shard: Option<Shard>,
) -> Result<Option<Unfinished>> {
    match output {
        Some(dir) => {
            let Some(record) = read_record(dir)? else {
                if dir.join("samples.jsonl").exists() {
                    bail!(
                        "--output: {} already holds a finished run; choose another folder",
                        dir.display()
                    );
                }
                return Ok(None);
            };
            if record.complete {
                bail!(
                    "--output: {} already holds a finished run; choose another folder",
                    dir.display()
                );
            }
            // Scored to the end, but stopped before its report and `complete: true` were written.
            if dir.join("samples.jsonl").exists() {
                bail!(
                    "--output: {} holds a run whose samples are all scored but whose report was \
                     not finished; write it with `icl-eval report {}`",
                    dir.display(),
                    dir.display()
                );
            }
            if record.run_id != run_id || record.shard != shard {
                // A run that stopped before its first sample (a model that failed to load) has
                // nothing to lose: the folder is free for another command.
                if read_partial(&dir.join(PARTIAL))?.is_empty() {
                    return Ok(None);
                }
                bail!(
                    "--output: {} holds an unfinished run of a different command (other tasks, \
                     models, shots, seeds, limit, shard or protocol); run that command to resume \
                     it, or choose another folder",
                    dir.display()
                );
            }
            Ok(Some(open(dir, record)?))
        }
        None => {
            let Ok(entries) = fs::read_dir(results_root) else {
                return Ok(None);
            };
            let mut best: Option<(PathBuf, RunRecord)> = None;
            for e in entries.flatten() {
                let dir = e.path();
                // Folders that are not runs, or were written by other versions, are not ours.
                let Ok(Some(record)) = read_record(&dir) else {
                    continue;
                };
                if record.complete
                    || record.run_id != run_id
                    || record.shard != shard
                    || !dir.join(PARTIAL).is_file()
                {
                    continue;
                }
                if best
                    .as_ref()
                    .is_none_or(|(_, b)| record.started > b.started)
                {
                    best = Some((dir, record));
                }
            }
            best.map(|(dir, record)| open(&dir, record)).transpose()
        }
    }
}

fn read_record(dir: &Path) -> Result<Option<RunRecord>> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{}: not an icl-eval run config", path.display()))
}

fn open(dir: &Path, record: RunRecord) -> Result<Unfinished> {
    let samples = read_partial(&dir.join(PARTIAL))?;
    Ok(Unfinished {
        dir: dir.to_path_buf(),
        record,
        samples,
    })
}

/// The finished samples of a partial file, rewritten without its torn last line (if any) so new
/// samples can be appended after it.
pub fn read_partial(path: &Path) -> Result<Vec<Sample>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut samples = Vec::new();
    let mut kept = 0;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        // Only the last piece can lack its newline: the process died while writing it. A line
        // cut short may still parse, so it is not trusted either.
        if !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<Sample>(line.trim_end()) {
            Ok(s) => {
                samples.push(s);
                kept += line.len();
            }
            Err(e) => bail!(
                "{}: line {} is not a sample ({e}); the folder was changed by hand — delete it \
                 to start the run over",
                path.display(),
                i + 1
            ),
        }
    }
    if kept < text.len() {
        write_atomic(path, &text.as_bytes()[..kept])?;
    }
    Ok(samples)
}

/// The cells of a run already scored, by everything that identifies one.
#[derive(Debug, Default)]
pub struct Done(HashSet<CellKey>);

impl Done {
    /// The cells of these samples.
    pub fn of(samples: &[Sample]) -> Self {
        Self(samples.iter().map(key).collect())
    }

    /// Whether `s`'s cell (model, task, doc, seed, label study, ordering, K) is already scored.
    pub fn contains(&self, s: &Sample) -> bool {
        !self.0.is_empty() && self.0.contains(&key(s))
    }

    /// Adds `s`'s cell; false when it was there already.
    pub fn insert(&mut self, s: &Sample) -> bool {
        self.0.insert(key(s))
    }

    /// How many cells are scored.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is scored yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

type CellKey = (
    String,
    String,
    Formulation,
    usize,
    u64,
    DemoLabels,
    usize,
    usize,
);

fn key(s: &Sample) -> CellKey {
    (
        s.model.clone(),
        s.task.clone(),
        s.format,
        s.doc_id,
        s.seed,
        s.demo_labels,
        s.permutation,
        s.k,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icl-eval-resume-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn line(doc: usize) -> String {
        serde_json::to_string(&Sample::for_tests("m", doc, 0, Some(1.0))).unwrap() + "\n"
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_from_the_file() {
        let d = tmp("torn");
        let p = d.join(PARTIAL);
        let whole = line(0) + &line(1);
        let torn = &line(2)[..20];
        fs::write(&p, format!("{whole}{torn}")).unwrap();
        let s = read_partial(&p).unwrap();
        assert_eq!(s.iter().map(|s| s.doc_id).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(fs::read_to_string(&p).unwrap(), whole);
        // A complete line that lost only its newline is still not trusted: it may be cut short
        // at a point where it happens to parse.
        fs::write(&p, format!("{whole}{}", line(2).trim_end())).unwrap();
        assert_eq!(read_partial(&p).unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_middle_line_is_an_error_naming_it() {
        let d = tmp("corrupt");
        let p = d.join(PARTIAL);
        fs::write(&p, format!("{}garbage\n{}", line(0), line(1))).unwrap();
        let e = read_partial(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains(PARTIAL), "{e}");
    }

    #[test]
    fn done_cells_are_matched_on_every_coordinate() {
        let a = Sample::for_tests("m", 3, 1, Some(1.0));
        let done = Done::of(std::slice::from_ref(&a));
        assert!(done.contains(&a));
        for other in [
            Sample { k: 2, ..a.clone() },
            Sample {
                seed: 9,
                ..a.clone()
            },
            Sample {
                permutation: 1,
                ..a.clone()
            },
            Sample {
                demo_labels: DemoLabels::Flipped,
                ..a.clone()
            },
            Sample {
                model: "n".into(),
                ..a.clone()
            },
            Sample {
                doc_id: 4,
                ..a.clone()
            },
        ] {
            assert!(!done.contains(&other));
        }
    }
}
