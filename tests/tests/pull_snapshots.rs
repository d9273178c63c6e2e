//! End to end: `skiff image pull` builds the image's snapshot chain in skiffd. A plain gzip image (every
//! tar entry type, whiteouts, an opaque dir) is downloaded and unpacked by skiff itself into committed
//! snapshots named `skiff.image/<chain id>`, and the overlay of the chain shows what the image holds; the
//! image converted to eStargz or zstd:chunked by `ctr-remote` is FUSE-mounted instead, its layer blobs never enter skiff's
//! content store and the registry serves a small fraction of their bytes. `skiff image rm` removes (and
//! unmounts) the snapshots. A fault while a lazy layer's TOC is read is tried again; a layer whose TOC
//! never checks out is downloaded, and the pull says which and why. The chain is read through
//! snapshots.v1 on skiffd's socket.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use sha2::{Digest as _, Sha256};
use skiff_api::containerd::snapshots::v1 as snapshots;
use skiff_api::containerd::snapshots::v1::snapshots_client::SnapshotsClient;
use skiff_api::v1;
use skiff_tests::{
    convert_image, convert_in_own_containerd, every_entry_type_layers, generated_bytes,
    lazy_mounts_under, mounts_under, require, sha256_digest, write_lazy_skiffd_config, BuiltImage,
    Containerd, Fault, FaultProxy, ImageSpec, LayerSpec, LazyFormat, Registry, RegistryAuth,
    Skiffd, SkiffdOptions,
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
];

