//! The cold-start harness: workloads, the modes that start them, and the measurements of one start. It
//! drives skiff and containerd the way a user does (their binaries) and knows none of their internals.
//!
//! A [`Mode`] starts one image variant for one workload, cold or warm ([`Temperature`]), and reports
//! [`StartTimes`] (pull, create, run to the ready line; for a lazy start by skiffd also what its layers
//! fetched for readers, [`LazyReads`]); the registry sits behind a [`crate::link::ShapedLink`], whose
//! counters give the bytes each start fetched. A cold start gets fresh daemons (empty caches) and a
//! dropped page cache ([`daemons_for`]); a warm one reuses what the last start left.
//!
//! | mode | module | how a start runs |
//! | --- | --- | --- |
//! | `overlayfs` | [`overlayfs`] | a fresh containerd, `ctr image pull` (full pull), `ctr` create and start |
//! | `skiff`, `skiff-ondemand` | [`skiff`] | a fresh skiffd, `skiff image pull`, `skiff container create`, `skiff task start`; `-ondemand` with background fetching off |
//! | `skiff-containerd` | [`skiff_containerd`] | containerd with skiffd as its proxy snapshotter, `skiff image rpull`, `ctr` |
//! | `stargz` (peer) | [`stargz`] | containerd with stargz-snapshotter's daemon, `ctr-remote image rpull`, `ctr`; when the daemon is found |
//!
//! Entry points: [`run`] (`skiff-bench run`: every workload × variant × mode, cold and warm; a table,
//! `results.csv`, with `--json` `results.json`, `chart.png` via [`chart`]) and [`concurrent`] (`skiff-bench
//! concurrent`). [`workloads`] reads the workloads file, [`ready`] times a command to its ready line. A
//! new mode implements [`Mode`] in a module of its own and is named in `run::MODES`.

pub mod chart;
pub mod concurrent;
pub mod overlayfs;
pub mod ready;
pub mod run;
pub mod skiff;
pub mod skiff_containerd;
pub mod stargz;
pub mod workloads;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use tokio::runtime::Handle;

pub use workloads::Workload;

/// How long each phase of one start took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StartTimes {
    /// Fetching the image (a full pull, or a lazy pull's manifest, config and TOCs).
    pub pull: Duration,
    /// Creating the container (snapshot, spec).
    pub create: Duration,
    /// From starting the task to the workload's ready line.
    pub run: Duration,
    /// When the ready line was read.
    pub ready_at: Option<Instant>,
    /// For a lazy start by skiffd, up to the ready line: bytes its lazy layers fetched for readers
    /// (not ahead of them) and bytes the workload read through FUSE.
    pub lazy: Option<LazyReads>,
}

/// What a lazily started workload read and what that cost, up to its ready line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LazyReads {
    /// Compressed bytes fetched because a reader asked (prefetch and background fetching excluded).
    pub demand_bytes: u64,
    /// Uncompressed bytes the workload's reads returned.
    pub read_bytes: u64,
}

impl StartTimes {
    pub fn total(&self) -> Duration {
        self.pull + self.create + self.run
    }
}

/// Whether a start finds nothing cached (fresh daemon state, page cache dropped) or what an earlier start
/// of the same image left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temperature {
    Cold,
    Warm,
}

/// One way of starting containers (a column of the results).
pub trait Mode {
    /// The name used in `--modes` and in the results.
    fn name(&self) -> &'static str;
    /// Starts `reference` (`HOST:PORT/repository:tag`) with the workload's command until its ready line,
    /// as container `id`, then stops and removes the container (keeping the image for a warm start).
    fn start(
        &mut self,
        reference: &str,
        workload: &Workload,
        id: &str,
        temperature: Temperature,
    ) -> Result<StartTimes>;
    /// Stops the daemons kept for a warm start, so that nothing they still do (a lazy layer's background
    /// fetching) is counted in another mode's start.
    fn stop(&mut self);
}

