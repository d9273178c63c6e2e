//! The skiff modes end to end: an eStargz image (converted by `ctr-remote`) behind a shaped link; a
//! fresh skiffd (+ containerd, for skiff-containerd) per cold start; `skiff image rpull` and `ctr`, or
//! `skiff image pull` and `skiff task start`, until the ready line. With background fetching off, a
//! start reads only what the command needs: far less than the image.

use common::lazy_cold_and_warm_start;
use skiff_bench::coldstart::skiff::SkiffMode;
use skiff_bench::coldstart::skiff_containerd::SkiffContainerdMode;
mod common;

#[test]
fn a_lazy_cold_start_through_containerd_and_skiffd() -> anyhow::Result<()> {
    lazy_cold_and_warm_start(&mut SkiffContainerdMode::new(false))
}

#[test]
fn a_lazy_cold_start_with_skiff_alone() -> anyhow::Result<()> {
    lazy_cold_and_warm_start(&mut SkiffMode::new(false))
}
