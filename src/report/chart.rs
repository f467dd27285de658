//! Charts of the summary (plotters): accuracy against the number of demonstrations, and against
//! model size.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use polars::prelude::*;

use super::TaskMeta;
use super::table::SummaryColumns;

/// Okabe–Ito palette: distinguishable with the common colour-vision deficiencies.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

/// How far the y axis runs past its top value (100%) so a legend of `entries` lines sits above the
/// data instead of on it: a legend line takes up to 10% of the axis at the panel size below.
pub(super) fn headroom(entries: usize) -> f64 {
    1.08 + 0.1 * entries as f64
}

const PANEL_W: u32 = 640;
const PANEL_H: u32 = 460;

/// A point: x, value, ± error.
type Point = (f64, f64, f64);

/// A line of a chart against K: label, colour, points.
type Line = (String, RGBColor, Vec<Point>);

/// A cell's (value, error) by K and model, where present.
type CellValue<'a> = dyn Fn(u32, &str) -> Option<(f64, f64)> + 'a;

/// One panel of a chart against K.
struct Panel {
    title: String,
    y_desc: String,
    /// Dashed reference line (chance accuracy, or y = K for the effective-K chart).
    reference: Option<Reference>,
    lines: Vec<Line>,
    /// Per model whose prompts were cut: the K its longest prompts held (the context limit on
    /// the K axis), drawn as a dotted vertical line in the model's colour.
    limits: Vec<(String, RGBColor, f64)>,
}

enum Reference {
    /// A horizontal line at this accuracy.
    Chance(f64),
    /// y = x: every requested demonstration used.
    Diagonal,
}

/// A colour per model, in the order given, so a model keeps its colour in every chart.
pub fn model_colors(models: &[crate::backend::ModelInfo]) -> Vec<(String, RGBColor)> {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.clone(), PALETTE[i % PALETTE.len()]))
        .collect()
}

fn color_of(colors: &[(String, RGBColor)], model: &str, fallback: usize) -> RGBColor {
    colors
        .iter()
        .find(|(m, _)| m == model)
        .map_or(PALETTE[fallback % PALETTE.len()], |(_, c)| *c)
}

/// Position of K on the demonstrations axis: 0 at 0, then log₂ spacing (1, 2, 4, … one step apart),
/// so both the zero-shot point and large K stay readable.
fn k_position(k: u32) -> f64 {
    k_position_f(f64::from(k))
}

/// [`k_position`] of a mean K, which need not be whole.
fn k_position_f(k: f64) -> f64 {
    if k <= 0.0 { 0.0 } else { 1.0 + k.log2() }
}

/// The K label at an axis position (integer positions only).
fn k_label(x: f64) -> String {
    let r = x.round();
    if (x - r).abs() > 1e-6 || r < 0.0 {
        return String::new();
    }
    if r == 0.0 {
        "0".into()
    } else {
        format!("{}", 2f64.powf(r - 1.0))
    }
}

/// The distinct K values and models of a summary, models in order of appearance.
fn ks_and_models(c: &SummaryColumns) -> (Vec<u32>, Vec<String>) {
    let mut ks: Vec<u32> = (0..c.k.len()).filter_map(|i| c.k.get(i)).collect();
    ks.sort_unstable();
    ks.dedup();
    let mut models: Vec<String> = Vec::new();
    for m in &c.series {
        if !models.iter().any(|x| x == m) {
            models.push(m.clone());
        }
    }
    (ks, models)
}

/// (value, error bar) of a task's headline metric for one series (model) and K.
fn cell(c: &SummaryColumns, t: &TaskMeta, k: u32, m: &str) -> Option<(f64, f64)> {
    row_of(c, t, k, m)
        .and_then(|i| {
            Some((
                c.value.get(i)?,
                c.error(i).filter(|s| s.is_finite()).unwrap_or(0.0),
            ))
        })
        .filter(|(v, _)| v.is_finite())
}

