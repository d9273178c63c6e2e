//! `skiff-bench concurrent` (issue "Concurrency"): N simultaneous cold starts of one image against one
//! cold start of it. Each run starts a fresh skiffd (empty chunk cache, page cache dropped) and times
//! one `skiff run` to its ready line, then does the same on another fresh skiffd with N `skiff run`
//! processes started together (distinct container ids), timed until the last is ready. It reports
//! total ÷ single, the registry bytes of each (counted on the shaped link), and what skiffd says its
//! lazy layers fetched (`skiff image info --json`: `bytes_fetched`, and `duplicate_fetches`, the
//! chunks fetched although already cached, whose goal is 0) in `concurrent.csv`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use skiff_tests::{cargo_bin, Skiffd};
use tokio::runtime::Handle;

use super::ready::run_until_ready;
use super::skiff::skiff;
use super::{drop_caches, fresh_skiffd, workloads, BedArgs, Workload, READY_TIMEOUT};
use crate::link::ShapedLink;

#[derive(Debug, Args)]
pub struct ConcurrentArgs {
    #[command(flatten)]
    pub bed: BedArgs,
    /// REPO:TAG in that registry; its repository names the workload. Default: the `busybox`
    /// workload's `esgz` variant.
    #[arg(long, value_name = "REPO:TAG")]
    pub image: Option<String>,
    /// Containers started at the same time.
    #[arg(short = 'n', long = "count", default_value_t = 8)]
    pub count: usize,
    /// Turn skiffd's background fetching off, so the registry bytes are what the containers read
    /// (with it on, as skiffd's default, they include what it fetched meanwhile).
    #[arg(long)]
    pub no_background_fetch: bool,
}

/// One cold start of `containers` containers: a row of concurrent.csv.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub image: String,
    pub profile: String,
    /// Whether skiffd fetched the rest of the layers in the background.
    pub background_fetch: bool,
    pub run: usize,
    pub containers: usize,
    /// From starting the `skiff run` processes until the last printed its ready line.
    pub total_s: f64,
    /// Until the first was ready.
    pub first_ready_s: f64,
    /// Bytes the registry sent (counted on the link) until every container was removed.
    pub registry_bytes: u64,
    /// Compressed bytes skiffd's lazy layers fetched, summed over the image's layers.
    pub bytes_fetched: u64,
    /// Chunks fetched although already in the chunk cache, summed over the image's layers (goal 0).
    pub duplicate_fetches: u64,
    /// `total_s` ÷ the same run's single start.
    pub ratio_to_single: f64,
}

/// The image reference (relative to the registry) and its workload.
fn pick(workloads: &[Workload], image: Option<&str>) -> Result<(String, Workload)> {
    let image = image.unwrap_or("busybox:esgz");
    let Some((repository, tag)) = image.split_once(':') else {
        bail!("--image {image:?} is not REPO:TAG");
    };
    if repository.is_empty() || tag.is_empty() || tag.contains(['/', ':', '@']) {
        bail!("--image {image:?} is not REPO:TAG");
    }
    let workload = workloads
        .iter()
        .find(|w| w.image == repository)
        .with_context(|| {
            format!("no workload for image {repository:?} in the workloads file (its command and ready line are needed)")
        })?;
    Ok((image.to_owned(), workload.clone()))
}

