//! chart.png: median cold time-to-ready per workload and variant (a group of bars, one per mode), drawn with
//! plotters. Text needs a TrueType font: DejaVu Sans from Debian's fonts-dejavu-core.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::run::Row;

/// Where Debian puts DejaVu Sans (package fonts-dejavu-core).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const COLORS: [RGBColor; 4] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
];

fn register_font() -> Result<()> {
    static REGISTER: Once = Once::new();
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("read the chart font {FONT} (Debian package fonts-dejavu-core)")
    })?;
    let mut result = Ok(());
    REGISTER.call_once(|| {
        // plotters keeps the font for the process's lifetime.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| anyhow!("{FONT} is not a usable TrueType font"));
    });
    result
}

/// Draws the cold starts of `rows` into `path` (PNG).
pub fn draw(path: &Path, rows: &[Row], profile: &str) -> Result<()> {
    register_font()?;
    // (image:variant) -> mode -> cold totals.
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.temperature == "cold") {
        groups
            .entry(format!("{}:{}", row.workload, row.variant))
            .or_default()
            .entry(row.mode.clone())
            .or_default()
            .push(row.total_s);
    }
    let modes: Vec<String> = {
        let mut m: Vec<String> = rows.iter().map(|r| r.mode.clone()).collect();
        m.sort();
        m.dedup();
        m
    };
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let max = groups
        .values()
        .flat_map(|by_mode| by_mode.values().map(|v| median(v)))
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let labels: Vec<String> = groups.keys().cloned().collect();

    let root =
        BitMapBackend::new(path, (200 + 160 * labels.len().max(1) as u32, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("draw chart: {e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("cold start: time to ready (median), profile {profile}"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..labels.len() as f64, 0.0..max * 1.15)
        .map_err(|e| anyhow!("draw chart: {e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let centre = x.fract();
            if (centre - 0.5).abs() < 0.01 {
                labels.get(*x as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("seconds")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("draw chart: {e}"))?;
    let width = 0.8 / modes.len().max(1) as f64;
    for (m, mode) in modes.iter().enumerate() {
        let color = COLORS[m % COLORS.len()];
        let bars: Vec<(f64, f64)> = labels
            .iter()
            .enumerate()
            .filter_map(|(g, label)| {
                groups[label]
                    .get(mode)
                    .map(|totals| (g as f64 + 0.1 + width * m as f64, median(totals)))
            })
            .collect();
        chart
            .draw_series(
                bars.iter().map(|&(x, y)| {
                    Rectangle::new([(x, 0.0), (x + width * 0.95, y)], color.filled())
                }),
            )
            .map_err(|e| anyhow!("draw chart: {e}"))?
            .label(mode.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("draw chart: {e}"))?;
    root.present()
        .map_err(|e| anyhow!("write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(image: &str, variant: &str, mode: &str, temperature: &'static str, total: f64) -> Row {
        Row {
            workload: image.into(),
            ready_bytes: 0,
            demand_bytes: None,
            read_bytes: None,
            image: image.into(),
            variant: variant.into(),
            mode: mode.into(),
            profile: "wan".into(),
            run: 1,
            temperature,
            pull_s: total,
            create_s: 0.0,
            run_s: 0.0,
            total_s: total,
            registry_bytes: 0,
        }
    }

    #[test]
    fn a_chart_of_cold_starts_is_drawn() {
        let rows = [
            row("python3", "org", "overlayfs", "cold", 9.0),
            row("python3", "org", "skiff-containerd", "cold", 8.0),
            row("python3", "esgz", "overlayfs", "cold", 9.5),
            row("python3", "esgz", "skiff-containerd", "cold", 1.2),
            row("python3", "esgz", "skiff-containerd", "warm", 0.3),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = std::env::var_os("SKIFF_BENCH_CHART_TEST_OUT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| dir.path().join("chart.png"));
        draw(&path, &rows, "wan").unwrap();
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 2000);
    }
}
