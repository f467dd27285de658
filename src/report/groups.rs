//! Group means: a tag named on `--tasks` (e.g. `mmlu`, 57 subjects) reported as one number besides
//! its tasks, both ways it is commonly averaged.
//!
//! - micro: the mean over every doc of the group's tasks, so a task weighs by its docs (lm-eval's
//!   `mmlu` group since v0.4.2 and the MMLU paper's overall accuracy);
//! - macro: the mean of the tasks' values, each task counting once (lm-eval before v0.4.2, HELM).
//!
//! Standard errors treat tasks as independent: macro √(Σ se²) / T, micro √(Σ (n·se)²) / N.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use polars::prelude::*;

use super::table::SummaryColumns;
use crate::task::discover::Group;

/// One group cell: a group × model × sampler × label study × K × metric.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub group: String,
    pub model: String,
    pub sampler: String,
    pub demo_labels: String,
    /// `None`: each task at its own K (`--shots task` over tasks whose `num_fewshot` differ), as
    /// lm-eval averages a group like the Open LLM Leaderboard's.
    pub k: Option<u32>,
    pub metric: String,
    /// Tasks of the group (all of them: a cell missing a task is not reported).
    pub tasks: usize,
    /// Docs scored over the group's tasks.
    pub n: u64,
    pub micro: f64,
    pub micro_stderr: Option<f64>,
    pub macro_: f64,
    pub macro_stderr: Option<f64>,
}

/// Sums over the tasks of one group cell.
struct Acc {
    tasks: usize,
    n: u64,
    sum: f64,
    weighted: f64,
    var_macro: Option<f64>,
    var_micro: Option<f64>,
}

/// The group rows of `summary` (the output of `table::summarize`), for every cell where each of a
/// group's tasks has a value.
pub fn summarize(summary: &DataFrame, groups: &[Group]) -> Result<Vec<GroupRow>> {
    if groups.is_empty() || summary.height() == 0 {
        return Ok(Vec::new());
    }
    let c = SummaryColumns::of(summary)?;
    // The K's each task has; a group whose tasks each ran at one K, not all the same, is averaged
    // across them.
    let mut task_ks: Vec<(&str, Vec<u32>)> = Vec::new();
    for i in 0..summary.height() {
        let (task, k) = (c.task.get(i).unwrap_or(""), c.k.get(i).unwrap_or(0));
        match task_ks.iter_mut().find(|(t, _)| *t == task) {
            Some((_, ks)) if !ks.contains(&k) => ks.push(k),
            Some(_) => {}
            None => task_ks.push((task, vec![k])),
        }
    }
    let own_k: Vec<bool> = groups
        .iter()
        .map(|g| {
            let ks: Vec<&Vec<u32>> = g
                .tasks
                .iter()
                .filter_map(|t| task_ks.iter().find(|(x, _)| x == t).map(|(_, ks)| ks))
                .collect();
            ks.iter().all(|ks| ks.len() == 1) && ks.windows(2).any(|w| w[0] != w[1])
        })
        .collect();
    let mut cells: Vec<(GroupRow, Acc)> = Vec::new();
    for i in 0..summary.height() {
        let task = c.task.get(i).unwrap_or("");
        let (Some(value), Some(n)) = (c.value.get(i), c.n.get(i)) else {
            continue;
        };
        if n == 0 || !value.is_finite() {
            continue;
        }
        let se = c.stderr.get(i).filter(|x| x.is_finite());
        for (g, &own_k) in groups
            .iter()
            .zip(&own_k)
            .filter(|(g, _)| g.tasks.iter().any(|t| t == task))
        {
            let key = GroupRow {
                group: g.name.clone(),
                model: c.model.get(i).unwrap_or("").to_string(),
                sampler: c.sampler.get(i).unwrap_or("").to_string(),
                demo_labels: c.demo_labels.get(i).unwrap_or("").to_string(),
                k: (!own_k).then(|| c.k.get(i).unwrap_or(0)),
                metric: c.metric.get(i).unwrap_or("").to_string(),
                tasks: 0,
                n: 0,
                micro: 0.0,
                micro_stderr: None,
                macro_: 0.0,
                macro_stderr: None,
            };
            let at = match cells.iter().position(|(r, _)| same_cell(r, &key)) {
                Some(at) => at,
                None => {
                    let acc = Acc {
                        tasks: 0,
                        n: 0,
                        sum: 0.0,
                        weighted: 0.0,
                        var_macro: Some(0.0),
                        var_micro: Some(0.0),
                    };
                    cells.push((key, acc));
                    cells.len() - 1
                }
            };
            let a = &mut cells[at].1;
            let nf = f64::from(n);
            a.tasks += 1;
            a.n += u64::from(n);
            a.sum += value;
            a.weighted += value * nf;
            a.var_macro = a.var_macro.zip(se).map(|(v, s)| v + s * s);
            a.var_micro = a.var_micro.zip(se).map(|(v, s)| v + (nf * s).powi(2));
        }
    }
    Ok(cells
        .into_iter()
        .filter(|(r, a)| {
            groups
                .iter()
                .any(|g| g.name == r.group && g.tasks.len() == a.tasks)
        })
        .map(|(r, a)| {
            let (t, n) = (a.tasks as f64, a.n as f64);
            GroupRow {
                tasks: a.tasks,
                n: a.n,
                micro: a.weighted / n,
                micro_stderr: a.var_micro.map(|v| v.sqrt() / n),
                macro_: a.sum / t,
                macro_stderr: a.var_macro.map(|v| v.sqrt() / t),
                ..r
            }
        })
        .collect())
}

