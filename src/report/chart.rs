//! Charts of the summary (plotters): accuracy against the number of demonstrations, and against
//! model size.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use polars::prelude::*;

use super::table::SummaryColumns;
use crate::task::Task;

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

/// The y axis runs past 100% so the legend sits above the data instead of on it.
const LEGEND_HEADROOM: f64 = 1.2;

const PANEL_W: u32 = 640;
const PANEL_H: u32 = 460;

/// One point of a line: K index, value, stderr.
type Point = (usize, f64, f64);

struct Panel {
    title: String,
    metric: String,
    /// (model, points), models in a fixed order so colours agree across panels.
    lines: Vec<(String, Vec<Point>)>,
}

/// Writes `accuracy_vs_shots.png` and `.svg`: one panel per task (its headline metric), one line per
/// model, ± standard-error bars.
pub fn accuracy_vs_shots(dir: &Path, summary: &DataFrame, tasks: &[Task]) -> Result<()> {
    let (ks, panels) = panels(summary, tasks)?;
    if panels.is_empty() {
        return Ok(());
    }
    let ((rows, cols), size) = grid(panels.len());
    let png = dir.join("accuracy_vs_shots.png");
    draw(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &ks,
        &panels,
        rows,
        cols,
    )?;
    let svg = dir.join("accuracy_vs_shots.svg");
    draw(
        SVGBackend::new(&svg, size).into_drawing_area(),
        &ks,
        &panels,
        rows,
        cols,
    )?;
    Ok(())
}

fn panels(summary: &DataFrame, tasks: &[Task]) -> Result<(Vec<u32>, Vec<Panel>)> {
    let SummaryColumns {
        task,
        model,
        k,
        metric,
        value,
        stderr: se,
        ..
    } = SummaryColumns::of(summary)?;
    let mut ks: Vec<u32> = (0..k.len()).filter_map(|i| k.get(i)).collect();
    ks.sort_unstable();
    ks.dedup();
    let mut models: Vec<String> = Vec::new();
    for m in (0..model.len()).filter_map(|i| model.get(i)) {
        if !models.iter().any(|x| x == m) {
            models.push(m.to_string());
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        let want = t.primary_metric().name();
        let lines = models
            .iter()
            .map(|m| {
                let pts = (0..summary.height())
                    .filter(|&i| {
                        task.get(i) == Some(&t.name)
                            && model.get(i) == Some(m)
                            && metric.get(i) == Some(want)
                    })
                    .filter_map(|i| {
                        let xi = ks.iter().position(|&x| Some(x) == k.get(i))?;
                        Some((
                            xi,
                            value.get(i)?,
                            se.get(i).filter(|s| s.is_finite()).unwrap_or(0.0),
                        ))
                    })
                    .filter(|p| p.1.is_finite())
                    .collect();
                (m.clone(), pts)
            })
            .collect();
        out.push(Panel {
            title: t.name.clone(),
            metric: want.to_string(),
            lines,
        });
    }
    Ok((ks, out))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    ks: &[u32],
    panels: &[Panel],
    rows: usize,
    cols: usize,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("chart: {e}");
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, cols));
    for (area, panel) in areas.iter().zip(panels) {
        let mut chart = panel_builder(area, &panel.title)
            .build_cartesian_2d(
                (0..ks.len().max(2) - 1).into_segmented(),
                0f64..LEGEND_HEADROOM,
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(ks.len() + 1)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => ks.get(*i).map_or(String::new(), |k| k.to_string()),
                _ => String::new(),
            })
            .y_label_formatter(&|y| {
                if *y <= 1.0 {
                    format!("{:.0}%", y * 100.0)
                } else {
                    String::new()
                }
            })
            .x_desc("demonstrations in the prompt (K)")
            .y_desc(format!("{} (± stderr)", panel.metric))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(err)?;
        for (mi, (name, pts)) in panel.lines.iter().enumerate() {
            let pts: Vec<_> = pts
                .iter()
                .map(|&(x, y, e)| (SegmentValue::CenterOf(x), y, e))
                .collect();
            draw_series(&mut chart, name, PALETTE[mi % PALETTE.len()], &pts)?;
        }
        draw_legend(&mut chart)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Panels in rows of at most three: `((rows, cols), (width, height))` of the canvas.
fn grid(panels: usize) -> ((usize, usize), (u32, u32)) {
    let cols = panels.clamp(1, 3);
    let rows = panels.div_ceil(cols).max(1);
    ((rows, cols), (PANEL_W * cols as u32, PANEL_H * rows as u32))
}

