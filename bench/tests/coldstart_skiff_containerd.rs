//! The skiff modes end to end: an eStargz image (converted by `ctr-remote`) behind a shaped link; a
//! fresh skiffd (+ containerd, for skiff-containerd) per cold start; `skiff image rpull` and `ctr`, or
//! `skiff image pull` and `skiff task start`, until the ready line. With background fetching off, a
//! start reads only what the command needs: far less than the image.

use std::net::SocketAddr;

use skiff_bench::coldstart::skiff::SkiffMode;
use skiff_bench::coldstart::skiff_containerd::SkiffContainerdMode;
use skiff_bench::coldstart::{workloads, Mode, Temperature};
use skiff_bench::link::{Profile, ShapedLink};
mod common;

const UNREAD: usize = 16 << 20;

#[test]
fn a_lazy_cold_start_through_containerd_and_skiffd() -> anyhow::Result<()> {
    lazy_cold_and_warm_start(&mut SkiffContainerdMode::new(false))
}

#[test]
fn a_lazy_cold_start_with_skiff_alone() -> anyhow::Result<()> {
    lazy_cold_and_warm_start(&mut SkiffMode::new(false))
}

fn lazy_cold_and_warm_start(mode: &mut dyn Mode) -> anyhow::Result<()> {
    let registry = common::busybox_registry("/data/unread.bin", UNREAD, 9, true)?;
    let workload = workloads::parse(
        r#"
[[workload]]
image = "bb"
variants = ["esgz"]
command = ["/bin/sh", "-c", "echo ready; sleep 60"]
ready = "^ready$"
"#,
    )?
    .remove(0);

    let runtime = tokio::runtime::Runtime::new()?;
    let upstream: SocketAddr = registry.host().parse()?;
    let link = runtime.block_on(ShapedLink::start(upstream, Profile::NONE))?;
    let reference = format!("{}/{}", link.addr(), workload.reference("esgz"));
    let before = link.stats();
    let cold = mode.start(&reference, &workload, "lazy-1", Temperature::Cold)?;
    let fetched = (link.stats() - before).downstream_bytes;
    assert!(!cold.run.is_zero() && !cold.pull.is_zero(), "{cold:?}");
    assert!(
        fetched > 0 && fetched * 4 < UNREAD as u64,
        "a lazy start fetched {fetched} bytes of an image with {UNREAD} unread bytes"
    );
    let warm = mode.start(&reference, &workload, "lazy-2", Temperature::Warm)?;
    assert!(!warm.run.is_zero());
    drop(link);
    Ok(())
}
