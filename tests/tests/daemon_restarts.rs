//! End to end: the daemon may die. Containers on a lazily pulled eStargz image (real runc, FUSE,
//! overlayfs, docker-registry) read and check files in a loop, some already cached and some never read
//! before, while skiffd is killed with SIGKILL and started again 3 s later, then stopped with SIGTERM and
//! started again: the keeper holds the FUSE connections meanwhile, the requests wait in the kernel, and
//! the restarted skiffd takes the mounts over. No read fails, every byte is compared, the containers'
//! processes are the same ones; new containers of the image start; removal leaves no mount or process.
//! With the keeper killed too, the running containers' reads fail (ENOTCONN, as docs/restarts.md says),
//! and the restarted skiffd detaches the dead mounts, mounts the layers afresh, and new containers run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use skiff_tests::{
    convert_in_own_containerd, generated_bytes, lazy_mounts_under, mounts_under, require,
    sha256_digest, wait_until, write_lazy_skiffd_config, FaultProxy, ImageSpec, LayerSpec,
    LazyFormat, Registry, RegistryAuth, Skiffd, SkiffdOptions,
};

const TOOLS: &[&str] = &[
    "root",
    "/dev/fuse",
    "docker-registry",
    "skopeo",
    "containerd",
    "ctr",
    "ctr-remote",
    "busybox",
    "overlayfs",
    "runc",
];

/// Files the containers check, one new file per round: more than a test's rounds, so some are read for
/// the first time only after each restart.
const FILES: usize = 96;
const FILE_BYTES: usize = 160 << 10;

/// A registry with the image converted to eStargz, a skiffd (background fetching off, so unread files
/// stay unfetched) that pulled it lazily, and a host directory the containers report to.
struct Bed {
    skiffd: Skiffd,
    reference: String,
    reports: tempfile::TempDir,
    /// skiffd reaches the registry through it.
    proxy: FaultProxy,
    _registry: Registry,
    _config_dir: tempfile::TempDir,
}

fn bed() -> Result<Bed> {
    bed_with(&[])
}

/// A bed whose skiffd runs with `args` too.
fn bed_with(args: &[&str]) -> Result<Bed> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let mut data = LayerSpec::new().dir("/data");
    let mut sums = String::new();
    for i in 0..FILES {
        let seed = 1000 + i as u64;
        let path = format!("/data/f{i}");
        data = data.generated_file(&path, FILE_BYTES, seed);
        let digest = sha256_digest(&generated_bytes(seed, FILE_BYTES));
        sums.push_str(&format!("{}  {path}\n", &digest["sha256:".len()..]));
    }
    data = data.file("/data/SUMS", sums);
    let image = ImageSpec::new().busybox().layer(data).cmd(&["/bin/sh"]);
    registry.push(&image.build_layout()?, "plain:1")?;
    convert_in_own_containerd(&registry.host(), "plain:1", "lazy:1", LazyFormat::Estargz)?;
    let proxy = FaultProxy::in_front_of(&registry)?;
    let config_dir = tempfile::tempdir()?;
    let config = write_lazy_skiffd_config(config_dir.path(), &proxy.host())?;
    let skiffd = Skiffd::start_with(SkiffdOptions {
        config: Some(config),
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..SkiffdOptions::default()
    })?;
    let reference = format!("{}/lazy:1", proxy.host());
    let pulled = skiffd.skiff(&["image", "pull", "--plain-http", &reference])?;
    ensure!(pulled.status.success(), "pull: {pulled:?}");
    ensure!(
        !String::from_utf8_lossy(&pulled.stderr).contains("not served lazily"),
        "the image was not pulled lazily: {pulled:?}"
    );
    Ok(Bed {
        skiffd,
        reference,
        reports: tempfile::tempdir()?,
        proxy,
        _registry: registry,
        _config_dir: config_dir,
    })
}

