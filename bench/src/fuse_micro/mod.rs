//! `skiff-bench fuse`: micro-benchmarks of the lazy layer filesystem against overlayfs over local disk.
//!
//! Setup: one image layer holding a large generated file and many small files (1–16 KiB, half
//! incompressible, half text) is pushed to a throwaway docker-registry, converted to eStargz by
//! `ctr-remote`, and opened lazily through a counting proxy (bytes are counted at the registry side).
//! The native baseline is the ORIGINAL layer tar extracted to local disk and mounted as the lower
//! directory of a read-only overlayfs (above an empty second lower, which the kernel demands when there
//! is no upper directory).
//!
//! Measurements, each run paired with the baseline in the same run (medians over `--runs`):
//! 1. cold: a fresh cache and mount per run; bytes and requests the registry served to read one small
//!    file, against that file's compressed span in the blob (from the TOC: its chunk's offset up to the
//!    next chunk's offset, which also holds the tar header of the next entry — what a reader must fetch
//!    at least). Also the read latency against the same read on overlayfs, caches dropped for both.
//! 2. warm sequential read of the large file once it is wholly in skiff's cache (read once through the
//!    mount; one more open assembles the whole-file entry FUSE passthrough needs, outside the timing).
//! 3. warm random 4 KiB preads of the large file at fixed pseudo-random aligned offsets.
//! 4. `lstat` of every entry (with `readdir` of every directory), caches dropped before each walk, and
//!    again with warm dentry/inode caches (a first, untimed walk right before the timed one); and the
//!    `lstat` calls alone on the paths that walk found (warm), to separate `readdir` from `stat`.
//!
//! Before every timed read or cold walk, `sync; echo 3 > /proc/sys/vm/drop_caches` for both sides, so
//! neither is flattered by the page cache; the order skiff/native alternates between runs.

mod guard;
mod measure;
pub mod report;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use skiff_daemon::lazy_layers::RegistryBlob;
use skiff_fuse::adapter::MountedLayer;
use skiff_fuse::cache::{CacheConfig, ChunkStore};
use skiff_fuse::fetch::FetchConfig;
use skiff_fuse::format::{FileTree, Node, ROOT_INO};
use skiff_fuse::lazyfs::{LayerConfig, LazyLayer};
use skiff_registry::{Reference, RegistryClient, RegistryConfig};
use skiff_tests::{
    convert_estargz, generated_bytes, require, Containerd, FaultProxy, ImageSpec, LayerSpec,
    Registry, RegistryAuth,
};
use tokio::runtime::Handle;

use guard::{
    check_interrupted, drop_caches, install_interrupt_handler, OverlayMount, Progress, WorkDir,
};
use measure::{
    all_paths, random_reads, read_file, sequential_read, stat_paths, stat_walk, SplitMix64,
    RANDOM_READ_BYTES,
};
use report::{Goal, Metric};

/// Options of `skiff-bench fuse`.
#[derive(Debug, Clone, clap::Args)]
pub struct FuseArgs {
    /// Size of the large file read sequentially and randomly, in MiB.
    #[arg(long, default_value_t = 256)]
    pub file_mib: u64,
    /// Number of small files (1–16 KiB) in the layer.
    #[arg(long, default_value_t = 2000)]
    pub small_files: usize,
    /// Repetitions of every measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

const REQUIRED: &[&str] = &[
    "root",
    "/dev/fuse",
    "overlayfs",
    "docker-registry",
    "skopeo",
    "containerd",
    "ctr",
    "ctr-remote",
    "tar",
];

const BIG_FILE: &str = "big/large.bin";
const BIG_SEED: u64 = 0x5EED_0B16;
/// Directories the small files are spread over.
const SMALL_DIRS: usize = 8;
const RANDOM_READS: u64 = 20_000;
const RANDOM_SEED: u64 = 0x0005_EED4_0960;

fn small_file_path(index: usize) -> String {
    format!("small/d{}/f{index:05}.dat", index % SMALL_DIRS)
}

/// 1–16 KiB, varied; even files incompressible, odd files text (so compression matters for half).
fn small_file_contents(index: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(index as u64 ^ 0xA5A5_5A5A);
    let len = 1024 + (rng.next_u64() % (15 * 1024 + 1)) as usize;
    if index & 1 == 0 {
        return generated_bytes(rng.next_u64(), len);
    }
    let mut text = Vec::with_capacity(len + 80);
    let mut line = 0u64;
    while text.len() < len {
        text.extend_from_slice(
            format!(
                "file {index} line {line}: value={} the quick brown fox jumps over the lazy dog\n",
                rng.next_u64() % 100_000
            )
            .as_bytes(),
        );
        line += 1;
    }
    text.truncate(len);
    text
}

fn image_spec(args: &FuseArgs) -> ImageSpec {
    let mut layer =
        LayerSpec::new().generated_file(BIG_FILE, (args.file_mib << 20) as usize, BIG_SEED);
    for index in 0..args.small_files {
        layer = layer.file(&small_file_path(index), small_file_contents(index));
    }
    ImageSpec::new().layer(layer)
}

/// On-demand reads only: no prefetch, no background fetch, so the registry counts show what the reads
/// themselves cost (merging, readahead and parallelism stay at their defaults).
fn on_demand_only() -> LayerConfig {
    LayerConfig {
        fetch: FetchConfig {
            prefetch: false,
            background: None,
            ..FetchConfig::default()
        },
        ..LayerConfig::default()
    }
}

/// The inode at `path` (relative, '/'-separated) in a layer's tree.
fn node_at<'a>(tree: &'a FileTree, path: &str) -> Result<&'a Node> {
    let mut ino = ROOT_INO;
    for name in path.split('/') {
        ino = tree
            .lookup(ino, name.as_bytes())
            .with_context(|| format!("{path} is not in the layer's TOC"))?;
    }
    tree.node(ino)
        .with_context(|| format!("{path} has no inode"))
}

