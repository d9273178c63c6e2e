//! End to end: an image converted to eStargz by `ctr-remote` (stargz-snapshotter's own converter), served
//! lazily by skiff's FUSE layer from the real docker-registry, compared with the tar extraction of the
//! same layer. Bytes are counted at the registry (a proxy in front of it).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};
use skiff_daemon::lazy_layers::RegistryBlob;
use skiff_fuse::adapter::MountedLayer;
use skiff_fuse::cache::{CacheConfig, ChunkStore};
use skiff_fuse::fetch::FetchConfig;
use skiff_fuse::lazyfs::{LayerConfig, LazyLayer};
use skiff_registry::{Descriptor, LayerDescriptor, Reference, RegistryClient, RegistryConfig};
use skiff_tests::{
    convert_image, every_entry_type_layers, require, Containerd, Fault, FaultProxy, ImageSpec,
    LayerSpec, LazyFormat, Registry, RegistryAuth,
};

const TOOLS: &[&str] = &[
    "root",
    "/dev/fuse",
    "docker-registry",
    "skopeo",
    "containerd",
    "ctr",
    "ctr-remote",
];

/// Every entry type in one layer with a multi-MiB file (several chunks), whiteouts in an upper layer.
fn every_entry_type() -> ImageSpec {
    let (lower, upper) = every_entry_type_layers(5 * 1024 * 1024 + 17);
    ImageSpec::new().layer(lower).layer(upper)
}

/// What one path looks like, from the tar stream or from the mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    link: Option<PathBuf>,
    device: Option<(u64, u64)>,
    xattrs: BTreeMap<String, Vec<u8>>,
    sha256: Option<String>,
}

const SKIPPED: &[&str] = &[
    "stargz.index.json",
    ".prefetch.landmark",
    ".no.prefetch.landmark",
];

/// Reads a layer blob (a gzip stream of members) as a tar and returns what overlayfs should see on a
/// lower layer: whiteouts as 0/0 character devices, opaque markers as an xattr on their directory,
/// hardlinks as (target, link) pairs.
/// `(target, link)` pairs of a layer's hardlinks.
type Hardlinks = Vec<(PathBuf, PathBuf)>;

fn expected_tree(
    blob: &[u8],
    media_type: &str,
) -> Result<(BTreeMap<PathBuf, Expected>, Hardlinks)> {
    let stream: Box<dyn Read + '_> = if media_type.contains("zstd") {
        Box::new(zstd::stream::read::Decoder::new(blob)?)
    } else {
        Box::new(flate2::read::MultiGzDecoder::new(blob))
    };
    let mut archive = tar::Archive::new(stream);
    let mut tree = BTreeMap::new();
    let mut hardlinks = Vec::new();
    let mut opaque = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = PathBuf::from(
            entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/'),
        );
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if path.as_os_str().is_empty() || SKIPPED.contains(&path.to_string_lossy().as_ref()) {
            continue;
        }
        let header = entry.header().clone();
        let mut xattrs = BTreeMap::new();
        if let Some(extensions) = entry.pax_extensions()? {
            for extension in extensions {
                let extension = extension?;
                if let Some(name) = extension.key()?.strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_string(), extension.value_bytes().to_vec());
                }
            }
        }
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        match name.as_deref() {
            Some(".wh..wh..opq") => {
                opaque.push(parent);
                continue;
            }
            Some(n) if n.starts_with(".wh.") => {
                let hidden = parent.join(&n[4..]);
                tree.insert(
                    hidden,
                    // As stargz-snapshotter presents them: no permission bits, owned by root.
                    Expected {
                        kind: 'c',
                        mode: 0,
                        uid: 0,
                        gid: 0,
                        mtime: header.mtime()? as i64,
                        size: 0,
                        link: None,
                        device: Some((0, 0)),
                        xattrs: BTreeMap::new(),
                        sha256: None,
                    },
                );
                continue;
            }
            _ => {}
        }
        let kind = header.entry_type();
        if kind.is_hard_link() {
            let target = header.link_name()?.context("hardlink without target")?;
            let target = PathBuf::from(target.to_string_lossy().trim_start_matches("./"));
            hardlinks.push((target, path));
            continue;
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        let (kind, device) = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => ('f', None),
            tar::EntryType::Directory => ('d', None),
            tar::EntryType::Symlink => ('l', None),
            tar::EntryType::Fifo => ('p', None),
            tar::EntryType::Char | tar::EntryType::Block => {
                let device = (
                    header.device_major()?.unwrap_or(0) as u64,
                    header.device_minor()?.unwrap_or(0) as u64,
                );
                let kind = if kind == tar::EntryType::Char {
                    'c'
                } else {
                    'b'
                };
                (kind, Some(device))
            }
            other => bail!("unexpected tar entry type {other:?} for {}", path.display()),
        };
        tree.insert(
            path,
            Expected {
                kind,
                mode: header.mode()? & 0o7777,
                uid: header.uid()?,
                gid: header.gid()?,
                mtime: header.mtime()? as i64,
                size: if kind == 'f' { content.len() as u64 } else { 0 },
                link: header
                    .link_name()?
                    .filter(|_| kind == 'l')
                    .map(|l| l.into_owned()),
                device,
                xattrs,
                sha256: (kind == 'f').then(|| hex::encode(Sha256::digest(&content))),
            },
        );
    }
    for dir in opaque {
        let entry = tree
            .get_mut(&dir)
            .with_context(|| format!("opaque marker in missing dir {}", dir.display()))?;
        entry
            .xattrs
            .insert("trusted.overlay.opaque".to_string(), b"y".to_vec());
    }
    Ok((tree, hardlinks))
}