/// The loop each container runs: every round checks one file not read before (until all were) and one
/// read in every round (cached), appending `ok N` or `FAIL N FILE` to /out/ID.
fn checker_script(id: &str, offset: usize) -> String {
    format!(
        "n=0; while [ ! -e /out/stop ]; do \
           f=$(( ({offset} + n) % {FILES} )); \
           for file in /data/f$f /data/f{offset}; do \
             if grep \" $file\\$\" /data/SUMS | sha256sum -c -s; then :; \
             else echo \"FAIL $n $file\" >> /out/{id}; fi; \
           done; \
           echo \"ok $n\" >> /out/{id}; n=$((n+1)); sleep 0.05; \
         done"
    )
}

impl Bed {
    fn start_checker(&self, id: &str, offset: usize) -> Result<()> {
        let mount = format!(
            "type=bind,src={},dst=/out,options=rbind:rw",
            self.reports.path().display()
        );
        self.skiffd.skiff_ok(&[
            "run",
            "-d",
            "--mount",
            &mount,
            &self.reference,
            id,
            "sh",
            "-c",
            &checker_script(id, offset),
        ])?;
        Ok(())
    }

    fn report(&self, id: &str) -> String {
        std::fs::read_to_string(self.reports.path().join(id)).unwrap_or_default()
    }

    fn rounds(&self, id: &str) -> usize {
        self.report(id)
            .lines()
            .filter(|line| line.starts_with("ok "))
            .count()
    }