/// The summary row of a task's headline metric for series `m` at K.
fn row_of(c: &SummaryColumns, t: &TaskMeta, k: u32, m: &str) -> Option<usize> {
    row_of_metric(c, &t.name, t.primary_metric().name(), k, m)
}

/// The summary row of one task, metric, K and series.
fn row_of_metric(c: &SummaryColumns, task: &str, metric: &str, k: u32, m: &str) -> Option<usize> {
    (0..c.task.len()).find(|&i| {
        c.task.get(i) == Some(task)
            && c.k.get(i) == Some(k)
            && c.series[i] == m
            && c.metric.get(i) == Some(metric)
    })
}

/// Writes `calibration.png` and `.svg` when a task reports `acc_calibrated`, `acc_pmi` or `acc_batch_calibrated`: per task,
/// each model's accuracy under every multiple-choice metric against K (solid `acc`, the others in
/// the next palette colours), with the same error bars as `accuracy_vs_shots`. Returns whether it
/// wrote them.
pub fn calibration(dir: &Path, summary: &DataFrame, tasks: &[TaskMeta]) -> Result<bool> {
    use crate::task::Metric;
    let c = SummaryColumns::of(summary)?;
    let (ks, models) = ks_and_models(&c);
    let shown: Vec<&TaskMeta> = tasks
        .iter()
        .filter(|t| {
            t.metrics.iter().any(|m| {
                matches!(
                    m.metric,
                    Metric::AccCalibrated | Metric::AccPmi | Metric::AccBatchCalibrated
                )
            })
        })
        .collect();
    if shown.is_empty() {
        return Ok(false);
    }
    let bars = if c.has_seeds() {
        "± std over seeds"
    } else {
        "± stderr"
    };
    let panels: Vec<Panel> = shown
        .iter()
        .map(|t| {
            let mut lines = Vec::new();
            for m in &models {
                for metric in t.metrics.iter().filter(|m| {
                    !m.metric.lower_is_better()
                        && !matches!(m.metric, Metric::AccNorm | Metric::AccBytes)
                }) {
                    let pts = ks
                        .iter()
                        .filter_map(|&k| {
                            let i = row_of_metric(&c, &t.name, metric.name(), k, m)?;
                            let v = c.value.get(i).filter(|v| v.is_finite())?;
                            let e = c.error(i).filter(|e| e.is_finite()).unwrap_or(0.0);
                            Some((k_position(k), v, e))
                        })
                        .collect();
                    let color = PALETTE[lines.len() % PALETTE.len()];
                    lines.push((format!("{m} · {}", metric.name()), color, pts));
                }
            }
            Panel {
                title: t.name.clone(),
                y_desc: format!("accuracy ({bars})"),
                reference: t.chance.map(Reference::Chance),
                lines,
                limits: Vec::new(),
            }
        })
        .collect();
    let x_max = k_position(ks.last().copied().unwrap_or(1)).max(1.0);
    render(dir, "calibration", &panels, x_max, None)?;
    Ok(true)
}

/// One line per model through its cells at each K, in the model's colour.
fn model_lines(
    ks: &[u32],
    models: &[String],
    colors: &[(String, RGBColor)],
    f: &CellValue,
) -> Vec<Line> {
    models
        .iter()
        .enumerate()
        .map(|(mi, m)| {
            let pts = ks
                .iter()
                .filter_map(|&k| f(k, m).map(|(v, s)| (k_position(k), v, s)))
                .collect();
            (m.clone(), color_of(colors, m, mi), pts)
        })
        .collect()
}

/// Mean over tasks of a model's headline metric at K, when every task has the cell; its stderr
/// treats the tasks as independent.
fn mean_cell(c: &SummaryColumns, tasks: &[TaskMeta], k: u32, m: &str) -> Option<(f64, f64)> {
    let cells: Vec<(f64, f64)> = tasks.iter().filter_map(|t| cell(c, t, k, m)).collect();
    (!cells.is_empty() && cells.len() == tasks.len()).then(|| {
        let n = cells.len() as f64;
        let mean = cells.iter().map(|x| x.0).sum::<f64>() / n;
        let se = cells.iter().map(|x| x.1 * x.1).sum::<f64>().sqrt() / n;
        (mean, se)
    })
}

