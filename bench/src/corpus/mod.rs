//! `skiff-bench corpus build|push`: the benchmark's images, made offline and pushed in the variants the
//! workloads name: `org` (plain gzip), `esgz` (eStargz, `ctr-remote image convert`), `esgzopt` (eStargz
//! optimized for the workload, `ctr-remote image optimize`, which runs the workload's command in a
//! throwaway containerd to record what it reads), and `zstd` / `zstdopt` (the same as zstd:chunked).
//!
//! The corpus ([`images`]):
//! - `busybox`: busybox-static with a 64 MiB file the workload never reads, the shape of a large image
//!   whose start needs little of it (built with the test kit's `ImageSpec`);
//! - `python3`: a Debian minbase root filesystem (`debootstrap` from the machine's own apt sources, of the
//!   host's release) and a layer with `apt-get install python3`;
//! - `numpy`: the `python3` image's layers and a layer with `pip install numpy pandas` (PyPI wheels);
//! - `node`: Debian minbase with `apt-get install nodejs`, and a layer with an Express server
//!   (`npm install express` and its `server.js`), whose workload waits for the server's ready line.
//!
//! The Debian layers are built by [`debian`] (chroot installs on overlayfs, each upper directory a layer,
//! written by [`dir_layer`]; PyPI and npm layers by [`packages`]) and cached with the downloads under
//! `--cache`, so a rebuild only writes the layouts.
//!
//! `build` writes each image as an OCI layout (tag `org`) under `--out`. `push` pushes `org` and the lazy
//! variants ([`LAZY_VARIANTS`], chosen with `--variants`) to a running registry, or to a registry storage
//! directory over which it starts a docker-registry (what `skiff-bench run --registry-dir` serves); it
//! converts and optimizes with the test kit's throwaway containerd, the optimized variants recording the
//! command of each image's workload in the workloads file.

pub mod debian;
pub mod dir_layer;
pub mod packages;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use skiff_tests::{
    convert_image, optimize_image, require, Containerd, ImageSpec, LayerSpec, LazyFormat, Registry,
};

use crate::coldstart::workloads;
use debian::{DebianBuilder, Install};

/// The lazy variants pushed beside `org`: each format converted as is, and optimized for the workload.
pub const LAZY_VARIANTS: [(LazyFormat, &str, &str); 2] = [
    (LazyFormat::Estargz, "esgz", "esgzopt"),
    (LazyFormat::ZstdChunked, "zstd", "zstdopt"),
];

/// Where downloads and built layers are kept between builds.
pub const DEFAULT_CACHE: &str = "/var/cache/skiff-bench";

#[derive(Debug, Subcommand)]
pub enum CorpusCommand {
    /// Build the corpus images as OCI layouts (tag `org`) under DIR/NAME.
    Build(BuildArgs),
    /// Push the corpus (built with `build`, or built now) as NAME:org, NAME:esgz, NAME:esgzopt,
    /// NAME:zstd and NAME:zstdopt.
    Push(PushArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[arg(long, default_value = "bench-corpus")]
    pub out: PathBuf,
    #[command(flatten)]
    pub selection: Selection,
}

/// Which images, and where their downloads and layers are cached.
#[derive(Debug, Args)]
pub struct Selection {
    /// Downloads (debootstrap's and apt's) and built Debian layers, reused by later builds.
    #[arg(long, default_value = DEFAULT_CACHE)]
    pub cache: PathBuf,
    /// Only these corpus images (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub images: Vec<String>,
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
    /// The lazy variants to push beside `org` (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "esgz,esgzopt,zstd,zstdopt",
        value_parser = clap::builder::PossibleValuesParser::new(["esgz", "esgzopt", "zstd", "zstdopt"])
    )]
    pub variants: Vec<String>,
    /// The workloads whose commands optimize the esgzopt and zstdopt variants.
    #[arg(long, default_value = "bench/workloads.toml")]
    pub workloads: PathBuf,
    #[command(flatten)]
    pub selection: Selection,
}

