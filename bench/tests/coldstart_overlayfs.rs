//! The overlayfs baseline mode end to end: a real docker-registry behind a shaped link, a fresh
//! containerd per cold start, `ctr` pull/create/start until the ready line. A cold start fetches the
//! whole image through the link; a warm start of the same image fetches almost nothing.

use skiff_bench::coldstart::overlayfs::OverlayfsMode;
use skiff_bench::coldstart::{Mode, Temperature};
mod common;

#[test]
fn cold_and_warm_starts_through_the_link() -> anyhow::Result<()> {
    let bed = common::linked_bed(
        "/data/blob.bin",
        2 << 20,
        5,
        "org",
        "echo warming up; echo ready; sleep 60",
    )?;
    let (link, reference, workload) = (&bed.link, &bed.reference, &bed.workload);
    let mut mode = OverlayfsMode::new();

    let before = link.stats();
    let cold = mode.start(reference, workload, "cold-1", Temperature::Cold)?;
    let cold_bytes = (link.stats() - before).downstream_bytes;
    assert!(cold.total() > cold.run && !cold.run.is_zero(), "{cold:?}");
    // The generated 2 MiB do not compress: a full pull fetches at least that.
    assert!(
        cold_bytes > 2 << 20,
        "cold start fetched {cold_bytes} bytes"
    );

    let before = link.stats();
    let warm = mode.start(reference, workload, "warm-1", Temperature::Warm)?;
    let warm_bytes = (link.stats() - before).downstream_bytes;
    assert!(
        warm_bytes * 20 < cold_bytes,
        "warm start fetched {warm_bytes} of the cold start's {cold_bytes} bytes"
    );
    assert!(!warm.run.is_zero());
    drop(mode);
    Ok(())
}