/// Writes `accuracy_vs_shots.png` and `.svg`: one panel per task (its headline metric) plus the
/// mean over tasks, one line per model, ± standard-error bars, a dashed chance line for
/// multiple-choice tasks; K on a log axis that keeps 0. Returns whether there was anything to draw.
pub fn accuracy_vs_shots(
    dir: &Path,
    summary: &DataFrame,
    tasks: &[TaskMeta],
    colors: &[(String, RGBColor)],
) -> Result<bool> {
    let c = SummaryColumns::of(summary)?;
    let (ks, models) = ks_and_models(&c);
    let line = |f: &CellValue| model_lines(&ks, &models, colors, f);
    let bars = if c.has_seeds() {
        "± std over seeds"
    } else {
        "± stderr"
    };
    let mut panels: Vec<Panel> = tasks
        .iter()
        .map(|t| Panel {
            title: t.name.clone(),
            y_desc: format!("{} ({bars})", t.primary_metric().name()),
            reference: t.chance.map(Reference::Chance),
            lines: line(&|k, m| cell(&c, t, k, m)),
            limits: limits(&c, t, &ks, &models, colors),
        })
        .filter(|p| p.lines.iter().any(|l| !l.2.is_empty()))
        .collect();
    if panels.is_empty() {
        return Ok(false);
    }
    if tasks.len() > 1 {
        let chances: Vec<f64> = tasks.iter().filter_map(|t| t.chance).collect();
        panels.push(Panel {
            title: "mean over tasks".into(),
            y_desc: format!("headline metric ({bars})"),
            reference: (chances.len() == tasks.len())
                .then(|| Reference::Chance(chances.iter().sum::<f64>() / chances.len() as f64)),
            lines: line(&|k, m| mean_cell(&c, tasks, k, m)),
            limits: Vec::new(),
        });
    }
    let x_max = k_position(ks.last().copied().unwrap_or(1)).max(1.0);
    render(dir, "accuracy_vs_shots", &panels, x_max, None)?;
    Ok(true)
}

/// Each model's context limit on a task's K axis: at the largest K whose prompts were cut (mean
/// K used below the K asked), the mean K they held.
fn limits(
    c: &SummaryColumns,
    t: &TaskMeta,
    ks: &[u32],
    models: &[String],
    colors: &[(String, RGBColor)],
) -> Vec<(String, RGBColor, f64)> {
    models
        .iter()
        .enumerate()
        .filter_map(|(mi, m)| {
            let used = ks.iter().rev().find_map(|&k| {
                let u = row_of(c, t, k, m).and_then(|i| c.mean_k_effective.get(i))?;
                (u.is_finite() && u + 1e-9 < f64::from(k)).then_some(u)
            })?;
            Some((m.clone(), color_of(colors, m, mi), used))
        })
        .collect()
}