/// How a corpus image is made.
#[derive(Debug, Clone)]
pub enum Recipe {
    /// Declared entry by entry with the test kit.
    Kit(Box<ImageSpec>),
    /// A Debian minbase root filesystem, then one layer per install step (apt without recommends,
    /// pip, npm).
    Debian {
        installs: &'static [Install],
        cmd: &'static [&'static str],
    },
}

/// One image of the corpus: its repository name in the benchmark registry and its recipe.
#[derive(Debug, Clone)]
pub struct CorpusImage {
    pub name: &'static str,
    pub recipe: Recipe,
    /// Seconds `ctr-remote image optimize` watches the workload's file accesses.
    pub optimize_period_secs: u32,
}

/// The `node` image's server: Express on a port of its own, printing `ready` once it listens.
const NODE_SERVER: &str = "\
const express = require('express');
const app = express();
app.get('/', (req, res) => res.send('hello from skiff-bench\\n'));
app.listen(0, () => console.log('ready'));
";

/// The corpus, smallest first.
pub fn images() -> Vec<CorpusImage> {
    vec![
        CorpusImage {
            name: "busybox",
            recipe: Recipe::Kit(Box::new(
                ImageSpec::new()
                    .busybox()
                    .layer(
                        LayerSpec::new()
                            .generated_file("data/unread.bin", 64 << 20, 17)
                            .file("etc/motd", "skiff benchmark\n"),
                    )
                    .cmd(&["/bin/sh", "-c", "echo ready"]),
            )),
            optimize_period_secs: 3,
        },
        CorpusImage {
            name: "python3",
            recipe: Recipe::Debian {
                installs: &[Install::Apt(&["python3"])],
                cmd: &["python3"],
            },
            optimize_period_secs: 10,
        },
        CorpusImage {
            name: "numpy",
            recipe: Recipe::Debian {
                installs: &[
                    Install::Apt(&["python3"]),
                    Install::Pip(&["numpy", "pandas"]),
                ],
                cmd: &["python3"],
            },
            optimize_period_secs: 15,
        },
        CorpusImage {
            name: "node",
            recipe: Recipe::Debian {
                installs: &[
                    Install::Apt(&["nodejs"]),
                    Install::Npm {
                        dir: "/opt/app",
                        packages: &["express"],
                        files: &[("server.js", NODE_SERVER)],
                    },
                ],
                cmd: &["node", "/opt/app/server.js"],
            },
            optimize_period_secs: 10,
        },
    ]
}

/// The corpus images `names` selects (all when empty); an unknown name is an error listing the known.
pub fn select(names: &[String]) -> Result<Vec<CorpusImage>> {
    let all = images();
    if names.is_empty() {
        return Ok(all);
    }
    names
        .iter()
        .map(|name| {
            all.iter()
                .find(|image| image.name == name)
                .cloned()
                .with_context(|| {
                    let known: Vec<&str> = all.iter().map(|i| i.name).collect();
                    format!("no corpus image {name:?} (known: {})", known.join(", "))
                })
        })
        .collect()
}

pub fn run(command: &CorpusCommand) -> Result<()> {
    match command {
        CorpusCommand::Build(args) => {
            build(&args.out, &args.selection)?;
            Ok(())
        }
        CorpusCommand::Push(args) => push(args),
    }
}

