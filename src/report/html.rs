//! `report.html`: one self-contained page (inline SVG charts, inline script, no network) with the
//! run configuration, the summary, the charts, and per task an example prompt per K and the items.
//!
//! The page is a minijinja template, so every value is HTML-escaped by the template engine.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, Value, context};
use polars::prelude::DataFrame;
use serde::Serialize;

use super::table::SummaryColumns;
use super::{ReportInput, TaskMeta};

/// Items shown per (task, model, K) cell; the rest stay in `samples.jsonl`.
pub const ITEMS_PER_CELL: usize = 200;

const TEMPLATE: &str = include_str!("report.html");

#[derive(Serialize)]
struct RunRow {
    dir: String,
    started: String,
    seed: u64,
    shots: String,
    limit: String,
    weights: String,
    version: String,
    commit: String,
    wall: String,
}

#[derive(Serialize)]
struct ModelRow {
    name: String,
    architecture: String,
    parameters: String,
    non_embedding: String,
    quantization: String,
    context_length: usize,
    reference: String,
    sha: String,
}

#[derive(Serialize)]
struct SummaryRow {
    task: String,
    model: String,
    k: u32,
    metric: String,
    value: String,
    stderr: String,
    seed_std: String,
    n: u32,
    k_used: String,
    skipped: u32,
}

#[derive(Serialize)]
struct GroupView {
    group: String,
    model: String,
    sampler: String,
    demo_labels: String,
    k: String,
    metric: String,
    micro: String,
    micro_stderr: String,
    #[serde(rename = "macro")]
    macro_: String,
    macro_stderr: String,
    tasks: usize,
    n: u64,
}

#[derive(Serialize)]
struct ItemRow {
    model: String,
    k: usize,
    k_used: String,
    doc: usize,
    gold: String,
    answer: String,
    mark: &'static str,
    class: &'static str,
}

#[derive(Serialize)]
struct ExampleView {
    k: usize,
    doc_id: usize,
    prompt: String,
}

#[derive(Serialize)]
struct TaskView {
    name: String,
    output_type: String,
    metrics: String,
    test_docs: String,
    fewshot_docs: String,
    chance: String,
    hash: String,
    examples: Vec<ExampleView>,
    rows: Vec<ItemRow>,
    /// Items left out of the page.
    cut: usize,
}

#[derive(Serialize)]
struct Chart {
    id: String,
    title: String,
    svg: String,
}

/// Thousands separators, for parameter counts.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fixed(x: Option<f64>, digits: usize) -> String {
    x.filter(|v| v.is_finite())
        .map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// Renders the page. `charts` are (file stem in `dir`, title) of the SVG charts written for this
/// report, in display order.
pub fn render(
    dir: &Path,
    input: &ReportInput,
    summary: &DataFrame,
    charts: &[(&str, &str)],
) -> Result<String> {
    let runs = run_rows(input);
    let models = model_rows(input);
    let summary_rows = summary_rows(summary)?;
    let groups = group_views(summary, input)?;
    let tasks: Vec<TaskView> = input.tasks.iter().map(|t| task_view(input, t)).collect();
    let chart_views = chart_views(dir, charts)?;
    let title = input
        .runs
        .iter()
        .map(|(d, _)| {
            d.file_name().map_or(d.display().to_string(), |n| {
                n.to_string_lossy().into_owned()
            })
        })
        .collect::<Vec<_>>()
        .join(" + ");
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.add_template("report.html", TEMPLATE)?;
    let page = env.get_template("report.html")?.render(context! {
        title,
        runs => Value::from(Serde(&runs)),
        models => Value::from(Serde(&models)),
        summary => Value::from(Serde(&summary_rows)),
        groups => Value::from(Serde(&groups)),
        charts => Value::from(Serde(&chart_views)),
        tasks => Value::from(Serde(&tasks)),
        per_cell => ITEMS_PER_CELL,
    })?;
    Ok(displayable(page))
}

/// The page without the control characters HTML forbids (a NUL in a doc's text): each shown as
/// U+FFFD, the replacement character, so browsers and parsers read the page as written.
fn displayable(page: String) -> String {
    let forbidden = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    if page.contains(forbidden) {
        page.replace(forbidden, "\u{FFFD}")
    } else {
        page
    }
}

/// The configuration table: one row per run folder.
fn run_rows(input: &ReportInput) -> Vec<RunRow> {
    input
        .runs
        .iter()
        .map(|(d, r)| RunRow {
            dir: d.display().to_string(),
            started: r.started.clone(),
            seed: r.seed,
            shots: {
                let ks: Vec<String> = r.shots.iter().map(usize::to_string).collect();
                match r.task_shots {
                    true => format!("each task's own (num_fewshot): {}", ks.join(", ")),
                    false => ks.join(", "),
                }
            },
            limit: r.limit.map_or("all".into(), |l| l.to_string()),
            weights: if r.device == "cpu" {
                r.weights.clone()
            } else {
                format!("{} on {}", r.weights, r.device)
            },
            version: r.icl_eval_version.clone(),
            commit: r.git_commit.chars().take(12).collect(),
            wall: r.wall_seconds.map_or("–".into(), |s| format!("{s:.0} s")),
        })
        .collect()
}

/// The models table.
fn model_rows(input: &ReportInput) -> Vec<ModelRow> {
    input
        .models
        .iter()
        .map(|m| ModelRow {
            name: m.name.clone(),
            architecture: m.architecture.clone(),
            parameters: grouped(m.parameters),
            non_embedding: grouped(m.non_embedding_parameters),
            quantization: m.quantization.clone(),
            context_length: m.context_length,
            reference: m.reference.clone(),
            sha: m.sha256.chars().take(12).collect(),
        })
        .collect()
}