const BIG_FILE: usize = 12 << 20;
const PREFIX: &str = "skiff.image/";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The committed snapshots on skiffd's snapshots.v1 service: key → parent.
fn list_snapshots(skiffd: &Skiffd) -> Result<Vec<snapshots::Info>> {
    runtime().block_on(async {
        let channel = skiff_api::connect(skiffd.socket()).await?;
        let mut client = SnapshotsClient::new(channel);
        let mut stream = client
            .list(snapshots::ListSnapshotsRequest {
                snapshotter: "skiff".into(),
                filters: Vec::new(),
            })
            .await?
            .into_inner();
        let mut infos = Vec::new();
        while let Some(message) = stream.message().await? {
            infos.extend(message.info);
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    })
}

/// Creates a read-only view of `parent` and returns its mounts.
fn view(
    skiffd: &Skiffd,
    key: &str,
    parent: &str,
) -> Result<Vec<skiff_api::containerd::types::Mount>> {
    runtime().block_on(async {
        let channel = skiff_api::connect(skiffd.socket()).await?;
        let mut client = SnapshotsClient::new(channel);
        Ok(client
            .view(snapshots::ViewSnapshotRequest {
                snapshotter: "skiff".into(),
                key: key.into(),
                parent: parent.into(),
                labels: Default::default(),
            })
            .await?
            .into_inner()
            .mounts)
    })
}

fn remove_snapshot(skiffd: &Skiffd, key: &str) -> Result<()> {
    runtime().block_on(async {
        let channel = skiff_api::connect(skiffd.socket()).await?;
        SnapshotsClient::new(channel)
            .remove(snapshots::RemoveSnapshotRequest {
                snapshotter: "skiff".into(),
                key: key.into(),
            })
            .await?;
        Ok(())
    })
}

fn image_detail(skiffd: &Skiffd, name: &str) -> Result<v1::ImageDetail> {
    runtime().block_on(async {
        let channel = skiff_api::connect(skiffd.socket()).await?;
        Ok(v1::images_client::ImagesClient::new(channel)
            .get(v1::GetImageRequest {
                namespace: "default".into(),
                name: name.into(),
            })
            .await?
            .into_inner())
    })
}

/// `chain(L0) = diffid(L0)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diffid(Ln))`, computed here
/// independently of skiffd.
fn chain_keys<S: AsRef<str>>(diff_ids: &[S]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let diff_id = diff_id.as_ref();
        let next = match chain.last() {
            None => diff_id.to_owned(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain.iter().map(|c| format!("{PREFIX}{c}")).collect()
}

fn built_chain_keys(image: &BuiltImage) -> Vec<String> {
    let diff_ids: Vec<&str> = image.layers.iter().map(|l| l.diff_id.as_str()).collect();
    chain_keys(&diff_ids)
}

/// The committed chain is exactly `keys`, each on the one before.
fn check_chain(skiffd: &Skiffd, keys: &[String]) -> Result<()> {
    let infos = list_snapshots(skiffd)?;
    let mut names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    let mut expected: Vec<&str> = keys.iter().map(String::as_str).collect();
    expected.sort();
    ensure!(
        names == expected,
        "snapshots {names:?}, expected {expected:?}"
    );
    for (i, key) in keys.iter().enumerate() {
        let info = infos
            .iter()
            .find(|info| &info.name == key)
            .context("snapshot")?;
        let parent = if i == 0 { "" } else { keys[i - 1].as_str() };
        ensure!(
            info.parent == parent,
            "{key}: parent {:?}, expected {parent:?}",
            info.parent
        );
        ensure!(
            info.kind == snapshots::Kind::Committed as i32,
            "{key} is not committed"
        );
    }
    Ok(())
}

/// Mounts a view's overlay read-only at `target`; unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn mount(mounts: &[skiff_api::containerd::types::Mount], target: &Path) -> Result<Self> {
        ensure!(mounts.len() == 1, "one mount expected: {mounts:?}");
        let m = &mounts[0];
        std::fs::create_dir_all(target)?;
        let (source, fs_type, flags, data) = match m.r#type.as_str() {
            "bind" => (m.source.as_str(), None, nix::mount::MsFlags::MS_BIND, None),
            _ => (
                m.source.as_str(),
                Some(m.r#type.as_str()),
                nix::mount::MsFlags::empty(),
                Some(m.options.join(",")),
            ),
        };
        nix::mount::mount(Some(source), target, fs_type, flags, data.as_deref())
            .with_context(|| format!("mount {m:?}"))?;
        Ok(Mounted(target.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// What `every_entry_type_layers` makes of the rootfs, checked at `root`.
fn check_every_entry_type(root: &Path, read_big: bool) -> Result<()> {
    let meta =
        |p: &str| std::fs::symlink_metadata(root.join(p)).with_context(|| format!("stat /{p}"));
    ensure!(std::fs::read_to_string(root.join("data/hello.txt"))? == "hello\n");
    if read_big {
        ensure!(
            file_sha256(&root.join("data/big.bin"))?
                == hex::encode(Sha256::digest(generated_bytes(42, BIG_FILE))),
            "data/big.bin differs"
        );
    }
    ensure!(meta("data/big.bin")?.len() == BIG_FILE as u64);
    ensure!(meta("data/empty")?.len() == 0);
    let private = meta("data/private")?;
    ensure!(private.is_dir() && private.mode() & 0o7777 == 0o700 && private.uid() == 1000);
    ensure!(std::fs::read_link(root.join("data/link"))? == Path::new("hello.txt"));
    ensure!(std::fs::read_to_string(root.join("data/hard"))? == "hello\n");
    ensure!(meta("data/fifo")?.file_type().is_fifo());
    let null = meta("data/null")?;
    ensure!(null.file_type().is_char_device() && null.rdev() == nix::sys::stat::makedev(1, 3));
    let loop0 = meta("data/loop0")?;
    ensure!(loop0.file_type().is_block_device() && loop0.rdev() == nix::sys::stat::makedev(7, 0));
    ensure!(meta("data/setuid")?.mode() & 0o7777 == 0o4755);
    ensure!(meta("data/setgid")?.mode() & 0o7777 == 0o2755);
    ensure!(meta("data/sticky")?.mode() & 0o7777 == 0o1777);
    ensure!(xattr::get(root.join("data/xattr"), "user.skiff")?.as_deref() == Some(&b"value"[..]));
    ensure!(
        !root.join("data/gone").exists(),
        "the whited-out file is visible"
    );
    ensure!(
        !root.join("data/opaque/old").exists(),
        "the opaque dir shows the lower file"
    );
    ensure!(std::fs::read_to_string(root.join("data/opaque/new"))? == "new");
    Ok(())
}

fn content_digests(skiffd: &Skiffd) -> Result<Vec<String>> {
    Ok(skiffd
        .skiff_ok(&["content", "ls", "-q"])?
        .lines()
        .map(str::to_owned)
        .collect())
}

struct Bed {
    registry: Registry,
    proxy: FaultProxy,
    _config_dir: tempfile::TempDir,
    skiffd: Skiffd,
    image: BuiltImage,
}

impl Bed {
    fn start() -> Result<Self> {
        require(TOOLS)?;
        let registry = Registry::start(RegistryAuth::Anonymous)?;
        let (lower, upper) = every_entry_type_layers(BIG_FILE);
        let layout = ImageSpec::new().layer(lower).layer(upper).build_layout()?;
        let image = layout.images()[0].clone();
        registry.push(&layout, "plain:1")?;
        let proxy = FaultProxy::in_front_of(&registry)?;
        let config_dir = tempfile::tempdir()?;
        let config = write_lazy_skiffd_config(config_dir.path(), &proxy.host())?;
        // A full stop: the bed checks that nothing is left mounted.
        let skiffd = Skiffd::start_with(SkiffdOptions {
            config: Some(config),
            extra_args: vec!["--unmount-on-exit".into()],
            ..SkiffdOptions::default()
        })?;
        Ok(Bed {
            registry,
            proxy,
            _config_dir: config_dir,
            skiffd,
            image,
        })
    }
}

impl Bed {
    /// Stops skiffd; `result` with skiffd's log, then a check that skiffd left nothing mounted.
    fn stop_checked(mut self, result: Result<()>) -> Result<()> {
        let log = self.skiffd.log();
        self.skiffd.stop();
        let left = mounts_under(self.skiffd.work_dir());
        result.with_context(|| format!("skiffd log:\n{log}"))?;
        ensure!(
            left.is_empty(),
            "mounts left after skiffd stopped: {left:?}"
        );
        Ok(())
    }
}

/// `plain:1` converted to `format` by `ctr-remote` (stargz-snapshotter's own converter) and pushed as
/// `lazy:1`.
struct Converted {
    manifest: serde_json::Value,
    /// Layer digests and sizes, bottom first.
    layers: Vec<(String, u64)>,
    /// The chain's snapshot keys: the converted layers are other tars (TOC, landmark), so the chain
    /// follows the new diff ids.
    keys: Vec<String>,
}

impl Bed {
    fn convert(&self, format: LazyFormat) -> Result<Converted> {
        {
            let converter = Containerd::start()?;
            convert_image(
                &converter,
                &self.registry.host(),
                "plain:1",
                "lazy:1",
                None,
                format,
            )?;
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&self.registry.raw_manifest("lazy:1")?)?;
        let layers = manifest["layers"]
            .as_array()
            .context("layers")?
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap_or_default().to_owned(),
                    l["size"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .context("config digest")?;
        let config: serde_json::Value = serde_json::from_slice(
            &self
                .registry
                .get(&format!("/v2/lazy/blobs/{config_digest}"), &[])?
                .body,
        )?;
        let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
            .as_array()
            .context("diff_ids")?
            .iter()
            .filter_map(|d| d.as_str())
            .collect();
        let keys = chain_keys(&diff_ids);
        Ok(Converted {
            manifest,
            layers,
            keys,
        })
    }
}

#[test]
fn plain_gzip_layers_are_unpacked_into_a_snapshot_chain() -> Result<()> {
    let bed = Bed::start()?;
    let skiffd = &bed.skiffd;
    let result = (|| -> Result<()> {
        let reference = format!("{}/plain:1", bed.proxy.host());
        skiffd.skiff_ok(&["image", "pull", &reference])?;
        let keys = built_chain_keys(&bed.image);
        check_chain(skiffd, &keys)?;
        let detail = image_detail(skiffd, &reference)?;
        ensure!(
            detail.snapshot == keys[1],
            "image detail snapshot {:?}",
            detail.snapshot
        );
        // A full pull: the layer blobs are in skiff's content store.
        let content = content_digests(skiffd)?;
        for layer in &bed.image.layers {
            ensure!(
                content.contains(&layer.digest),
                "layer {} not in the content store",
                layer.digest
            );
        }
        ensure!(
            lazy_mounts_under(skiffd.work_dir())?.is_empty(),
            "a plain layer was FUSE-mounted"
        );

        let mounts = view(skiffd, "check", &keys[1])?;
        ensure!(mounts[0].r#type == "overlay", "{mounts:?}");
        {
            let _mounted = Mounted::mount(&mounts, &skiffd.work_dir().join("rootfs"))?;
            check_every_entry_type(&skiffd.work_dir().join("rootfs"), true)?;
        }
        remove_snapshot(skiffd, "check")?;

        // A second pull finds every snapshot; nothing is unpacked again.
        skiffd.skiff_ok(&["image", "pull", &reference])?;
        check_chain(skiffd, &keys)?;

        skiffd.skiff_ok(&["image", "rm", &reference])?;
        let left = list_snapshots(skiffd)?;
        ensure!(left.is_empty(), "snapshots left after image rm: {left:?}");
        ensure!(
            content_digests(skiffd)?.is_empty(),
            "content left after image rm"
        );
        Ok(())
    })();
    result.with_context(|| format!("skiffd log:\n{}", skiffd.log()))
}

#[test]
fn estargz_layers_are_mounted_lazily_and_never_downloaded() -> Result<()> {
    lazy_layers_are_mounted_and_never_downloaded(LazyFormat::Estargz)
}

#[test]
fn zstd_chunked_layers_are_mounted_lazily_and_never_downloaded() -> Result<()> {
    lazy_layers_are_mounted_and_never_downloaded(LazyFormat::ZstdChunked)
}

/// The image converted to `format`, pulled by skiff.
fn lazy_layers_are_mounted_and_never_downloaded(format: LazyFormat) -> Result<()> {
    let bed = Bed::start()?;
    let Converted { layers, keys, .. } = bed.convert(format)?;
    let result = (|| -> Result<()> {
        let skiffd = &bed.skiffd;
        let reference = format!("{}/lazy:1", bed.proxy.host());
        let total: u64 = layers.iter().map(|(_, size)| size).sum();
        bed.proxy.reset_counts();
        let output = skiffd.skiff_ok(&["image", "pull", &reference])?;
        eprintln!("{output}");
        // One pull path: the manifest is resolved once, and each lazy mount gets the layer's
        // descriptor from that resolve (no second fetch of the manifest).
        let manifests = bed.proxy.requests_matching("/manifests/");
        ensure!(
            manifests == 1,
            "the pull fetched the manifest {manifests} times, not once"
        );
        check_chain(skiffd, &keys)?;
        let mounts = lazy_mounts_under(skiffd.work_dir())?;
        for (digest, _) in &layers {
            ensure!(
                mounts.iter().any(|m| &m.layer_digest == digest),
                "layer {digest} is not FUSE-mounted: {mounts:?}"
            );
        }
        let content = content_digests(skiffd)?;
        for (digest, _) in &layers {
            ensure!(
                !content.contains(digest),
                "lazy layer blob {digest} is in the content store"
            );
        }
        let pulled = bed.proxy.bytes_matching("/blobs/");
        eprintln!("lazy pull fetched {pulled} of {total} layer bytes");
        ensure!(
            pulled * 10 < total,
            "the lazy pull fetched {pulled} of {total} layer bytes"
        );

        let view_mounts = view(skiffd, "check", &keys[1])?;
        {
            let _mounted = Mounted::mount(&view_mounts, &skiffd.work_dir().join("rootfs"))?;
            check_every_entry_type(&skiffd.work_dir().join("rootfs"), false)?;
        }
        remove_snapshot(skiffd, "check")?;
        let read = bed.proxy.bytes_matching("/blobs/");
        eprintln!("after reading the small files: {read} of {total} layer bytes");
        ensure!(
            read * 10 < total,
            "reading small files fetched {read} of {total} layer bytes"
        );

        skiffd.skiff_ok(&["image", "rm", &reference])?;
        let left = list_snapshots(skiffd)?;
        ensure!(left.is_empty(), "snapshots left after image rm: {left:?}");
        let mounted = lazy_mounts_under(skiffd.work_dir())?;
        ensure!(
            mounted.is_empty(),
            "lazy mounts left after image rm: {mounted:?}"
        );
        Ok(())
    })();
    bed.stop_checked(result)
}

/// A fault while a lazy layer's TOC is read is tried again (the layer stays lazy); a layer whose TOC
/// never checks out (the manifest pins another TOC digest) is downloaded instead, and the pull says so.
#[test]
fn toc_faults_are_retried_and_a_lazy_layer_that_cannot_be_read_is_downloaded() -> Result<()> {
    let bed = Bed::start()?;
    let Converted {
        mut manifest,
        layers,
        keys,
    } = bed.convert(LazyFormat::Estargz)?;
    let layers: Vec<String> = layers.into_iter().map(|(digest, _)| digest).collect();
    ensure!(layers.len() == 2, "layers {layers:?}");
    let upper = layers[1].clone();
    // The same blobs under a manifest that pins a TOC digest the upper layer does not have.
    manifest["layers"][1]["annotations"]["containerd.io/snapshot/stargz/toc.digest"] =
        sha256_digest(b"not the TOC").into();
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_owned();
    bed.registry
        .put_manifest("lazy:badtoc", &media_type, &serde_json::to_vec(&manifest)?)?;

    let result = (|| -> Result<()> {
        let skiffd = &bed.skiffd;
        // One flipped byte in the first read of the upper layer (its footer): read again, still lazy.
        let reference = format!("{}/lazy:1", bed.proxy.host());
        bed.proxy.reset_counts();
        bed.proxy
            .inject_times(&format!("/blobs/{upper}"), Fault::flip_byte(), 1);
        let output = skiffd.skiff(&["image", "pull", &reference])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(output.status.success(), "pull failed: {stderr}");
        ensure!(
            !stderr.contains("not served lazily"),
            "a single fault made a layer fall back: {stderr}"
        );
        let faulted = bed
            .proxy
            .request_log()
            .iter()
            .filter(|r| r.fault.is_some())
            .count();
        ensure!(faulted == 1, "{faulted} requests were faulted, not 1");
        let mounts = lazy_mounts_under(skiffd.work_dir())?;
        for digest in &layers {
            ensure!(
                mounts.iter().any(|m| &m.layer_digest == digest),
                "layer {digest} is not FUSE-mounted after a transient fault: {mounts:?}"
            );
        }
        ensure!(
            !content_digests(skiffd)?.contains(&upper),
            "the upper layer was downloaded after a transient fault"
        );
        skiffd.skiff_ok(&["image", "rm", &reference])?;

        // A TOC that never matches what the manifest pins: the layer is downloaded and unpacked, the
        // pull succeeds and names the layer and the reason.
        let reference = format!("{}/lazy:badtoc", bed.proxy.host());
        let output = skiffd.skiff(&["image", "pull", &reference])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(output.status.success(), "pull failed: {stderr}");
        let short = &upper["sha256:".len()..][..12];
        ensure!(
            stderr.contains(&format!("{short}: not served lazily")) && stderr.contains("TOC"),
            "the pull does not say the upper layer fell back, and why: {stderr}"
        );
        let mounts = lazy_mounts_under(skiffd.work_dir())?;
        ensure!(
            mounts.iter().any(|m| m.layer_digest == layers[0]),
            "the lower layer is not FUSE-mounted: {mounts:?}"
        );
        ensure!(
            !mounts.iter().any(|m| m.layer_digest == upper),
            "the upper layer is FUSE-mounted with a TOC the manifest does not pin: {mounts:?}"
        );
        ensure!(
            content_digests(skiffd)?.contains(&upper),
            "the upper layer is not in the content store after the fallback"
        );
        check_chain(skiffd, &keys)?;
        let view_mounts = view(skiffd, "check", &keys[1])?;
        {
            let _mounted = Mounted::mount(&view_mounts, &skiffd.work_dir().join("rootfs"))?;
            check_every_entry_type(&skiffd.work_dir().join("rootfs"), true)?;
        }
        remove_snapshot(skiffd, "check")?;
        skiffd.skiff_ok(&["image", "rm", &reference])?;
        Ok(())
    })();
    bed.stop_checked(result)
}

#[test]
fn a_layer_that_cannot_be_unpacked_fails_the_pull_and_leaves_nothing() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    // Honest digests, but the second layer writes through a symlink that points nowhere.
    let image = ImageSpec::new()
        .layer(LayerSpec::new().file("/ok.txt", "fine"))
        .layer(
            LayerSpec::new()
                .symlink("/d", "/nowhere")
                .file("/d/x", "x")
                .without_implicit_parents(),
        );
    registry.push(&image.build_layout()?, "bad:1")?;
    let skiffd = Skiffd::start()?;
    let result = (|| -> Result<()> {
        let reference = registry.reference("bad:1");
        let output = skiffd.skiff(&["image", "pull", "--plain-http", &reference])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "the pull succeeded");
        ensure!(
            stderr.contains("/d/x") && stderr.contains("not a directory"),
            "the error names the entry and the problem: {stderr}"
        );
        let left = list_snapshots(&skiffd)?;
        ensure!(left.is_empty(), "snapshots left by a failed pull: {left:?}");
        ensure!(skiffd.skiff_ok(&["image", "ls", "-q"])?.trim().is_empty());
        ensure!(
            content_digests(&skiffd)?.is_empty(),
            "blobs left by a failed pull"
        );
        Ok(())
    })();
    result.with_context(|| format!("skiffd log:\n{}", skiffd.log()))
}

#[test]
fn plain_http_from_the_pull_reaches_the_lazy_layers() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let (lower, upper) = every_entry_type_layers(1 << 20);
    registry.push(
        &ImageSpec::new().layer(lower).layer(upper).build_layout()?,
        "plain:1",
    )?;
    convert_in_own_containerd(&registry.host(), "plain:1", "lazy:1", LazyFormat::Estargz)?;
    // No hosts.toml: only the pull's --plain-http says the registry speaks plain HTTP.
    let skiffd = Skiffd::start()?;
    let result = (|| -> Result<()> {
        let reference = registry.reference("lazy:1");
        skiffd.skiff_ok(&["image", "pull", "--plain-http", &reference])?;
        let mounts = lazy_mounts_under(skiffd.work_dir())?;
        ensure!(mounts.len() == 2, "both layers FUSE-mounted: {mounts:?}");
        let top = image_detail(&skiffd, &reference)?.snapshot;
        let view_mounts = view(&skiffd, "check", &top)?;
        {
            let _mounted = Mounted::mount(&view_mounts, &skiffd.work_dir().join("rootfs"))?;
            let hello = std::fs::read_to_string(skiffd.work_dir().join("rootfs/data/hello.txt"))?;
            ensure!(hello == "hello\n", "read through the lazy layer: {hello:?}");
        }
        remove_snapshot(&skiffd, "check")?;
        skiffd.skiff_ok(&["image", "rm", &reference])?;
        ensure!(lazy_mounts_under(skiffd.work_dir())?.is_empty());
        Ok(())
    })();
    result.with_context(|| format!("skiffd log:\n{}", skiffd.log()))
}