/// Writes each selected image's OCI layout to `out/NAME` (tag `org`); returns the images.
pub fn build(out: &Path, selection: &Selection) -> Result<Vec<CorpusImage>> {
    let images = select(&selection.images)?;
    let mut needs = Vec::new();
    for image in &images {
        match image.recipe {
            Recipe::Kit(_) => needs.push("busybox"),
            Recipe::Debian { installs, .. } => {
                needs.extend(["root", "debootstrap", "chroot", "overlayfs"]);
                for install in installs {
                    needs.extend(install.needs());
                }
            }
        }
    }
    needs.sort_unstable();
    needs.dedup();
    require(&needs)?;
    let mut debian = None;
    for image in &images {
        let started = Instant::now();
        let dir = out.join(image.name);
        let spec = match &image.recipe {
            Recipe::Kit(spec) => (**spec).clone(),
            Recipe::Debian { installs, cmd } => {
                if debian.is_none() {
                    debian = Some(DebianBuilder::new(&selection.cache)?);
                }
                let builder = debian.as_ref().expect("just set");
                println!(
                    "{}: Debian {} from the host's apt source",
                    image.name,
                    builder.source().suite
                );
                let steps = builder
                    .steps(installs)
                    .with_context(|| format!("build the layers of {}", image.name))?;
                let mut spec = ImageSpec::new().env("LANG=C.UTF-8").cmd(cmd);
                for step in steps {
                    spec = spec.blob_layer(step.layer);
                }
                spec
            }
        };
        if dir.exists() {
            // A fresh layout: blobs of an older build must not linger in it.
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        let built = spec
            .write_layout(&dir, "org")
            .with_context(|| format!("build corpus image {}", image.name))?;
        let size: u64 = built.layers.iter().map(|l| l.size).sum();
        println!(
            "built {}:org {} in {}: {} layers, {:.1} MB compressed, {:.1} s",
            image.name,
            built.manifest_digest,
            dir.display(),
            built.layers.len(),
            size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(images)
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
    let (from, images) = match &args.from {
        Some(from) => (from.clone(), select(&args.selection.images)?),
        None => {
            built = tempfile::tempdir()?;
            let images = build(built.path(), &args.selection)?;
            (built.path().to_path_buf(), images)
        }
    };
    for image in &images {
        let layout = from.join(image.name);
        if !layout.join("index.json").is_file() {
            bail!(
                "{} is not an OCI layout: build it first (skiff-bench corpus build --out {})",
                layout.display(),
                from.display()
            );
        }
    }
    let converter = Containerd::start()?;
    for image in &images {
        let name = image.name;
        let layout = from.join(name);
        let started = Instant::now();
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
        let org = format!("{name}:org");
        let workload = workloads.iter().find(|w| w.image == name);
        let wanted = |tag: &str| args.variants.iter().any(|v| v == tag);
        for (format, tag, optimized_tag) in LAZY_VARIANTS {
            if wanted(tag) {
                let converted = convert_image(
                    &converter,
                    &host,
                    &org,
                    &format!("{name}:{tag}"),
                    None,
                    format,
                )?;
                println!("pushed {host}/{name}:{tag} {}", converted.digest);
            }
            if !wanted(optimized_tag) {
                continue;
            }
            let Some(workload) = workload else {
                println!("no workload names {name}: no {optimized_tag} variant");
                continue;
            };
            let optimized = optimize_image(
                &converter,
                &host,
                &org,
                &format!("{name}:{optimized_tag}"),
                &workload.command,
                image.optimize_period_secs,
                format,
            )
            .with_context(|| format!("optimize {name} for {:?}", workload.command.join(" ")))?;
            println!("pushed {host}/{name}:{optimized_tag} {optimized}");
        }
        println!("{name}: pushed in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_names_match_the_default_workloads() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/workloads.toml"))
            .unwrap();
        let workloads = workloads::parse(&text).unwrap();
        let names: Vec<&str> = images().iter().map(|i| i.name).collect();
        for workload in &workloads {
            assert!(
                names.contains(&workload.image.as_str()),
                "{}",
                workload.image
            );
        }
    }

    #[test]
    fn selects_by_name_and_names_the_unknown() {
        let picked = select(&["numpy".to_string()]).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].name, "numpy");
        assert_eq!(select(&[]).unwrap().len(), images().len());
        let err = select(&["nope".to_string()]).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("python3"), "{err}");
    }
}