fn same_cell(a: &GroupRow, b: &GroupRow) -> bool {
    (
        &a.group,
        &a.model,
        &a.sampler,
        &a.demo_labels,
        a.k,
        &a.metric,
    ) == (
        &b.group,
        &b.model,
        &b.sampler,
        &b.demo_labels,
        b.k,
        &b.metric,
    )
}

/// The group rows as a Markdown section.
pub fn markdown(rows: &[GroupRow]) -> String {
    let mut out = String::from(
        "\nGroup means. micro: over every doc of the group's tasks (tasks weighted by their docs); \
         macro: over the tasks, each counting once.\n\n\
         | group | model | sampler | labels | K | metric | micro | ± stderr | macro | ± stderr | tasks | n |\n\
         |---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.4}"));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.4} | {} | {:.4} | {} | {} | {} |",
            r.group,
            r.model,
            r.sampler,
            r.demo_labels,
            r.k.map_or("each task's".to_string(), |k| k.to_string()),
            r.metric,
            r.micro,
            f(r.micro_stderr),
            r.macro_,
            f(r.macro_stderr),
            r.tasks,
            r.n
        );
    }
    out
}

/// Writes the group rows as `groups.csv`.
pub fn write_csv(path: &Path, rows: &[GroupRow]) -> Result<()> {
    let mut df = df!(
        "group" => rows.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(),
        "model" => rows.iter().map(|r| r.model.as_str()).collect::<Vec<_>>(),
        "sampler" => rows.iter().map(|r| r.sampler.as_str()).collect::<Vec<_>>(),
        "demo_labels" => rows.iter().map(|r| r.demo_labels.as_str()).collect::<Vec<_>>(),
        "k" => rows.iter().map(|r| r.k).collect::<Vec<_>>(),
        "metric" => rows.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>(),
        "micro" => rows.iter().map(|r| r.micro).collect::<Vec<_>>(),
        "micro_stderr" => rows.iter().map(|r| r.micro_stderr).collect::<Vec<_>>(),
        "macro" => rows.iter().map(|r| r.macro_).collect::<Vec<_>>(),
        "macro_stderr" => rows.iter().map(|r| r.macro_stderr).collect::<Vec<_>>(),
        "tasks" => rows.iter().map(|r| r.tasks as u32).collect::<Vec<_>>(),
        "n" => rows.iter().map(|r| r.n).collect::<Vec<_>>(),
    )?;
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf)
        .include_header(true)
        .finish(&mut df)?;
    crate::record::write_atomic(path, &buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Sample;
    use crate::report::TaskMeta;
    use crate::task::{Item, Metric, OutputType, Task};

    fn meta(name: &str) -> TaskMeta {
        let mut t = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc],
            vec![Item::blank(0)],
        );
        t.name = name.into();
        TaskMeta::of(&t)
    }

    fn scored(task: &str, doc: usize, acc: f64) -> Sample {
        let mut s = Sample::for_tests("m", doc, 0, Some(acc));
        s.task = task.into();
        s
    }

    /// The summary of `samples` over the tasks `names` (model `m`), and group `g` = {a, b}'s rows.
    fn group_ab(samples: &[Sample], names: &[&str]) -> (DataFrame, Vec<GroupRow>) {
        let tasks: Vec<TaskMeta> = names.iter().map(|n| meta(n)).collect();
        let models = [crate::backend::ModelInfo::for_tests("m", 1)];
        let summary = crate::report::table::summarize(samples, &tasks, &models, None).unwrap();
        let g = Group {
            name: "g".into(),
            tasks: vec!["a".into(), "b".into()],
        };
        let rows = summarize(&summary, std::slice::from_ref(&g)).unwrap();
        (summary, rows)
    }

    #[test]
    fn micro_weighs_docs_and_macro_weighs_tasks() {
        // a: 1 of 4 right; b: 2 of 2 right. micro = 3/6, macro = (0.25 + 1) / 2.
        let mut samples: Vec<Sample> = [1.0, 0.0, 0.0, 0.0]
            .iter()
            .enumerate()
            .map(|(d, &v)| scored("a", d, v))
            .collect();
        samples.extend([scored("b", 0, 1.0), scored("b", 1, 1.0)]);
        let (summary, rows) = group_ab(&samples, &["a", "b", "c"]);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.tasks, r.n, r.k), (2, 6, Some(0)));
        assert!((r.micro - 0.5).abs() < 1e-12);
        assert!((r.macro_ - 0.625).abs() < 1e-12);
        // se(a) = sd([1,0,0,0]) / 2 = 0.25; se(b) = 0: macro √(0.0625) / 2, micro √((4·0.25)²) / 6.
        assert!((r.macro_stderr.unwrap() - 0.125).abs() < 1e-12);
        assert!((r.micro_stderr.unwrap() - 1.0 / 6.0).abs() < 1e-12);
        assert!(markdown(&rows).contains("| g | m | random | gold | 0 | acc | 0.5000 |"));

        // A group missing one of its tasks' results reports nothing rather than a partial mean.
        let partial = Group {
            name: "h".into(),
            tasks: vec!["a".into(), "c".into()],
        };
        assert!(summarize(&summary, &[partial]).unwrap().is_empty());
    }

    /// `--shots task`: tasks each at their own K (a at 25, b at 5) average into one row across
    /// them; tasks run at several K's keep one row per K.
    #[test]
    fn tasks_at_their_own_k_average_across_k() {
        let at = |task: &str, doc: usize, k: usize, acc: f64| {
            let mut s = Sample::for_tests("m", doc, k, Some(acc));
            s.task = task.into();
            s
        };
        let samples = vec![at("a", 0, 25, 1.0), at("a", 1, 25, 0.0), at("b", 0, 5, 1.0)];
        let (_, rows) = group_ab(&samples, &["a", "b"]);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].k, rows[0].tasks, rows[0].n), (None, 2, 3));
        assert!((rows[0].macro_ - 0.75).abs() < 1e-12);
        assert!(markdown(&rows).contains("| g | m | random | gold | each task's | acc |"));
        // b also at 25: a sweep, one row per K where every task has a value.
        let mut swept = samples.clone();
        swept.push(at("b", 0, 25, 0.0));
        let (_, rows) = group_ab(&swept, &["a", "b"]);
        assert_eq!(rows.iter().map(|r| r.k).collect::<Vec<_>>(), [Some(25)]);
    }
}