/// The same description, read from the mounted filesystem (blocking; call from spawn_blocking).
fn mounted_tree(root: &Path) -> Result<BTreeMap<PathBuf, (Expected, u64)>> {
    let mut tree = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in std::fs::read_dir(root.join(&relative))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            let full = root.join(&path);
            let meta = std::fs::symlink_metadata(&full)?;
            let file_type = meta.file_type();
            let kind = if file_type.is_dir() {
                pending.push(path.clone());
                'd'
            } else if file_type.is_file() {
                'f'
            } else if file_type.is_symlink() {
                'l'
            } else if file_type.is_fifo() {
                'p'
            } else if file_type.is_char_device() {
                'c'
            } else if file_type.is_block_device() {
                'b'
            } else {
                bail!("unexpected file type at {}", path.display());
            };
            let mut xattrs = BTreeMap::new();
            for name in
                xattr::list(&full).with_context(|| format!("listxattr {}", path.display()))?
            {
                let value = xattr::get(&full, &name)
                    .with_context(|| format!("getxattr {} {name:?}", path.display()))?
                    .unwrap_or_default();
                xattrs.insert(name.to_string_lossy().into_owned(), value);
            }
            let sha256 = if kind == 'f' {
                let content =
                    std::fs::read(&full).with_context(|| format!("read {}", path.display()))?;
                Some(hex::encode(Sha256::digest(content)))
            } else {
                None
            };
            let rdev = meta.rdev();
            let description = Expected {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid() as u64,
                gid: meta.gid() as u64,
                mtime: meta.mtime(),
                size: if kind == 'f' { meta.len() } else { 0 },
                link: (kind == 'l')
                    .then(|| std::fs::read_link(&full))
                    .transpose()?,
                device: matches!(kind, 'c' | 'b')
                    .then(|| (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))),
                xattrs,
                sha256,
            };
            tree.insert(path, (description, meta.ino()));
        }
    }
    Ok(tree)
}

fn client() -> Result<RegistryClient> {
    Ok(RegistryClient::new(RegistryConfig {
        plain_http: true,
        docker_config: Some(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../registry/tests/fixtures/empty-docker-config.json"
            )
            .into(),
        ),
        ..RegistryConfig::default()
    })?)
}

