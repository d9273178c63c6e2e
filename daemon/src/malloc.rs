//! skiffd's settings for glibc's malloc, measured with `skiff-bench memory` (bench/README.md).
//!
//! - glibc raises its mmap threshold each time a large block is freed; from then on chunk-sized buffers
//!   (hundreds of KiB to MiB) come from the heap and stay with the process once freed. A fixed threshold
//!   hands them back to the kernel when freed; and one arena per CPU (instead of eight) keeps fewer freed
//!   small blocks around per thread. On the corpus: RSS 490 → 326 MiB with the cache's 256 MiB full.
//! - Parsing a TOC frees most of what it allocated (the JSON, the parsed entries) in small blocks that stay
//!   in the heap: [`trim`] returns them after each layer is opened (a 100,000-file layer then keeps ~0.4 KB
//!   per file instead of ~0.9 KB), and every [`TRIM_EVERY`] for what the chunk cache evicted.
//!
//! `MALLOC_MMAP_THRESHOLD_` and `MALLOC_ARENA_MAX` in the environment still win. Other C libraries: no-ops.

use std::time::Duration;

/// How often freed heap memory is handed back to the kernel.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Sets the mmap threshold and the arena count; call first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, cpus.min(64) as libc::c_int);
        }
    }
}

/// Hands the heap's free pages back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() {
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}
