//! The README's quick start, the main job: a local docker-registry, an image built and pushed to it and
//! converted to eStargz by `ctr-remote`, a private skiffd, and `skiff run` of the eStargz image — pulled
//! lazily (its layers FUSE-mounted, their blobs never downloaded) and started with runc. A counting proxy
//! in front of the registry shows how few bytes the start needed. Everything started here is stopped and
//! removed at the end, also on failure.

use std::process::{Command, ExitCode};

use anyhow::{ensure, Context, Result};
use skiff_tests::{
    cargo_bin, convert_estargz, lazy_mounts_under, require, write_lazy_skiffd_config, Containerd,
    FaultProxy, ImageSpec, LayerSpec, Registry, RegistryAuth, Skiffd, SkiffdOptions,
};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff-quickstart: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn run() -> Result<()> {
    require(&[
        "root",
        "/dev/fuse",
        "docker-registry",
        "skopeo",
        "busybox",
        "containerd",
        "ctr-remote",
        "runc",
        "overlayfs",
    ])?;

    step("starting docker-registry on 127.0.0.1");
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    println!("registry at {}", registry.url());

    step("building a busybox image with a 32 MiB data file and pushing it");
    let layout = ImageSpec::new()
        .busybox()
        .layer(
            LayerSpec::new()
                .generated_file("data/blob.bin", 32 << 20, 1)
                .file("etc/motd", "hello from a lazily pulled container\n"),
        )
        .cmd(&["/bin/sh", "-c", "cat /etc/motd"])
        .build_layout()?;
    registry.push(&layout, "demo/busybox:org")?;

    step("converting it to eStargz with ctr-remote (in a throwaway containerd)");
    {
        let converter = Containerd::start()?;
        convert_estargz(
            &converter,
            &registry.host(),
            "demo/busybox:org",
            "demo/busybox:esgz",
            None,
        )?;
    }
    let proxy = FaultProxy::in_front_of(&registry)?;
    let reference = format!("{}/demo/busybox:esgz", proxy.host());
    println!("image {reference}");

    step("starting skiffd on a temporary root (registry over plain HTTP, no background fetching)");
    let config = tempfile::tempdir()?;
    let skiffd = Skiffd::start_with(SkiffdOptions {
        config: Some(write_lazy_skiffd_config(config.path(), &proxy.host())?),
        ..SkiffdOptions::default()
    })?;
    println!(
        "skiffd pid {:?}, socket {}",
        skiffd.pid(),
        skiffd.socket().display()
    );

    let skiff = cargo_bin("skiff")?;
    let cli = |args: &[&str]| -> Result<()> {
        println!("$ skiff {}", args.join(" "));
        let status = Command::new(&skiff)
            .arg("--address")
            .arg(skiffd.socket())
            .args(args)
            .status()
            .context("run skiff")?;
        ensure!(
            status.success(),
            "skiff {} failed: {status}",
            args.join(" ")
        );
        Ok(())
    };

    step("running the eStargz image: pulled lazily, started with runc");
    cli(&["run", "--rm", "--plain-http", &reference, "demo"])
        .with_context(|| format!("skiffd log:\n{}", skiffd.log()))?;
    let mounts = lazy_mounts_under(&skiffd.root())?;
    ensure!(!mounts.is_empty(), "no layer was mounted lazily");
    let fetched = proxy.bytes_matching("/blobs/");
    let manifest: serde_json::Value =
        serde_json::from_slice(&registry.raw_manifest("demo/busybox:esgz")?)?;
    let total: u64 = manifest["layers"]
        .as_array()
        .context("manifest without layers")?
        .iter()
        .filter_map(|layer| layer["size"].as_u64())
        .sum();
    cli(&["image", "ls"])?;

    step("done; stopping skiffd and the registry");
    println!(
        "skiff started {reference} with {} layers FUSE-mounted, having fetched {fetched} bytes of layer \
         blobs from the registry; the image's layers hold {total} bytes.",
        mounts.len()
    );
    Ok(())
}
