//! The README's quick start: a local docker-registry, an image built and pushed to it, a private skiffd,
//! and `skiff image pull` through it, every blob checked with `skiff content fetch`. Everything started
//! here is stopped and removed at the end, also on failure.

use std::process::{Command, ExitCode};

use anyhow::{ensure, Context, Result};
use skiff_tests::{
    cargo_bin, require, sha256_digest, ImageSpec, LayerSpec, Registry, RegistryAuth, Skiffd,
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
    require(&["root", "docker-registry", "skopeo", "busybox"])?;

    step("starting docker-registry on 127.0.0.1");
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    println!("registry at {}", registry.url());

    step("building a busybox image with a 16 MiB data file and pushing it");
    let layout = ImageSpec::new()
        .busybox()
        .layer(
            LayerSpec::new()
                .generated_file("data/blob.bin", 16 << 20, 1)
                .file("etc/motd", "hello from skiff\n"),
        )
        .cmd(&["/bin/sh", "-c", "cat /etc/motd"])
        .build_layout()?;
    let digest = registry.push(&layout, "demo/busybox:latest")?;
    let reference = registry.reference("demo/busybox:latest");
    println!("pushed {reference} ({digest})");

    step("starting skiffd on a temporary root");
    let skiffd = Skiffd::start()?;
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

    step("pulling the image through skiffd");
    cli(&["image", "pull", "--plain-http", &reference])?;
    cli(&["image", "ls"])?;
    cli(&["image", "info", &reference])?;
    cli(&["content", "ls"])?;

    step("checking every blob: skiff content fetch D | sha256sum == D");
    for digest in skiffd
        .skiff_ok(&["content", "ls", "-q"])?
        .lines()
        .map(str::to_string)
    {
        let output = skiffd.skiff(&["content", "fetch", &digest])?;
        ensure!(output.status.success(), "fetch {digest} failed");
        let actual = sha256_digest(&output.stdout);
        ensure!(actual == digest, "{digest} fetched as {actual}");
        println!("ok  {digest}  {} bytes", output.stdout.len());
    }

    step("done; stopping skiffd and the registry");
    println!(
        "skiff pulled {reference} in full. Lazy pulling (FUSE), snapshots and `skiff run` arrive with \
         the next issues."
    );
    Ok(())
}