/// Bytes of the blob a file's chunks span, per the TOC.
fn compressed_span(tree: &FileTree, path: &str) -> Result<u64> {
    Ok(node_at(tree, path)?
        .chunks
        .iter()
        .map(|chunk| chunk.compressed.end - chunk.compressed.start)
        .sum())
}

fn extract_layer(blob: &Path, into: &Path) -> Result<()> {
    let output = std::process::Command::new("tar")
        .arg("--numeric-owner")
        .arg("-xzpf")
        .arg(blob)
        .arg("-C")
        .arg(into)
        .output()
        .context("run tar")?;
    if !output.status.success() {
        bail!(
            "tar -xzpf {} failed: {}",
            blob.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

/// Which side a timed step measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Skiff,
    Native,
}

/// Both sides, in an order that alternates between runs.
fn sides(run: usize) -> [Side; 2] {
    if run & 1 == 0 {
        [Side::Native, Side::Skiff]
    } else {
        [Side::Skiff, Side::Native]
    }
}

/// Runs `measure` on both roots in this run's order; returns (skiff, native).
fn paired<T>(
    run: usize,
    skiff_root: &Path,
    native_root: &Path,
    mut measure: impl FnMut(&Path) -> Result<T>,
) -> Result<(T, T)> {
    let mut skiff = None;
    let mut native = None;
    for side in sides(run) {
        check_interrupted()?;
        match side {
            Side::Skiff => skiff = Some(measure(skiff_root)?),
            Side::Native => native = Some(measure(native_root)?),
        }
    }
    Ok((
        skiff.expect("measured both sides"),
        native.expect("measured both sides"),
    ))
}

/// Runs the benchmark and prints its results.
pub fn run(args: &FuseArgs, runtime: &Handle) -> Result<()> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.small_files >= 1, "--small-files must be at least 1");
    ensure!(args.file_mib >= 1, "--file-mib must be at least 1");
    install_interrupt_handler(runtime);
    let progress = Progress::new();
    progress.step("checking prerequisites");
    require(REQUIRED)?;
    let work = WorkDir::create()?;
    let (metrics, context, notes) = bench(args, runtime, &work, &progress)?;
    progress.step("done; cleaning up");
    drop(work);
    let table = report::table(&metrics, &notes);
    if args.json {
        eprint!("{table}");
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&metrics, context))?
        );
    } else {
        print!("{table}");
    }
    Ok(())
}

/// The warm metrics, each against the same layer extracted on local disk under overlayfs.
#[rustfmt::skip]
const WARM_METRICS: [(&str, &str, &str, Goal); 5] = [
    ("warm_sequential_mb_s", "warm: sequential read, large file", "MB/s", Goal::AtLeast(0.95)),
    ("warm_random_4k_iops", "warm: random 4 KiB preads, large file", "IOPS", Goal::AtLeast(0.95)),
    ("stat_walk_dropped_caches_ms", "stat every entry, caches dropped", "ms", Goal::AtMost(1.3)),
    ("stat_walk_warm_dcache_ms", "stat every entry, warm dentry cache", "ms", Goal::AtMost(1.3)),
    ("stat_paths_warm_dcache_ms", "lstat every path (no readdir), warm", "ms", Goal::AtMost(1.3)),
];

