//! `skiff-bench concurrent` as a user runs it: an eStargz image whose workload reads a 4 MiB file, one
//! cold start then three at once on fresh skiffds (real registry, FUSE, runc); concurrent.csv has a row
//! for each, and the three containers reading the same chunks fetched none of them twice.

use anyhow::{ensure, Context};

mod common;

#[test]
fn concurrent_starts_report_ratio_bytes_and_no_duplicate_fetches() -> anyhow::Result<()> {
    let registry = common::busybox_registry("/data/blob.bin", 4 << 20, 5, true)?;
    let dir = tempfile::tempdir()?;
    let workloads = dir.path().join("workloads.toml");
    std::fs::write(
        &workloads,
        "[[workload]]\nimage = \"bb\"\nvariants = [\"esgz\"]\n\
         command = [\"/bin/sh\", \"-c\", \"cat /data/blob.bin > /dev/null && echo ready\"]\nready = \"^ready$\"\n",
    )?;
    let out = dir.path().join("out");
    let workloads = workloads.display().to_string();
    let stdout = common::run_bench(
        &[
            "concurrent",
            "--profile",
            "none",
            "--count",
            "3",
            "--runs",
            "1",
            "--image",
            "bb:esgz",
            "--workloads",
            &workloads,
        ],
        &registry,
        &out,
    )?;
    ensure!(
        stdout.contains("total ÷ single") && stdout.contains("duplicate chunk fetches"),
        "no summary:\n{stdout}"
    );
    let (header, rows) = common::read_csv(
        &out.join("concurrent.csv"),
        &[
            "image",
            "profile",
            "run",
            "containers",
            "total_s",
            "registry_bytes",
            "bytes_fetched",
            "duplicate_fetches",
            "ratio_to_single",
        ],
    )?;
    let column = |name: &str| header.iter().position(|c| c == name).expect("checked");
    ensure!(rows.len() == 2, "{} rows: {rows:?}", rows.len());
    let containers: Vec<&str> = rows.iter().map(|r| &r[column("containers")]).collect();
    ensure!(
        containers == ["1", "3"],
        "containers column: {containers:?}"
    );
    for row in &rows {
        ensure!(&row[column("image")] == "bb:esgz", "{row:?}");
        let number = |name: &str| -> anyhow::Result<f64> {
            row[column(name)]
                .parse()
                .with_context(|| format!("{name} of {row:?}"))
        };
        // Every container read the whole 4 MiB file through the lazy layers.
        ensure!(number("bytes_fetched")? > 4e6, "{row:?}");
        ensure!(
            number("registry_bytes")? >= number("bytes_fetched")?,
            "{row:?}"
        );
        ensure!(number("total_s")? > 0.0, "{row:?}");
        // Single-flight: three readers of the same chunks, each chunk fetched once.
        ensure!(number("duplicate_fetches")? == 0.0, "duplicates: {row:?}");
    }
    Ok(())
}