    fn failures(&self, id: &str) -> Vec<String> {
        self.report(id)
            .lines()
            .filter(|line| line.starts_with("FAIL"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until every container in `ids` has done `more` rounds beyond `from`.
    fn wait_rounds(&self, ids: &[String], from: &[usize], more: usize) -> Result<Vec<usize>> {
        for (id, start) in ids.iter().zip(from) {
            wait_until(
                &format!("{id} to check {more} more files"),
                Duration::from_secs(120),
                || Ok(self.rounds(id) >= start + more),
            )
            .with_context(|| format!("skiffd log:\n{}", self.skiffd.log()))?;
        }
        Ok(ids.iter().map(|id| self.rounds(id)).collect())
    }

    /// `task ls`: id → pid for running tasks.
    fn task_pids(&self) -> Result<Vec<(String, String)>> {
        let listing = self.skiffd.skiff_ok(&["task", "ls"])?;
        let mut pids: Vec<(String, String)> = listing
            .lines()
            .skip(1)
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                (cols.len() >= 3 && cols[2] == "RUNNING").then(|| (cols[0].into(), cols[1].into()))
            })
            .collect();
        pids.sort();
        Ok(pids)
    }

    /// A new container of the image reads and checks every file.
    fn fresh_container_checks_everything(&self, id: &str) -> Result<()> {
        let out = self.skiffd.skiff_ok(&[
            "run",
            "--rm",
            &self.reference,
            id,
            "sh",
            "-c",
            "sha256sum -c -s /data/SUMS && echo all-files-good",
        ])?;
        ensure!(out.contains("all-files-good"), "fresh container: {out:?}");
        Ok(())
    }

    /// Stops the checkers, removes them and the image: no lazy mount may be left.
    fn remove_everything(&self, ids: &[String]) -> Result<()> {
        std::fs::write(self.reports.path().join("stop"), b"")?;
        for id in ids {
            let _ = self.skiffd.skiff(&["task", "kill", "-s", "SIGKILL", id]);
        }
        wait_until("the checkers to stop", Duration::from_secs(60), || {
            Ok(self.task_pids()?.is_empty())
        })?;
        for id in ids {
            self.skiffd.skiff_ok(&["task", "rm", id])?;
            self.skiffd.skiff_ok(&["container", "rm", id])?;
        }
        self.skiffd.skiff_ok(&["image", "rm", &self.reference])?;
        let left = lazy_mounts_under(self.skiffd.work_dir())?;
        ensure!(left.is_empty(), "lazy mounts left after removal: {left:?}");
        Ok(())
    }
}

/// Every lazy mount under `dir` answers (a mount whose connection is gone fails with ENOTCONN).
fn mounts_answer(dir: &Path) -> Result<()> {
    for mount in lazy_mounts_under(dir)? {
        std::fs::read_dir(&mount.mount_point)
            .with_context(|| format!("lazy mount {} is dead", mount.mount_point.display()))?;
    }
    Ok(())
}

#[test]
fn containers_read_on_while_skiffd_is_killed_and_restarted() -> Result<()> {
    let mut bed = bed()?;
    let ids: Vec<String> = (0..5).map(|i| format!("reader{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        bed.start_checker(id, i * 17)?;
    }
    let rounds = bed.wait_rounds(&ids, &[0; 5], 3)?;
    let pids = bed.task_pids()?;
    ensure!(pids.len() == 5, "task ls: {pids:?}");
    let mounts: Vec<PathBuf> = lazy_mounts_under(bed.skiffd.work_dir())?
        .into_iter()
        .map(|m| m.mount_point)
        .collect();

    // A crash: nothing runs for 3 s; reads wait in the kernel, then the new skiffd answers them.
    bed.skiffd
        .restart_after(Signal::SIGKILL, Duration::from_secs(3))?;
    let rounds = bed.wait_rounds(&ids, &rounds, 8)?;
    // A stop for an upgrade: SIGTERM ends skiffd at once (on its own, exit 0), the mounts stay with the
    // keeper.
    let stopped = bed
        .skiffd
        .restart_after(Signal::SIGTERM, Duration::from_secs(3))?;
    ensure!(
        stopped.is_some_and(|s| s.success()),
        "skiffd did not stop on SIGTERM by itself: {stopped:?}"
    );
    bed.wait_rounds(&ids, &rounds, 8)?;

    let log = bed.skiffd.log();
    for id in &ids {
        let failures = bed.failures(id);
        ensure!(
            failures.is_empty(),
            "{id} saw {} failed reads, first {:?}\nskiffd log:\n{log}",
            failures.len(),
            &failures[..failures.len().min(6)]
        );
    }
    ensure!(
        log.matches("lazy layer taken over").count() >= 2 * mounts.len(),
        "the restarted skiffds did not take the mounts over:\n{log}"
    );
    ensure!(
        bed.task_pids()? == pids,
        "the containers' processes changed: {pids:?} -> {:?}",
        bed.task_pids()?
    );
    let after: Vec<PathBuf> = lazy_mounts_under(bed.skiffd.work_dir())?
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    ensure!(after == mounts, "mounts changed: {mounts:?} -> {after:?}");
    let images = bed.skiffd.skiff_ok(&["image", "ls"])?;
    let line = images
        .lines()
        .find(|line| line.contains("lazy:1"))
        .with_context(|| format!("image ls: {images}"))?;
    ensure!(
        !line.contains("full"),
        "image ls claims a lazy image is full: {line}"
    );
    bed.skiffd.skiff_ok(&["image", "info", &bed.reference])?;
    bed.fresh_container_checks_everything("fresh")?;

    bed.remove_everything(&ids)?;
    let keeper = bed.skiffd.keeper_pids();
    ensure!(keeper.len() == 1, "one keeper expected: {keeper:?}");
    bed.skiffd.stop();
    // With nothing to hold and no skiffd, the keeper ends on its own.
    wait_until("the keeper to exit", Duration::from_secs(30), || {
        Ok(bed.skiffd.keeper_pids().is_empty())
    })?;
    let left = mounts_under(bed.skiffd.work_dir());
    ensure!(left.is_empty(), "mounts left: {left:?}");
    Ok(())
}

#[test]
fn a_keeper_killed_while_skiffd_runs_is_replaced_and_a_later_crash_loses_nothing() -> Result<()> {
    let mut bed = bed()?;
    let ids: Vec<String> = vec!["steady".into()];
    bed.start_checker(&ids[0], 0)?;
    let rounds = bed.wait_rounds(&ids, &[0], 3)?;
    let old = bed.skiffd.keeper_pids();
    ensure!(old.len() == 1, "one keeper expected: {old:?}");
    kill(Pid::from_raw(old[0] as i32), Signal::SIGKILL)?;
    wait_until(
        "a new keeper holding the mounts",
        Duration::from_secs(30),
        || {
            let pids = bed.skiffd.keeper_pids();
            Ok(pids.len() == 1
                && pids[0] != old[0]
                && bed.skiffd.log().contains("holds every lazy mount again"))
        },
    )?;
    bed.skiffd
        .restart_after(Signal::SIGKILL, Duration::from_secs(2))?;
    bed.wait_rounds(&ids, &rounds, 8)?;
    let failures = bed.failures(&ids[0]);
    ensure!(
        failures.is_empty(),
        "failed reads after the keeper was replaced: {:?}\n{}",
        &failures[..failures.len().min(6)],
        bed.skiffd.log()
    );
    bed.remove_everything(&ids)?;
    Ok(())
}

#[test]
fn with_the_keeper_killed_too_skiffd_detaches_dead_mounts_and_new_containers_run() -> Result<()> {
    let mut bed = bed()?;
    let ids: Vec<String> = vec!["doomed".into()];
    bed.start_checker(&ids[0], 0)?;
    bed.wait_rounds(&ids, &[0], 3)?;
    let keeper = bed.skiffd.keeper_pids();
    ensure!(keeper.len() == 1, "one keeper expected: {keeper:?}");
    // skiffd and its keeper both die (in that order, so no skiffd starts another keeper).
    bed.skiffd.end(Signal::SIGKILL);
    kill(Pid::from_raw(keeper[0] as i32), Signal::SIGKILL)?;
    wait_until("the keeper to die", Duration::from_secs(10), || {
        Ok(bed.skiffd.keeper_pids().is_empty())
    })?;
    bed.skiffd.start_again()?;
    // The running container's reads fail (its overlay sits on a connection nobody serves any more).
    wait_until(
        "the orphaned container to report failed reads",
        Duration::from_secs(60),
        || Ok(!bed.failures(&ids[0]).is_empty()),
    )?;
    let log = bed.skiffd.log();
    ensure!(
        log.contains("lost its server") && log.contains("/tasks/default/doomed/"),
        "skiffd did not report the dead mounts and the container using them:\n{log}"
    );
    mounts_answer(bed.skiffd.work_dir()).with_context(|| format!("skiffd log:\n{log}"))?;
    bed.fresh_container_checks_everything("fresh")?;
    bed.remove_everything(&ids)?;
    Ok(())
}

#[test]
fn sigterm_with_unmount_on_exit_stops_at_once_and_names_the_containers_still_reading() -> Result<()>
{
    let mut bed = bed_with(&["--unmount-on-exit"])?;
    let ids: Vec<String> = vec!["busy".into()];
    bed.start_checker(&ids[0], 0)?;
    bed.wait_rounds(&ids, &[0], 2)?;
    let stopped = bed.skiffd.stop();
    let log = bed.skiffd.log();
    ensure!(
        stopped.is_some_and(|s| s.success()),
        "skiffd did not stop on SIGTERM by itself: {stopped:?}\n{log}"
    );
    ensure!(
        log.contains("unmounted while in use") && log.contains("/tasks/default/busy/"),
        "skiffd did not name the container still using a lazy layer:\n{log}"
    );
    // The detached layer's reads now fail in that container (documented); a new skiffd mounts the layers
    // afresh and new containers run.
    bed.skiffd.restart_after(Signal::SIGTERM, Duration::ZERO)?;
    bed.fresh_container_checks_everything("fresh")?;
    bed.remove_everything(&ids)?;
    Ok(())
}

/// The lazy mount holding `/data` (the layer's own tree, not the container's overlay).
fn data_mount(skiffd: &Skiffd) -> Result<PathBuf> {
    lazy_mounts_under(skiffd.work_dir())?
        .into_iter()
        .map(|m| m.mount_point)
        .find(|m| m.join("data/SUMS").exists())
        .context("no lazy mount holds /data")
}

/// `data/fN` read through the lazy mount is what the image holds, read with `read(2)` and through a
/// shared and a private mapping (programs map libraries privately; some map data files shared).
fn check_file(skiffd: &Skiffd, i: usize) -> Result<()> {
    let path = data_mount(skiffd)?.join(format!("data/f{i}"));
    let expected = generated_bytes(1000 + i as u64, FILE_BYTES);
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    ensure!(
        bytes == expected,
        "{} differs from the image",
        path.display()
    );
    let file = std::fs::File::open(&path)?;
    for flags in [
        nix::sys::mman::MapFlags::MAP_SHARED,
        nix::sys::mman::MapFlags::MAP_PRIVATE,
    ] {
        let length = std::num::NonZeroUsize::new(FILE_BYTES).context("empty file")?;
        // SAFETY: a read-only mapping of a file nobody writes (the layer is read-only), unmapped below.
        let mapped = unsafe {
            nix::sys::mman::mmap(
                None,
                length,
                nix::sys::mman::ProtFlags::PROT_READ,
                flags,
                &file,
                0,
            )
        }
        .with_context(|| format!("mmap {} ({flags:?})", path.display()))?;
        // SAFETY: the mapping is FILE_BYTES long and readable.
        let same = unsafe {
            std::slice::from_raw_parts(mapped.as_ptr().cast::<u8>(), FILE_BYTES) == &expected[..]
        };
        // SAFETY: unmapping what was mapped above.
        unsafe { nix::sys::mman::munmap(mapped, FILE_BYTES) }?;
        ensure!(
            same,
            "{} mapped {flags:?} differs from the image",
            path.display()
        );
    }
    Ok(())
}

#[test]
fn with_the_registry_gone_a_restarted_skiffd_serves_its_mounts_from_what_it_kept() -> Result<()> {
    let mut bed = bed()?;
    check_file(&bed.skiffd, 1)?;
    bed.proxy.set_down(true);
    let result = (|| -> Result<()> {
        // A restart: the mounts are taken over from the keeper, their TOCs read from ROOT/chunks/tocs.
        bed.skiffd
            .restart_after(Signal::SIGTERM, Duration::from_millis(500))?;
        check_file(&bed.skiffd, 1)?;
        let log = bed.skiffd.log();
        ensure!(
            log.matches("lazy layer taken over").count() == 2,
            "both layers taken over without the registry:\n{log}"
        );
        // A crash of skiffd and the keeper: the dead mounts are detached and mounted afresh, also
        // without the registry.
        let keepers = bed.skiffd.keeper_pids();
        bed.skiffd.end(Signal::SIGKILL);
        for pid in keepers {
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
        }
        std::thread::sleep(Duration::from_millis(500));
        bed.skiffd.start_again()?;
        check_file(&bed.skiffd, 1)?;
        let images = bed.skiffd.skiff_ok(&["image", "ls"])?;
        ensure!(
            images.contains("lazy ") && !images.contains("NOT MOUNTED") && !images.contains("full"),
            "image ls: {images}"
        );
        Ok(())
    })();
    bed.proxy.set_down(false);
    result.with_context(|| format!("skiffd log:\n{}", bed.skiffd.log()))?;
    // The registry is back: files never read arrive as before.
    check_file(&bed.skiffd, 2)?;
    Ok(())
}

/// The unit in contrib/ is valid for systemd and keeps skiffd's children (the keeper, the shims) on a
/// restart of skiffd.
#[test]
fn the_systemd_unit_verifies_and_signals_skiffd_alone() -> Result<()> {
    require(&["systemd-analyze"])?;
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/skiffd.service");
    let text =
        std::fs::read_to_string(&unit).with_context(|| format!("read {}", unit.display()))?;
    for line in [
        "KillMode=process",
        "Restart=always",
        "Before=containerd.service",
    ] {
        ensure!(
            text.lines().any(|l| l.trim() == line),
            "{} lacks {line}",
            unit.display()
        );
    }
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()?;
    ensure!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify {}: {verified:?}",
        unit.display()
    );
    Ok(())
}
