//! Predicted-label shares per cell, so majority-label and recency bias show up (Zhao et al. 2021):
//! for each classification task, model, setting, K and metric, the share of docs predicted as each
//! label, beside the gold labels' shares.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::TaskMeta;
use crate::record::Sample;
use crate::task::Metric;

/// The label shares of one cell under one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelShares {
    pub task: String,
    pub model: String,
    pub sampler: String,
    pub demo_labels: String,
    pub k: usize,
    /// The metric whose pick is counted, or `gold`.
    pub metric: String,
    /// (label, share of scored docs), in label order.
    pub shares: Vec<(String, f64)>,
    /// Scored samples counted (over every seed and ordering).
    pub n: usize,
}

type CellKey = (String, String, String, String, usize);

/// Label shares of every classification task's cells, for every multiple-choice metric the task
/// reports, plus the gold shares of the same docs. Each sample's pick is recomputed from its
/// stored log-likelihoods (and calibration), so it matches the metric exactly.
pub fn shares(samples: &[Sample], tasks: &[TaskMeta]) -> Vec<LabelShares> {
    let mut counts: BTreeMap<(CellKey, usize), (Vec<usize>, usize)> = BTreeMap::new();
    for s in samples {
        let Some(t) = tasks.iter().find(|t| t.name == s.task) else {
            continue;
        };
        let (Some(labels), Some(lps)) = (&t.labels, &s.logprobs) else {
            continue;
        };
        if lps.len() != labels.len() {
            continue;
        }
        let key = (
            s.task.clone(),
            s.model.clone(),
            s.sampler.name().to_string(),
            s.demo_labels.name().to_string(),
            s.k,
        );
        let cs = crate::metric::choice::score_choices(
            lps,
            labels,
            s.calibration.as_deref(),
            s.unconditional.as_deref(),
        );
        let mut add = |slot: usize, pick: Option<usize>| {
            let e = counts
                .entry((key.clone(), slot))
                .or_insert_with(|| (vec![0; labels.len()], 0));
            if let Some(p) = pick {
                e.0[p] += 1;
                e.1 += 1;
            }
        };
        add(0, labels.iter().position(|l| *l == s.gold));
        for (i, m) in t.metrics.iter().enumerate() {
            add(i + 1, m.metric.pick(&cs));
        }
    }
    let mut out = Vec::new();
    for ((key, slot), (c, n)) in counts {
        let Some(t) = tasks.iter().find(|t| t.name == key.0) else {
            continue;
        };
        let (Some(labels), metric) = (
            &t.labels,
            if slot == 0 {
                "gold"
            } else {
                t.metrics[slot - 1].name()
            },
        ) else {
            continue;
        };
        if n == 0 || (slot > 0 && t.metrics[slot - 1].metric == Metric::ExactMatch) {
            continue;
        }
        out.push(LabelShares {
            task: key.0,
            model: key.1,
            sampler: key.2,
            demo_labels: key.3,
            k: key.4,
            metric: metric.to_string(),
            shares: labels
                .iter()
                .zip(&c)
                .map(|(l, &x)| (l.clone(), x as f64 / n as f64))
                .collect(),
            n,
        });
    }
    out
}

/// A Markdown section: one row per cell and metric, the shares as `label 0.62 · label 0.38`.
pub fn markdown(shares: &[LabelShares]) -> String {
    let mut out = String::from(
        "\n### Predicted labels\n\nShare of scored docs predicted as each label (all seeds and \
         orderings pooled); `gold` is the true labels' share of the same docs.\n\n\
         | task | model | sampler | labels shown | K | picked by | shares | n |\n\
         |---|---|---|---|---:|---|---|---:|\n",
    );
    for s in shares {
        let parts: Vec<String> = s
            .shares
            .iter()
            .map(|(l, x)| format!("{l} {x:.2}"))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.task,
            s.model,
            s.sampler,
            s.demo_labels,
            s.k,
            s.metric,
            parts.join(" · "),
            s.n
        ));
    }
    out
}

/// `labels.csv`: one row per cell, metric and label.
pub fn write_csv(path: &Path, shares: &[LabelShares]) -> Result<()> {
    let mut w = String::from("task,model,sampler,demo_labels,k,metric,label,share,n\n");
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for s in shares {
        for (l, x) in &s.shares {
            w.push_str(&format!(
                "{},{},{},{},{},{},{},{x},{}\n",
                q(&s.task),
                q(&s.model),
                s.sampler,
                s.demo_labels,
                s.k,
                s.metric,
                q(l),
                s.n
            ));
        }
    }
    crate::record::write_atomic(path, w.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::OutputType;

    #[test]
    fn shares_count_each_metrics_pick_and_the_gold_labels() {
        let t = TaskMeta {
            name: "t".into(),
            output_type: OutputType::MultipleChoice,
            metrics: vec![Metric::Acc.into(), Metric::AccCalibrated.into()],
            chance: Some(0.5),
            labels: Some(vec!["neg".into(), "pos".into()]),
            aggregations: Default::default(),
        };
        let mk = |gold: &str, lps: [f64; 2], cal: [f64; 2]| {
            let mut s = Sample::for_tests("m", 0, 4, Some(1.0));
            s.gold = gold.into();
            s.logprobs = Some(lps.to_vec());
            s.calibration = Some(cal.to_vec());
            s
        };
        // acc always picks "pos"; calibration against a prior leaning to "pos" flips two of three.
        let lean = [(0.3f64).ln(), (0.7f64).ln()];
        let samples = vec![
            mk("neg", [-1.0, -0.9], lean),
            mk("neg", [-1.2, -0.8], lean),
            mk("pos", [-2.0, -0.1], lean),
        ];
        let got = shares(&samples, &[t]);
        let by = |m: &str| got.iter().find(|s| s.metric == m).unwrap().shares.clone();
        assert_eq!(by("acc"), vec![("neg".into(), 0.0), ("pos".into(), 1.0)]);
        let gold = by("gold");
        assert!((gold[0].1 - 2.0 / 3.0).abs() < 1e-12);
        let cal = by("acc_calibrated");
        assert!((cal[0].1 - 2.0 / 3.0).abs() < 1e-12, "{cal:?}");
        let md = markdown(&got);
        assert!(
            md.contains("| t | m | random | gold | 4 | acc | neg 0.00 · pos 1.00 | 3 |"),
            "{md}"
        );
    }
}
