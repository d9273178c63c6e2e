//! `skiff-bench run`: every workload × variant × mode, cold and warm, N times, through a shaped link in
//! front of a docker-registry serving `--registry-dir`; a table on stdout, `results.csv` (and with
//! `--json`, `results.json`) and `chart.png` in `--out`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tokio::runtime::Handle;

use super::overlayfs::OverlayfsMode;
use super::skiff::SkiffMode;
use super::skiff_containerd::SkiffContainerdMode;
use super::stargz::StargzMode;
use super::{workloads, BedArgs, Mode, Temperature};

/// The modes `--modes` may name. `skiff-ondemand` is `skiff` with skiffd's background fetching off: its
/// registry bytes are what the workload's reads needed. `stargz` is a peer: stargz-snapshotter under
/// containerd, when its daemon is on this machine.
pub const MODES: [&str; 5] = [
    "overlayfs",
    "skiff",
    "skiff-containerd",
    "skiff-ondemand",
    "stargz",
];

/// The modes run without `--modes`: overlayfs, skiff and skiff-containerd, and the peers found on this
/// machine.
pub fn default_modes() -> Vec<String> {
    let mut modes: Vec<String> = MODES[..3].iter().map(|m| m.to_string()).collect();
    if let Ok(binary) = super::stargz::binary() {
        eprintln!("peer found: {} (mode stargz)", binary.display());
        modes.push("stargz".to_owned());
    }
    modes
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub bed: BedArgs,
    /// Comma-separated modes [default: overlayfs,skiff,skiff-containerd and, when its daemon is found,
    /// stargz].
    #[arg(long, value_delimiter = ',')]
    pub modes: Option<Vec<String>>,
    /// Also write results.json.
    #[arg(long)]
    pub json: bool,
}

/// One start: a row of results.csv.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub image: String,
    pub variant: String,
    pub mode: String,
    pub profile: String,
    pub run: usize,
    pub pull_s: f64,
    pub create_s: f64,
    pub run_s: f64,
    pub total_s: f64,
    /// Bytes the registry sent during the start (counted on the link).
    pub registry_bytes: u64,
    pub temperature: &'static str,
    /// The workload's name (its image unless the workloads file names it).
    pub workload: String,
    /// Bytes the registry sent from the start's beginning until the ready line (`registry_bytes` also
    /// counts what came while the container was stopped and removed).
    pub ready_bytes: u64,
    /// skiff mode, lazy layers: compressed bytes fetched for readers until the ready line (not
    /// prefetch or background fetching); empty for other modes and fully pulled images.
    pub demand_bytes: Option<u64>,
    /// skiff mode, lazy layers: bytes the workload read through FUSE until the ready line.
    pub read_bytes: Option<u64>,
}

fn make_mode(name: &str) -> Result<Box<dyn Mode>> {
    Ok(match name {
        "overlayfs" => Box::new(OverlayfsMode::new()),
        "skiff" => Box::new(SkiffMode::new(true)),
        "skiff-ondemand" => Box::new(SkiffMode::new(false)),
        "skiff-containerd" => Box::new(SkiffContainerdMode::new(true)),
        "stargz" => Box::new(StargzMode::new(super::stargz::binary()?, true)),
        other => bail!("unknown mode {other:?} (one of {})", MODES.join(", ")),
    })
}