pub fn run(args: &ConcurrentArgs, runtime: &Handle) -> Result<()> {
    if args.count == 0 || args.bed.runs == 0 {
        bail!("--count and --runs must be at least 1");
    }
    skiff_tests::require(&["root", "/dev/fuse", "docker-registry", "runc"])?;
    let workloads = workloads::load(&args.bed.workloads)?;
    let (image, workload) = pick(&workloads, args.image.as_deref())?;
    // Before the link check, which takes a while.
    let (_registry, link) = super::serve_behind_link(&args.bed, runtime)?;
    let reference = format!("{}/{image}", link.addr());

    let mut rows = Vec::new();
    for run in 1..=args.bed.runs {
        super::check_interrupted()?;
        let background_fetch = !args.no_background_fetch;
        let single = cold_start(&link, &reference, &workload, 1, run, background_fetch)
            .with_context(|| format!("{reference} run {run}: one container"))?;
        let many = cold_start(
            &link,
            &reference,
            &workload,
            args.count,
            run,
            background_fetch,
        )
        .with_context(|| format!("{reference} run {run}: {} containers", args.count))?;
        for measured in [single, many] {
            let row = Row {
                image: image.clone(),
                profile: args.bed.profile.name.to_owned(),
                background_fetch: !args.no_background_fetch,
                run,
                containers: measured.containers,
                total_s: measured.total.as_secs_f64(),
                first_ready_s: measured.first_ready.as_secs_f64(),
                registry_bytes: measured.registry_bytes,
                bytes_fetched: measured.fetch.bytes_fetched,
                duplicate_fetches: measured.fetch.duplicate_fetches,
                ratio_to_single: measured.total.as_secs_f64() / single.total.as_secs_f64(),
            };
            eprintln!(
                "{image} run {run}, {} container(s): {:.2} s ({:.2}× single), {} registry bytes, {} fetched, {} duplicate fetches",
                row.containers, row.total_s, row.ratio_to_single, row.registry_bytes, row.bytes_fetched, row.duplicate_fetches
            );
            rows.push(row);
        }
    }
    let csv = args.bed.out.join("concurrent.csv");
    write_csv(&csv, &rows)?;
    print!("{}", summary(&rows, args.count));
    println!("wrote {}", csv.display());
    Ok(())
}

/// What one cold start of some containers measured.
#[derive(Clone, Copy, Debug)]
struct Measured {
    containers: usize,
    total: Duration,
    first_ready: Duration,
    registry_bytes: u64,
    fetch: ImageFetch,
}

/// A fresh skiffd, caches dropped, then `count` `skiff run --rm` of `reference` started together.
fn cold_start(
    link: &ShapedLink,
    reference: &str,
    workload: &Workload,
    count: usize,
    run: usize,
    background_fetch: bool,
) -> Result<Measured> {
    let (skiffd, _config) = fresh_skiffd(reference, background_fetch)?;
    drop_caches()?;
    let before = link.stats();
    let ids: Vec<String> = (1..=count)
        .map(|i| format!("conc-{}-{run}-{count}-{i}", std::process::id()))
        .collect();
    let (first_ready, total) = start_together(&skiffd, reference, workload, &ids)?;
    let registry_bytes = (link.stats() - before).downstream_bytes;
    let fetch = image_fetch(&skiffd, reference)?;
    Ok(Measured {
        containers: count,
        total,
        first_ready,
        registry_bytes,
        fetch,
    })
}

