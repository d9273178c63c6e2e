//! The chunk cache driven through its public API on a real directory: round trips, verification, both
//! budgets, LRU eviction and pins, restarts, corruption, crash debris, dedup and concurrent use.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;

use skiff_fuse::cache::{CacheConfig, CacheError, CacheStats, ChunkStore};
use skiff_types::Digest;

/// A chunk of `len` (≥ 4) bytes unique to `seed`, with its digest.
fn chunk(seed: u32, len: usize) -> (Digest, Vec<u8>) {
    let mut data = seed.to_le_bytes().to_vec();
    data.extend((4..len).map(|i| (i * 7 + i / 251) as u8));
    (Digest::of(&data), data)
}

fn config(memory_bytes: u64, disk_bytes: Option<u64>) -> CacheConfig {
    CacheConfig {
        memory_bytes,
        disk_bytes,
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The index agrees with the files on disk, and nothing is left in `tmp/`.
fn assert_consistent(store: &ChunkStore) {
    let files = files_under(&store.dir().join("sha256"));
    let on_disk: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    let stats = store.stats();
    assert_eq!(stats.disk_entries, files.len() as u64, "{files:?}");
    assert_eq!(stats.disk_bytes, on_disk);
    assert!(files_under(&store.dir().join("tmp")).is_empty());
    if let Some(cap) = store.config().disk_bytes {
        assert!(stats.disk_bytes <= cap, "{} > {cap}", stats.disk_bytes);
    }
    assert!(stats.memory_bytes <= store.config().memory_bytes);
}

fn corrupt(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(path).unwrap();
    bytes[0] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn insert_then_get_round_trips_through_memory_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(1000, None)).unwrap();
    let (digest, data) = chunk(1, 600);
    assert!(!store.contains(&digest));
    assert_eq!(store.get(&digest).unwrap(), None);

    store.insert(&digest, &data).unwrap();
    assert!(store.contains(&digest));
    assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&data[..]));
    assert_eq!(fs::read(store.path(&digest)).unwrap(), data);

    // A second 600-byte chunk pushes the first out of the 1000-byte memory budget; it is then read from disk.
    let (other, other_data) = chunk(2, 600);
    store.insert(&other, &other_data).unwrap();
    assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&data[..]));
    assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&data[..]));

    let stats = store.stats();
    assert_eq!(
        stats,
        CacheStats {
            disk_bytes: 1200,
            disk_entries: 2,
            memory_bytes: 600,
            memory_entries: 1,
            hits_memory: 2,
            hits_disk: 1,
            misses: 1,
            inserts: 2,
            evictions: 0,
            corrupt_dropped: 0,
        }
    );
    assert_consistent(&store);
}

#[test]
fn empty_chunks_are_stored_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
    let digest = Digest::of(b"");
    store.insert(&digest, b"").unwrap();
    assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&b""[..]));
    assert_consistent(&store);
}

#[test]
fn a_digest_mismatch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
    let (digest, _) = chunk(1, 100);
    let (actual, wrong) = chunk(2, 100);
    let err = store.insert(&digest, &wrong).unwrap_err();
    match err {
        CacheError::DigestMismatch {
            expected,
            actual: got,
        } => {
            assert_eq!(expected, digest);
            assert_eq!(got, actual);
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(!store.contains(&digest));
    assert!(!store.contains(&actual));
    assert_eq!(store.get(&digest).unwrap(), None);
    assert!(files_under(dir.path()).is_empty());
    assert_eq!(store.stats().inserts, 0);
}

#[test]
fn the_memory_budget_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(1000, None)).unwrap();
    let chunks: Vec<_> = (0..10).map(|seed| chunk(seed, 300)).collect();
    for (digest, data) in &chunks {
        store.insert(digest, data).unwrap();
        assert!(store.stats().memory_bytes <= 1000);
    }
    let stats = store.stats();
    assert_eq!((stats.memory_entries, stats.memory_bytes), (3, 900));
    assert_eq!((stats.disk_entries, stats.disk_bytes), (10, 3000));

    // The three most recent are served from memory, the rest from disk.
    for (digest, data) in chunks.iter().rev().take(3) {
        assert_eq!(store.get(digest).unwrap().as_deref(), Some(&data[..]));
    }
    assert_eq!(store.stats().hits_memory, 3);
    assert_eq!(
        store.get(&chunks[0].0).unwrap().as_deref(),
        Some(&chunks[0].1[..])
    );
    assert_eq!(store.stats().hits_disk, 1);

    // A chunk larger than the whole budget is served from disk every time and never kept in memory.
    let (big, big_data) = chunk(99, 1001);
    store.insert(&big, &big_data).unwrap();
    assert_eq!(store.get(&big).unwrap().as_deref(), Some(&big_data[..]));
    assert_eq!(store.get(&big).unwrap().as_deref(), Some(&big_data[..]));
    let stats = store.stats();
    assert_eq!(stats.hits_disk, 3);
    assert!(stats.memory_bytes <= 1000);
    assert_consistent(&store);
}