/// What sets one containerd mode apart: its daemons (a fresh containerd, and the snapshotter behind it if
/// any), the command that pulls, and the snapshotter containers are created on.
pub trait ContainerdSetup {
    /// The daemons of one cold start; dropping them stops them.
    type Daemons;
    fn name(&self) -> &'static str;
    fn start_daemons(&self, reference: &str) -> Result<Self::Daemons>;
    fn containerd(daemons: &Self::Daemons) -> &skiff_tests::Containerd;
    /// The pull, as a user would type it.
    fn pull(&self, daemons: &Self::Daemons, reference: &str) -> Result<std::process::Command>;
    /// The log to show when the pull fails: the snapshotter's, or containerd's.
    fn log(daemons: &Self::Daemons) -> String;
    /// `ctr --snapshotter`, when not containerd's default.
    fn snapshotter(&self) -> Option<&'static str>;
}

/// A mode that starts containers through containerd ([`containerd_start`]) on the daemons `S` sets up;
/// a cold start gets new daemons.
pub struct ContainerdMode<S: ContainerdSetup> {
    setup: S,
    daemons: Option<S::Daemons>,
}

impl<S: ContainerdSetup> ContainerdMode<S> {
    pub fn with(setup: S) -> Self {
        ContainerdMode {
            setup,
            daemons: None,
        }
    }
}

impl<S: ContainerdSetup> Mode for ContainerdMode<S> {
    fn name(&self) -> &'static str {
        self.setup.name()
    }

    fn stop(&mut self) {
        self.daemons = None;
    }

    fn start(
        &mut self,
        reference: &str,
        workload: &Workload,
        id: &str,
        temperature: Temperature,
    ) -> Result<StartTimes> {
        let setup = &self.setup;
        let daemons = daemons_for(&mut self.daemons, temperature, || {
            setup.start_daemons(reference)
        })?;
        containerd_start(
            S::containerd(daemons),
            &mut setup.pull(daemons, reference)?,
            || S::log(daemons),
            setup.snapshotter(),
            reference,
            id,
            workload,
        )
    }
}

/// The daemons a start runs on: for a warm start those the last start left in `slot`; for a cold one
/// (or when there are none) the old ones are dropped first (removing their state: every cached layer),
/// fresh ones started, and the page cache dropped.
pub fn daemons_for<T>(
    slot: &mut Option<T>,
    temperature: Temperature,
    start: impl FnOnce() -> Result<T>,
) -> Result<&T> {
    if temperature == Temperature::Cold || slot.is_none() {
        *slot = None;
        *slot = Some(start()?);
        drop_caches()?;
    }
    Ok(slot.as_ref().expect("daemons were just started"))
}

/// What `run` and `concurrent` share: the link, the workloads, the registry's storage, the number of
/// runs and where the results go.
#[derive(Debug, Args)]
pub struct BedArgs {
    /// Network profile between the registry and everything else: lan, wan, slow or none.
    #[arg(long, default_value = "wan")]
    pub profile: crate::link::Profile,
    /// The workloads file (commands and ready lines).
    #[arg(long, default_value = "bench/workloads.toml")]
    pub workloads: PathBuf,
    /// A docker-registry storage directory holding the workload images (as `corpus push` fills it).
    #[arg(long)]
    pub registry_dir: PathBuf,
    /// Runs: cold and warm starts per image variant and mode (`run`), or one single and one concurrent
    /// cold start (`concurrent`).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the results (results.csv, chart.png, results.json; concurrent.csv) go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

/// Longest a workload may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Drops the page cache, dentries and inodes (root), so a cold start reads from disk or the network.
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| anyhow::anyhow!("drop the page cache (needs root): {e}"))
}

/// A start on containerd: `pull` (a `ctr`-like command fetching the image, which must succeed; its error
/// carries `log`, the log of the daemon behind it), then `ctr_create_and_run` with `snapshotter`.
pub fn containerd_start(
    containerd: &skiff_tests::Containerd,
    pull: &mut std::process::Command,
    log: impl FnOnce() -> String,
    snapshotter: Option<&str>,
    reference: &str,
    id: &str,
    workload: &Workload,
) -> Result<StartTimes> {
    use anyhow::Context;
    let started = Instant::now();
    let output = pull.output().with_context(|| format!("run {pull:?}"))?;
    if !output.status.success() {
        bail!(
            "{pull:?} failed ({}): {}\nits daemon's log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            log()
        );
    }
    let pull = started.elapsed();
    let (create, run, ready_at) =
        ctr_create_and_run(containerd, snapshotter, reference, id, workload)?;
    Ok(StartTimes {
        pull,
        create,
        run,
        ready_at: Some(ready_at),
        lazy: None,
    })
}

