//! End to end: a real containerd 1.6 with skiffd as its `proxy_plugins` snapshotter `skiff`. An image
//! converted to eStargz by `ctr-remote` is pulled lazily with `ctr-remote image rpull` (its layers become
//! FUSE mounts in skiffd, their blobs never enter containerd's content store, the registry serves only a
//! fraction of their bytes) and runs with `ctr run`; the same image unconverted (plain gzip) falls back to
//! an ordinary unpack through the same snapshotter and runs too. Removing the images unmounts the layers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use skiff_tests::{
    convert_estargz, mounts_under, require, wait_until, write_docker_config, write_hosts_toml,
    Containerd, ContainerdConfig, FaultProxy, ImageSpec, LayerSpec, ProxyPlugin, Registry,
    RegistryAuth, Skiffd, SkiffdOptions,
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

/// A FUSE mount of skiffd's lazy filesystem, from /proc/self/mountinfo.
#[derive(Debug)]
struct LazyMount {
    mount_point: PathBuf,
    layer_digest: String,
}

/// skiff's FUSE mounts (fs type `fuse.skiff`, source `skiff:sha256:…`) under `dir`.
fn lazy_mounts_under(dir: &Path) -> Result<Vec<LazyMount>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = PathBuf::from(left.split(' ').nth(4).unwrap_or_default());
        let mut right = right.split(' ');
        let (fs_type, source) = (right.next().unwrap_or(""), right.next().unwrap_or(""));
        if fs_type.starts_with("fuse") && mount_point.starts_with(dir) {
            if let Some(digest) = source.strip_prefix("skiff:") {
                found.push(LazyMount {
                    mount_point,
                    layer_digest: digest.to_owned(),
                });
            }
        }
    }
    Ok(found)
}

/// Writes skiffd's config: its registry settings reach `host` over plain HTTP (hosts.toml `server`),
/// no credentials, no background fetching (so the bytes counted are the ones reads needed).
fn skiffd_config(dir: &Path, host: &str) -> Result<PathBuf> {
    let certs_d = dir.join("certs.d");
    write_hosts_toml(&certs_d, host, Some(&format!("http://{host}")), &[])?;
    let docker_config = write_docker_config(&dir.join("docker"), &[])?;
    let path = dir.join("skiffd.toml");
    let quote = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("string");
    std::fs::write(
        &path,
        format!(
            "[registry]\nconfig_path = {}\ndocker_config = {}\n\n[lazy]\nbackground_parallel_requests = 0\n\n[log]\nlevel = \"info,skiff_snapshotter=debug\"\n",
            quote(&certs_d),
            quote(&docker_config),
        ),
    )?;
    Ok(path)
}

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

/// `ctr run --rm` of `image` printing `message`, through the snapshotter `skiff`.
fn run_echo(containerd: &Containerd, image: &str, id: &str, message: &str) -> Result<()> {
    let output = containerd.ctr_ok(&[
        "run",
        "--snapshotter",
        "skiff",
        "--rm",
        image,
        id,
        "/bin/echo",
        message,
    ])?;
    ensure!(
        output.contains(message),
        "ctr run {image} printed {output:?}, not {message:?}"
    );
    Ok(())
}

fn snapshots(containerd: &Containerd) -> Result<Vec<String>> {
    Ok(containerd
        .ctr_ok(&["snapshots", "--snapshotter", "skiff", "ls"])?
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect())
}