async fn whole_blob(
    client: &RegistryClient,
    reference: &Reference,
    layer: &Descriptor,
) -> Result<Vec<u8>> {
    let digest = LayerDescriptor::try_from(layer)?.digest;
    let range = client
        .read_range(reference, &digest, 0..layer.size())
        .await?;
    Ok(range.to_vec())
}

/// Runs blocking filesystem work off the runtime that serves the FUSE reads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await?
}

/// A converted image in a registry, with a counting proxy in front.
struct Fixture {
    _containerd: Containerd,
    registry: Registry,
    proxy: FaultProxy,
    client: RegistryClient,
    via_proxy: Reference,
    direct: Reference,
    layers: Vec<Descriptor>,
}

impl Fixture {
    /// `layer` of the converted image, read straight from the registry.
    fn source(&self, layer: &Descriptor) -> Result<Arc<RegistryBlob>> {
        Ok(Arc::new(RegistryBlob::new(
            self.client.clone(),
            self.direct.clone(),
            &LayerDescriptor::try_from(layer)?,
        )))
    }
}

async fn converted_image(format: LazyFormat) -> Result<Fixture> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let layout = every_entry_type().build_layout()?;
    registry.push(&layout, "src:1")?;
    let containerd = Containerd::start()?;
    convert_image(
        &containerd,
        &registry.host(),
        "src:1",
        "lazy:1",
        None,
        format,
    )?;
    let proxy = FaultProxy::in_front_of(&registry)?;
    let client = client()?;
    let via_proxy: Reference = format!("{}/lazy:1", proxy.host()).parse()?;
    let direct: Reference = format!("{}/lazy:1", registry.host()).parse()?;
    let resolved = client.resolve(&direct).await?;
    let layers = resolved.image_manifest.layers().to_vec();
    ensure!(layers.len() == 2, "expected 2 layers, got {}", layers.len());
    Ok(Fixture {
        _containerd: containerd,
        registry,
        proxy,
        client,
        via_proxy,
        direct,
        layers,
    })
}

fn no_background() -> LayerConfig {
    LayerConfig {
        fetch: FetchConfig {
            prefetch: false,
            background: None,
            max_gap_bytes: 0,
            max_readahead_bytes: 0,
            ..FetchConfig::default()
        },
        ..LayerConfig::default()
    }
}

/// Opens `layer` of `reference` lazily (no background fetching) with `store`.
async fn open_layer(
    client: &RegistryClient,
    reference: &Reference,
    layer: &Descriptor,
    store: &ChunkStore,
) -> Result<Arc<LazyLayer>> {
    let descriptor = LayerDescriptor::try_from(layer)?;
    let source = Arc::new(RegistryBlob::new(
        client.clone(),
        reference.clone(),
        &descriptor,
    ));
    LazyLayer::open(source, &descriptor, store.clone(), &no_background())
        .await
        .with_context(|| format!("open layer {}", layer.digest()))
}