/// `ctr container create [--snapshotter S] REF ID -- COMMAND` and `ctr task start ID` until the ready line,
/// then the container is killed and removed (the image stays). Returns (create, run) times and when the
/// ready line came.
fn ctr_create_and_run(
    containerd: &skiff_tests::Containerd,
    snapshotter: Option<&str>,
    reference: &str,
    id: &str,
    workload: &Workload,
) -> Result<(Duration, Duration, Instant)> {
    let started = std::time::Instant::now();
    let mut create = vec!["container", "create"];
    if let Some(snapshotter) = snapshotter {
        create.extend(["--snapshotter", snapshotter]);
    }
    // `--`: the command's own flags (`sh -c`) are not ctr's.
    create.extend([reference, id, "--"]);
    create.extend(workload.command.iter().map(String::as_str));
    containerd.ctr_ok(&create)?;
    let create = started.elapsed();

    let outcome = ready::run_until_ready(
        std::process::Command::new("ctr")
            .arg("-a")
            .arg(containerd.socket())
            .args(["task", "start", id]),
        &workload.ready,
        READY_TIMEOUT,
    );
    // Whatever happened, the container goes.
    let _ = containerd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    let mut ready = outcome?;
    let _ = ready.child.wait();
    let _ = containerd.ctr(&["task", "delete", "-f", id]);
    containerd.ctr_ok(&["container", "delete", id])?;
    Ok((create, ready.elapsed, ready.at))
}

/// A fresh skiffd (own root: an empty chunk cache) that reaches the registry of `reference`
/// (`HOST:PORT/…`) over plain HTTP, with background fetching as asked; the config dir lives as long as
/// the returned `TempDir`.
pub fn fresh_skiffd(
    reference: &str,
    background_fetch: bool,
) -> Result<(skiff_tests::Skiffd, tempfile::TempDir)> {
    use anyhow::Context;
    let host = reference
        .split_once('/')
        .map(|(host, _)| host)
        .context("reference without a registry host")?;
    let config = tempfile::Builder::new()
        .prefix("skiff-bench-config-")
        .tempdir()?;
    let path = skiff_tests::write_skiffd_config(config.path(), host, background_fetch)?;
    let skiffd = skiff_tests::Skiffd::start_with(skiff_tests::SkiffdOptions {
        config: Some(path),
        ..skiff_tests::SkiffdOptions::default()
    })?;
    Ok((skiffd, config))
}

/// Set by SIGINT (Ctrl-C) or SIGTERM once [`watch_interrupts`] runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// From now on SIGINT (Ctrl-C) and SIGTERM no longer end the process: they set a flag. The daemons the
/// harness starts run in their own process groups, so a Ctrl-C reaches the harness (and the client of the
/// start in progress) but not them; the start in progress gives up ([`ready::run_until_ready`] looks at
/// the flag), the harness starts nothing more, and dropping what it started stops the daemons, unmounts
/// and removes their directories.
pub fn watch_interrupts(runtime: &Handle) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let _guard = runtime.enter();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    runtime.spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!(
                    "skiff-bench: interrupted; stopping what it started (containers, daemons, mounts, \
                     the link and the registry)"
                );
            }
        }
    });
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once interrupted, for `?` between steps.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// What `run` and `concurrent` start with: `out` created, interrupts watched, the profile's link checked
/// and reported, then a docker-registry over `registry_dir` behind a shaped link.
pub fn serve_behind_link(
    bed: &BedArgs,
    runtime: &Handle,
) -> Result<(skiff_tests::Registry, crate::link::ShapedLink)> {
    use anyhow::Context;
    let BedArgs {
        registry_dir,
        out,
        profile,
        ..
    } = bed;
    let profile = *profile;
    // Before the link check, which takes a while.
    if !registry_dir.is_dir() {
        bail!(
            "registry storage {} is not a directory (fill it with `skiff-bench corpus push --registry-dir DIR`)",
            registry_dir.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    watch_interrupts(runtime)?;
    let check = crate::link_check::check_profile(profile, 100, 100, runtime)?;
    println!("{}", check.report());
    check_interrupted()?;
    let registry = skiff_tests::Registry::serve_storage(registry_dir)?;
    let upstream: std::net::SocketAddr = registry.host().parse()?;
    let link = runtime.block_on(crate::link::ShapedLink::start(upstream, profile))?;
    Ok((registry, link))
}