#[test]
fn the_disk_cap_evicts_the_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(0, Some(400))).unwrap();
    let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(|seed| chunk(seed, 100));
    for (digest, data) in [&a, &b, &c, &d] {
        store.insert(digest, data).unwrap();
    }
    assert_eq!(store.stats().disk_bytes, 400);

    // Recency order is now a, b, c, d (oldest first). Reading `a` and touching `b` leave `c` the oldest.
    assert!(store.get(&a.0).unwrap().is_some());
    store.touch(&b.0);
    store.insert(&e.0, &e.1).unwrap();
    assert!(!store.contains(&c.0), "c was the least recently used");
    assert!(!store.path(&c.0).exists());
    for digest in [&a.0, &b.0, &d.0, &e.0] {
        assert!(store.contains(digest));
    }

    // Order now: d, a, b, e. A 200-byte insert evicts d and a.
    let (f, f_data) = chunk(6, 200);
    store.insert(&f, &f_data).unwrap();
    assert!(!store.contains(&d.0));
    assert!(!store.contains(&a.0));
    assert!(store.contains(&b.0) && store.contains(&e.0) && store.contains(&f));
    assert_eq!(store.get(&d.0).unwrap(), None);

    let stats = store.stats();
    assert_eq!(stats.evictions, 3);
    assert_eq!(stats.disk_bytes, 400);
    assert_consistent(&store);
}

#[test]
fn eviction_also_drops_the_memory_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(10_000, Some(200))).unwrap();
    let [a, b, c] = [1, 2, 3].map(|seed| chunk(seed, 100));
    for (digest, data) in [&a, &b, &c] {
        store.insert(digest, data).unwrap();
    }
    assert_eq!(store.get(&a.0).unwrap(), None);
    let stats = store.stats();
    assert_eq!((stats.memory_entries, stats.memory_bytes), (2, 200));
    assert_consistent(&store);
}

#[test]
fn pinned_entries_are_never_evicted_and_full_when_nothing_can_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(0, Some(300))).unwrap();
    let [a, b, c, d] = [1, 2, 3, 4].map(|seed| chunk(seed, 100));
    for (digest, data) in [&a, &b, &c] {
        store.insert(digest, data).unwrap();
    }
    let pin_a = store.pin(&a.0);
    let pin_b = store.pin(&b.0);
    // `a` is the least recently used, but pinned: `c` goes instead (b is pinned too).
    store.insert(&d.0, &d.1).unwrap();
    assert!(store.contains(&a.0) && store.contains(&b.0) && store.contains(&d.0));
    assert!(!store.contains(&c.0));

    // With a, b and d pinned, nothing can make room.
    let pin_d = store.pin(&d.0);
    let (e, e_data) = chunk(5, 100);
    let err = store.insert(&e, &e_data).unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::Full {
                needed: 100,
                cap: 300
            }
        ),
        "{err:?}"
    );
    assert!(!store.contains(&e));
    assert!(!store.path(&e).exists());
    assert_consistent(&store);

    // A second pin on `a` keeps it pinned after the first guard goes.
    let pin_a2 = store.pin(&a.0);
    drop(pin_a);
    assert!(matches!(
        store.insert(&e, &e_data),
        Err(CacheError::Full { .. })
    ));
    drop(pin_a2);
    store.insert(&e, &e_data).unwrap();
    assert!(
        !store.contains(&a.0),
        "unpinned, a was the least recently used"
    );
    assert!(store.contains(&b.0) && store.contains(&d.0) && store.contains(&e));
    drop((pin_b, pin_d));
    assert_consistent(&store);
}

#[test]
fn an_entry_larger_than_the_cap_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(0, Some(100))).unwrap();
    let (small, small_data) = chunk(1, 50);
    store.insert(&small, &small_data).unwrap();
    let (big, big_data) = chunk(2, 101);
    let err = store.insert(&big, &big_data).unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::Full {
                needed: 101,
                cap: 100
            }
        ),
        "{err:?}"
    );
    assert!(store.contains(&small), "a refused insert evicts nothing");
    assert_consistent(&store);
}

#[test]
fn a_digest_may_be_pinned_before_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(0, Some(200))).unwrap();
    let (a, a_data) = chunk(1, 100);
    let pin = store.pin(&a);
    store.insert(&a, &a_data).unwrap();
    for seed in 2..6 {
        let (digest, data) = chunk(seed, 100);
        store.insert(&digest, &data).unwrap();
    }
    assert!(store.contains(&a));
    drop(pin);
    assert_consistent(&store);
}

