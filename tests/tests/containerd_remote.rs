//! End to end: a real containerd 1.6 with skiffd as its `proxy_plugins` snapshotter `skiff`.
//!
//! Images are pulled **through containerd** by `skiff image rpull --containerd SOCK` (and, to keep both
//! clients covered, by stargz-snapshotter's `ctr-remote image rpull`): layers converted to eStargz or
//! zstd:chunked by `ctr-remote` become FUSE mounts in skiffd, their blobs never enter containerd's content
//! store, the registry serves only a fraction of their bytes, and `ctr run` starts containers on them. The
//! same image unconverted (plain gzip) falls back to an ordinary unpack by containerd through the same
//! snapshotter. Removing the images unmounts the layers; restarting skiffd while containerd keeps running
//! mounts them again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use skiff_tests::{
    convert_image, lazy_mounts_under, mounts_under, require, wait_until, write_lazy_skiffd_config,
    Containerd, ContainerdConfig, FaultProxy, ImageSpec, LayerSpec, LazyFormat, LazyMount,
    MultiPlatformSpec, Platform, ProxyPlugin, Registry, RegistryAuth, Skiffd, SkiffdOptions,
};

const TOOLS: &[&str] = &[
    "root",
    "/dev/fuse",
    "fusermount3",
    "docker-registry",
    "skopeo",
    "containerd",
    "ctr",
    "ctr-remote",
    "runc",
];

/// Bytes of incompressible data in the image that the command never reads.
const UNREAD_BYTES: usize = 24 << 20;

fn layer_digests(manifest: &serde_json::Value) -> Result<Vec<(String, u64)>> {
    manifest["layers"]
        .as_array()
        .context("manifest without layers")?
        .iter()
        .map(|layer| {
            Ok((
                layer["digest"].as_str().context("layer digest")?.to_owned(),
                layer["size"].as_u64().context("layer size")?,
            ))
        })
        .collect()
}

/// A registry with the test image as `plain:1` (gzip) and its lazy conversions, a fault proxy in front
/// of it counting bytes, skiffd reading through the proxy, and a containerd using skiffd as `skiff`.
/// Fields drop in order: containerd before skiffd before the registry.
struct Bed {
    containerd: Containerd,
    skiffd: Skiffd,
    proxy: FaultProxy,
    registry: Registry,
    _config_dir: tempfile::TempDir,
    unmount_on_exit: bool,
}

impl Bed {
    /// Pushes the image and converts it with `ctr-remote` (in a containerd of its own, whose content store
    /// gets every blob) to each `(format, repo:tag)`.
    /// skiffd runs with `--unmount-on-exit`: when the bed finishes, nothing may be left mounted.
    fn start(conversions: &[(LazyFormat, &str)]) -> Result<Bed> {
        Self::start_with(conversions, true)
    }

    /// `unmount_on_exit: false`: a SIGTERM leaves the lazy mounts to the keeper for the next skiffd.
    fn start_with(conversions: &[(LazyFormat, &str)], unmount_on_exit: bool) -> Result<Bed> {
        require(TOOLS)?;
        let registry = Registry::start(RegistryAuth::Anonymous)?;
        let image = ImageSpec::new()
            .busybox()
            .layer(LayerSpec::new().generated_file("/data/unread.bin", UNREAD_BYTES, 7))
            .cmd(&["/bin/sh"]);
        registry.push(&image.build_layout()?, "plain:1")?;
        {
            let converter = Containerd::start()?;
            for (format, tag) in conversions {
                convert_image(&converter, &registry.host(), "plain:1", tag, None, *format)?;
            }
        }
        let proxy = FaultProxy::in_front_of(&registry)?;
        let config_dir = tempfile::tempdir()?;
        let config = write_lazy_skiffd_config(config_dir.path(), &proxy.host())?;
        let skiffd = Skiffd::start_with(SkiffdOptions {
            config: Some(config),
            extra_args: if unmount_on_exit {
                vec!["--unmount-on-exit".into()]
            } else {
                Vec::new()
            },
            ..SkiffdOptions::default()
        })?;
        let containerd = Containerd::start_with(ContainerdConfig {
            proxy_plugins: vec![ProxyPlugin::snapshotter("skiff", skiffd.socket())],
            ..ContainerdConfig::default()
        })?;
        Ok(Bed {
            containerd,
            skiffd,
            proxy,
            registry,
            _config_dir: config_dir,
            unmount_on_exit,
        })
    }