#[test]
fn containerd_pulls_estargz_lazily_through_skiffd_and_falls_back_for_gzip() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let image = ImageSpec::new()
        .busybox()
        .layer(LayerSpec::new().generated_file("/data/unread.bin", UNREAD_BYTES, 7))
        .cmd(&["/bin/sh"]);
    registry.push(&image.build_layout()?, "plain:1")?;
    // Converted by stargz-snapshotter's own tool, in a containerd of its own (its content store gets
    // every blob).
    {
        let converter = Containerd::start()?;
        convert_estargz(&converter, &registry.host(), "plain:1", "lazy:1", None)?;
    }
    let proxy = FaultProxy::in_front_of(&registry)?;
    let config_dir = tempfile::tempdir()?;
    let config = skiffd_config(config_dir.path(), &proxy.host())?;
    let mut skiffd = Skiffd::start_with(SkiffdOptions {
        config: Some(config),
        ..SkiffdOptions::default()
    })?;
    let containerd = Containerd::start_with(ContainerdConfig {
        proxy_plugins: vec![ProxyPlugin::snapshotter("skiff", skiffd.socket())],
        ..ContainerdConfig::default()
    })?;
    let result = (|| -> Result<()> {
        // Lazy pull.
        let lazy = format!("{}/lazy:1", proxy.host());
        proxy.reset_counts();
        containerd.ctr_remote_ok(&[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "skiff",
            &lazy,
        ])?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&registry.raw_manifest("lazy:1")?)?;
        let layers = layer_digests(&manifest)?;
        let mounts = lazy_mounts_under(skiffd.work_dir())?;
        for (digest, _) in &layers {
            ensure!(
                mounts.iter().any(|m| &m.layer_digest == digest),
                "layer {digest} is not FUSE-mounted by skiffd; mounts: {mounts:?}\nskiffd log:\n{}",
                skiffd.log()
            );
        }
        ensure!(mounts.len() == layers.len(), "mounts: {mounts:?}");
        ensure!(
            mounts.iter().all(|m| m.mount_point.ends_with("fs")),
            "lazy layers are mounted at their snapshot's fs dir: {mounts:?}"
        );
        let content = containerd.ctr_ok(&["content", "ls"])?;
        let blobs: Vec<&str> = content
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        for (digest, _) in &layers {
            ensure!(
                !blobs.contains(&digest.as_str()),
                "layer blob {digest} entered containerd's content store:\n{content}"
            );
        }
        let total: u64 = layers.iter().map(|(_, size)| size).sum();
        let after_pull = proxy.bytes_matching("/blobs/");
        ensure!(
            after_pull * 10 < total,
            "the lazy pull fetched {after_pull} of {total} layer bytes"
        );

        run_echo(&containerd, &lazy, "lazy-echo", "hello from a lazy layer")?;
        let after_run = proxy.bytes_matching("/blobs/");
        ensure!(
            after_run * 10 < total,
            "pull and run fetched {after_run} of {total} layer bytes"
        );
        eprintln!("lazy pull: {after_pull} bytes, after run: {after_run} of {total} layer bytes");

        // Fallback: the plain gzip image, asked for with the remote labels, is unpacked by containerd.
        let plain = format!("{}/plain:1", proxy.host());
        containerd.ctr_remote_ok(&[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "skiff",
            &plain,
        ])?;
        ensure!(
            lazy_mounts_under(skiffd.work_dir())?.len() == layers.len(),
            "a plain layer was mounted lazily"
        );
        run_echo(
            &containerd,
            &plain,
            "plain-echo",
            "hello from an unpacked layer",
        )?;
        // And without any remote labels, as plain `ctr image pull` does (same chain ids: nothing to do).
        containerd.ctr_ok(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            "skiff",
            &plain,
        ])?;

        // Removing the images removes their snapshots (synchronous GC), which unmounts the layers.
        containerd.ctr_ok(&["images", "rm", "--sync", &lazy, &plain])?;
        wait_until(
            "containerd to remove the skiff snapshots",
            Duration::from_secs(30),
            || Ok(snapshots(&containerd)?.is_empty()),
        )?;
        let left = lazy_mounts_under(skiffd.work_dir())?;
        ensure!(left.is_empty(), "lazy mounts left after removal: {left:?}");
        Ok(())
    })();
    let skiffd_log = skiffd.log();
    drop(containerd);
    skiffd.stop();
    let mounts = mounts_under(skiffd.work_dir());
    result.with_context(|| format!("skiffd log:\n{skiffd_log}"))?;
    ensure!(
        mounts.is_empty(),
        "mounts left after skiffd stopped: {mounts:?}"
    );
    Ok(())
}