pub fn run(args: &RunArgs, runtime: &Handle) -> Result<()> {
    skiff_tests::require(&[
        "root",
        "docker-registry",
        "containerd",
        "ctr",
        "runc",
        super::chart::FONT,
    ])?;
    let workloads = workloads::load(&args.bed.workloads)?;
    let names = args.modes.clone().unwrap_or_else(default_modes);
    let mut modes = names
        .iter()
        .map(|m| make_mode(m))
        .collect::<Result<Vec<_>>>()?;
    let (_registry, link) = super::serve_behind_link(&args.bed, runtime)?;
    let starts: usize =
        workloads.iter().map(|w| w.variants.len()).sum::<usize>() * modes.len() * args.bed.runs * 2;
    let progress = indicatif::ProgressBar::new(starts as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:30} {pos}/{len} starts  {msg}",
        )
        .expect("a valid progress template"),
    );
    let mut rows = Vec::new();
    'all: for workload in &workloads {
        for variant in &workload.variants {
            let reference = format!("{}/{}", link.addr(), workload.reference(variant));
            for mode in modes.iter_mut() {
                for run in 1..=args.bed.runs {
                    for temperature in [Temperature::Cold, Temperature::Warm] {
                        if super::interrupted() {
                            break 'all;
                        }
                        progress.set_message(format!(
                            "{}:{variant} {} run {run} {temperature:?}",
                            workload.name,
                            mode.name()
                        ));
                        let id = format!("bench-{}-{run}", std::process::id());
                        let before = link.stats();
                        let started = mode.start(&reference, workload, &id, temperature);
                        if started.is_err() && super::interrupted() {
                            break 'all;
                        }
                        let times = started.with_context(|| {
                            format!("{} {reference} run {run} ({temperature:?})", mode.name())
                        })?;
                        let bytes = (link.stats() - before).downstream_bytes;
                        let ready_bytes = times.ready_at.map_or(bytes, |at| {
                            link.downstream_bytes_at(at) - before.downstream_bytes
                        });
                        link.forget_before(std::time::Instant::now());
                        let row = Row {
                            workload: workload.name.clone(),
                            image: workload.image.clone(),
                            variant: variant.clone(),
                            mode: mode.name().to_owned(),
                            profile: args.bed.profile.name.to_owned(),
                            run,
                            temperature: match temperature {
                                Temperature::Cold => "cold",
                                Temperature::Warm => "warm",
                            },
                            pull_s: times.pull.as_secs_f64(),
                            create_s: times.create.as_secs_f64(),
                            run_s: times.run.as_secs_f64(),
                            total_s: times.total().as_secs_f64(),
                            registry_bytes: bytes,
                            ready_bytes,
                            demand_bytes: times.lazy.map(|l| l.demand_bytes),
                            read_bytes: times.lazy.map(|l| l.read_bytes),
                        };
                        progress.suspend(|| {
                            eprintln!(
                                "{}:{} {} run {run} {}: {:.2} s, {} bytes",
                                row.workload,
                                row.variant,
                                row.mode,
                                row.temperature,
                                row.total_s,
                                bytes
                            )
                        });
                        progress.inc(1);
                        rows.push(row);
                    }
                }
                mode.stop();
            }
        }
    }
    progress.finish_and_clear();
    drop(modes);
    write_csv(&args.bed.out.join("results.csv"), &rows)?;
    if !rows.is_empty() {
        super::chart::draw(
            &args.bed.out.join("chart.png"),
            &rows,
            args.bed.profile.name,
        )?;
    }
    if args.json {
        std::fs::write(
            args.bed.out.join("results.json"),
            serde_json::to_vec_pretty(&rows)?,
        )?;
    }
    print!("{}", table(&rows));
    print!("{}", lazy_reads(&rows));
    if super::interrupted() {
        bail!(
            "interrupted after {} of {starts} starts (their results are in {}); everything started \
             was stopped and removed",
            rows.len(),
            args.bed.out.display()
        );
    }
    Ok(())
}

fn write_csv(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    let mut writer =
        csv::Writer::from_path(path).with_context(|| format!("write {}", path.display()))?;
    for row in rows {
        writer.serialize(row)?;
    }
    writer.flush()?;
    Ok(())
}

