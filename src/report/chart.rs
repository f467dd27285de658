//! Charts of the summary (plotters): accuracy against the number of demonstrations.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
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
    let cols = panels.len().min(3);
    let rows = panels.len().div_ceil(cols);
    let size = (PANEL_W * cols as u32, PANEL_H * rows as u32);
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
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
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
            let color = PALETTE[mi % PALETTE.len()];
            let xy: Vec<(SegmentValue<usize>, f64)> = pts
                .iter()
                .map(|p| (SegmentValue::CenterOf(p.0), p.1))
                .collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), color.stroke_width(3)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(
                    xy.iter()
                        .map(|(x, y)| Circle::new((x.clone(), *y), 5, color.filled())),
                )
                .map_err(err)?;
            chart
                .draw_series(pts.iter().map(|&(x, y, s)| {
                    ErrorBar::new_vertical(
                        SegmentValue::CenterOf(x),
                        (y - s).max(0.0),
                        y,
                        (y + s).min(1.0),
                        color.stroke_width(2),
                        10,
                    )
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