/// Writes `effective_k.png` and `.svg` when some prompts hold fewer demonstrations than asked (a
/// model's context or the few-shot pool too small): requested K against the mean K actually used,
/// per model, with y = K dashed. Returns whether it wrote them.
pub fn effective_k(
    dir: &Path,
    summary: &DataFrame,
    tasks: &[TaskMeta],
    colors: &[(String, RGBColor)],
) -> Result<bool> {
    let c = SummaryColumns::of(summary)?;
    let short = (0..summary.height()).any(|i| {
        matches!((c.k.get(i), c.mean_k_effective.get(i)), (Some(k), Some(e)) if e + 1e-9 < f64::from(k))
    });
    if !short {
        return Ok(false);
    }
    let (ks, models) = ks_and_models(&c);
    let used = |t: &TaskMeta, k: u32, m: &str| {
        row_of(&c, t, k, m)
            .and_then(|i| c.mean_k_effective.get(i))
            .filter(|v| v.is_finite())
            .map(|u| (u, 0.0))
    };
    let panels: Vec<Panel> = tasks
        .iter()
        .map(|t| Panel {
            title: t.name.clone(),
            y_desc: "demonstrations used (mean)".into(),
            reference: Some(Reference::Diagonal),
            lines: model_lines(&ks, &models, colors, &|k, m| used(t, k, m)),
            limits: Vec::new(),
        })
        .collect();
    let k_max = ks.last().copied().unwrap_or(1);
    render(
        dir,
        "effective_k",
        &panels,
        k_position(k_max).max(1.0),
        Some(f64::from(k_max).max(1.0)),
    )?;
    Ok(true)
}

/// Draws panels against K as `NAME.png` and `NAME.svg`; `y_max` `None` means an accuracy axis.
fn render(dir: &Path, name: &str, panels: &[Panel], x_max: f64, y_max: Option<f64>) -> Result<()> {
    let ((rows, cols), size) = grid(panels.len());
    let png = dir.join(format!("{name}.png"));
    draw(
        BitMapBackend::new(&partial(&png), size).into_drawing_area(),
        panels,
        (rows, cols),
        x_max,
        y_max,
    )?;
    publish(&png)?;
    let svg = dir.join(format!("{name}.svg"));
    draw(
        SVGBackend::new(&partial(&svg), size).into_drawing_area(),
        panels,
        (rows, cols),
        x_max,
        y_max,
    )?;
    publish(&svg)
}

/// Where a chart is drawn before [`publish`] renames it into place, so a reader (or a run
/// killed while drawing) never leaves half of one under its name: `NAME.tmp.png`.
pub(super) fn partial(path: &Path) -> std::path::PathBuf {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    path.with_extension(format!("tmp.{ext}"))
}

/// Renames a chart drawn at [`partial`] into place.
pub(super) fn publish(path: &Path) -> Result<()> {
    std::fs::rename(partial(path), path)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    (rows, cols): (usize, usize),
    x_max: f64,
    y_max: Option<f64>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("chart: {e}");
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, cols));
    let (x_lo, x_hi) = (-0.4, x_max + 0.4);
    let entries = panels
        .iter()
        .map(|p| p.lines.len() + p.limits.len() + usize::from(p.reference.is_some()))
        .max()
        .unwrap_or(1);
    let top = y_max.unwrap_or(1.0) * headroom(entries);
    for (area, panel) in areas.iter().zip(panels) {
        let mut chart = panel_builder(area, &panel.title)
            .build_cartesian_2d(x_lo..x_hi, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels((x_max.round() as usize + 2).max(3))
            .x_label_formatter(&|x| k_label(*x))
            .y_label_formatter(&|y| match y_max {
                None if *y <= 1.0 + 1e-9 => format!("{:.0}%", y * 100.0),
                None => String::new(),
                Some(m) if *y <= m + 1e-9 => format!("{y:.0}"),
                Some(_) => String::new(),
            })
            .x_desc("demonstrations in the prompt (K, log scale)")
            .y_desc(panel.y_desc.as_str())
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(err)?;
        let grey = RGBColor(110, 110, 110);
        match panel.reference {
            Some(Reference::Chance(p)) => {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(x_lo, p), (x_hi, p)],
                        8,
                        6,
                        grey.stroke_width(2),
                    ))
                    .map_err(err)?
                    .label(format!("chance ({:.0}%)", p * 100.0))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
                    });
            }
            Some(Reference::Diagonal) => {
                let line: Vec<(f64, f64)> = (0..=(x_max.round() as i32))
                    .map(|p| {
                        let k = if p == 0 { 0.0 } else { 2f64.powi(p - 1) };
                        (f64::from(p), k)
                    })
                    .collect();
                chart
                    .draw_series(DashedLineSeries::new(line, 8, 6, grey.stroke_width(2)))
                    .map_err(err)?
                    .label("all K used")
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
                    });
            }
            None => {}
        }
        for (model, color, used) in &panel.limits {
            let x = k_position_f(*used);
            let color = *color;
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x, 0.0), (x, top)],
                    3,
                    5,
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{model}: context holds ≈{used:.0}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        for (name, color, pts) in &panel.lines {
            if !pts.is_empty() {
                draw_series(&mut chart, name, *color, pts, y_max.unwrap_or(1.0))?;
            }
        }
        draw_legend(&mut chart)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Panels in rows of at most three: `((rows, cols), (width, height))` of the canvas.