#[test]
fn the_index_survives_a_restart_in_lru_order() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c, d] = [1, 2, 3, 4].map(|seed| chunk(seed, 100));
    {
        let store = ChunkStore::open(dir.path(), config(1000, None)).unwrap();
        for (digest, data) in [&a, &b, &c, &d] {
            store.insert(digest, data).unwrap();
        }
        // A touch (a passthrough read) is persisted in the file's access time. Order: b, c, d, a.
        store.touch(&a.0);
    }

    // Reopen with no cap: everything is still there and readable.
    {
        let store = ChunkStore::open(dir.path(), config(1000, None)).unwrap();
        let stats = store.stats();
        assert_eq!((stats.disk_entries, stats.disk_bytes), (4, 400));
        assert_eq!(stats.memory_entries, 0, "memory starts cold");
        for (digest, _) in [&a, &b, &c, &d] {
            assert!(store.contains(digest));
        }
        assert_eq!(store.get(&b.0).unwrap().as_deref(), Some(&b.1[..]));
        assert_eq!(store.stats().hits_disk, 1);
        assert_consistent(&store);
        // Order now: c, d, a, b.
    }

    // Reopen under a smaller cap: open evicts the least recently used, c then d.
    let store = ChunkStore::open(dir.path(), config(1000, Some(200))).unwrap();
    assert_eq!(store.stats().evictions, 2);
    assert!(!store.contains(&c.0) && !store.contains(&d.0));
    assert!(store.contains(&a.0) && store.contains(&b.0));
    assert_eq!(store.get(&a.0).unwrap().as_deref(), Some(&a.1[..]));
    assert_consistent(&store);
}

#[test]
fn a_corrupt_file_is_dropped_on_read_and_reported_as_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, data) = chunk(1, 4096);
    {
        let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
        store.insert(&digest, &data).unwrap();
        corrupt(&store.path(&digest));
        // The memory copy is the verified one, so this process still answers correctly.
        assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&data[..]));
    }
    let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
    assert!(store.contains(&digest), "open does not read contents");
    assert_eq!(store.get(&digest).unwrap(), None);
    assert!(!store.contains(&digest));
    assert!(!store.path(&digest).exists());
    let stats = store.stats();
    assert_eq!(
        (stats.corrupt_dropped, stats.misses, stats.hits_disk),
        (1, 1, 0)
    );

    // It can be stored again and then reads fine.
    store.insert(&digest, &data).unwrap();
    assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&data[..]));
    assert_consistent(&store);
}

#[test]
fn a_truncated_file_is_dropped_too() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, data) = chunk(1, 4096);
    {
        let store = ChunkStore::open(dir.path(), config(0, None)).unwrap();
        store.insert(&digest, &data).unwrap();
        let path = store.path(&digest);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, &data[..100]).unwrap();
        // No memory copy (zero budget): the truncation is seen at once.
        assert_eq!(store.get(&digest).unwrap(), None);
        assert_eq!(store.stats().corrupt_dropped, 1);
        assert_eq!(store.stats().disk_bytes, 0);
    }
}

#[test]
fn a_file_removed_behind_the_stores_back_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(0, None)).unwrap();
    let (digest, data) = chunk(1, 100);
    store.insert(&digest, &data).unwrap();
    fs::remove_file(store.path(&digest)).unwrap();
    assert_eq!(store.get(&digest).unwrap(), None);
    assert!(!store.contains(&digest));
    assert_consistent(&store);
}

#[test]
fn open_removes_stale_temp_files_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, data) = chunk(1, 100);
    {
        let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
        store.insert(&digest, &data).unwrap();
    }
    let hex = digest.hex();
    let fanout = dir.path().join("sha256").join(&hex[..2]);
    let stale = [
        dir.path().join("tmp").join(format!("{hex}.1.0.tmp")),
        dir.path().join("tmp").join("anything"),
    ];
    let foreign = [
        fanout.join("not-a-digest"),
        fanout.join(&hex[..63]),
        // A valid digest in the wrong fan-out directory.
        dir.path()
            .join("sha256")
            .join(if &hex[..2] == "00" { "01" } else { "00" })
            .join(&hex),
        dir.path().join("sha256").join("stray-file"),
    ];
    for path in stale.iter().chain(&foreign) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"debris").unwrap();
    }
    let operator_dir = dir.path().join("sha256").join("lost+found");
    fs::create_dir(&operator_dir).unwrap();

    let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
    for path in stale.iter().chain(&foreign) {
        assert!(!path.exists(), "{} should be gone", path.display());
    }
    assert!(
        operator_dir.is_dir(),
        "unexpected directories are left alone"
    );
    assert_eq!(store.stats().disk_entries, 1);
    assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&data[..]));
    assert_consistent(&store);
}

