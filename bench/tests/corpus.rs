//! `skiff-bench corpus push --registry-dir` as a user runs it: the corpus lands in a registry storage dir
//! as NAME:org (gzip), NAME:esgz (eStargz, TOC digests annotated) and NAME:esgzopt (eStargz optimized for
//! the workload: its layers carry the prefetch landmark), NAME:zstd and NAME:zstdopt (the same as
//! zstd:chunked), which `skiff-bench run --registry-dir` serves.

use std::process::Command;

use anyhow::{ensure, Context};
use skiff_tests::{cargo_bin, require, Registry};

const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

#[test]
fn the_corpus_is_pushed_in_every_variant() -> anyhow::Result<()> {
    require(&[
        "root",
        "docker-registry",
        "skopeo",
        "containerd",
        "ctr-remote",
        "runc",
        "busybox",
    ])?;
    let dir = tempfile::tempdir()?;
    let storage = dir.path().join("registry");
    let workloads = dir.path().join("workloads.toml");
    std::fs::write(
        &workloads,
        "[[workload]]\nimage = \"busybox\"\nvariants = [\"org\", \"esgz\", \"esgzopt\"]\ncommand = [\"/bin/sh\", \"-c\", \"cat /etc/motd; echo ready\"]\nready = \"^ready$\"\n",
    )?;
    let output = Command::new(cargo_bin("skiff-bench")?)
        .args(["corpus", "push", "--registry-dir"])
        .arg(&storage)
        // busybox only: the Debian images take minutes and the network to build (see README).
        .args(["--images", "busybox"])
        .arg("--workloads")
        .arg(&workloads)
        .output()
        .context("run skiff-bench corpus push")?;
    ensure!(
        output.status.success(),
        "corpus push failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let registry = Registry::serve_storage(&storage)?;
    let manifest = |tag: &str| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(
            &registry.raw_manifest(&format!("busybox:{tag}"))?,
        )?)
    };
    let org = manifest("org")?;
    ensure!(
        org["layers"].as_array().is_some_and(|l| l.len() == 2),
        "{org}"
    );
    for tag in ["esgz", "esgzopt"] {
        let lazy = manifest(tag)?;
        let layers = lazy["layers"].as_array().context("layers")?;
        ensure!(
            layers
                .iter()
                .all(|l| l["annotations"][TOC_DIGEST].is_string()),
            "{tag}: {lazy}"
        );
    }
    for tag in ["zstd", "zstdopt"] {
        let lazy = manifest(tag)?;
        let layers = lazy["layers"].as_array().context("layers")?;
        ensure!(
            layers.len() == 2
                && layers
                    .iter()
                    .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"),
            "{tag}: {lazy}"
        );
    }
    Ok(())
}
