//! End to end: `skiff snapshot …` with the real `skiff` binary against the real `skiffd` (snapshots.v1 on
//! its socket). Snapshots are prepared, viewed, committed, listed, measured and removed; the `mount`
//! commands the CLI prints are run for real (bind and overlayfs); keys stay inside their namespace while
//! the layer snapshots of `skiff image pull` (pulled from a real docker-registry) are seen from every
//! namespace; bad input fails with a clear message and changes nothing.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use skiff_tests::process::run_ok;
use skiff_tests::{
    mounts_under, require, unmount_all_under, ImageSpec, LayerSpec, Registry, RegistryAuth, Skiffd,
};

/// One row of `skiff snapshot ls`: key, parent (None when the column is empty), kind.
type Row = (String, Option<String>, String);

/// `skiff -n NAMESPACE snapshot ARGS…`, which must succeed; returns stdout.
fn sn(skiffd: &Skiffd, namespace: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", namespace, "snapshot"];
    full.extend_from_slice(args);
    skiffd.skiff_ok(&full)
}

/// `skiff -n NAMESPACE snapshot ARGS…`, which must fail; returns stderr.
fn sn_fails(skiffd: &Skiffd, namespace: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", namespace, "snapshot"];
    full.extend_from_slice(args);
    let output: Output = skiffd.skiff(&full)?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        !output.status.success(),
        "skiff {} succeeded: {}",
        full.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    ensure!(
        !stderr.contains("panicked"),
        "skiff {} panicked: {stderr}",
        full.join(" ")
    );
    Ok(stderr)
}

/// The rows of `skiff snapshot ls` (KEY, PARENT, KIND; keys here contain no spaces).
fn ls(skiffd: &Skiffd, namespace: &str) -> Result<Vec<Row>> {
    let table = sn(skiffd, namespace, &["ls"])?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(header == ["KEY", "PARENT", "KIND"], "ls header: {table}");
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            match cells[..] {
                [key, kind] => Ok((key.to_string(), None, kind.to_string())),
                [key, parent, kind] => {
                    Ok((key.to_string(), Some(parent.to_string()), kind.to_string()))
                }
                _ => anyhow::bail!("ls row {line:?}"),
            }
        })
        .collect()
}

fn row(key: &str, parent: Option<&str>, kind: &str) -> Row {
    (
        key.to_string(),
        parent.map(str::to_string),
        kind.to_string(),
    )
}

/// Runs every `mount -t … -o …` line the CLI printed, checking that each targets `target`.
fn run_mount_commands(printed: &str, target: &Path) -> Result<()> {
    let lines: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with("mount "))
        .collect();
    ensure!(!lines.is_empty(), "no mount command in {printed:?}");
    for line in lines {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        ensure!(
            args.get(3).map(Path::new) == Some(target),
            "mount command {line:?} does not target {}",
            target.display()
        );
        run_ok(Command::new("mount").args(&args)).with_context(|| format!("run {line:?}"))?;
    }
    Ok(())
}

/// A temporary mount point, detached on drop also when a test fails while something is mounted on it.
struct MountPoint(tempfile::TempDir);

impl MountPoint {
    fn new() -> Result<Self> {
        Ok(MountPoint(tempfile::tempdir()?))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        unmount_all_under(self.0.path());
    }
}

fn unmount(target: &Path) -> Result<()> {
    run_ok(Command::new("umount").arg(target)).map(drop)
}

/// (size in bytes, inodes) from `skiff snapshot usage -b KEY`.
fn usage_bytes(skiffd: &Skiffd, namespace: &str, key: &str) -> Result<(u64, u64)> {
    let table = sn(skiffd, namespace, &["usage", "-b", key])?;
    let line = table.lines().nth(1).context("usage row")?;
    let cells: Vec<&str> = line.split_whitespace().collect();
    ensure!(cells.len() == 3 && cells[0] == key, "usage: {table}");
    Ok((cells[1].parse()?, cells[2].parse()?))
}

