//! Reliability diagrams: for each task that reports `ece`, one panel per model, a line per K
//! through its equal-mass bins (the bins `ece` is computed over) at (mean confidence, accuracy),
//! beside the diagonal of perfect calibration. The docs of every seed and ordering of a cell are
//! pooled.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::TaskMeta;
use super::chart::{
    PALETTE, draw_legend, draw_series, grid, headroom, panel_builder, partial, publish,
};
use crate::metric::Metric;
use crate::metric::choice::{Bin, ece, ece_bins};
use crate::record::Sample;

/// One panel: its title and, per K, the bins of the pooled docs.
struct Panel {
    title: String,
    lines: Vec<(usize, Vec<Bin>, f64)>,
}

/// The panels of every task reporting `ece`: per model (in run order), per K, the bins of the
/// docs' (confidence, correct) statistics.
fn panels(samples: &[Sample], tasks: &[TaskMeta], models: &[String]) -> Vec<Panel> {
    let mut out = Vec::new();
    for t in tasks {
        let Some(reported) = t.metrics.iter().find(|m| m.metric == Metric::Ece) else {
            continue;
        };
        for m in models {
            let mut by_k: BTreeMap<usize, Vec<&[f64]>> = BTreeMap::new();
            for s in samples.iter().filter(|s| s.task == t.name && &s.model == m) {
                if let Some(st) = s.stats.get(reported.name()) {
                    by_k.entry(s.k).or_default().push(st);
                }
            }
            if by_k.is_empty() {
                continue;
            }
            out.push(Panel {
                title: format!("{} · {m}", t.name),
                lines: by_k
                    .into_iter()
                    .map(|(k, st)| (k, ece_bins(&st), ece(&st)))
                    .collect(),
            });
        }
    }
    out
}

/// Writes `reliability.png` and `.svg` when a task reports `ece`; returns whether it did.
pub fn reliability(
    dir: &Path,
    samples: &[Sample],
    tasks: &[TaskMeta],
    models: &[String],
) -> Result<bool> {
    let panels = panels(samples, tasks, models);
    if panels.is_empty() {
        return Ok(false);
    }
    let ((rows, cols), size) = grid(panels.len());
    let png = dir.join("reliability.png");
    draw(
        BitMapBackend::new(&partial(&png), size).into_drawing_area(),
        &panels,
        (rows, cols),
    )?;
    publish(&png)?;
    let svg = dir.join("reliability.svg");
    draw(
        SVGBackend::new(&partial(&svg), size).into_drawing_area(),
        &panels,
        (rows, cols),
    )?;
    publish(&svg)?;
    Ok(true)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    (rows, cols): (usize, usize),
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("chart: {e}");
    root.fill(&WHITE).map_err(err)?;
    let entries = panels.iter().map(|p| p.lines.len() + 1).max().unwrap_or(1);
    let top = headroom(entries);
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        let mut chart = panel_builder(area, &panel.title)
            .build_cartesian_2d(0f64..1f64, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| format!("{:.0}%", x * 100.0))
            .y_label_formatter(&|y| {
                if *y <= 1.0 + 1e-9 {
                    format!("{:.0}%", y * 100.0)
                } else {
                    String::new()
                }
            })
            .x_desc("confidence (the top choice's probability)")
            .y_desc("accuracy")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(err)?;
        let grey = RGBColor(110, 110, 110);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                8,
                6,
                grey.stroke_width(2),
            ))
            .map_err(err)?
            .label("perfect calibration")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
            });
        for (i, (k, bins, e)) in panel.lines.iter().enumerate() {
            let pts: Vec<(f64, f64, f64)> = bins
                .iter()
                .map(|b| (b.confidence, b.accuracy, 0.0))
                .collect();
            let name = format!("K={k}: ECE {:.1}%", 100.0 * e);
            draw_series(&mut chart, &name, PALETTE[i % PALETTE.len()], &pts, 1.0)?;
        }
        draw_legend(&mut chart)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Reported;

    #[test]
    fn a_panel_per_model_and_a_line_per_k_through_the_ece_bins() {
        let meta = TaskMeta {
            name: "t".into(),
            output_type: crate::task::OutputType::MultipleChoice,
            metrics: vec![Metric::Acc.into(), Reported::new(Metric::Ece, None)],
            chance: Some(0.5),
            labels: None,
            aggregations: Default::default(),
        };
        let mut samples = Vec::new();
        for (doc, (k, conf, correct)) in [(0, 0.9, 1.0), (0, 0.6, 0.0), (4, 0.8, 1.0)]
            .into_iter()
            .enumerate()
        {
            let mut s = Sample::for_tests("m", doc, k, Some(correct));
            s.stats.insert("ece".into(), vec![conf, correct]);
            samples.push(s);
        }
        let p = panels(&samples, &[meta], &["m".to_string(), "absent".to_string()]);
        assert_eq!(p.len(), 1, "no panel for a model without samples");
        assert_eq!(p[0].title, "t · m");
        let ks: Vec<usize> = p[0].lines.iter().map(|l| l.0).collect();
        assert_eq!(ks, [0, 4]);
        // K = 0: two docs, two bins: (0.6, 0%) and (0.9, 100%); ECE (0.6 + 0.1) / 2.
        assert_eq!(p[0].lines[0].1.len(), 2);
        assert!((p[0].lines[0].2 - 0.35).abs() < 1e-12);
        let dir = std::env::temp_dir().join(format!("icl-eval-reliability-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let metas = [TaskMeta {
            name: "t".into(),
            output_type: crate::task::OutputType::MultipleChoice,
            metrics: vec![Metric::Acc.into(), Metric::Ece.into()],
            chance: Some(0.5),
            labels: None,
            aggregations: Default::default(),
        }];
        assert!(reliability(&dir, &samples, &metas, &["m".to_string()]).unwrap());
        assert!(dir.join("reliability.svg").is_file() && dir.join("reliability.png").is_file());
    }
}
