//! The timed operations, the same code for the skiff mount and the native one. Blocking; they run on
//! the main thread while the FUSE session and the fetches run on their own threads.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::guard::check_interrupted;

/// Size of one random read, and the alignment of its offset.
pub const RANDOM_READ_BYTES: u64 = 4096;

/// SplitMix64: a fixed sequence of offsets from a seed, identical for both sides.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Reads a whole file (open included) and checks its bytes.
pub fn read_file(path: &Path, expected: &[u8]) -> Result<Duration> {
    let start = Instant::now();
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let elapsed = start.elapsed();
    ensure!(
        bytes == expected,
        "{} has the wrong contents ({} bytes, expected {})",
        path.display(),
        bytes.len(),
        expected.len()
    );
    Ok(elapsed)
}

/// Reads a file start to end in 1 MiB `read`s (open included); returns bytes read and time taken.
pub fn sequential_read(path: &Path) -> Result<(u64, Duration)> {
    let mut buffer = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total & ((64 << 20) - 1) == 0 {
            check_interrupted()?;
        }
    }
    Ok((total, start.elapsed()))
}

/// `count` preads of 4 KiB at pseudo-random 4 KiB-aligned offsets (open included).
pub fn random_reads(path: &Path, count: u64, seed: u64) -> Result<Duration> {
    let mut buffer = vec![0u8; RANDOM_READ_BYTES as usize];
    let mut offsets = SplitMix64::new(seed);
    let start = Instant::now();
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let blocks = file.metadata()?.len() / RANDOM_READ_BYTES;
    ensure!(blocks > 0, "{} is smaller than one block", path.display());
    for i in 0..count {
        let offset = (offsets.next_u64() % blocks) * RANDOM_READ_BYTES;
        file.read_exact_at(&mut buffer, offset)
            .with_context(|| format!("pread {} at {offset}", path.display()))?;
        if i % 4096 == 0 {
            check_interrupted()?;
        }
    }
    Ok(start.elapsed())
}

/// `readdir` of every directory and `symlink_metadata` (lstat) of every entry under `root`; returns the
/// number of entries and the time taken.
pub fn stat_walk(root: &Path) -> Result<(u64, Duration)> {
    let (entries, elapsed) = walk(root, |_| {})?;
    Ok((entries as u64, elapsed))
}

/// Every path under `root` (found by an untimed walk).
pub fn all_paths(root: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    walk(root, |path| paths.push(path.to_path_buf()))?;
    Ok(paths)
}

/// `symlink_metadata` (lstat) of each path, without `readdir`: the metadata half of a walk alone.
pub fn stat_paths(paths: &[PathBuf]) -> Result<Duration> {
    let start = Instant::now();
    for path in paths {
        std::fs::symlink_metadata(path).with_context(|| format!("lstat {}", path.display()))?;
    }
    Ok(start.elapsed())
}

fn walk(root: &Path, mut found: impl FnMut(&Path)) -> Result<(usize, Duration)> {
    let start = Instant::now();
    let mut entries = 0;
    let mut pending: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("readdir {}", dir.display()))?
        {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("lstat {}", path.display()))?;
            found(&path);
            if meta.is_dir() {
                pending.push(path);
            }
            entries += 1;
        }
        check_interrupted()?;
    }
    Ok((entries, start.elapsed()))
}