/// Median, min and max of the total time per workload, variant, mode and temperature, with the median
/// registry bytes and the ratio to the overlayfs baseline's median of the same workload and temperature.
pub fn table(rows: &[Row]) -> String {
    use std::collections::BTreeMap;
    let mut groups: BTreeMap<(String, String, &str, String), Vec<&Row>> = BTreeMap::new();
    for row in rows {
        groups
            .entry((
                row.workload.clone(),
                row.variant.clone(),
                row.temperature,
                row.mode.clone(),
            ))
            .or_default()
            .push(row);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let baseline: BTreeMap<(String, &str), f64> = groups
        .iter()
        .filter(|((_, variant, _, mode), _)| mode == "overlayfs" && variant == "org")
        .map(|((image, _, temperature, _), rows)| {
            (
                (image.clone(), *temperature),
                median(rows.iter().map(|r| r.total_s).collect()),
            )
        })
        .collect();
    let mut out = format!(
        "{:<12} {:<8} {:<5} {:<17} {:>9} {:>17} {:>12} {:>12} {:>10}\n",
        "workload",
        "variant",
        "temp",
        "mode",
        "total s",
        "min..max",
        "bytes",
        "ready bytes",
        "÷ baseline"
    );
    for ((image, variant, temperature, mode), rows) in &groups {
        let totals: Vec<f64> = rows.iter().map(|r| r.total_s).collect();
        let min = totals.iter().copied().fold(f64::INFINITY, f64::min);
        let max = totals.iter().copied().fold(0.0, f64::max);
        let med = median(totals);
        let median_of = |bytes: fn(&Row) -> u64| {
            let mut b: Vec<u64> = rows.iter().map(|r| bytes(r)).collect();
            b.sort();
            b[b.len() / 2]
        };
        let bytes = median_of(|r| r.registry_bytes);
        let ready_bytes = median_of(|r| r.ready_bytes);
        let ratio = baseline
            .get(&(image.clone(), *temperature))
            .map(|base| format!("{:.2}", med / base))
            .unwrap_or_else(|| "-".to_owned());
        out.push_str(&format!(
            "{image:<12} {variant:<8} {temperature:<5} {mode:<17} {med:>9.2} {:>17} {bytes:>12} {ready_bytes:>12} {ratio:>10}\n",
            format!("{min:.2}..{max:.2}"),
        ));
    }
    out
}

/// Per lazily started workload variant in `skiff-ondemand` mode (cold): median registry bytes before the
/// ready line ÷ bytes the workload read through FUSE by then (issue 6's goal: ≤ 1.5). Only that mode
/// gives a clean ratio: with background fetching on, the registry bytes include it, and files cached
/// whole before they were opened are read through FUSE passthrough, which skiffd does not see.
pub fn lazy_reads(rows: &[Row]) -> String {
    use std::collections::BTreeMap;
    let mut groups: BTreeMap<(String, String, String), Vec<(u64, u64)>> = BTreeMap::new();
    for row in rows
        .iter()
        .filter(|r| r.temperature == "cold" && r.mode == "skiff-ondemand")
    {
        if let Some(read) = row.read_bytes {
            let fetched = row.ready_bytes;
            groups
                .entry((row.workload.clone(), row.variant.clone(), row.mode.clone()))
                .or_default()
                .push((fetched, read));
        }
    }
    if groups.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nlazy cold starts, registry bytes ÷ bytes read, before ready:\n{:<12} {:<8} {:<15} {:>14} {:>14} {:>8}\n",
        "workload", "variant", "mode", "fetched", "read", "ratio"
    );
    for ((workload, variant, mode), mut pairs) in groups {
        pairs.sort_by_key(|(fetched, _)| *fetched);
        let (fetched, read) = pairs[pairs.len() / 2];
        let ratio = if read == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}", fetched as f64 / read as f64)
        };
        out.push_str(&format!(
            "{workload:<12} {variant:<8} {mode:<15} {fetched:>14} {read:>14} {ratio:>8}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, variant: &str, temperature: &'static str, total: f64, bytes: u64) -> Row {
        Row {
            workload: "py".into(),
            image: "py".into(),
            variant: variant.into(),
            mode: mode.into(),
            profile: "wan".into(),
            run: 1,
            temperature,
            pull_s: total / 2.0,
            create_s: 0.0,
            run_s: total / 2.0,
            total_s: total,
            registry_bytes: bytes,
            ready_bytes: bytes,
            demand_bytes: None,
            read_bytes: None,
        }
    }

    #[test]
    fn lazy_reads_give_the_median_fetched_to_read_ratio_of_cold_skiff_starts() {
        let lazy = |fetched: u64, read: u64, temperature: &'static str| Row {
            ready_bytes: fetched,
            read_bytes: Some(read),
            ..row("skiff-ondemand", "esgz", temperature, 1.0, 0)
        };
        let rows = [
            lazy(100, 100, "cold"),
            lazy(300, 100, "cold"),
            lazy(120, 100, "cold"),
            lazy(9_000, 1, "warm"),
            row("overlayfs", "org", "cold", 10.0, 1000),
        ];
        let text = lazy_reads(&rows);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("esgz")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0].contains(" 120 ") && lines[0].ends_with("1.20"),
            "{text}"
        );
        assert_eq!(lazy_reads(&rows[4..]), "");
    }

    #[test]
    fn the_table_gives_medians_and_ratios_to_the_baseline() {
        let rows = [
            row("overlayfs", "org", "cold", 10.0, 1000),
            row("overlayfs", "org", "cold", 12.0, 1000),
            row("overlayfs", "org", "cold", 30.0, 1000),
            row("skiff-containerd", "esgz", "cold", 1.0, 100),
            row("skiff-containerd", "esgz", "cold", 3.0, 300),
            row("skiff-containerd", "esgz", "cold", 2.0, 200),
        ];
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let skiff = lines
            .iter()
            .find(|l| l.contains("skiff-containerd"))
            .unwrap();
        // Median 2.0 of 1, 2, 3; ratio to overlayfs's median 12.0.
        assert!(
            skiff.contains(" 2.00 ") && skiff.contains("1.00..3.00"),
            "{skiff}"
        );
        assert!(
            skiff.contains(" 200 ") && skiff.ends_with("0.17"),
            "{skiff}"
        );
        let base = lines.iter().find(|l| l.contains("overlayfs")).unwrap();
        assert!(
            base.ends_with("1.00") && base.contains("10.00..30.00"),
            "{base}"
        );
    }
}