/// A panel's title and margins, shared by every chart.
fn panel_builder<'a, 'b, DB: DrawingBackend>(
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

/// Draws one series: a line, a marker per point and ± stderr bars (clipped to 0–100%), with its
/// legend entry.
fn draw_series<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    name: &str,
    color: RGBColor,
    pts: &[(X::ValueType, f64, f64)],
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
        .draw_series(pts.iter().map(|(x, y, s)| {
            ErrorBar::new_vertical(
                x.clone(),
                (y - s).max(0.0),
                *y,
                (y + s).min(1.0),
                color.stroke_width(2),
                10,
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// The legend, in the headroom above 100%.
fn draw_legend<'a, DB, X>(
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

/// A line of the model-size chart: (parameters, value, stderr) per model, for one K.
type SizeLine = (String, Vec<(f64, f64, f64)>);

/// Writes `accuracy_vs_model_size.png` and `.svg` when the run has two or more models: x = parameters
/// (log axis), one line per K, one panel per task (its headline metric) plus the mean over tasks.
pub fn accuracy_vs_model_size(dir: &Path, summary: &DataFrame, tasks: &[Task]) -> Result<()> {
    let c = SummaryColumns::of(summary)?;
    let mut sizes: Vec<(String, u64)> = Vec::new();
    for i in 0..summary.height() {
        if let (Some(m), Some(p)) = (c.model.get(i), c.parameters.get(i))
            && !sizes.iter().any(|(x, _)| x == m)
        {
            sizes.push((m.to_string(), p));
        }
    }
    if sizes.len() < 2 {
        return Ok(());
    }
    sizes.sort_by_key(|(m, p)| (*p, m.clone()));
    let mut ks: Vec<u32> = (0..c.k.len()).filter_map(|i| c.k.get(i)).collect();
    ks.sort_unstable();
    ks.dedup();
    // cell[task][k][model] = (value, stderr) of the task's headline metric.
    let cell = |t: &Task, k: u32, m: &str| {
        (0..summary.height())
            .find(|&i| {
                c.task.get(i) == Some(&t.name)
                    && c.k.get(i) == Some(k)
                    && c.model.get(i) == Some(m)
                    && c.metric.get(i) == Some(t.primary_metric().name())
            })
            .and_then(|i| {
                Some((
                    c.value.get(i)?,
                    c.stderr.get(i).filter(|s| s.is_finite()).unwrap_or(0.0),
                ))
            })
            .filter(|(v, _)| v.is_finite())
    };
    let mut panels: Vec<(String, String, Vec<SizeLine>)> = Vec::new();
    for t in tasks {
        let lines = ks
            .iter()
            .map(|&k| {
                let pts = sizes
                    .iter()
                    .filter_map(|(m, p)| cell(t, k, m).map(|(v, s)| (*p as f64, v, s)))
                    .collect();
                (format!("K = {k}"), pts)
            })
            .collect();
        panels.push((t.name.clone(), t.primary_metric().name().to_string(), lines));
    }
    if tasks.len() > 1 {
        // Mean over tasks of each model's headline metric; its stderr treats tasks as independent.
        let lines = ks
            .iter()
            .map(|&k| {
                let pts = sizes
                    .iter()
                    .filter_map(|(m, p)| {
                        let cells: Vec<(f64, f64)> =
                            tasks.iter().filter_map(|t| cell(t, k, m)).collect();
                        (cells.len() == tasks.len()).then(|| {
                            let n = cells.len() as f64;
                            let mean = cells.iter().map(|c| c.0).sum::<f64>() / n;
                            let se = cells.iter().map(|c| c.1 * c.1).sum::<f64>().sqrt() / n;
                            (*p as f64, mean, se)
                        })
                    })
                    .collect();
                (format!("K = {k}"), pts)
            })
            .collect();
        panels.push(("mean over tasks".into(), "headline metric".into(), lines));
    }
    let ((rows, cols), size) = grid(panels.len());
    let lo = sizes[0].1 as f64 / 1.6;
    let hi = sizes[sizes.len() - 1].1 as f64 * 1.6;
    let png = dir.join("accuracy_vs_model_size.png");
    draw_sizes(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &panels,
        (lo, hi),
        rows,
        cols,
    )?;
    let svg = dir.join("accuracy_vs_model_size.svg");
    draw_sizes(
        SVGBackend::new(&svg, size).into_drawing_area(),
        &panels,
        (lo, hi),
        rows,
        cols,
    )
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
    for (area, (title, metric, lines)) in root.split_evenly((rows, cols)).iter().zip(panels) {
        let mut chart = panel_builder(area, title)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..LEGEND_HEADROOM)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| format!("{:.0}M", x / 1e6))
            .y_label_formatter(&|y| {
                if *y <= 1.0 {
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
        for (li, (name, pts)) in lines.iter().enumerate() {
            draw_series(&mut chart, name, PALETTE[li % PALETTE.len()], pts)?;
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
    use crate::report::table::summarize;
    use crate::run::Sample;
    use crate::task::{Item, Metric, OutputType};

    fn model(name: &str, parameters: u64) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            reference: String::new(),
            path: String::new(),
            sha256: String::new(),
            architecture: "llama".into(),
            parameters,
            non_embedding_parameters: parameters,
            quantization: "F32".into(),
            context_length: 8192,
            weights: "f32".into(),
        }
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
        let summary = summarize(&samples, std::slice::from_ref(&task), &models).unwrap();
        let dir = std::env::temp_dir().join(format!("icl-eval-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        accuracy_vs_shots(&dir, &summary, std::slice::from_ref(&task)).unwrap();
        accuracy_vs_model_size(&dir, &summary, std::slice::from_ref(&task)).unwrap();
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
        let svg = std::fs::read_to_string(dir.join("accuracy_vs_model_size.svg")).unwrap();
        assert!(svg.contains("K = 0") && svg.contains("K = 8"));
    }
}