/// Mounts `lazy` at a new temporary directory.
fn mount(lazy: &Arc<LazyLayer>) -> Result<(tempfile::TempDir, MountedLayer)> {
    let mountpoint = tempfile::tempdir()?;
    let mounted = MountedLayer::mount(
        lazy.clone(),
        mountpoint.path(),
        tokio::runtime::Handle::current(),
    )?;
    Ok((mountpoint, mounted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estargz_from_ctr_remote_matches_tar_extraction_and_reads_lazily() -> Result<()> {
    mount_matches_tar_extraction(LazyFormat::Estargz).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_chunked_from_ctr_remote_matches_tar_extraction_and_reads_lazily() -> Result<()> {
    mount_matches_tar_extraction(LazyFormat::ZstdChunked).await
}

async fn mount_matches_tar_extraction(format: LazyFormat) -> Result<()> {
    let fixture = converted_image(format).await?;
    let cache = tempfile::tempdir()?;
    let store = ChunkStore::open(cache.path(), CacheConfig::default())?;

    for layer in &fixture.layers {
        let (expected, hardlinks) = expected_tree(
            &whole_blob(&fixture.client, &fixture.direct, layer).await?,
            layer.media_type().as_ref(),
        )?;
        let digest = layer.digest().to_string();
        fixture.proxy.reset_counts();

        let lazy = open_layer(&fixture.client, &fixture.via_proxy, layer, &store).await?;
        let served_as = match format {
            LazyFormat::Estargz => skiff_fuse::lazyfs::LayerFormat::Estargz,
            LazyFormat::ZstdChunked => skiff_fuse::lazyfs::LayerFormat::ZstdChunked,
        };
        ensure!(
            lazy.format() == served_as,
            "layer read as {:?}",
            lazy.format()
        );
        let toc_bytes = fixture.proxy.bytes_matching(&digest);
        ensure!(
            fixture.proxy.requests_matching(&digest) <= 3,
            "opening took {} requests",
            fixture.proxy.requests_matching(&digest)
        );

        let (mountpoint, mounted) = mount(&lazy)?;
        let root = mountpoint.path().to_path_buf();

        // Metadata first: it never touches the network.
        let listing = blocking({
            let root = root.clone();
            move || {
                let mut paths = Vec::new();
                for entry in walk(&root)? {
                    let meta = std::fs::symlink_metadata(&entry)?;
                    paths.push((entry, meta.len()));
                }
                Ok(paths)
            }
        })
        .await?;
        ensure!(!listing.is_empty(), "empty mount");
        ensure!(
            fixture.proxy.bytes_matching(&digest) == toc_bytes,
            "metadata operations fetched file bytes"
        );

        // One small file costs about its own chunk, not the layer.
        if expected.contains_key(Path::new("data/hello.txt")) {
            let before = fixture.proxy.bytes_matching(&digest);
            let hello = blocking({
                let root = root.clone();
                move || Ok(std::fs::read(root.join("data/hello.txt"))?)
            })
            .await?;
            ensure!(hello == b"hello\n");
            let fetched = fixture.proxy.bytes_matching(&digest) - before;
            ensure!(
                fetched > 0 && fetched < 4096,
                "reading a 6-byte file fetched {fetched} bytes of a {}-byte layer",
                layer.size()
            );
            println!(
                "layer {digest}: {} bytes, footer+TOC {toc_bytes} bytes, one small file {fetched} bytes",
                layer.size()
            );
        }

        // Everything, compared with the tar extraction.
        let mounted_tree = blocking({
            let root = root.clone();
            move || mounted_tree(&root)
        })
        .await?;
        let visible: BTreeMap<PathBuf, Expected> = mounted_tree
            .iter()
            .map(|(path, (description, _))| (path.clone(), description.clone()))
            .collect();
        let mut expected_all = expected.clone();
        for (target, link) in &hardlinks {
            let target_description = expected_all
                .get(target)
                .with_context(|| format!("hardlink target {} missing", target.display()))?
                .clone();
            expected_all.insert(link.clone(), target_description);
        }
        for (path, want) in &expected_all {
            let got = visible
                .get(path)
                .with_context(|| format!("{} missing from the mount", path.display()))?;
            ensure!(
                got == want,
                "{}: mounted {got:?}, tar {want:?}",
                path.display()
            );
        }
        for path in visible.keys() {
            ensure!(
                expected_all.contains_key(path),
                "{} is in the mount but not in the layer",
                path.display()
            );
        }
        for (target, link) in &hardlinks {
            ensure!(
                mounted_tree[target].1 == mounted_tree[link].1,
                "hardlink {} does not share the inode of {}",
                link.display(),
                target.display()
            );
        }
        // Every file is now whole in the cache: opening one again hands it to the kernel (passthrough).
        if expected.contains_key(Path::new("data/hello.txt")) {
            let before = lazy.stats().snapshot().passthrough_opens;
            let again = blocking({
                let root = root.clone();
                move || Ok(std::fs::read(root.join("data/big.bin"))?)
            })
            .await?;
            ensure!(again == skiff_tests::generated_bytes(42, 5 * 1024 * 1024 + 17));
            ensure!(
                lazy.stats().snapshot().passthrough_opens > before,
                "a wholly cached file was not opened in passthrough mode"
            );
        }
        let stats = lazy.stats().snapshot();
        println!("layer {digest}: {stats:?}");
        mounted.unmount()?;
        ensure!(
            !std::fs::read_to_string("/proc/self/mountinfo")?.contains(&root.display().to_string()),
            "mount left behind"
        );
    }
    drop(fixture.registry);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_bytes_are_eio_and_never_cached() -> Result<()> {
    let fixture = converted_image(LazyFormat::Estargz).await?;
    let cache = tempfile::tempdir()?;
    let store = ChunkStore::open(cache.path(), CacheConfig::default())?;
    let layer = &fixture.layers[0];
    let digest = layer.digest().to_string();
    let lazy = open_layer(&fixture.client, &fixture.via_proxy, layer, &store).await?;
    let (mountpoint, mounted) = mount(&lazy)?;
    let big = mountpoint.path().join("data/big.bin");
    let expected = skiff_tests::generated_bytes(42, 5 * 1024 * 1024 + 17);

    for fault in [Fault::flip_byte(), Fault::Truncate { keep: 100 }] {
        fixture.proxy.clear_faults();
        fixture.proxy.inject(&digest, fault.clone());
        let path = big.clone();
        let result = blocking(move || Ok(std::fs::read(path))).await?;
        let err = match result {
            Ok(bytes) => bail!(
                "read with {fault:?} returned {} bytes instead of EIO",
                bytes.len()
            ),
            Err(err) => err,
        };
        ensure!(
            err.raw_os_error() == Some(nix::libc::EIO),
            "{fault:?}: {err}"
        );
        let cached = store.stats();
        ensure!(
            cached.disk_entries == 0,
            "{fault:?} left {} chunks in the cache",
            cached.disk_entries
        );
    }

    fixture.proxy.clear_faults();
    let path = big.clone();
    let bytes = blocking(move || Ok(std::fs::read(path)?)).await?;
    ensure!(
        bytes == expected,
        "big.bin differs after the registry recovered"
    );
    mounted.unmount()?;
    Ok(())
}

/// Every path under `root`, depth first.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    Ok(found)
}

/// Two different images whose layers hold the same file: its chunks are stored once, and reading it
/// through the second image fetches nothing from the second image's blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_chunks_of_different_images_are_fetched_once() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let containerd = Containerd::start()?;
    let shared_len = 3 * 1024 * 1024 + 5;
    for (name, other) in [
        ("first", "only in the first image\n"),
        ("second", "the second one\n"),
    ] {
        let layout = ImageSpec::new()
            .layer(
                LayerSpec::new()
                    .generated_file("/opt/shared.bin", shared_len, 7)
                    .file(&format!("/etc/{name}"), other),
            )
            .build_layout()?;
        registry.push(&layout, &format!("src-{name}:1"))?;
        convert_image(
            &containerd,
            &registry.host(),
            &format!("src-{name}:1"),
            &format!("lazy-{name}:1"),
            None,
            LazyFormat::Estargz,
        )?;
    }
    let proxy = FaultProxy::in_front_of(&registry)?;
    let client = client()?;
    let cache = tempfile::tempdir()?;
    let store = ChunkStore::open(cache.path(), CacheConfig::default())?;
    let expected = skiff_tests::generated_bytes(7, shared_len);

    let mut fetched = Vec::new();
    for name in ["first", "second"] {
        let reference: Reference = format!("{}/lazy-{name}:1", proxy.host()).parse()?;
        let layer = client.resolve(&reference).await?.image_manifest.layers()[0].clone();
        let digest = layer.digest().to_string();
        let lazy = open_layer(&client, &reference, &layer, &store).await?;
        let opened = proxy.bytes_matching(&digest);
        let (mountpoint, mounted) = mount(&lazy)?;
        let path = mountpoint.path().join("opt/shared.bin");
        let bytes = blocking(move || Ok(std::fs::read(path)?)).await?;
        ensure!(bytes == expected, "{name}: shared.bin differs");
        fetched.push(proxy.bytes_matching(&digest) - opened);
        mounted.unmount()?;
    }
    ensure!(
        fetched[0] >= shared_len as u64 / 2,
        "the first image fetched only {} bytes of a {shared_len}-byte file",
        fetched[0]
    );
    ensure!(
        fetched[1] == 0,
        "the second image fetched {} bytes for chunks already in the cache",
        fetched[1]
    );
    Ok(())
}

/// A read waiting on a slow registry does not hold up metadata operations or cached reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fetch_does_not_stall_other_operations() -> Result<()> {
    let fixture = converted_image(LazyFormat::Estargz).await?;
    let cache = tempfile::tempdir()?;
    let store = ChunkStore::open(cache.path(), CacheConfig::default())?;
    let layer = &fixture.layers[0];
    let digest = layer.digest().to_string();
    let lazy = open_layer(&fixture.client, &fixture.via_proxy, layer, &store).await?;
    let (mountpoint, mounted) = mount(&lazy)?;
    let root = mountpoint.path().to_path_buf();
    let hello = root.join("data/hello.txt");
    blocking(move || Ok(std::fs::read(hello)?)).await?;

    // Every blob request now takes seconds.
    fixture
        .proxy
        .inject(&digest, Fault::Delay(std::time::Duration::from_secs(3)));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let big = root.join("data/big.bin");
    let slow_read = std::thread::spawn(move || {
        let result = std::fs::read(big);
        let _ = done_tx.send(());
        result
    });
    // Give the kernel a moment to send the read (no timing is asserted).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let others = blocking({
        let root = root.clone();
        move || {
            let listed = walk(&root)?.len();
            let hello = std::fs::read(root.join("data/hello.txt"))?;
            Ok((listed, hello))
        }
    })
    .await?;
    ensure!(others.0 > 5 && others.1 == b"hello\n");
    ensure!(
        done_rx.try_recv().is_err(),
        "the slow read finished before the metadata walk; the test proved nothing"
    );
    let bytes = slow_read.join().expect("reader thread")?;
    ensure!(bytes == skiff_tests::generated_bytes(42, 5 * 1024 * 1024 + 17));
    fixture.proxy.clear_faults();
    mounted.unmount()?;
    Ok(())
}