#[test]
fn prepare_mount_commit_view_usage_and_remove() -> Result<()> {
    require(&["root", "overlayfs"])?;
    let skiffd = Skiffd::start()?;
    let mnt = MountPoint::new()?;
    let target = mnt.path();
    let ns = "default";
    ensure!(ls(&skiffd, ns)?.is_empty(), "a new skiffd has snapshots");

    // An empty active snapshot is one bind mount; what is written through it is kept.
    ensure!(sn(&skiffd, ns, &["prepare", "base"])?.is_empty());
    let printed = sn(
        &skiffd,
        ns,
        &["mounts", &target.display().to_string(), "base"],
    )?;
    ensure!(printed.starts_with("mount -t bind "), "{printed}");
    run_mount_commands(&printed, target)?;
    std::fs::write(target.join("hello.txt"), "hello from a snapshot\n")?;
    unmount(target)?;
    sn(&skiffd, ns, &["commit", "base-c", "base"])?;
    ensure!(ls(&skiffd, ns)? == [row("base-c", None, "Committed")]);

    // An active snapshot on it: overlayfs, the parent's file below, a new file on top.
    let printed = sn(
        &skiffd,
        ns,
        &[
            "prepare",
            "--target",
            &target.display().to_string(),
            "work",
            "base-c",
        ],
    )?;
    ensure!(
        printed.starts_with("mount -t overlay overlay "),
        "{printed}"
    );
    ensure!(
        printed.contains("upperdir=") && printed.contains("lowerdir="),
        "{printed}"
    );
    run_mount_commands(&printed, target)?;
    let mounted = std::fs::read_to_string(target.join("hello.txt"));
    let written = std::fs::write(target.join("new.bin"), vec![7u8; 1 << 20]);
    unmount(target)?;
    ensure!(mounted? == "hello from a snapshot\n");
    written?;
    ensure!(mounts_under(target).is_empty());

    let (size, inodes) = usage_bytes(&skiffd, ns, "work")?;
    ensure!(size >= 1 << 20, "usage of work after a 1 MiB write: {size}");
    ensure!(inodes >= 2, "usage of work: {inodes} inodes");
    let (base_size, _) = usage_bytes(&skiffd, ns, "base-c")?;
    ensure!(
        base_size < 1 << 20,
        "base-c holds no 1 MiB file: {base_size}"
    );
    let human = sn(&skiffd, ns, &["usage"])?;
    ensure!(
        human.starts_with("KEY") && human.contains("work") && human.contains("MiB"),
        "usage: {human}"
    );

    // A view: read-only mounts as JSON, and a mount that refuses writes.
    let json = sn(&skiffd, ns, &["view", "--mounts", "look", "base-c"])?;
    let mounts: serde_json::Value = serde_json::from_str(&json).context(json.clone())?;
    ensure!(mounts[0]["Type"] == "bind", "view mounts: {json}");
    ensure!(
        mounts[0]["Options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o == "ro")),
        "view mounts: {json}"
    );
    let printed = sn(
        &skiffd,
        ns,
        &["mounts", &target.display().to_string(), "look"],
    )?;
    run_mount_commands(&printed, target)?;
    let read = std::fs::read_to_string(target.join("hello.txt"));
    let refused = std::fs::write(target.join("nope"), "x");
    unmount(target)?;
    ensure!(read? == "hello from a snapshot\n");
    ensure!(refused.is_err(), "a view took a write");

    let all = vec![
        row("base-c", None, "Committed"),
        row("look", Some("base-c"), "View"),
        row("work", Some("base-c"), "Active"),
    ];
    ensure!(ls(&skiffd, ns)? == all, "ls: {:?}", ls(&skiffd, ns)?);
    let tree = sn(&skiffd, ns, &["tree"])?;
    ensure!(tree == " base-c\n  \\_ look\n  \\_ work\n", "tree:\n{tree}");

    let info: serde_json::Value = serde_json::from_str(&sn(&skiffd, ns, &["info", "work"])?)?;
    ensure!(info["Name"] == "work" && info["Parent"] == "base-c" && info["Kind"] == "Active");
    ensure!(sn(&skiffd, ns, &["label", "work", "team=blue"])?.trim() == "team=blue");
    let info: serde_json::Value = serde_json::from_str(&sn(&skiffd, ns, &["info", "work"])?)?;
    ensure!(info["Labels"]["team"] == "blue", "{info}");
    ensure!(sn(&skiffd, ns, &["label", "work", "team="])?.trim() == "-");

    // Bad input: a clear message, a non-zero exit, nothing changed.
    let err = sn_fails(&skiffd, ns, &["info", "missing"])?;
    ensure!(err.contains("snapshot missing not found"), "{err}");
    let err = sn_fails(&skiffd, ns, &["rm", "missing"])?;
    ensure!(err.contains("snapshot missing not found"), "{err}");
    let err = sn_fails(&skiffd, ns, &["prepare", "other", "missing"])?;
    ensure!(err.contains("snapshot missing not found"), "{err}");
    let err = sn_fails(&skiffd, ns, &["commit", "look-c", "look"])?;
    ensure!(
        err.contains("\"look\"") && err.contains("not active"),
        "{err}"
    );
    ensure!(!err.contains("skiff.ns/"), "stored key leaks into {err}");
    let err = sn_fails(&skiffd, ns, &["rm", "base-c"])?;
    ensure!(
        err.contains("base-c") && err.contains("has a child"),
        "{err}"
    );
    let err = sn_fails(&skiffd, ns, &["prepare", "work", "base-c"])?;
    ensure!(err.contains("already exists"), "{err}");
    let err = sn_fails(&skiffd, ns, &["prepare", "skiff.image/mine"])?;
    ensure!(err.contains("reserved"), "{err}");
    let err = sn_fails(&skiffd, ns, &["view", "v"])?;
    ensure!(err.contains("PARENT"), "view without a parent: {err}");
    let err = sn_fails(&skiffd, "a/b", &["ls"])?;
    ensure!(err.contains("invalid namespace"), "{err}");
    ensure!(ls(&skiffd, ns)? == all, "bad input changed the snapshots");

    // Children first, then the parent.
    ensure!(sn(&skiffd, ns, &["rm", "work", "look"])? == "work\nlook\n");
    sn(&skiffd, ns, &["rm", "base-c"])?;
    ensure!(ls(&skiffd, ns)?.is_empty());
    ensure!(mounts_under(&skiffd.root()).is_empty());
    Ok(())
}

#[test]
fn namespaces_do_not_see_each_others_snapshots() -> Result<()> {
    require(&["root"])?;
    let skiffd = Skiffd::start()?;
    // `a` is a prefix of `a.b`: their keys must still stay apart.
    for ns in ["a", "a.b"] {
        sn(&skiffd, ns, &["prepare", "same"])?;
    }
    sn(&skiffd, "a", &["prepare", "only-a"])?;
    ensure!(ls(&skiffd, "a")? == [row("only-a", None, "Active"), row("same", None, "Active")]);
    ensure!(ls(&skiffd, "a.b")? == [row("same", None, "Active")]);
    ensure!(ls(&skiffd, "b")?.is_empty());
    ensure!(sn(&skiffd, "b", &["tree"])?.is_empty());

    let err = sn_fails(&skiffd, "a.b", &["info", "only-a"])?;
    ensure!(err.contains("snapshot only-a not found"), "{err}");
    let err = sn_fails(&skiffd, "b", &["rm", "same"])?;
    ensure!(err.contains("snapshot same not found"), "{err}");
    // A parent from another namespace cannot be named either.
    sn(&skiffd, "a", &["commit", "a-base", "only-a"])?;
    let err = sn_fails(&skiffd, "a.b", &["prepare", "child", "a-base"])?;
    ensure!(err.contains("snapshot a-base not found"), "{err}");

    sn(&skiffd, "a", &["rm", "same"])?;
    ensure!(ls(&skiffd, "a")? == [row("a-base", None, "Committed")]);
    ensure!(ls(&skiffd, "a.b")? == [row("same", None, "Active")]);
    Ok(())
}

#[test]
fn image_layer_snapshots_are_shared_by_every_namespace() -> Result<()> {
    require(&["root", "overlayfs", "docker-registry", "skopeo"])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let spec = ImageSpec::new()
        .layer(LayerSpec::new().file("etc/os-release", "NAME=skiff-test\n"))
        .layer(LayerSpec::new().file("app/hello.txt", "hello from the image\n"));
    let layout = spec.build_layout()?;
    registry.push(&layout, "small:1")?;
    let image = layout.images()[0].clone();
    let skiffd = Skiffd::start()?;
    skiffd.skiff_ok(&[
        "image",
        "pull",
        "--plain-http",
        &registry.reference("small:1"),
    ])?;

    // chain(L0) = diffid(L0); the top layer's key is whatever names the bottom one as its parent.
    let bottom = format!("skiff.image/{}", image.layers[0].diff_id);
    for ns in ["default", "other"] {
        let rows = ls(&skiffd, ns)?;
        ensure!(rows.len() == 2, "{ns}: {rows:?}");
        ensure!(
            rows.contains(&row(&bottom, None, "Committed")),
            "{ns}: {rows:?}"
        );
        ensure!(
            rows.iter()
                .any(|(key, parent, kind)| key.starts_with("skiff.image/sha256:")
                    && parent.as_deref() == Some(bottom.as_str())
                    && kind == "Committed"),
            "{ns}: {rows:?}"
        );
    }
    let top = ls(&skiffd, "other")?
        .into_iter()
        .find(|(_, parent, _)| parent.is_some())
        .map(|(key, _, _)| key)
        .context("top layer")?;
    let tree = sn(&skiffd, "other", &["tree"])?;
    ensure!(tree == format!(" {bottom}\n  \\_ {top}\n"), "tree:\n{tree}");

    // A rootfs in a namespace the image was not pulled into, on the image's top layer.
    let mnt = MountPoint::new()?;
    let target = mnt.path();
    let printed = sn(
        &skiffd,
        "other",
        &[
            "prepare",
            "--target",
            &target.display().to_string(),
            "rootfs",
            &top,
        ],
    )?;
    run_mount_commands(&printed, target)?;
    let hello = std::fs::read_to_string(target.join("app/hello.txt"));
    let release = std::fs::read_to_string(target.join("etc/os-release"));
    unmount(target)?;
    ensure!(hello? == "hello from the image\n");
    ensure!(release? == "NAME=skiff-test\n");
    ensure!(ls(&skiffd, "other")?.contains(&row("rootfs", Some(&top), "Active")));
    ensure!(!ls(&skiffd, "default")?
        .iter()
        .any(|(key, _, _)| key == "rootfs"));
    let (size, _) = usage_bytes(&skiffd, "default", &top)?;
    ensure!(size > 0, "usage of {top}: {size}");

    // The image's top layer has a child now: it cannot be removed under it.
    let err = sn_fails(&skiffd, "default", &["rm", &top])?;
    ensure!(err.contains("has a child"), "{err}");
    sn(&skiffd, "other", &["rm", "rootfs"])?;
    ensure!(ls(&skiffd, "other")?.len() == 2);
    Ok(())
}
