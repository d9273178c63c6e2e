//! What the FUSE benchmark must undo however it ends: its work directory (with anything still mounted
//! under it), the overlayfs baseline mount, and Ctrl-C turned into an error so the guards run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount, umount2, MntFlags, MsFlags};
use tempfile::TempDir;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Turns the first Ctrl-C into an `interrupted` error at the next check, so every guard unmounts and
/// removes what it owns; a second Ctrl-C exits at once.
pub fn install_interrupt_handler(runtime: &tokio::runtime::Handle) {
    runtime.spawn(async {
        while tokio::signal::ctrl_c().await.is_ok() {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("interrupted again; exiting without cleaning up");
                std::process::exit(130);
            }
            eprintln!("interrupted; cleaning up at the next step (Ctrl-C again to exit at once)");
        }
    });
}

/// Fails once Ctrl-C was pressed.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Progress lines on stderr, stamped with the time since the start.
pub struct Progress {
    start: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            start: Instant::now(),
        }
    }

    pub fn step(&self, what: impl AsRef<str>) {
        eprintln!(
            "[{:>7.1}s] {}",
            self.start.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// The benchmark's temporary directory; dropping it detaches whatever is still mounted under it, then
/// removes it.
pub struct WorkDir {
    dir: Option<TempDir>,
}

impl WorkDir {
    pub fn create() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-bench-fuse-")
            .tempdir()
            .context("create the benchmark's work directory")?;
        Ok(WorkDir { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until dropped").path()
    }

    /// `NAME` under the work directory, created.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let failed = skiff_tests::unmount_all_under(dir.path());
        if !failed.is_empty() {
            eprintln!(
                "could not unmount under {}: {failed:?}; leaving it in place",
                dir.path().display()
            );
            // Removing files through a live mount would be worse than leaving the directory.
            let _ = dir.keep();
            return;
        }
        let path = dir.path().to_path_buf();
        if let Err(err) = dir.close() {
            eprintln!("could not remove {}: {err}", path.display());
        }
    }
}

/// A read-only overlayfs mount (no upper, no work dir) of one layer directory: the native baseline.
///
/// Without an upper directory the kernel wants at least two lower ones ("at least 2 lowerdir are needed
/// while upperdir nonexistent"), so an empty directory sits below the layer: lookups of files stop in the
/// layer, and only directories also look (and miss) in the empty one.
pub struct OverlayMount {
    target: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// `mount -t overlay overlay -o ro,lowerdir=LAYER:EMPTY TARGET`.
    pub fn mount(layer: &Path, empty: &Path, target: &Path) -> Result<Self> {
        let options = format!("lowerdir={}:{}", layer.display(), empty.display());
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(options.as_str()),
        )
        .with_context(|| {
            format!(
                "mount -t overlay overlay -o ro,{options} {}",
                target.display()
            )
        })?;
        Ok(OverlayMount {
            target: target.to_path_buf(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts, reporting failure (dropping detaches quietly instead).
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        umount(&self.target).with_context(|| format!("unmount {}", self.target.display()))
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(err) = umount2(&self.target, MntFlags::MNT_DETACH) {
                eprintln!("could not unmount {}: {err}", self.target.display());
            }
        }
    }
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`: page cache, dentries and inodes, so neither side is
/// measured from memory the other side had to read from disk.
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("write /proc/sys/vm/drop_caches")
}
