//! `skiff-bench corpus build|push`: the benchmark's images, made offline and pushed in the three variants
//! the workloads name: `org` (plain gzip), `esgz` (eStargz, `ctr-remote image convert`) and `esgzopt`
//! (eStargz optimized for the workload, `ctr-remote image optimize`, which runs the workload's command in
//! a throwaway containerd to record what it reads).
//!
//! Built so far: `busybox` (busybox-static with a 64 MiB file the workload never reads, the shape of a
//! large image whose start needs little of it). The Debian-based images (python3, numpy/pandas, built with
//! debootstrap from the machine's apt sources) are not built yet.

pub mod dir_layer;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use skiff_tests::{
    convert_estargz, optimize_estargz, require, Containerd, ImageSpec, LayerSpec, Registry,
};

use crate::coldstart::workloads;

#[derive(Debug, Subcommand)]
pub enum CorpusCommand {
    /// Build the corpus images as OCI layouts (tag `org`) under DIR/NAME.
    Build {
        #[arg(long, default_value = "bench-corpus")]
        out: PathBuf,
    },
    /// Push the corpus (built with `build`, or built now) as NAME:org, NAME:esgz and NAME:esgzopt.
    Push(PushArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// A running registry, HOST:PORT (plain HTTP).
    #[arg(
        long,
        conflicts_with = "registry_dir",
        required_unless_present = "registry_dir"
    )]
    pub registry: Option<String>,
    /// Or a registry storage directory: a docker-registry is started over it for the push (what
    /// `skiff-bench run --registry-dir` serves).
    #[arg(long)]
    pub registry_dir: Option<PathBuf>,
    /// Layouts from `corpus build`; built in a temporary directory when absent.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// The workloads whose commands optimize the esgzopt variants.
    #[arg(long, default_value = "bench/workloads.toml")]
    pub workloads: PathBuf,
}

/// The corpus: image name (a repository of the benchmark registry) and how to build it.
pub fn images() -> Vec<(&'static str, ImageSpec)> {
    vec![(
        "busybox",
        ImageSpec::new()
            .busybox()
            .layer(
                LayerSpec::new()
                    .generated_file("data/unread.bin", 64 << 20, 17)
                    .file("etc/motd", "skiff benchmark\n"),
            )
            .cmd(&["/bin/sh", "-c", "echo ready"]),
    )]
}

pub fn run(command: &CorpusCommand) -> Result<()> {
    match command {
        CorpusCommand::Build { out } => {
            build(out)?;
            Ok(())
        }
        CorpusCommand::Push(args) => push(args),
    }
}

/// Writes each image's OCI layout to `out/NAME` (tag `org`); returns the names.
pub fn build(out: &Path) -> Result<Vec<&'static str>> {
    require(&["busybox"])?;
    let mut names = Vec::new();
    for (name, spec) in images() {
        let dir = out.join(name);
        let image = spec
            .write_layout(&dir, "org")
            .with_context(|| format!("build corpus image {name}"))?;
        println!(
            "built {name}:org {} in {}",
            image.manifest_digest,
            dir.display()
        );
        names.push(name);
    }
    Ok(names)
}

fn push(args: &PushArgs) -> Result<()> {
    require(&["root", "skopeo", "containerd", "ctr-remote", "runc"])?;
    let served;
    let host = match (&args.registry, &args.registry_dir) {
        (Some(host), _) => host.clone(),
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            served = Registry::serve_storage(dir)?;
            served.host()
        }
        (None, None) => bail!("--registry or --registry-dir is needed"),
    };
    let workloads = workloads::load(&args.workloads)?;
    let built;
    let from = match &args.from {
        Some(from) => from.clone(),
        None => {
            built = tempfile::tempdir()?;
            build(built.path())?;
            built.path().to_path_buf()
        }
    };
    let converter = Containerd::start()?;
    for (name, _) in images() {
        let layout = from.join(name);
        let status = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--preserve-digests"])
            .arg(format!("oci:{}:org", layout.display()))
            .arg(format!("docker://{host}/{name}:org"))
            .status()
            .context("run skopeo")?;
        if !status.success() {
            bail!("skopeo copy of {name}:org to {host} failed: {status}");
        }
        println!("pushed {host}/{name}:org");
        let esgz = convert_estargz(
            &converter,
            &host,
            &format!("{name}:org"),
            &format!("{name}:esgz"),
            None,
        )?;
        println!("pushed {host}/{name}:esgz {esgz}");
        match workloads.iter().find(|w| w.image == name) {
            Some(workload) => {
                let optimized = optimize_estargz(
                    &converter,
                    &host,
                    &format!("{name}:org"),
                    &format!("{name}:esgzopt"),
                    &workload.command,
                    3,
                )?;
                println!("pushed {host}/{name}:esgzopt {optimized}");
            }
            None => println!("no workload names {name}: no esgzopt variant"),
        }
    }
    Ok(())
}