    /// `REGISTRY-VIA-PROXY/repo:tag`.
    fn image(&self, tag: &str) -> String {
        format!("{}/{tag}", self.proxy.host())
    }

    /// The layers (digest, size) of `tag` as the registry serves them.
    fn layers(&self, tag: &str) -> Result<Vec<(String, u64)>> {
        let manifest: serde_json::Value =
            serde_json::from_slice(&self.registry.raw_manifest(tag)?)?;
        layer_digests(&manifest)
    }

    /// `skiff [-n NAMESPACE] image rpull --containerd SOCK --plain-http IMAGE`; returns its stdout.
    fn skiff_rpull(&self, namespace: &str, image: &str) -> Result<String> {
        let socket = self.containerd.socket().display().to_string();
        let output = self.skiffd.skiff_ok(&[
            "-n",
            namespace,
            "image",
            "rpull",
            "--containerd",
            &socket,
            "--plain-http",
            image,
        ])?;
        eprintln!("skiff -n {namespace} image rpull {image}:\n{output}");
        Ok(output)
    }

    fn lazy_mounts(&self) -> Result<Vec<LazyMount>> {
        lazy_mounts_under(self.skiffd.work_dir())
    }

    /// Fails unless every layer of `layers` is FUSE-mounted by skiffd (at a snapshot's `fs` dir) exactly
    /// `copies` times.
    fn ensure_mounted(&self, layers: &[(String, u64)], copies: usize) -> Result<()> {
        let mounts = self.lazy_mounts()?;
        for (digest, _) in layers {
            let n = mounts.iter().filter(|m| &m.layer_digest == digest).count();
            ensure!(
                n == copies,
                "layer {digest} is FUSE-mounted {n} times, not {copies}; mounts: {mounts:?}\nskiffd log:\n{}",
                self.skiffd.log()
            );
        }
        ensure!(
            mounts.iter().all(|m| m.mount_point.ends_with("fs")),
            "lazy layers are mounted at their snapshot's fs dir: {mounts:?}"
        );
        Ok(())
    }

    /// The digests in containerd's content store of `namespace` (`ctr content ls`).
    fn content_digests(&self, namespace: &str) -> Result<Vec<String>> {
        Ok(self
            .containerd
            .ctr_ok(&["-n", namespace, "content", "ls"])?
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect())
    }

    /// `ctr -n NAMESPACE run --rm` of `image` printing `message`, through the snapshotter `skiff`.
    fn run_echo(&self, namespace: &str, image: &str, id: &str, message: &str) -> Result<()> {
        self.run_expect(namespace, image, id, &["/bin/echo", message], message)
    }

    /// `ctr -n NAMESPACE run --rm --snapshotter skiff IMAGE ID COMMAND…`; fails unless it prints `expected`.
    fn run_expect(
        &self,
        namespace: &str,
        image: &str,
        id: &str,
        command: &[&str],
        expected: &str,
    ) -> Result<()> {
        let mut args = vec![
            "-n",
            namespace,
            "run",
            "--snapshotter",
            "skiff",
            "--rm",
            image,
            id,
        ];
        args.extend_from_slice(command);
        let output = self.containerd.ctr_ok(&args)?;
        ensure!(
            output.contains(expected),
            "ctr run {image} printed {output:?}, not {expected:?}"
        );
        Ok(())
    }

