//! `skiff-bench memory` (issue "the daemon may die", bounded memory): skiffd's resident memory once
//! lazily pulled images are whole in its chunk cache. One fresh skiffd (background fetching on, as by
//! default) pulls the images one after another, lazily; after each, the harness waits until every lazy
//! layer of it is wholly cached (`skiff image info --json`: `chunks_cached == chunks_total`), counts the
//! files the lazy mounts hold, and reads skiffd's `VmRSS` and `VmHWM` (the peak) from `/proc`. The bound
//! it compares with: `[cache] memory_bytes` + 64 MiB + 8 MiB per 10,000 mounted files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use skiff_tests::{cargo_bin, lazy_mounts_under, Skiffd};
use tokio::runtime::Handle;

use crate::coldstart::{fresh_skiffd, workloads, BedArgs};

#[derive(Debug, Args)]
pub struct MemoryArgs {
    #[command(flatten)]
    pub bed: BedArgs,
    /// REPO:TAG in that registry, pulled in this order (repeat the flag); default: every workload's
    /// `esgz` variant.
    #[arg(long = "image", value_name = "REPO:TAG")]
    pub images: Vec<String>,
    /// Longest to wait for background fetching to bring one image in whole.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

/// skiffd after one more image is whole in its cache: a row of memory.csv.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub run: usize,
    /// The image pulled last; the rows before it pulled the others.
    pub image: String,
    /// Lazy layers mounted (shared layers once), and the files, directories and links their trees hold,
    /// over every image so far.
    pub lazy_layers: usize,
    pub mounted_files: u64,
    /// Compressed bytes skiffd's lazy layers fetched, over every image so far (shared layers once).
    pub bytes_fetched: u64,
    pub memory_bytes: u64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// `memory_bytes` + 64 MiB + 8 MiB per 10,000 mounted files.
    pub bound_bytes: u64,
    /// `rss_bytes` ÷ `bound_bytes` (goal: ≤ 1).
    pub rss_to_bound: f64,
}

/// The bound on skiffd's resident memory with `files` mounted.
pub fn bound(memory_bytes: u64, files: u64) -> u64 {
    memory_bytes + (64 << 20) + (files * (8 << 20)).div_ceil(10_000)
}

pub fn run(args: &MemoryArgs, runtime: &Handle) -> Result<()> {
    if args.bed.runs == 0 {
        bail!("--runs must be at least 1");
    }
    skiff_tests::require(&["root", "/dev/fuse", "docker-registry"])?;
    let mut images: Vec<String> = if args.images.is_empty() {
        workloads::load(&args.bed.workloads)?
            .iter()
            .filter(|w| w.variants.iter().any(|v| v == "esgz"))
            .map(|w| w.reference("esgz"))
            .collect()
    } else {
        args.images.clone()
    };
    // Two workloads may share an image: each is pulled once.
    let mut seen = std::collections::HashSet::new();
    images.retain(|image| seen.insert(image.clone()));
    if images.is_empty() {
        bail!("no image to pull: give --image or a workloads file with esgz variants");
    }
    let (_registry, link) = crate::coldstart::serve_behind_link(&args.bed, runtime)?;
    let memory_bytes = skiff_fuse::cache::CacheConfig::default().memory_bytes;
    let mut rows = Vec::new();
    for run in 1..=args.bed.runs {
        crate::coldstart::check_interrupted()?;
        let first = format!("{}/{}", link.addr(), images[0]);
        let (skiffd, _config) = fresh_skiffd(&first, true)?;
        let pid = skiffd.pid().context("skiffd has no pid")?;
        // What each lazy layer (by digest: images share layers, and a shared layer is one mount) fetched.
        let mut fetched: BTreeMap<String, u64> = BTreeMap::new();
        for image in &images {
            let reference = format!("{}/{image}", link.addr());
            let layers = pull_whole(&skiffd, &reference, Duration::from_secs(args.timeout_secs))
                .with_context(|| format!("{reference} run {run}"))?;
            fetched.extend(layers.into_iter().map(|l| (l.digest, l.bytes_fetched)));
            let (lazy_layers, bytes_fetched) = (fetched.len(), fetched.values().sum());
            let mounted_files = mounted_files(skiffd.work_dir())?;
            let (rss_bytes, peak_rss_bytes) = rss(pid)?;
            let bound_bytes = bound(memory_bytes, mounted_files);
            let row = Row {
                run,
                image: image.clone(),
                lazy_layers,
                mounted_files,
                bytes_fetched,
                memory_bytes,
                rss_bytes,
                peak_rss_bytes,
                bound_bytes,
                rss_to_bound: rss_bytes as f64 / bound_bytes as f64,
            };
            eprintln!(
                "run {run}, after {image}: {} lazy layers, {} files, RSS {} MiB (peak {} MiB), bound {} MiB: {:.2}",
                row.lazy_layers,
                row.mounted_files,
                row.rss_bytes >> 20,
                row.peak_rss_bytes >> 20,
                row.bound_bytes >> 20,
                row.rss_to_bound
            );
            rows.push(row);
        }
    }
    std::fs::create_dir_all(&args.bed.out)?;
    let csv = args.bed.out.join("memory.csv");
    let mut writer =
        csv::Writer::from_path(&csv).with_context(|| format!("write {}", csv.display()))?;
    for row in &rows {
        writer.serialize(row)?;
    }
    writer.flush()?;
    print!("{}", table(&rows));
    println!("wrote {}", csv.display());
    Ok(())
}

