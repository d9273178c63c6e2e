//! Results: one row per metric with every run's value for skiff and for its baseline, the per-run
//! ratio skiff ÷ baseline, and medians; printed as a table or as JSON.

use serde_json::{json, Value};

/// Which way a ratio is good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// skiff ÷ baseline should be at least this.
    AtLeast(f64),
    /// skiff ÷ baseline should be at most this.
    AtMost(f64),
    /// Informational, no goal.
    None,
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::AtLeast(v) => format!(">= {v}"),
            Goal::AtMost(v) => format!("<= {v}"),
            Goal::None => "-".to_string(),
        }
    }

    fn met(self, ratio: f64) -> Option<bool> {
        match self {
            Goal::AtLeast(v) => Some(ratio >= v),
            Goal::AtMost(v) => Some(ratio <= v),
            Goal::None => None,
        }
    }
}

/// One measured quantity over all runs.
#[derive(Debug, Clone)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    /// What the baseline column is (e.g. "overlayfs", "compressed size in blob").
    pub baseline_name: &'static str,
    pub skiff: Vec<f64>,
    /// Empty when the metric has no baseline.
    pub baseline: Vec<f64>,
    pub goal: Goal,
}

impl Metric {
    pub fn new(
        key: &'static str,
        label: &'static str,
        unit: &'static str,
        baseline_name: &'static str,
        goal: Goal,
    ) -> Self {
        Metric {
            key,
            label,
            unit,
            baseline_name,
            skiff: Vec::new(),
            baseline: Vec::new(),
            goal,
        }
    }

    /// Records one run.
    pub fn push(&mut self, skiff: f64, baseline: Option<f64>) {
        self.skiff.push(skiff);
        if let Some(baseline) = baseline {
            self.baseline.push(baseline);
        }
    }

    /// skiff ÷ baseline of each run.
    pub fn ratios(&self) -> Vec<f64> {
        self.skiff
            .iter()
            .zip(&self.baseline)
            .map(|(s, b)| s / b)
            .collect()
    }

    fn to_json(&self) -> Value {
        let ratios = self.ratios();
        let median_ratio = median(&ratios);
        json!({
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "baseline": self.baseline_name,
            "skiff_runs": self.skiff,
            "baseline_runs": self.baseline,
            "ratio_runs": ratios,
            "skiff_median": median(&self.skiff),
            "baseline_median": median(&self.baseline),
            "ratio_median": median_ratio,
            "goal": match self.goal { Goal::None => Value::Null, goal => goal.describe().into() },
            "goal_met": median_ratio.and_then(|r| self.goal.met(r)),
        })
    }
}

/// The median (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() & 1 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

fn format_value(value: Option<f64>, unit: &str) -> String {
    let Some(value) = value else {
        return "-".to_string();
    };
    match unit {
        "B" | "requests" | "IOPS" | "entries" => format!("{value:.0}"),
        "ms" => format!("{value:.2}"),
        _ => format!("{value:.1}"),
    }
}

/// The table: medians, the median of the per-run ratios, its spread and the goal.
pub fn table(metrics: &[Metric], notes: &[String]) -> String {
    let header = [
        "metric",
        "skiff",
        "baseline",
        "skiff÷baseline",
        "min..max",
        "goal",
        "",
    ];
    let mut rows: Vec<[String; 7]> = vec![header.map(str::to_string)];
    for metric in metrics {
        let ratios = metric.ratios();
        let ratio = median(&ratios);
        let spread = match (
            ratios.iter().copied().reduce(f64::min),
            ratios.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) => format!("{lo:.3}..{hi:.3}"),
            _ => "-".to_string(),
        };
        let verdict = match ratio.and_then(|r| metric.goal.met(r)) {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        rows.push([
            format!("{} ({})", metric.label, metric.unit),
            format_value(median(&metric.skiff), metric.unit),
            if metric.baseline.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{} {}",
                    format_value(median(&metric.baseline), metric.unit),
                    metric.baseline_name
                )
            },
            ratio.map_or("-".to_string(), |r| format!("{r:.3}")),
            spread,
            metric.goal.describe(),
            verdict.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if c == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    for note in notes {
        out.push_str(note);
        out.push('\n');
    }
    out
}

/// The JSON document: `context` (setup and counters) plus every metric.
pub fn json(metrics: &[Metric], context: Value) -> Value {
    json!({
        "benchmark": "fuse",
        "context": context,
        "metrics": metrics.iter().map(Metric::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ratios_pair_runs() {
        let mut metric = Metric::new("k", "l", "MB/s", "overlayfs", Goal::AtLeast(0.95));
        metric.push(90.0, Some(100.0));
        metric.push(50.0, Some(50.0));
        assert_eq!(metric.ratios(), vec![0.9, 1.0]);
        let table = table(&[metric], &[]);
        assert!(table.contains("0.950"), "{table}");
        assert!(table.contains("ok"), "{table}");
    }
}