    fn snapshots(&self, namespace: &str) -> Result<Vec<String>> {
        Ok(self
            .containerd
            .ctr_ok(&["-n", namespace, "snapshots", "--snapshotter", "skiff", "ls"])?
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect())
    }

    /// Waits until containerd has removed every skiff snapshot of `namespaces`, then fails if a lazy mount
    /// is left.
    fn wait_for_no_snapshots(&self, namespaces: &[&str]) -> Result<()> {
        wait_until(
            "containerd to remove the skiff snapshots",
            Duration::from_secs(30),
            || {
                for namespace in namespaces {
                    if !self.snapshots(namespace)?.is_empty() {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        let left = self.lazy_mounts()?;
        ensure!(left.is_empty(), "lazy mounts left after removal: {left:?}");
        Ok(())
    }

    /// Stops containerd and skiffd, then fails if `result` did (with skiffd's log) or if a mount is left.
    fn finish(self, result: Result<()>) -> Result<()> {
        let Bed {
            containerd,
            mut skiffd,
            unmount_on_exit,
            ..
        } = self;
        drop(containerd);
        skiffd.stop();
        let log = skiffd.log();
        let mounts = mounts_under(skiffd.work_dir());
        result.with_context(|| format!("skiffd log:\n{log}"))?;
        ensure!(
            mounts.is_empty() || !unmount_on_exit,
            "mounts left after skiffd stopped: {mounts:?}"
        );
        Ok(())
    }
}

/// Fails unless `skiff image rpull` printed one line per layer with `outcome`.
fn ensure_outcomes(output: &str, layers: &[(String, u64)], outcome: &str) -> Result<()> {
    for (digest, _) in layers {
        ensure!(
            output
                .lines()
                .any(|line| line.contains(digest.as_str()) && line.ends_with(outcome)),
            "rpull did not report layer {digest} as {outcome:?}:\n{output}"
        );
    }
    Ok(())
}

/// Fails if a layer blob is in containerd's content store of `namespace`.
fn ensure_no_layer_blobs(bed: &Bed, namespace: &str, layers: &[(String, u64)]) -> Result<()> {
    let blobs = bed.content_digests(namespace)?;
    for (digest, _) in layers {
        ensure!(
            !blobs.contains(digest),
            "layer blob {digest} entered containerd's content store: {blobs:?}"
        );
    }
    Ok(())
}

/// Fails unless the registry served under 10 % of the layers' bytes since the last reset.
fn ensure_few_bytes(bed: &Bed, layers: &[(String, u64)], what: &str) -> Result<u64> {
    let total: u64 = layers.iter().map(|(_, size)| size).sum();
    let fetched = bed.proxy.bytes_matching("/blobs/");
    ensure!(
        fetched * 10 < total,
        "{what} fetched {fetched} of {total} layer bytes"
    );
    eprintln!("{what}: {fetched} of {total} layer bytes");
    Ok(fetched)
}

#[test]
fn skiff_rpull_pulls_estargz_lazily_through_containerd_and_falls_back_for_gzip() -> Result<()> {
    let bed = Bed::start(&[(LazyFormat::Estargz, "lazy:1")])?;
    let result = (|| -> Result<()> {
        // Lazy pull through containerd by skiff's own client.
        let lazy = bed.image("lazy:1");
        let layers = bed.layers("lazy:1")?;
        bed.proxy.reset_counts();
        let output = bed.skiff_rpull("default", &lazy)?;
        ensure_outcomes(&output, &layers, "lazy (remote)")?;
        bed.ensure_mounted(&layers, 1)?;
        ensure_no_layer_blobs(&bed, "default", &layers)?;
        let manifest_digest = bed.containerd.image_digest(&lazy)?;
        ensure!(
            bed.content_digests("default")?.contains(&manifest_digest),
            "the manifest {manifest_digest} is not in containerd's content store"
        );
        ensure_few_bytes(&bed, &layers, "skiff image rpull (eStargz)")?;
        // The config names the top snapshot for the garbage collector; the pull's lease is gone.
        let content = bed.containerd.ctr_ok(&["content", "ls"])?;
        ensure!(
            content
                .lines()
                .any(|line| line.contains("containerd.io/gc.ref.snapshot.skiff=sha256:")),
            "no config labelled with its snapshot:\n{content}"
        );
        let leases = bed.containerd.ctr_ok(&["leases", "ls", "-q"])?;
        ensure!(leases.trim().is_empty(), "leases left: {leases}");
        bed.run_echo("default", &lazy, "lazy-echo", "hello from a lazy layer")?;
        ensure_few_bytes(&bed, &layers, "rpull and run (eStargz)")?;

        // Fallback: the plain gzip image through the same command is unpacked by containerd.
        let plain = bed.image("plain:1");
        let plain_layers = bed.layers("plain:1")?;
        let output = bed.skiff_rpull("default", &plain)?;
        ensure_outcomes(&output, &plain_layers, "unpacked")?;
        let blobs = bed.content_digests("default")?;
        for (digest, _) in &plain_layers {
            ensure!(
                blobs.contains(digest),
                "the gzip layer {digest} is not in containerd's content store: {blobs:?}"
            );
        }
        bed.ensure_mounted(&layers, 1)?;
        ensure!(
            bed.lazy_mounts()?.len() == layers.len(),
            "a plain layer was mounted lazily"
        );
        bed.run_echo(
            "default",
            &plain,
            "plain-echo",
            "hello from an unpacked layer",
        )?;
        // A second rpull finds every layer in place.
        let again = bed.skiff_rpull("default", &lazy)?;
        ensure_outcomes(&again, &layers, "already present")?;

        // Another namespace: containerd finds skiffd's committed layers by their chain id labels and
        // shares them (no second mount).
        let output = bed.skiff_rpull("other", &lazy)?;
        ensure_outcomes(&output, &layers, "lazy (remote)")?;
        bed.ensure_mounted(&layers, 1)?;
        ensure_no_layer_blobs(&bed, "other", &layers)?;
        bed.run_echo("other", &lazy, "other-echo", "hello from another namespace")?;
        // And without any remote labels, as plain `ctr image pull` does (same chain ids: nothing to do).
        bed.containerd.ctr_ok(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            "skiff",
            &plain,
        ])?;

        // Removing the images removes their snapshots (synchronous GC), which unmounts the layers.
        bed.containerd
            .ctr_ok(&["images", "rm", "--sync", &lazy, &plain])?;
        bed.containerd
            .ctr_ok(&["-n", "other", "images", "rm", "--sync", &lazy])?;
        bed.wait_for_no_snapshots(&["default", "other"])?;

        // stargz-snapshotter's own client (its `remote/stargz.*` labels) mounts them afresh.
        bed.proxy.reset_counts();
        bed.containerd.ctr_remote_ok(&[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "skiff",
            &lazy,
        ])?;
        bed.ensure_mounted(&layers, 1)?;
        ensure_no_layer_blobs(&bed, "default", &layers)?;
        ensure_few_bytes(&bed, &layers, "ctr-remote image rpull (eStargz)")?;
        bed.run_echo("default", &lazy, "stargz-echo", "hello from ctr-remote")?;
        bed.containerd.ctr_ok(&["images", "rm", "--sync", &lazy])?;
        bed.wait_for_no_snapshots(&["default"])?;
        Ok(())
    })();
    bed.finish(result)
}

#[test]
fn skiff_rpull_pulls_zstd_chunked_and_index_images_through_containerd() -> Result<()> {
    let bed = Bed::start(&[(LazyFormat::ZstdChunked, "zstd:1")])?;
    let result = (|| -> Result<()> {
        let image = bed.image("zstd:1");
        let layers = bed.layers("zstd:1")?;
        bed.proxy.reset_counts();
        let output = bed.skiff_rpull("default", &image)?;
        ensure_outcomes(&output, &layers, "lazy (remote)")?;
        bed.ensure_mounted(&layers, 1)?;
        ensure_no_layer_blobs(&bed, "default", &layers)?;
        ensure_few_bytes(&bed, &layers, "skiff image rpull (zstd:chunked)")?;
        bed.run_echo("default", &image, "zstd-echo", "hello from zstd:chunked")?;
        ensure_few_bytes(&bed, &layers, "rpull and run (zstd:chunked)")?;

        // A multi-platform index: the host's manifest is chosen, the index kept alive with it.
        let host = Platform::host();
        let index = MultiPlatformSpec::new()
            .image(
                ImageSpec::new()
                    .platform(host.clone())
                    .busybox()
                    .layer(LayerSpec::new().file("/platform.txt", "host\n")),
            )
            .image(
                ImageSpec::new()
                    .platform(Platform::foreign())
                    .layer(LayerSpec::new().file("/platform.txt", "foreign\n")),
            )
            .build_layout()?;
        let index_digest = bed.registry.push(&index, "multi:1")?;
        let multi = bed.image("multi:1");
        let output = bed.skiff_rpull("default", &multi)?;
        ensure!(
            output.contains(&index_digest),
            "rpull did not resolve the index {index_digest}:\n{output}"
        );
        ensure!(
            bed.containerd.image_digest(&multi)? == index_digest,
            "the image record does not point at the index"
        );
        let content = bed.containerd.ctr_ok(&["content", "ls"])?;
        ensure!(
            content.lines().any(|line| line.starts_with(&index_digest)
                && line.contains("containerd.io/gc.ref.content.m.")),
            "the index is not in containerd's content store with its manifest label:\n{content}"
        );
        bed.run_expect(
            "default",
            &multi,
            "multi-cat",
            &["/bin/cat", "/platform.txt"],
            "host",
        )?;

        // Errors name what went wrong and leave no image behind.
        let missing = bed.image("zstd:missing");
        let socket = bed.containerd.socket().display().to_string();
        let failed = bed.skiffd.skiff(&[
            "image",
            "rpull",
            "--containerd",
            &socket,
            "--plain-http",
            &missing,
        ])?;
        let stderr = String::from_utf8_lossy(&failed.stderr);
        ensure!(
            !failed.status.success() && stderr.contains("not found") && stderr.contains(&missing),
            "rpull of a missing tag: {failed:?}"
        );
        ensure!(
            !bed.containerd
                .ctr_ok(&["images", "ls", "-q"])?
                .contains(&missing),
            "a failed rpull left an image record"
        );
        let nowhere = bed.skiffd.work_dir().join("no-containerd.sock");
        let failed = bed.skiffd.skiff(&[
            "image",
            "rpull",
            "--containerd",
            &nowhere.display().to_string(),
            "--plain-http",
            &image,
        ])?;
        let stderr = String::from_utf8_lossy(&failed.stderr);
        ensure!(
            !failed.status.success() && stderr.contains("cannot connect to containerd"),
            "rpull without containerd: {failed:?}"
        );
        Ok(())
    })();
    bed.finish(result)
}

#[test]
fn rpulled_lazy_layers_survive_a_skiffd_restart() -> Result<()> {
    let mut bed = Bed::start_with(&[(LazyFormat::Estargz, "lazy:1")], false)?;
    let result = (|| -> Result<()> {
        let image = bed.image("lazy:1");
        let layers = bed.layers("lazy:1")?;
        let output = bed.skiff_rpull("default", &image)?;
        ensure_outcomes(&output, &layers, "lazy (remote)")?;
        bed.ensure_mounted(&layers, 1)?;
        let before: Vec<PathBuf> = bed
            .lazy_mounts()?
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        // A container started by containerd reads and checks the 24 MiB file in a loop.
        let reports = tempfile::tempdir()?;
        let expected = skiff_tests::sha256_digest(&skiff_tests::generated_bytes(7, UNREAD_BYTES));
        let expected = expected.trim_start_matches("sha256:").to_owned();
        let mount = format!(
            "type=bind,src={},dst=/out,options=rbind:rw",
            reports.path().display()
        );
        bed.containerd.ctr_ok(&[
            "-n",
            "default",
            "run",
            "-d",
            "--snapshotter",
            "skiff",
            "--mount",
            &mount,
            &image,
            "reader",
            "sh",
            "-c",
            "while true; do if sha256sum /data/unread.bin > /out/cur; then cat /out/cur >> /out/log; \
             else echo FAIL >> /out/log; fi; sleep 0.2; done",
        ])?;
        let log = || std::fs::read_to_string(reports.path().join("log")).unwrap_or_default();
        wait_until(
            "the reader to check the file",
            Duration::from_secs(60),
            || Ok(log().lines().count() >= 2),
        )?;
        let task = |bed: &Bed| -> Result<String> {
            let tasks = bed.containerd.ctr_ok(&["-n", "default", "task", "ls"])?;
            Ok(tasks
                .lines()
                .find(|l| l.starts_with("reader "))
                .unwrap_or_default()
                .to_owned())
        };
        let running = task(&bed)?;
        ensure!(running.contains("RUNNING"), "ctr task ls: {running}");

        // SIGTERM leaves the mounts to the keeper and the restarted skiffd serves them again; containerd
        // keeps running and reconnects to the same socket. While skiffd is down the page cache is dropped,
        // so the reader's next reads go to the FUSE mount and wait for the new skiffd.
        bed.skiffd.restart_after_with(
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(2),
            || std::fs::write("/proc/sys/vm/drop_caches", "3").context("drop caches"),
        )?;
        let seen = log().lines().count();
        wait_until(
            "the reader to go on after the restart",
            Duration::from_secs(60),
            || Ok(log().lines().count() >= seen + 5),
        )?;
        let lines = log();
        ensure!(
            lines.lines().all(|l| l.starts_with(&expected)),
            "the reader saw failures or wrong bytes across the restart:\n{lines}"
        );
        ensure!(
            task(&bed)? == running,
            "the reader's task changed: {running} -> {}",
            task(&bed)?
        );
        bed.containerd
            .ctr_ok(&["-n", "default", "task", "kill", "-s", "SIGKILL", "reader"])?;
        wait_until("the reader to stop", Duration::from_secs(30), || {
            Ok(!task(&bed)?.contains("RUNNING"))
        })?;
        bed.containerd
            .ctr_ok(&["-n", "default", "task", "rm", "reader"])?;
        bed.containerd
            .ctr_ok(&["-n", "default", "container", "rm", "reader"])?;
        ensure!(
            bed.skiffd.log().contains("lazy layer taken over"),
            "the restarted skiffd did not take the mounts over"
        );
        bed.ensure_mounted(&layers, 1)?;
        let mut after: Vec<PathBuf> = bed
            .lazy_mounts()?
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        let mut before = before;
        before.sort();
        after.sort();
        ensure!(
            before == after,
            "the layers came back elsewhere: {before:?} -> {after:?}"
        );
        // containerd's gRPC channel to the proxy snapshotter reconnects with backoff after the refused
        // connections of the restart window; until then its calls fail as `unavailable`.
        wait_until(
            "containerd to reach the restarted skiffd",
            Duration::from_secs(60),
            || Ok(bed.snapshots("default").is_ok()),
        )?;
        bed.run_echo("default", &image, "restart-echo", "hello after a restart")?;
        // containerd still sees the unpacked image: a second rpull has nothing to do.
        let again = bed.skiff_rpull("default", &image)?;
        ensure_outcomes(&again, &layers, "already present")?;
        Ok(())
    })();
    bed.finish(result)
}
