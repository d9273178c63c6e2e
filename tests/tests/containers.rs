//! End to end: `skiff container create|ls|info|rm` against the real skiffd. A container of a pulled image
//! gets a rootfs snapshot on the image's snapshot chain and an OCI spec built from the image config and the
//! flags (the user looked up in the image's /etc/passwd); namespaces isolate containers; bad flags, ids and
//! images are refused naming what is wrong and leave nothing behind; removal takes the snapshot too.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use skiff_api::containerd::snapshots::v1 as snapshots;
use skiff_api::containerd::snapshots::v1::snapshots_client::SnapshotsClient;
use skiff_tests::{require, ImageSpec, LayerSpec, Registry, RegistryAuth, Skiffd};

/// Every snapshot key on skiffd's snapshots.v1 service.
fn snapshot_keys(skiffd: &Skiffd) -> Result<Vec<String>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let channel = skiff_api::connect(skiffd.socket()).await?;
            let mut stream = SnapshotsClient::new(channel)
                .list(snapshots::ListSnapshotsRequest {
                    snapshotter: "skiff".into(),
                    filters: Vec::new(),
                })
                .await?
                .into_inner();
            let mut keys = Vec::new();
            while let Some(message) = stream.message().await? {
                keys.extend(message.info.into_iter().map(|info| info.name));
            }
            Ok(keys)
        })
}

fn fails_with(skiffd: &Skiffd, args: &[&str], expected: &str) -> Result<()> {
    let output = skiffd.skiff(args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains(expected),
        "skiff {args:?}: expected a failure mentioning {expected:?}, got {} with stderr {stderr:?}",
        output.status
    );
    Ok(())
}

#[test]
fn containers_are_created_from_pulled_images_and_removed_with_their_snapshots() -> Result<()> {
    require(&["root", "docker-registry", "skopeo", "busybox", "overlayfs"])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let image = ImageSpec::new()
        .busybox()
        .layer(
            LayerSpec::new()
                .file(
                    "etc/passwd",
                    "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
                )
                .file("etc/group", "root:x:0:\nstaff:x:50:app\napp:x:1000:\n"),
        )
        .env("FROM_IMAGE=1")
        .cmd(&["/bin/sh"]);
    registry.push(&image.build_layout()?, "app:1")?;
    let reference = registry.reference("app:1");
    let skiffd = Skiffd::start()?;
    skiffd.skiff_ok(&["image", "pull", "--plain-http", &reference])?;
    let before = snapshot_keys(&skiffd)?;

    skiffd.skiff_ok(&[
        "container",
        "create",
        "--env",
        "A=1",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "50",
        "--user",
        "app",
        "--read-only",
        "--label",
        "team=x",
        &reference,
        "c1",
        "/bin/echo",
        "-n",
        "hi",
    ])?;
    let listing = skiffd.skiff_ok(&["container", "ls"])?;
    ensure!(
        listing.contains("c1") && listing.contains(&reference) && listing.contains("runc"),
        "{listing}"
    );
    let info: Value = serde_json::from_str(&skiffd.skiff_ok(&["container", "info", "c1"])?)?;
    let spec = &info["Spec"];
    ensure!(
        spec["process"]["args"] == serde_json::json!(["/bin/echo", "-n", "hi"]),
        "args: {}",
        spec["process"]["args"]
    );
    let env: Vec<&str> = spec["process"]["env"]
        .as_array()
        .context("env")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        env.contains(&"A=1") && env.contains(&"FROM_IMAGE=1"),
        "{env:?}"
    );
    let user = &spec["process"]["user"];
    ensure!(
        user["uid"] == 1000
            && user["gid"] == 1000
            && user["additionalGids"] == serde_json::json!([50]),
        "user from the image's /etc/passwd and /etc/group: {user}"
    );
    ensure!(
        spec["root"]["path"] == "rootfs" && spec["root"]["readonly"] == true,
        "{}",
        spec["root"]
    );
    let resources = &spec["linux"]["resources"];
    ensure!(
        resources["memory"]["limit"] == 64 << 20
            && resources["cpu"]["quota"] == 50000
            && resources["pids"]["limit"] == 50,
        "{resources}"
    );
    ensure!(spec["linux"]["cgroupsPath"] == "/skiff/default/c1");
    ensure!(info["Labels"]["team"] == "x", "{}", info["Labels"]);
    let snapshot_key = info["SnapshotKey"].as_str().context("snapshot key")?;
    ensure!(snapshot_key == "skiff.ns/default/c1", "{snapshot_key}");
    ensure!(snapshot_keys(&skiffd)?.iter().any(|k| k == snapshot_key));

    // Namespaces isolate: same id elsewhere is another container.
    ensure!(skiffd
        .skiff_ok(&["-n", "other", "container", "ls", "-q"])?
        .trim()
        .is_empty());
    fails_with(
        &skiffd,
        &["-n", "other", "container", "info", "c1"],
        "not found",
    )?;

    // Bad input is refused, naming what is wrong, and leaves no snapshot or record.
    fails_with(
        &skiffd,
        &["container", "create", &reference, "c1"],
        "already exists",
    )?;
    fails_with(
        &skiffd,
        &["container", "create", "--memory", "lots", &reference, "c2"],
        "--memory",
    )?;
    fails_with(
        &skiffd,
        &[
            "container",
            "create",
            "--mount",
            "type=nfs,dst=/x",
            &reference,
            "c2",
        ],
        "--mount",
    )?;
    fails_with(
        &skiffd,
        &["container", "create", "--user", "nobody", &reference, "c2"],
        "nobody",
    )?;
    fails_with(
        &skiffd,
        &["container", "create", &reference, "a/b"],
        "invalid container id",
    )?;
    fails_with(
        &skiffd,
        &["container", "create", "127.0.0.1:1/none:1", "c2"],
        "not found",
    )?;
    let mut expected = before.clone();
    expected.push(snapshot_key.to_owned());
    let mut now = snapshot_keys(&skiffd)?;
    now.sort();
    expected.sort();
    ensure!(
        now == expected,
        "snapshots after refused creates: {now:?}, expected {expected:?}"
    );
    ensure!(skiffd.skiff_ok(&["container", "ls", "-q"])?.trim() == "c1");

    // The image's snapshots stay while a container uses them.
    skiffd.skiff_ok(&["image", "rm", &reference])?;
    ensure!(snapshot_keys(&skiffd)?.len() == before.len() + 1);

    skiffd.skiff_ok(&["container", "rm", "c1"])?;
    ensure!(skiffd
        .skiff_ok(&["container", "ls", "-q"])?
        .trim()
        .is_empty());
    ensure!(!snapshot_keys(&skiffd)?.iter().any(|k| k == snapshot_key));
    fails_with(&skiffd, &["container", "rm", "c1"], "not found")?;
    // No scratch mount is left.
    let mounts = skiff_tests::mounts_under(&skiffd.root());
    ensure!(
        mounts
            .iter()
            .all(|m| !m.to_string_lossy().contains("scratch")),
        "{mounts:?}"
    );
    Ok(())
}