/// The daemon's view: a LayerManager mounts lazy layers by reference, tells plain layers apart, and leaves
/// nothing mounted after unmount_all or when dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_manager_mounts_refuses_plain_layers_and_unmounts_everything() -> Result<()> {
    use skiff_fuse::manager::LayerManager;
    let fixture = converted_image(LazyFormat::Estargz).await?;
    let cache = tempfile::tempdir()?;
    let store = ChunkStore::open(cache.path(), CacheConfig::default())?;
    let manager = LayerManager::new(store, no_background(), tokio::runtime::Handle::current());
    let dirs = tempfile::tempdir()?;
    let mut mountpoints = Vec::new();
    for (i, layer) in fixture.layers.iter().enumerate() {
        let mountpoint = dirs.path().join(format!("layer{i}"));
        std::fs::create_dir(&mountpoint)?;
        manager
            .mount(
                fixture.source(layer)?,
                &LayerDescriptor::try_from(layer)?,
                &mountpoint,
            )
            .await?;
        mountpoints.push(mountpoint);
    }
    let first = &fixture.layers[0];
    let again = manager
        .mount(
            fixture.source(first)?,
            &LayerDescriptor::try_from(first)?,
            &mountpoints[0],
        )
        .await;
    ensure!(
        again.is_err(),
        "a second mount on the same directory was accepted"
    );
    ensure!(manager.list().len() == 2);
    let hello = mountpoints[0].join("data/hello.txt");
    ensure!(blocking(move || Ok(std::fs::read(hello)?)).await? == b"hello\n");

    // The original (plain gzip) image's layer is not lazy.
    let plain: Reference = format!("{}/src:1", fixture.registry.host()).parse()?;
    let plain_layer = fixture
        .client
        .resolve(&plain)
        .await?
        .image_manifest
        .layers()[0]
        .clone();
    let plain_dir = dirs.path().join("plain");
    std::fs::create_dir(&plain_dir)?;
    let plain_layer = LayerDescriptor::try_from(&plain_layer)?;
    let plain_source = Arc::new(RegistryBlob::new(
        fixture.client.clone(),
        plain,
        &plain_layer,
    ));
    let refused = manager.mount(plain_source, &plain_layer, &plain_dir).await;
    match refused {
        Err(err) if err.is_not_lazy() => {}
        Err(err) => bail!("a plain gzip layer failed otherwise: {err:?}"),
        Ok(_) => bail!("a plain gzip layer was mounted lazily"),
    }

    manager.unmount(&mountpoints[1])?;
    ensure!(manager.list().len() == 1);
    // A file still open does not keep the mount alive past unmount (it is detached).
    let held = std::fs::File::open(mountpoints[0].join("data/hello.txt"))?;
    manager.unmount_all();
    ensure!(manager.list().is_empty());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for mountpoint in &mountpoints {
        ensure!(
            !mountinfo.contains(&mountpoint.display().to_string()),
            "{} still mounted",
            mountpoint.display()
        );
    }
    drop(held);
    Ok(())
}