/// The summary table's rows.
fn summary_rows(summary: &DataFrame) -> Result<Vec<SummaryRow>> {
    let c = SummaryColumns::of(summary)?;
    Ok((0..summary.height())
        .map(|i| SummaryRow {
            task: c.task.get(i).unwrap_or("").into(),
            model: c.series[i].clone(),
            k: c.k.get(i).unwrap_or(0),
            metric: c.metric.get(i).unwrap_or("").into(),
            value: fixed(c.value.get(i), 4),
            stderr: fixed(c.stderr.get(i), 4),
            seed_std: match c.seeds.get(i) {
                Some(n) if n > 1 => format!("{} ({n})", fixed(c.seed_std.get(i), 4)),
                _ => "–".into(),
            },
            n: c.n.get(i).unwrap_or(0),
            k_used: fixed(c.mean_k_effective.get(i), 1),
            skipped: c.skipped.get(i).unwrap_or(0),
        })
        .collect())
}

/// The group means of the tags named on `--tasks`.
fn group_views(summary: &DataFrame, input: &ReportInput) -> Result<Vec<GroupView>> {
    Ok(super::groups::summarize(summary, &input.groups)?
        .into_iter()
        .map(|g| GroupView {
            micro: fixed(Some(g.micro), 4),
            micro_stderr: fixed(g.micro_stderr, 4),
            macro_: fixed(Some(g.macro_), 4),
            macro_stderr: fixed(g.macro_stderr, 4),
            group: g.group,
            model: g.model,
            sampler: g.sampler,
            demo_labels: g.demo_labels,
            k: g.k.map_or("each task's".to_string(), |k| k.to_string()),
            metric: g.metric,
            tasks: g.tasks,
            n: g.n,
        })
        .collect())
}

/// One task's section: its facts, example prompts and the first items of each cell.
fn task_view(input: &ReportInput, t: &TaskMeta) -> TaskView {
    let record = input
        .runs
        .iter()
        .find_map(|(_, r)| r.tasks.iter().find(|x| x.name == t.name));
    let mut examples: Vec<ExampleView> = input
        .examples
        .iter()
        .filter(|e| e.task == t.name)
        .map(|e| ExampleView {
            k: e.k,
            doc_id: e.doc_id,
            prompt: e.prompt.clone(),
        })
        .collect();
    examples.sort_by_key(|e| e.k);
    let mut mine: Vec<&crate::record::Sample> =
        input.samples.iter().filter(|s| s.task == t.name).collect();
    // Model order as in the run, then K, then doc: the cell's first docs are its first 200.
    let model_rank = |m: &str| input.models.iter().position(|x| x.name == m);
    mine.sort_by_key(|s| (model_rank(&s.model), s.k, s.doc_id));
    let mut rows = Vec::new();
    let mut cut = 0;
    let mut in_cell = 0;
    for (i, s) in mine.iter().enumerate() {
        let same_cell = i > 0 && mine[i - 1].model == s.model && mine[i - 1].k == s.k;
        in_cell = if same_cell { in_cell + 1 } else { 1 };
        if in_cell > ITEMS_PER_CELL {
            cut += 1;
            continue;
        }
        let (mark, class) = match (s.correct, &s.skipped) {
            (_, Some(_)) => ("skipped", "skipped"),
            (Some(true), _) => ("✓", "right"),
            (Some(false), _) => ("✗", "wrong"),
            (None, _) => ("–", ""),
        };
        rows.push(ItemRow {
            model: s.model.clone(),
            k: s.k,
            k_used: s.k_effective.map_or("–".into(), |k| k.to_string()),
            doc: s.doc_id,
            gold: s.gold.clone(),
            answer: s
                .prediction
                .clone()
                .or_else(|| s.skipped.clone())
                .unwrap_or_default(),
            mark,
            class,
        });
    }
    TaskView {
        name: t.name.clone(),
        output_type: t.output_type.name().to_string(),
        metrics: t
            .metrics
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", "),
        test_docs: record.map_or("–".into(), |r| r.test_docs.to_string()),
        fewshot_docs: record.map_or("–".into(), |r| r.fewshot_docs.to_string()),
        chance: t
            .chance
            .map_or("–".into(), |c| format!("{:.1}%", 100.0 * c)),
        hash: record.map_or(String::new(), |r| r.hash.chars().take(12).collect()),
        examples,
        rows,
        cut,
    }
}

/// The charts, inlined as SVG.
fn chart_views(dir: &Path, charts: &[(&str, &str)]) -> Result<Vec<Chart>> {
    let mut chart_views = Vec::new();
    for (stem, title) in charts {
        let path = dir.join(format!("{stem}.svg"));
        let svg =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        // Inline SVG must not carry an XML declaration.
        let svg = match svg.find("<svg") {
            Some(i) => svg[i..].to_string(),
            None => svg,
        };
        chart_views.push(Chart {
            id: stem.to_string(),
            title: title.to_string(),
            svg,
        });
    }
    Ok(chart_views)
}

/// Writes `report.html` into `dir`.
pub fn write(
    dir: &Path,
    input: &ReportInput,
    summary: &DataFrame,
    charts: &[(&str, &str)],
) -> Result<()> {
    let page = render(dir, input, summary, charts)?;
    crate::record::write_atomic(&dir.join("report.html"), page.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_page() {
        assert_eq!(
            displayable("a\0b\x07c\td\n".into()),
            "a\u{FFFD}b\u{FFFD}c\td\n"
        );
    }

    #[test]
    fn parameter_counts_are_grouped() {
        assert_eq!(grouped(134_515_008), "134,515,008");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
    }
}