/// Starts one `skiff run --rm --plain-http REF ID CMD…` per id at the same moment and waits for every
/// ready line; then every container is killed and (by `--rm`) removed. Returns when the first and the
/// last were ready, from the start.
fn start_together(
    skiffd: &Skiffd,
    reference: &str,
    workload: &Workload,
    ids: &[String],
) -> Result<(Duration, Duration)> {
    let skiff_bin = cargo_bin("skiff")?;
    let barrier = Arc::new(Barrier::new(ids.len() + 1));
    let threads: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut command = Command::new(&skiff_bin);
            command
                .arg("--address")
                .arg(skiffd.socket())
                .args(["run", "--rm", "--plain-http", reference, id])
                .args(&workload.command);
            let (barrier, ready) = (Arc::clone(&barrier), workload.ready.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let outcome = run_until_ready(&mut command, &ready, READY_TIMEOUT);
                (outcome, Instant::now())
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(ids.len());
    for thread in threads {
        outcomes.push(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a start thread panicked"))?,
        );
    }
    // Whatever happened, every container goes: killed, then the attached `skiff run --rm` (which
    // removes task, container and snapshot once the process is gone) is waited for.
    let mut first_error = None;
    let mut ready_at = Vec::new();
    for (id, (outcome, at)) in ids.iter().zip(outcomes) {
        let _ = skiff(skiffd, &["task", "kill", "-s", "KILL", id]);
        match outcome {
            Ok(mut ready) => {
                let _ = ready.child.wait();
                ready_at.push(at.saturating_duration_since(started));
            }
            Err(err) => {
                first_error.get_or_insert(err.context(format!("container {id}")));
            }
        }
        // Left over only if `--rm` could not remove it.
        let _ = skiff(skiffd, &["task", "rm", "-f", id]);
        let _ = skiff(skiffd, &["container", "rm", id]);
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    let first = ready_at.iter().copied().min().unwrap_or_default();
    let last = ready_at.iter().copied().max().unwrap_or_default();
    Ok((first, last))
}

/// What skiffd's lazy layers of one image fetched, summed over its layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageFetch {
    pub bytes_fetched: u64,
    pub duplicate_fetches: u64,
    /// Part of `bytes_fetched` fetched ahead of readers (prefetch, background fetching).
    pub background_bytes: u64,
    /// Uncompressed bytes FUSE reads returned to the containers.
    pub bytes_read: u64,
    /// Layers mounted lazily.
    pub lazy_layers: usize,
}

/// `skiff image info --json REF`, summed over the lazy layers.
pub(super) fn image_fetch(skiffd: &Skiffd, reference: &str) -> Result<ImageFetch> {
    let output = Command::new(cargo_bin("skiff")?)
        .arg("--address")
        .arg(skiffd.socket())
        .args(["image", "info", "--json", reference])
        .output()
        .context("run skiff image info")?;
    if !output.status.success() {
        bail!(
            "skiff image info {reference} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    parse_image_fetch(&output.stdout)
}

/// Sums the `fetch` counters of `skiff image info --json` output.
pub fn parse_image_fetch(json: &[u8]) -> Result<ImageFetch> {
    let value: serde_json::Value =
        serde_json::from_slice(json).context("skiff image info --json is not JSON")?;
    let layers = value["layers"]
        .as_array()
        .context("skiff image info --json has no layers")?;
    let mut sum = ImageFetch::default();
    for fetch in layers.iter().map(|l| &l["fetch"]).filter(|f| !f.is_null()) {
        let counter = |name: &str| {
            fetch[name]
                .as_u64()
                .with_context(|| format!("a layer's fetch has no {name}"))
        };
        sum.bytes_fetched += counter("bytes_fetched")?;
        sum.duplicate_fetches += counter("duplicate_fetches")?;
        sum.background_bytes += counter("background_bytes")?;
        sum.bytes_read += counter("bytes_read")?;
        sum.lazy_layers += 1;
    }
    Ok(sum)
}

fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut writer =
        csv::Writer::from_path(path).with_context(|| format!("write {}", path.display()))?;
    for row in rows {
        writer.serialize(row)?;
    }
    writer.flush()?;
    Ok(())
}

/// Medians over the runs: single and N-container totals, their ratio, registry bytes, and the
/// duplicate fetches of every run.
pub fn summary(rows: &[Row], count: usize) -> String {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let of = |containers: usize| rows.iter().filter(move |r| r.containers == containers);
    let mut out = String::new();
    let single = median(of(1).map(|r| r.total_s).collect());
    let many = median(of(count).map(|r| r.total_s).collect());
    let ratio = median(of(count).map(|r| r.ratio_to_single).collect());
    let bytes = |containers: usize| {
        let mut b: Vec<u64> = of(containers).map(|r| r.registry_bytes).collect();
        b.sort();
        b.get(b.len() / 2).copied().unwrap_or(0)
    };
    let duplicates: Vec<String> = rows
        .iter()
        .map(|r| r.duplicate_fetches.to_string())
        .collect();
    let image = rows.first().map_or("-", |r| r.image.as_str());
    out.push_str(&format!(
        "{image}: 1 container {single:.2} s, {count} containers {many:.2} s: total ÷ single {ratio:.2} (median of {} runs)\n",
        of(1).count()
    ));
    let background = match rows.first() {
        Some(row) if !row.background_fetch => "off",
        _ => "on",
    };
    out.push_str(&format!(
        "registry bytes (median): 1 container {}, {count} containers {} (background fetching {background})\n",
        bytes(1),
        bytes(count)
    ));
    out.push_str(&format!(
        "duplicate chunk fetches per start: {} (goal 0)\n",
        duplicates.join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_defaults_to_busybox_esgz_and_needs_a_workload() {
        let workloads = workloads::parse(
            "[[workload]]\nimage = \"busybox\"\nvariants = [\"esgz\"]\ncommand = [\"true\"]\nready = \"r\"\n",
        )
        .unwrap();
        assert_eq!(pick(&workloads, None).unwrap().0, "busybox:esgz");
        assert_eq!(
            pick(&workloads, Some("busybox:org")).unwrap().0,
            "busybox:org"
        );
        let missing = format!("{:#}", pick(&workloads, Some("py:esgz")).unwrap_err());
        assert!(missing.contains("no workload"), "{missing}");
        for bad in ["busybox", "busybox:", ":esgz", "busybox:a/b"] {
            let err = format!("{:#}", pick(&workloads, Some(bad)).unwrap_err());
            assert!(err.contains("REPO:TAG"), "{bad}: {err}");
        }
    }

    #[test]
    fn image_info_json_is_summed_over_lazy_layers() {
        let json = br#"{"layers": [
            {"digest": "sha256:a", "fetch": null},
            {"digest": "sha256:b", "fetch": {"bytes_fetched": 10, "duplicate_fetches": 0,
                                             "background_bytes": 4, "bytes_read": 30}},
            {"digest": "sha256:c", "fetch": {"bytes_fetched": 5, "duplicate_fetches": 2,
                                             "background_bytes": 0, "bytes_read": 7}}
        ]}"#;
        assert_eq!(
            parse_image_fetch(json).unwrap(),
            ImageFetch {
                bytes_fetched: 15,
                duplicate_fetches: 2,
                background_bytes: 4,
                bytes_read: 37,
                lazy_layers: 2
            }
        );
        assert!(parse_image_fetch(b"{}").is_err());
        assert!(parse_image_fetch(br#"{"layers": [{"fetch": {}}]}"#).is_err());
    }

    #[test]
    fn the_summary_gives_median_ratio_bytes_and_duplicates() {
        let row = |run, containers, total_s: f64, ratio, bytes| Row {
            image: "busybox:esgz".into(),
            profile: "wan".into(),
            background_fetch: true,
            run,
            containers,
            total_s,
            first_ready_s: total_s,
            registry_bytes: bytes,
            bytes_fetched: bytes,
            duplicate_fetches: 0,
            ratio_to_single: ratio,
        };
        let rows = [
            row(1, 1, 1.0, 1.0, 100),
            row(1, 8, 2.0, 2.0, 150),
            row(2, 1, 2.0, 1.0, 120),
            row(2, 8, 3.0, 1.5, 160),
            row(3, 1, 1.5, 1.0, 110),
            row(3, 8, 3.6, 2.4, 170),
        ];
        let text = summary(&rows, 8);
        assert!(
            text.contains("1 container 1.50 s, 8 containers 3.00 s: total ÷ single 2.00"),
            "{text}"
        );
        assert!(text.contains("1 container 110, 8 containers 160"), "{text}");
        assert!(text.contains("0, 0, 0, 0, 0, 0 (goal 0)"), "{text}");
    }
}