/// The kernel keeps one I/O mode per inode: a file opened (or mapped, as an executable is) before it was
/// wholly cached stays in cached mode while that open lives, and a second open of it once cached must not
/// ask for passthrough (the kernel would answer EIO — what `exec` of a running binary hit in a container).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_held_open_while_it_became_cached_opens_again() -> Result<()> {
    let fixture = converted_image(LazyFormat::Estargz).await?;
    let cache = tempfile::tempdir()?;
    let store = ChunkStore::open(cache.path(), CacheConfig::default())?;
    let layer = fixture
        .layers
        .iter()
        .find(|l| l.size() > 1 << 20)
        .context("the layer with data/big.bin")?
        .clone();
    let lazy = open_layer(&fixture.client, &fixture.via_proxy, &layer, &store).await?;
    let (mountpoint, mounted) = mount(&lazy)?;
    let big = mountpoint.path().join("data/big.bin");
    let expected = skiff_tests::generated_bytes(42, 5 * 1024 * 1024 + 17);
    let stats = Arc::clone(lazy.stats());
    let outcome = blocking(move || {
        use std::io::Read;
        // Held open in cached mode while the whole file is read through it (and so cached).
        let mut held = std::fs::File::open(&big)?;
        let mut first = Vec::new();
        held.read_to_end(&mut first)?;
        ensure!(first == expected, "first read differs");
        // Opened again while the first handle lives: same mode, correct bytes.
        let again = std::fs::read(&big)?;
        ensure!(again == expected, "second read differs");
        drop(held);
        // With every cached-mode handle gone, a new open may use passthrough. The kernel sends the
        // releases of the closed handles asynchronously, and an open may overtake them on another FUSE
        // thread (it is then served in cached mode, correctly): open again until one goes through.
        for _ in 0..100 {
            let last = std::fs::read(&big)?;
            ensure!(last == expected, "a later read differs");
            if stats.snapshot().passthrough_opens >= 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    })
    .await;
    let passthrough = lazy.stats().snapshot().passthrough_opens;
    mounted.unmount()?;
    outcome?;
    ensure!(
        passthrough >= 1,
        "the open after the cached-mode handle was released did not use passthrough"
    );
    Ok(())
}
