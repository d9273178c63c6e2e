//! `skiff-bench memory` as a user runs it: an eStargz image with a 4 MiB file, pulled lazily by a fresh
//! skiffd (real registry, FUSE) and fetched whole in the background; memory.csv has the row with the
//! pinned columns, skiffd's RSS and the bound.

use anyhow::{ensure, Context};

mod common;

#[test]
fn memory_reports_rss_against_the_bound_once_the_image_is_cached() -> anyhow::Result<()> {
    let registry = common::busybox_registry("/data/blob.bin", 4 << 20, 9, true)?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let stdout = common::run_bench(
        &[
            "memory",
            "--profile",
            "none",
            "--runs",
            "1",
            "--image",
            "bb:esgz",
        ],
        &registry,
        &out,
    )?;
    ensure!(stdout.contains("RSS ÷ bound"), "no table:\n{stdout}");
    let (header, rows) = common::read_csv(
        &out.join("memory.csv"),
        &[
            "run",
            "image",
            "lazy_layers",
            "mounted_files",
            "bytes_fetched",
            "memory_bytes",
            "rss_bytes",
            "peak_rss_bytes",
            "bound_bytes",
            "rss_to_bound",
        ],
    )?;
    ensure!(rows.len() == 1, "one row expected: {rows:?}");
    let get = |name: &str| -> anyhow::Result<u64> {
        let i = header.iter().position(|h| h == name).context("column")?;
        Ok(rows[0][i].parse()?)
    };
    ensure!(get("lazy_layers")? >= 1, "no lazy layer: {rows:?}");
    // busybox and the data layer: /bin, /bin/busybox, /data, /data/blob.bin at least.
    ensure!(get("mounted_files")? >= 4, "{rows:?}");
    // The 4 MiB file came in whole, in the background.
    ensure!(get("bytes_fetched")? >= 1 << 20, "{rows:?}");
    ensure!(get("rss_bytes")? > 0 && get("peak_rss_bytes")? >= get("rss_bytes")?);
    Ok(())
}