#[test]
fn inserting_the_same_digest_twice_stores_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
    let (digest, data) = chunk(1, 100);
    store.insert(&digest, &data).unwrap();
    store.insert(&digest, &data).unwrap();
    // The same bytes under a second "layer" are the same chunk.
    let copy = data.clone();
    store.insert(&Digest::of(&copy), &copy).unwrap();
    assert_eq!(files_under(&dir.path().join("sha256")).len(), 1);
    let stats = store.stats();
    assert_eq!(
        (stats.inserts, stats.disk_entries, stats.disk_bytes),
        (1, 1, 100)
    );
    assert_consistent(&store);
}

#[test]
fn the_store_is_shared_between_clones() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
    let clone = store.clone();
    let (digest, data) = chunk(1, 100);
    clone.insert(&digest, &data).unwrap();
    assert!(store.contains(&digest));
    assert_eq!(store.stats(), clone.stats());
}

#[test]
fn concurrent_inserts_and_gets_of_the_same_and_different_digests() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), config(8 * 1024, None)).unwrap();
    let shared: Arc<Vec<_>> = Arc::new((0..4).map(|seed| chunk(seed, 1024)).collect());
    let barrier = Arc::new(Barrier::new(THREADS));

    let handles: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let store = store.clone();
            let shared = Arc::clone(&shared);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                for round in 0..ROUNDS {
                    let (digest, data) = &shared[round % shared.len()];
                    store.insert(digest, data).unwrap();
                    let (own, own_data) = chunk(1000 + (thread_index * ROUNDS + round) as u32, 512);
                    store.insert(&own, &own_data).unwrap();
                    for (digest, data) in shared.iter() {
                        if let Some(bytes) = store.get(digest).unwrap() {
                            assert_eq!(&bytes[..], &data[..]);
                        }
                    }
                    assert_eq!(store.get(&own).unwrap().as_deref(), Some(&own_data[..]));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }

    let stats = store.stats();
    assert_eq!(stats.inserts, (shared.len() + THREADS * ROUNDS) as u64);
    assert_eq!(stats.disk_entries, stats.inserts);
    for (digest, data) in shared.iter() {
        assert_eq!(fs::read(store.path(digest)).unwrap(), *data);
    }
    assert_eq!(stats.corrupt_dropped, 0);
    assert_consistent(&store);
}

#[test]
fn concurrent_use_under_a_tight_disk_cap_keeps_the_index_true() {
    const THREADS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let cap = 10 * 256;
    let store = ChunkStore::open(dir.path(), config(2 * 256, Some(cap))).unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let store = store.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                for round in 0..60u32 {
                    // Overlapping key ranges: the same digests are inserted, evicted and re-inserted.
                    let seed = (thread_index as u32 * 7 + round) % 30;
                    let (digest, data) = chunk(seed, 256);
                    let pin = store.pin(&digest);
                    store.insert(&digest, &data).unwrap();
                    assert!(store.contains(&digest), "pinned, so not evicted");
                    assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&data[..]));
                    drop(pin);
                    store.touch(&chunk(seed / 2, 256).0);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let stats = store.stats();
    assert!(stats.evictions > 0);
    assert_eq!(stats.corrupt_dropped, 0);
    assert_consistent(&store);

    // Whatever survived is intact after a restart.
    let survivors: HashSet<_> = files_under(&dir.path().join("sha256"))
        .into_iter()
        .collect();
    drop(store);
    let store = ChunkStore::open(dir.path(), config(0, Some(cap))).unwrap();
    assert_eq!(store.stats().disk_entries, survivors.len() as u64);
    for seed in 0..30 {
        let (digest, data) = chunk(seed, 256);
        if let Some(bytes) = store.get(&digest).unwrap() {
            assert_eq!(&bytes[..], &data[..]);
        }
    }
    assert_eq!(store.stats().corrupt_dropped, 0);
}

/// A full disk: needs root to mount a small tmpfs, and skips (saying so) otherwise.
#[test]
fn a_full_disk_is_an_io_error_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mount)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !mounted {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);

    let store = ChunkStore::open(&mount, config(0, None)).unwrap();
    let (big, big_data) = chunk(1, 256 * 1024);
    let err = store.insert(&big, &big_data).unwrap_err();
    match &err {
        CacheError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(28), "{err:?}"),
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert!(!store.contains(&big));
    assert!(files_under(&mount.join("tmp")).is_empty());
    assert!(files_under(&mount.join("sha256")).is_empty());

    // The space was given back: a small insert works.
    let (small, small_data) = chunk(2, 1024);
    store.insert(&small, &small_data).unwrap();
    assert_eq!(store.get(&small).unwrap().as_deref(), Some(&small_data[..]));
    assert_consistent(&store);
}