pub(super) fn grid(panels: usize) -> ((usize, usize), (u32, u32)) {
    let cols = panels.clamp(1, 3);
    let rows = panels.div_ceil(cols).max(1);
    ((rows, cols), (PANEL_W * cols as u32, PANEL_H * rows as u32))
}

/// A panel's title and margins, shared by every chart.
pub(super) fn panel_builder<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64);
    b
}

/// Draws one series: a line, a marker per point and ± error bars (clipped to 0..`y_max`), with its
/// legend entry.
pub(super) fn draw_series<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    name: &str,
    color: RGBColor,
    pts: &[(X::ValueType, f64, f64)],
    y_max: f64,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged,
    X::ValueType: Clone + 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("chart: {e}");
    let xy: Vec<(X::ValueType, f64)> = pts.iter().map(|p| (p.0.clone(), p.1)).collect();
    chart
        .draw_series(LineSeries::new(xy.clone(), color.stroke_width(3)))
        .map_err(err)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
    chart
        .draw_series(xy.into_iter().map(|p| Circle::new(p, 5, color.filled())))
        .map_err(err)?;
    chart
        .draw_series(pts.iter().filter(|p| p.2 > 0.0).map(|(x, y, s)| {
            ErrorBar::new_vertical(
                x.clone(),
                (y - s).max(0.0),
                *y,
                (y + s).min(y_max),
                color.stroke_width(2),
                10,
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// A parameter count as an axis label: 135M, 1.5B.
fn parameters_label(x: f64) -> String {
    if x >= 1e9 {
        format!("{}B", (x / 1e8).round() / 10.0)
    } else {
        format!("{:.0}M", x / 1e6)
    }
}

/// The legend, in the headroom above 100%.
pub(super) fn draw_legend<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))
}

/// A point of the model-size chart: a series (a model, and its setting when the summary holds
/// several), the family its line follows and its parameter count.
struct SizePoint {
    series: String,
    model: String,
    /// What the series' name adds to the model's (" · mcqa"); empty with one setting.
    setting: String,
    family: String,
    parameters: u64,
}

/// A line of the model-size chart: its name, (parameters, value, stderr) per model, and the
/// label drawn beside each point (empty: none).
type SizeLine = (String, Vec<(f64, f64, f64)>, Vec<String>);

/// Writes `accuracy_vs_model_size.png` and `.svg` when the run has two or more models: x = parameters
/// (log axis), one panel per task (its headline metric) plus the mean over tasks. When some family
/// has several sizes, one line per (family, K), as the GPT-3 paper draws each family's scaling;
/// else one line per K through every model; with several samplers, formulations or label studies,
/// one line per setting too (cloze beside mcqa). Points are labelled by model.
pub fn accuracy_vs_model_size(
    dir: &Path,
    summary: &DataFrame,
    tasks: &[TaskMeta],
    models: &[crate::backend::ModelInfo],
) -> Result<bool> {
    let c = SummaryColumns::of(summary)?;
    // One point per series (a model, and its setting when the summary holds several).
    let mut sizes: Vec<SizePoint> = Vec::new();
    for i in 0..summary.height() {
        // Models of unknown size (behind a server) have no place on this axis.
        if let (Some(m), Some(p)) = (c.model.get(i), c.parameters.get(i))
            && p > 0
            && !sizes.iter().any(|s| s.series == c.series[i])
        {
            sizes.push(SizePoint {
                series: c.series[i].clone(),
                model: m.to_string(),
                setting: c.series[i].strip_prefix(m).unwrap_or("").to_string(),
                family: models
                    .iter()
                    .find(|info| info.name == m)
                    .map_or_else(String::new, |info| info.family.clone()),
                parameters: p,
            });
        }
    }
    // Each value once, in the order first seen (summary order).
    let once = |values: &mut dyn Iterator<Item = &str>| {
        let mut out: Vec<String> = Vec::new();
        for v in values {
            if !out.iter().any(|o| o == v) {
                out.push(v.to_string());
            }
        }
        out
    };
    if once(&mut sizes.iter().map(|s| s.model.as_str())).len() < 2 {
        return Ok(false);
    }
    // One line per setting (" · mcqa").
    let settings = once(&mut sizes.iter().map(|s| s.setting.as_str()));
    sizes.sort_by_key(|s| (s.parameters, s.series.clone()));
    let mut families: Vec<(String, Vec<&SizePoint>)> = Vec::new();
    for point in &sizes {
        match families.iter_mut().find(|(name, _)| *name == point.family) {
            Some((_, members)) => members.push(point),
            None => families.push((point.family.clone(), vec![point])),
        }
    }
    // A family with several sizes (not several settings of one model) gets lines of its own.
    let sized = |members: &[&SizePoint]| {
        members
            .iter()
            .any(|m| m.parameters != members[0].parameters)
    };
    let per_family = families.len() > 1 && families.iter().any(|(_, m)| sized(m));
    if !per_family {
        families = vec![(String::new(), sizes.iter().collect())];
    }
    let mut ks: Vec<u32> = (0..c.k.len()).filter_map(|i| c.k.get(i)).collect();
    ks.sort_unstable();
    ks.dedup();
    let mut panels: Vec<(String, String, Vec<SizeLine>)> = Vec::new();
    // One line per (family, K) through the family's cells, at their parameter counts; the
    // family's first K carries the model labels.
    let lines = |f: &CellValue| -> Vec<SizeLine> {
        let mut out = Vec::new();
        for (family, members) in &families {
            for set in &settings {
                for (ki, &k) in ks.iter().enumerate() {
                    let mut pts = Vec::new();
                    let mut labels = Vec::new();
                    for m in members.iter().filter(|m| m.setting == *set) {
                        if let Some((v, s)) = f(k, &m.series) {
                            pts.push((m.parameters as f64, v, s));
                            labels.push(match ki {
                                0 => m.series.clone(),
                                _ => String::new(),
                            });
                        }
                    }
                    let name = match family.is_empty() {
                        true => format!("K = {k}{set}"),
                        false => format!("{family}{set}, K = {k}"),
                    };
                    out.push((name, pts, labels));
                }
            }
        }
        out
    };
    for t in tasks {
        panels.push((
            t.name.clone(),
            t.primary_metric().name().to_string(),
            lines(&|k, m| cell(&c, t, k, m)),
        ));
    }
    if tasks.len() > 1 {
        panels.push((
            "mean over tasks".into(),
            "headline metric".into(),
            lines(&|k, m| mean_cell(&c, tasks, k, m)),
        ));
    }
    let ((rows, cols), size) = grid(panels.len());
    let lo = sizes[0].parameters as f64 / 1.6;
    let hi = sizes[sizes.len() - 1].parameters as f64 * 1.6;
    let png = dir.join("accuracy_vs_model_size.png");
    draw_sizes(
        BitMapBackend::new(&partial(&png), size).into_drawing_area(),
        &panels,
        (lo, hi),
        rows,
        cols,
    )?;
    publish(&png)?;
    let svg = dir.join("accuracy_vs_model_size.svg");
    draw_sizes(
        SVGBackend::new(&partial(&svg), size).into_drawing_area(),
        &panels,
        (lo, hi),
        rows,
        cols,
    )?;
    publish(&svg)?;
    Ok(true)
}

fn draw_sizes<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[(String, String, Vec<SizeLine>)],
    (lo, hi): (f64, f64),
    rows: usize,
    cols: usize,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("chart: {e}");
    root.fill(&WHITE).map_err(err)?;
    let top = headroom(panels.iter().map(|p| p.2.len()).max().unwrap_or(1));
    for (area, (title, metric, lines)) in root.split_evenly((rows, cols)).iter().zip(panels) {
        let mut chart = panel_builder(area, title)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| parameters_label(*x))
            .y_label_formatter(&|y| {
                if *y <= 1.0 + 1e-9 {
                    format!("{:.0}%", y * 100.0)
                } else {
                    String::new()
                }
            })
            .x_desc("parameters (log scale)")
            .y_desc(format!("{metric} (± stderr)"))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(err)?;
        for (li, (name, pts, labels)) in lines.iter().enumerate() {
            let color = PALETTE[li % PALETTE.len()];
            draw_series(&mut chart, name, color, pts, 1.0)?;
            chart
                .draw_series(pts.iter().zip(labels).filter(|(_, l)| !l.is_empty()).map(
                    |((x, y, _), l)| {
                        EmptyElement::at((*x, *y))
                            + Text::new(l.clone(), (8, 6), ("sans-serif", 13).into_font())
                    },
                ))
                .map_err(err)?;
        }
        draw_legend(&mut chart)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ModelInfo;
    use crate::record::Sample;
    use crate::report::table::summarize;
    use crate::task::{Item, Metric, OutputType, Task};

    fn model(name: &str, parameters: u64) -> ModelInfo {
        ModelInfo::for_tests(name, parameters)
    }

    #[test]
    fn k_axis_keeps_zero_and_spaces_powers_of_two_evenly() {
        assert_eq!(k_position(0), 0.0);
        assert_eq!(k_position(1), 1.0);
        assert_eq!(k_position(32), 6.0);
        assert_eq!(k_label(0.0), "0");
        assert_eq!(k_label(3.0), "4");
        assert_eq!(k_label(2.5), "");
        assert_eq!(parameters_label(1e9), "1B");
        assert_eq!(parameters_label(1.54e9), "1.5B");
        assert_eq!(parameters_label(1.35e8), "135M");
    }

    #[test]
    fn the_size_chart_draws_a_line_per_family_and_k_and_labels_points_by_model() {
        let task = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc],
            vec![Item::blank(0)],
        );
        let mut models = vec![
            model("pythia-70m", 70_000_000),
            model("pythia-410m", 410_000_000),
            model("gpt2-124m", 124_000_000),
        ];
        for (m, f) in models.iter_mut().zip(["pythia", "pythia", "gpt2"]) {
            m.family = f.into();
        }
        let mut samples = Vec::new();
        for m in &models {
            for k in [0, 4] {
                samples.push(Sample::for_tests(&m.name, 0, k, Some(1.0)));
            }
        }
        let meta = [TaskMeta::of(&task)];
        let summary = summarize(&samples, &meta, &models, None).unwrap();
        let dir = std::env::temp_dir().join(format!("icl-eval-families-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(accuracy_vs_model_size(&dir, &summary, &meta, &models).unwrap());
        let svg = std::fs::read_to_string(dir.join("accuracy_vs_model_size.svg")).unwrap();
        for line in [
            "pythia, K = 0",
            "pythia, K = 4",
            "gpt2, K = 0",
            "gpt2, K = 4",
        ] {
            assert!(svg.contains(line), "legend entry {line} missing");
        }
        for m in &models {
            assert_eq!(
                svg.matches(&format!(">\n{}\n</text>", m.name)).count(),
                1,
                "one label for {}",
                m.name
            );
        }
        // One family with several sizes and nothing else: one line per K, as before.
        for m in &mut models {
            m.family = "pythia".into();
        }
        let summary = summarize(&samples, &meta, &models, None).unwrap();
        accuracy_vs_model_size(&dir, &summary, &meta, &models).unwrap();
        let svg = std::fs::read_to_string(dir.join("accuracy_vs_model_size.svg")).unwrap();
        assert!(svg.contains("K = 0") && !svg.contains("pythia, K"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn charts_render_a_point_per_cell() {
        let task = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc],
            vec![Item::blank(0)],
        );
        let models = [model("small", 135_000_000), model("large", 630_000_000)];
        let mut samples = Vec::new();
        for m in &models {
            for k in [0, 1, 8] {
                for d in 0..4 {
                    samples.push(Sample::for_tests(
                        &m.name,
                        d,
                        k,
                        Some(f64::from(u8::from(d < 2 + k / 8))),
                    ));
                }
            }
        }
        let meta = [TaskMeta::of(&task)];
        let summary = summarize(&samples, &meta, &models, None).unwrap();
        let dir = std::env::temp_dir().join(format!("icl-eval-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        accuracy_vs_shots(&dir, &summary, &meta, &model_colors(&models)).unwrap();
        accuracy_vs_model_size(&dir, &summary, &meta, &models).unwrap();
        for name in ["accuracy_vs_shots", "accuracy_vs_model_size"] {
            let png = std::fs::read(dir.join(format!("{name}.png"))).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            // IHDR width and height: one 640×460 panel.
            assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), PANEL_W);
            assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), PANEL_H);
            let svg = std::fs::read_to_string(dir.join(format!("{name}.svg"))).unwrap();
            assert!(svg.starts_with("<svg"), "{name}");
            // One filled marker per cell: 2 models × 3 K.
            let markers = svg
                .lines()
                .filter(|l| l.contains("<circle") && l.contains("fill=\"#"))
                .count();
            assert_eq!(markers, 6, "{name}");
        }
        let svg = std::fs::read_to_string(dir.join("accuracy_vs_shots.svg")).unwrap();
        assert!(svg.contains("small") && svg.contains("large"));
        // Multiple choice: the chance line is drawn and labelled (blank items have no choices: 0%).
        assert!(svg.contains("chance (0%)"), "chance line missing");
        for k in ["0", "1", "8"] {
            assert!(
                svg.contains(&format!(">\n{k}\n</text>")),
                "K label {k} missing"
            );
        }
        let svg = std::fs::read_to_string(dir.join("accuracy_vs_model_size.svg")).unwrap();
        assert!(svg.contains("K = 0") && svg.contains("K = 8"));

        // Every demonstration fitted: no effective-K chart. Cut one prompt of "large" at K = 8 to
        // 2 demonstrations: the chart appears, one line per model, a point per K.
        let colors = model_colors(&models);
        assert!(!effective_k(&dir, &summary, &meta, &colors).unwrap());
        let cut = samples
            .iter_mut()
            .find(|s| s.model == "large" && s.k == 8)
            .unwrap();
        cut.k_effective = Some(2);
        let summary = summarize(&samples, &meta, &models, None).unwrap();
        assert!(effective_k(&dir, &summary, &meta, &colors).unwrap());
        let png = std::fs::read(dir.join("effective_k.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(dir.join("effective_k.svg")).unwrap();
        let markers = svg
            .lines()
            .filter(|l| l.contains("<circle") && l.contains("fill=\"#"))
            .count();
        assert_eq!(markers, 6);
        // The accuracy chart marks where "large"'s context ended, and only its.
        accuracy_vs_shots(&dir, &summary, &meta, &colors).unwrap();
        let svg = std::fs::read_to_string(dir.join("accuracy_vs_shots.svg")).unwrap();
        assert!(
            svg.contains("large: context holds ≈"),
            "no context limit drawn"
        );
        assert!(!svg.contains("small: context holds"));
    }
}