type Results = (Vec<Metric>, serde_json::Value, Vec<String>);

fn bench(
    args: &FuseArgs,
    runtime: &Handle,
    work: &WorkDir,
    progress: &Progress,
) -> Result<Results> {
    // Guards are locals declared in mount order, so they unmount in reverse on any return; `work`
    // detaches anything left over when the caller drops it.
    progress.step(format!(
        "building the image: one {} MiB file and {} small files in {SMALL_DIRS} directories",
        args.file_mib, args.small_files
    ));
    let spec = image_spec(args);
    let layout = spec.build_layout()?;
    drop(spec);
    let original = layout.images()[0]
        .layers
        .first()
        .context("the built image has no layer")?
        .clone();
    check_interrupted()?;

    progress.step("starting docker-registry and pushing the image");
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    registry.push(&layout, "fuse-bench:src")?;
    check_interrupted()?;

    progress.step("converting to eStargz with ctr-remote (throwaway containerd)");
    {
        let containerd = Containerd::start()?;
        convert_estargz(
            &containerd,
            &registry.host(),
            "fuse-bench:src",
            "fuse-bench:esgz",
            None,
        )?;
    }
    check_interrupted()?;

    progress.step("native baseline: extracting the original layer tar, mounting overlayfs on it");
    let lower = work.subdir("native-lower")?;
    extract_layer(&layout.blob_path(&original.digest), &lower)?;
    drop(layout);
    let native = OverlayMount::mount(
        &lower,
        &work.subdir("native-empty")?,
        &work.subdir("native")?,
    )?;
    let native_root = native.path().to_path_buf();

    progress.step("resolving the eStargz image through a counting proxy");
    let proxy = FaultProxy::in_front_of(&registry)?;
    let docker_config = work.path().join("docker-config.json");
    std::fs::write(&docker_config, br#"{"auths": {}}"#)?;
    let client = RegistryClient::new(RegistryConfig {
        plain_http: true,
        docker_config: Some(docker_config),
        ..RegistryConfig::default()
    })?;
    let direct: Reference = format!("{}/fuse-bench:esgz", registry.host()).parse()?;
    let via_proxy: Reference = format!("{}/fuse-bench:esgz", proxy.host()).parse()?;
    let resolved = runtime.block_on(client.resolve(&direct))?;
    let layers = &resolved.layers;
    ensure!(
        layers.len() == 1,
        "expected one eStargz layer, got {}",
        layers.len()
    );
    let descriptor = layers[0].clone();
    let digest = descriptor.digest.to_string();
    let open_layer = |store: ChunkStore| -> Result<Arc<LazyLayer>> {
        let source = Arc::new(RegistryBlob::new(
            client.clone(),
            via_proxy.clone(),
            &descriptor,
        ));
        runtime
            .block_on(LazyLayer::open(
                source,
                &descriptor,
                store,
                &on_demand_only(),
            ))
            .with_context(|| format!("open layer {digest} lazily"))
    };

    // 1. Cold: one small file from a fresh mount with an empty cache.
    let cold_index = args.small_files / 2;
    let cold_file = small_file_path(cold_index);
    let cold_contents = small_file_contents(cold_index);
    let mut cold_bytes = Metric::new(
        "cold_bytes_per_compressed",
        "cold: registry bytes to read 1 file",
        "B",
        "compressed span",
        Goal::None,
    );
    let mut cold_requests = Metric::new(
        "cold_requests",
        "cold: registry requests to read 1 file",
        "requests",
        "",
        Goal::None,
    );
    let mut cold_latency = Metric::new(
        "cold_read_ms",
        "cold: read 1 file (caches dropped)",
        "ms",
        "overlayfs",
        Goal::None,
    );
    let mut open_cost = (0, 0);
    let mut cold_compressed = 0;
    for run in 0..args.runs {
        check_interrupted()?;
        progress.step(format!(
            "cold {}/{}: fresh cache, lazy open and mount, read {cold_file} ({} bytes)",
            run + 1,
            args.runs,
            cold_contents.len()
        ));
        let store = ChunkStore::open(
            &work.subdir(&format!("cache-cold-{run}"))?,
            CacheConfig::default(),
        )?;
        proxy.reset_counts();
        let lazy = open_layer(store)?;
        open_cost = (
            proxy.bytes_matching(&digest),
            proxy.requests_matching(&digest),
        );
        cold_compressed = compressed_span(lazy.tree(), &cold_file)?;
        let mounted = MountedLayer::mount(
            lazy,
            &work.subdir(&format!("skiff-cold-{run}"))?,
            runtime.clone(),
        )?;
        let skiff_root = mounted.mountpoint().to_path_buf();
        let mut fetched = (0, 0);
        let (skiff, native) = paired(run, &skiff_root, &native_root, |root| {
            drop_caches()?;
            let is_skiff = root == skiff_root;
            if is_skiff {
                proxy.reset_counts();
            }
            let elapsed = read_file(&root.join(&cold_file), &cold_contents)?;
            if is_skiff {
                fetched = (
                    proxy.bytes_matching(&digest),
                    proxy.requests_matching(&digest),
                );
            }
            Ok(elapsed)
        })?;
        cold_bytes.push(fetched.0 as f64, Some(cold_compressed as f64));
        cold_requests.push(fetched.1 as f64, None);
        cold_latency.push(millis(skiff), Some(millis(native)));
        mounted.unmount()?;
    }

    // 2–4. Warm: the large file wholly in skiff's cache.
    progress.step("warm mount: reading the large file once to fill skiff's cache");
    let store = ChunkStore::open(&work.subdir("cache-warm")?, CacheConfig::default())?;
    let lazy = open_layer(store.clone())?;
    let big_compressed = compressed_span(lazy.tree(), BIG_FILE)?;
    let mounted = MountedLayer::mount(Arc::clone(&lazy), &work.subdir("skiff")?, runtime.clone())?;
    let skiff_root = mounted.mountpoint().to_path_buf();
    let big_len = (args.file_mib << 20) as usize;
    proxy.reset_counts();
    read_file(
        &skiff_root.join(BIG_FILE),
        &generated_bytes(BIG_SEED, big_len),
    )?;
    let fill = (
        proxy.bytes_matching(&digest),
        proxy.requests_matching(&digest),
    );
    // Once every chunk is cached, the next open assembles the whole-file cache entry that passthrough
    // hands to the kernel; do that here, outside the timed runs.
    let before_prime = lazy.stats().snapshot().passthrough_opens;
    drop(std::fs::File::open(skiff_root.join(BIG_FILE))?);
    let passthrough = lazy.stats().snapshot().passthrough_opens > before_prime;
    if !passthrough {
        progress.step("WARNING: the wholly cached large file was not opened in passthrough mode");
    }
    let passthrough_before_timed = lazy.stats().snapshot().passthrough_opens;
    let fetched_before_timed = lazy.stats().snapshot().bytes_fetched;

    let [mut sequential, mut random, mut walk_cold, mut walk_warm, mut stat_only] = WARM_METRICS
        .map(|(key, label, unit, goal)| Metric::new(key, label, unit, "overlayfs", goal));
    let mut timed_opens = 0u64;
    let mut entries = 0u64;
    for run in 0..args.runs {
        progress.step(format!(
            "warm {}/{}: sequential read ({} MiB)",
            run + 1,
            args.runs,
            args.file_mib
        ));
        let (skiff, native) = paired(run, &skiff_root, &native_root, |root| {
            drop_caches()?;
            let (bytes, elapsed) = sequential_read(&root.join(BIG_FILE))?;
            ensure!(bytes == big_len as u64, "read {bytes} of {big_len} bytes");
            Ok(mb_per_s(bytes, elapsed))
        })?;
        sequential.push(skiff, Some(native));
        timed_opens += 1;

        progress.step(format!(
            "warm {}/{}: {RANDOM_READS} random 4 KiB preads",
            run + 1,
            args.runs
        ));
        let (skiff, native) = paired(run, &skiff_root, &native_root, |root| {
            drop_caches()?;
            let elapsed = random_reads(&root.join(BIG_FILE), RANDOM_READS, RANDOM_SEED)?;
            Ok(RANDOM_READS as f64 / elapsed.as_secs_f64())
        })?;
        random.push(skiff, Some(native));
        timed_opens += 1;

        progress.step(format!(
            "warm {}/{}: stat of every entry, caches dropped, then with warm dentries",
            run + 1,
            args.runs
        ));
        let ((skiff_entries, skiff), (native_entries, native)) =
            paired(run, &skiff_root, &native_root, |root| {
                drop_caches()?;
                stat_walk(root)
            })?;
        ensure!(
            skiff_entries == native_entries,
            "skiff shows {skiff_entries} entries, overlayfs {native_entries}"
        );
        entries = skiff_entries;
        walk_cold.push(millis(skiff), Some(millis(native)));
        let (skiff, native) = paired(run, &skiff_root, &native_root, |root| {
            stat_walk(root)?;
            Ok(stat_walk(root)?.1)
        })?;
        walk_warm.push(millis(skiff), Some(millis(native)));
        let (skiff, native) = paired(run, &skiff_root, &native_root, |root| {
            let paths = all_paths(root)?;
            stat_paths(&paths)
        })?;
        stat_only.push(millis(skiff), Some(millis(native)));
    }
    let stats = lazy.stats().snapshot();
    let passthrough_timed = stats.passthrough_opens - passthrough_before_timed;
    let fetched_during_timed = stats.bytes_fetched - fetched_before_timed;
    let cache = store.stats();

    progress.step("unmounting");
    drop(lazy);
    mounted.unmount()?;
    native.unmount()?;
    drop(proxy);
    drop(registry);

    let big_mib = args.file_mib;
    let notes = vec![
        String::new(),
        format!(
            "layer: original gzip {} B, eStargz {} B ({}), {entries} entries; large file {big_mib} MiB, \
             compressed span {big_compressed} B",
            original.size,
            descriptor.size,
            digest
        ),
        format!(
            "cold: lazy open fetched footer+TOC {} B in {} requests; file {cold_file} is {} B, its \
             compressed span in the blob (TOC: chunk offset to next chunk offset) {cold_compressed} B",
            open_cost.0,
            open_cost.1,
            cold_contents.len()
        ),
        format!(
            "warm fill: first read of the large file fetched {} B in {} requests (÷ compressed span {:.3})",
            fill.0,
            fill.1,
            fill.0 as f64 / big_compressed as f64
        ),
        format!(
            "passthrough: {} (timed opens of the large file: {timed_opens}, in passthrough: \
             {passthrough_timed}); bytes fetched during timed runs: {fetched_during_timed}",
            if passthrough { "used" } else { "NOT used" }
        ),
        format!(
            "method: median of {} runs; ratio = median of per-run skiff÷overlayfs; caches dropped (sync; \
             echo 3 > drop_caches) before every timed read and cold walk, both sides; order alternates; \
             overlayfs = ro, lowerdir=LAYER:EMPTY, LAYER = original layer tar extracted on local disk",
            args.runs
        ),
    ];
    let context = json!({
        "args": {
            "file_mib": args.file_mib,
            "small_files": args.small_files,
            "runs": args.runs,
            "random_reads": RANDOM_READS,
            "random_read_bytes": RANDOM_READ_BYTES,
        },
        "layer": {
            "original_digest": original.digest,
            "original_size": original.size,
            "estargz_digest": digest,
            "estargz_size": descriptor.size,
            "entries": entries,
            "large_file": BIG_FILE,
            "large_file_bytes": big_len,
            "large_file_compressed_span": big_compressed,
        },
        "cold": {
            "file": cold_file,
            "file_bytes": cold_contents.len(),
            "compressed_span": cold_compressed,
            "open_bytes": open_cost.0,
            "open_requests": open_cost.1,
        },
        "warm_fill": { "bytes": fill.0, "requests": fill.1 },
        "passthrough": {
            "used": passthrough,
            "timed_opens": timed_opens,
            "timed_passthrough_opens": passthrough_timed,
        },
        "fetched_during_timed_runs": fetched_during_timed,
        "layer_stats": format!("{stats:?}"),
        "cache": format!("{cache:?}"),
        "method": "caches dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed read and \
                   cold walk on both sides; warm walk = untimed walk then timed walk; order alternates",
    });
    Ok((
        vec![
            cold_bytes,
            cold_requests,
            cold_latency,
            sequential,
            random,
            walk_cold,
            walk_warm,
            stat_only,
        ],
        context,
        notes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_are_varied_and_in_range() {
        let sizes: Vec<usize> = (0..64).map(|i| small_file_contents(i).len()).collect();
        assert!(sizes.iter().all(|&s| (1024..=16 * 1024).contains(&s)));
        assert!(sizes.iter().any(|&s| s < 6 * 1024) && sizes.iter().any(|&s| s > 11 * 1024));
        assert_eq!(small_file_contents(7), small_file_contents(7));
    }

    #[test]
    fn sides_alternate() {
        assert_eq!(sides(0), [Side::Native, Side::Skiff]);
        assert_eq!(sides(1), [Side::Skiff, Side::Native]);
    }
}
