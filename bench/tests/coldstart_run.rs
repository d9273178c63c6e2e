//! `skiff-bench run` as a user runs it: a registry storage dir holding a plain and an eStargz variant of
//! an image, a workloads file, all three modes, one cold and one warm start each; results.csv has
//! the pinned columns and a row per start, chart.png is drawn, and the table compares against the
//! overlayfs baseline.

use std::process::Command;

use anyhow::{ensure, Context};
use skiff_tests::cargo_bin;

mod common;

#[test]
fn run_writes_a_row_per_start_with_the_pinned_columns() -> anyhow::Result<()> {
    let registry = common::busybox_registry("/data/blob.bin", 4 << 20, 3, true)?;
    let dir = tempfile::tempdir()?;
    let workloads = dir.path().join("workloads.toml");
    std::fs::write(
        &workloads,
        "[[workload]]\nimage = \"bb\"\nvariants = [\"org\", \"esgz\"]\ncommand = [\"/bin/sh\", \"-c\", \"echo ready\"]\nready = \"^ready$\"\n",
    )?;
    let out = dir.path().join("out");
    let output = Command::new(cargo_bin("skiff-bench")?)
        .args(["run", "--profile", "none", "--runs", "1", "--json"])
        .args(["--modes", "overlayfs,skiff,skiff-containerd,skiff-ondemand"])
        .arg("--workloads")
        .arg(&workloads)
        .arg("--registry-dir")
        .arg(registry.storage_dir())
        .arg("--out")
        .arg(&out)
        .output()
        .context("run skiff-bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "skiff-bench run failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(stdout.contains("link none"), "no link report:\n{stdout}");

    let csv = std::fs::read_to_string(out.join("results.csv"))?;
    let mut lines = csv.lines();
    let header = lines.next().context("empty results.csv")?;
    for column in [
        "image",
        "variant",
        "mode",
        "profile",
        "run",
        "pull_s",
        "create_s",
        "run_s",
        "total_s",
        "registry_bytes",
        "workload",
        "ready_bytes",
        "read_bytes",
    ] {
        ensure!(
            header.split(',').any(|c| c == column),
            "results.csv lacks column {column}: {header}"
        );
    }
    let rows: Vec<&str> = lines.collect();
    // 2 variants × 4 modes × (cold + warm).
    ensure!(rows.len() == 16, "{} rows:\n{csv}", rows.len());
    for mode in ["overlayfs", "skiff", "skiff-containerd", "skiff-ondemand"] {
        for variant in ["org", "esgz"] {
            ensure!(
                rows.iter()
                    .filter(|r| r.contains(&format!(",{variant},{mode},none,")))
                    .count()
                    == 2,
                "no cold and warm rows for {mode} {variant}:\n{csv}"
            );
        }
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json"))?)?;
    let json = json.as_array().context("results.json is no array")?;
    ensure!(json.len() == 16);
    // A lazy cold start without background fetching: what the workload read (the busybox binary, at
    // least in part) and what the registry sent before the ready line, never more than in all.
    let lazy = json
        .iter()
        .find(|r| {
            r["mode"] == "skiff-ondemand" && r["variant"] == "esgz" && r["temperature"] == "cold"
        })
        .context("no skiff-ondemand esgz cold row")?;
    let read = lazy["read_bytes"].as_u64().context("no read_bytes")?;
    let ready = lazy["ready_bytes"].as_u64().context("no ready_bytes")?;
    let all = lazy["registry_bytes"]
        .as_u64()
        .context("no registry_bytes")?;
    ensure!(read > 0 && ready > 0 && ready <= all, "{lazy}");
    ensure!(json
        .iter()
        .filter(|r| r["mode"] == "overlayfs")
        .all(|r| r["read_bytes"].is_null()));
    ensure!(
        stdout.contains("registry bytes ÷ bytes read"),
        "no lazy summary:\n{stdout}"
    );
    let png = std::fs::read(out.join("chart.png"))?;
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 2000,
        "chart.png is not a drawn PNG ({} bytes)",
        png.len()
    );
    ensure!(
        stdout.contains("skiff-containerd") && stdout.contains("÷ baseline"),
        "no table:\n{stdout}"
    );
    Ok(())
}