/// `skiff image pull` (lazily), then waits until every lazy layer of it is wholly cached; returns what its
/// lazy layers fetched.
fn pull_whole(skiffd: &Skiffd, reference: &str, timeout: Duration) -> Result<Vec<LayerFetch>> {
    let pulled = skiff(skiffd, &["image", "pull", "--plain-http", reference])?;
    if !pulled.status.success() {
        bail!(
            "skiff image pull failed ({}): {}",
            pulled.status,
            String::from_utf8_lossy(&pulled.stderr).trim_end()
        );
    }
    let deadline = Instant::now() + timeout;
    loop {
        crate::coldstart::check_interrupted()?;
        let layers = lazy_layers(skiffd, reference)?;
        if layers.is_empty() {
            bail!("{reference} has no lazy layer: nothing to fetch in the background");
        }
        let (cached, total) = layers.iter().fold((0, 0), |(c, t), l| {
            (c + l.chunks_cached, t + l.chunks_total)
        });
        if cached >= total {
            return Ok(layers);
        }
        if Instant::now() >= deadline {
            bail!("background fetching brought {cached} of {total} chunks in {timeout:?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One lazy layer of `skiff image info --json`: its chunks, how many are cached, what it fetched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerFetch {
    pub digest: String,
    pub chunks_total: u64,
    pub chunks_cached: u64,
    pub bytes_fetched: u64,
}

fn lazy_layers(skiffd: &Skiffd, reference: &str) -> Result<Vec<LayerFetch>> {
    let output = skiff(skiffd, &["image", "info", "--json", reference])?;
    if !output.status.success() {
        bail!(
            "skiff image info {reference} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    parse_lazy_layers(&output.stdout)
}

/// The lazy layers of `skiff image info --json` output (those with a `fetch`).
pub fn parse_lazy_layers(json: &[u8]) -> Result<Vec<LayerFetch>> {
    let value: serde_json::Value =
        serde_json::from_slice(json).context("skiff image info --json is not JSON")?;
    let layers = value["layers"]
        .as_array()
        .context("skiff image info --json has no layers")?;
    layers
        .iter()
        .filter(|l| !l["fetch"].is_null())
        .map(|layer| {
            let counter = |name: &str| {
                layer["fetch"][name]
                    .as_u64()
                    .with_context(|| format!("a layer's fetch has no {name}"))
            };
            Ok(LayerFetch {
                digest: layer["digest"]
                    .as_str()
                    .context("a layer has no digest")?
                    .to_owned(),
                chunks_total: counter("chunks_total")?,
                chunks_cached: counter("chunks_cached")?,
                bytes_fetched: counter("bytes_fetched")?,
            })
        })
        .collect()
}

/// Entries in the trees of the lazy mounts under `dir` (metadata only: the FUSE layer answers from its
/// file tree, nothing is fetched).
fn mounted_files(dir: &Path) -> Result<u64> {
    let mut count = 0;
    for mount in lazy_mounts_under(dir)? {
        let mut stack = vec![mount.mount_point];
        while let Some(dir) = stack.pop() {
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))?
            {
                let entry = entry?;
                count += 1;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
    Ok(count)
}

/// `VmRSS` and `VmHWM` of `pid`, in bytes.
pub fn rss(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unreadable {line:?}"))?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn skiff(skiffd: &Skiffd, args: &[&str]) -> Result<std::process::Output> {
    Command::new(cargo_bin("skiff")?)
        .arg("--address")
        .arg(skiffd.socket())
        .args(args)
        .output()
        .context("run skiff")
}

/// One line per image (medians over the runs), RSS against the bound.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "after image | lazy layers | files | fetched MiB | RSS MiB | peak MiB | bound MiB | RSS ÷ bound\n",
    );
    let mut images: Vec<&str> = Vec::new();
    for row in rows {
        if !images.contains(&row.image.as_str()) {
            images.push(&row.image);
        }
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    for image in images {
        let of: Vec<&Row> = rows.iter().filter(|r| r.image == image).collect();
        let rss = median(of.iter().map(|r| r.rss_bytes).collect());
        let bound = median(of.iter().map(|r| r.bound_bytes).collect());
        out.push_str(&format!(
            "{image} | {} | {} | {} | {} | {} | {} | {:.2}\n",
            of[0].lazy_layers,
            median(of.iter().map(|r| r.mounted_files).collect()),
            median(of.iter().map(|r| r.bytes_fetched).collect()) >> 20,
            rss >> 20,
            median(of.iter().map(|r| r.peak_rss_bytes).collect()) >> 20,
            bound >> 20,
            rss as f64 / bound as f64
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_grows_with_mounted_files() {
        assert_eq!(bound(256 << 20, 0), 320 << 20);
        assert_eq!(bound(256 << 20, 10_000), 328 << 20);
        assert_eq!(bound(0, 5_000), (64 << 20) + (4 << 20));
    }

    #[test]
    fn the_lazy_layers_are_read_with_their_counters() {
        let json = br#"{"layers":[{"digest":"sha256:a","fetch":null},
            {"digest":"sha256:b","fetch":{"chunks_total":10,"chunks_cached":4,"bytes_fetched":100}},
            {"digest":"sha256:c","fetch":{"chunks_total":5,"chunks_cached":5,"bytes_fetched":50}}]}"#;
        let layer = |digest: &str, chunks_total, chunks_cached, bytes_fetched| LayerFetch {
            digest: digest.to_owned(),
            chunks_total,
            chunks_cached,
            bytes_fetched,
        };
        assert_eq!(
            parse_lazy_layers(json).unwrap(),
            vec![layer("sha256:b", 10, 4, 100), layer("sha256:c", 5, 5, 50)]
        );
        assert!(parse_lazy_layers(br#"{"layers":[{"digest":"sha256:b","fetch":{}}]}"#).is_err());
        assert!(parse_lazy_layers(
            br#"{"layers":[{"fetch":{"chunks_total":1,"chunks_cached":1,"bytes_fetched":1}}]}"#
        )
        .is_err());
    }

    #[test]
    fn own_rss_is_readable() {
        let (rss, peak) = rss(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}
