//! `icl-eval merge`: the N finished shard folders of one run (`--shard I/N`) → the folder the
//! unsharded run would have written. It sits above `report` because it ends by drawing one.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::record::{self, RunData, RunRecord};
use crate::report::{self, ReportInput};

/// Merges finished shard folders (all N shards of one run) into `output`: samples in the order
/// the unsharded run writes them, one config, the report. Returns the merged run.
pub fn merge(dirs: &[PathBuf], output: &Path, python: Option<&Path>) -> Result<RunData> {
    if dirs.is_empty() {
        bail!("merge: give the shard folders of one run");
    }
    let runs = dirs
        .iter()
        .map(|d| record::read_run(d))
        .collect::<Result<Vec<_>>>()?;
    check_shards(&runs)?;
    let first = &runs[0];
    if output.join("samples.jsonl").exists() {
        bail!(
            "--output: {} already holds a finished run; choose another folder",
            output.display()
        );
    }

    let rec = &first.record;
    let model_rank: HashMap<&str, usize> = rec
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let task_rank: HashMap<&str, usize> = rec
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut samples: Vec<_> = runs
        .iter()
        .flat_map(|r| r.samples.iter().cloned())
        .collect();
    // The unsharded order: model, task, doc; within a doc each shard kept the run's own order,
    // and a stable sort keeps it.
    samples.sort_by_key(|s| {
        (
            model_rank
                .get(s.model.as_str())
                .copied()
                .unwrap_or(usize::MAX),
            task_rank
                .get(s.task.as_str())
                .copied()
                .unwrap_or(usize::MAX),
            s.doc_id,
        )
    });

    let mut merged: RunRecord = rec.clone();
    merged.shard = None;
    merged.resumed.clear();
    merged.started = runs
        .iter()
        .map(|r| r.record.started.clone())
        .min()
        .unwrap_or_default();
    merged.wall_seconds = runs.iter().map(|r| r.record.wall_seconds).sum();
    merged.prompt_tokens = Vec::new();
    for t in runs
        .iter()
        .flat_map(|r| r.record.prompt_tokens.iter().cloned())
    {
        record::add_prompt_tokens(&mut merged.prompt_tokens, t);
    }

    fs::create_dir_all(output)
        .with_context(|| format!("--output: cannot create {}", output.display()))?;
    let mut body = String::new();
    for s in &samples {
        body.push_str(&serde_json::to_string(s)?);
        body.push('\n');
    }
    record::write_atomic(&output.join("samples.jsonl"), body.as_bytes())?;
    record::write_examples(output, &first.examples)?;
    record::write_config(output, &merged)?;
    let data = RunData {
        dir: output.to_path_buf(),
        record: merged,
        samples,
        examples: first.examples.clone(),
    };
    let mut input = ReportInput::of_run(&data)?;
    input.python = python.map(Path::to_path_buf);
    report::write_report(output, &input)?;
    Ok(data)
}
/// The folders are the N shards of one run, each once.
fn check_shards(runs: &[record::RunData]) -> Result<()> {
    let first = &runs[0];
    let Some(count) = first.record.shard.map(|s| s.count) else {
        bail!(
            "{}: not a shard (its config.json has no `shard`); merge takes the folders of a run \
             made with --shard I/N",
            first.dir.display()
        );
    };
    let mut seen = HashSet::new();
    for r in runs {
        let shown = r.dir.display();
        let Some(shard) = r.record.shard else {
            bail!("{shown}: not a shard (its config.json has no `shard`)");
        };
        if r.record.run_id.is_empty() || r.record.run_id != first.record.run_id {
            bail!(
                "{shown}: a shard of a different run than {} (different tasks, models, shots, \
                 seeds, limit or protocol)",
                first.dir.display()
            );
        }
        if shard.count != count {
            bail!(
                "{shown}: shard {shard}, but {} is of {count} shards",
                first.dir.display()
            );
        }
        if !seen.insert(shard.index) {
            bail!("{shown}: shard {shard} is given twice");
        }
    }
    let missing: Vec<String> = (1..=count)
        .filter(|i| !seen.contains(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        bail!("merge: shard {} missing", missing.join(", "));
    }
    Ok(())
}
