//! The peer mode end to end: stargz-snapshotter's daemon, built by `bench/peers/stargz/build.sh` from
//! Debian's sources, under a fresh containerd; `ctr-remote image rpull` and `ctr` until the ready line,
//! fetching far less than the image.

use std::process::Command;

use anyhow::{ensure, Context};
use common::lazy_cold_and_warm_start;
use skiff_bench::coldstart::stargz::{StargzMode, BINARY};
mod common;

#[test]
fn a_lazy_cold_start_through_containerd_and_stargz_snapshotter() -> anyhow::Result<()> {
    skiff_tests::require(&["root", "go"])?;
    let bin_dir = tempfile::Builder::new()
        .prefix("skiff-bench-peer-")
        .tempdir()?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/stargz/build.sh");
    let build = Command::new("bash")
        .arg(&script)
        .arg(bin_dir.path())
        .env("SKIP_APT", "1")
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    ensure!(
        build.status.success(),
        "building the stargz peer failed ({}):\n{}\n{}",
        build.status,
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    lazy_cold_and_warm_start(&mut StargzMode::new(bin_dir.path().join(BINARY), false))
}
