//! [`ChunkStore`]: the disk tier (files named by digest, LRU-capped) with the memory tier in front of it.
//!
//! Locking: one mutex guards the whole index (disk LRU, memory LRU, pins, counters). Critical sections are
//! short; reading, writing and fsyncing happen outside it. Only metadata operations run under it: the rename
//! that publishes an insert (so an insert and an eviction of one digest are ordered) and, rarely, the unlink
//! of a file found corrupt. Evicted files are unlinked outside the lock; while that runs their digests sit
//! in `evicting`, and an insert of such a digest waits for the unlink before renaming its own file in.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lru::LruCache;
use sha2::{Digest as _, Sha256};

use super::memory::MemoryLru;
use super::{CacheConfig, CacheError, CacheStats};
use skiff_types::Digest;

/// Directory of committed entries, named like the digest algorithm.
const OBJECTS_DIR: &str = "sha256";
/// Directory of in-flight writes.
const TEMP_DIR: &str = "tmp";
const TEMP_SUFFIX: &str = ".tmp";
/// Committed entries are read-only: nothing may change a file once it is named by its digest.
const ENTRY_MODE: u32 = 0o444;
const TEMP_MODE: u32 = 0o600;

/// Distinguishes temp files written by this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A content-addressable store of verified chunks (and whole files) on local disk, with a byte-budgeted
/// memory LRU in front. Cheap to clone; all clones share one index. See the [module docs](super).
///
/// Only one process may use a directory at a time: `open` removes in-flight temp files and trusts its own
/// index afterwards.
#[derive(Clone)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    objects: PathBuf,
    temp: PathBuf,
    config: CacheConfig,
    state: Mutex<State>,
    /// Signalled whenever digests leave `State::evicting`.
    evicted: Condvar,
}

struct State {
    memory: MemoryLru,
    /// Every entry on disk, least recently used at the back.
    disk: LruCache<Digest, DiskEntry>,
    disk_bytes: u64,
    /// Live pin count per digest (a digest may be pinned before it is stored).
    pins: HashMap<Digest, usize>,
    /// Removed from `disk`, file unlink in progress.
    evicting: HashSet<Digest>,
    next_generation: u64,
    counters: CacheStats,
}

#[derive(Clone, Copy, Debug)]
struct DiskEntry {
    size: u64,
    /// Changes each time the digest is (re)added, so a slow reader never drops a newer file.
    generation: u64,
    /// Written by this process or hashed since open; files found at open are verified on first read.
    verified: bool,
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir` and rebuilds its index from the files present, oldest
    /// use first (a file's last use is the later of its access and modification times). Removes stale temp
    /// files and files whose name is not a digest, then evicts least-recently-used entries if the disk total
    /// is over the cap. File contents are not read here; they are verified on first use.
    pub fn open(dir: &Path, config: CacheConfig) -> Result<Self, CacheError> {
        let objects = dir.join(OBJECTS_DIR);
        let temp = dir.join(TEMP_DIR);
        fs::create_dir_all(&objects).map_err(CacheError::io(&objects))?;
        fs::create_dir_all(&temp).map_err(CacheError::io(&temp))?;
        remove_stale_temp_files(&temp)?;

        let mut found = scan_objects(&objects)?;
        // Oldest first, so the last pushed is the most recently used; ties broken by digest for determinism.
        found.sort_unstable();
        let mut state = State::new(config.memory_bytes);
        for (_, digest, size) in found {
            state.add_disk(digest, size, false);
        }
        let victims = state.select_victims(config.disk_bytes, None);

        let store = ChunkStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                objects,
                temp,
                config,
                state: Mutex::new(state),
                evicted: Condvar::new(),
            }),
        };
        store.finish_eviction(victims);
        let stats = store.stats();
        tracing::info!(
            dir = %dir.display(),
            entries = stats.disk_entries,
            bytes = stats.disk_bytes,
            evicted = stats.evictions,
            "opened chunk cache"
        );
        Ok(store)
    }

    /// The directory this store was opened on.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The verified bytes of `digest`, or `None` if it is not cached.
    ///
    /// Memory first (no IO). On a memory miss the file is read and its sha256 checked: a good file is
    /// promoted into memory (if it fits the budget); a corrupt one is deleted and answered as a miss, never
    /// returned. Either tier's hit refreshes the entry's recency. An entry is read whole, so for a large
    /// whole-file entry prefer [`verify`](Self::verify) and reading [`path`](Self::path) under a pin.
    pub fn get(&self, digest: &Digest) -> Result<Option<Bytes>, CacheError> {
        let generation = {
            let mut guard = self.lock();
            let state = &mut *guard;
            if let Some(bytes) = state.memory.get(digest) {
                state.disk.promote(digest);
                state.counters.hits_memory += 1;
                return Ok(Some(bytes));
            }
            match state.disk.get(digest) {
                Some(entry) => entry.generation,
                None => {
                    state.counters.misses += 1;
                    return Ok(None);
                }
            }
        };

        let path = self.path(digest);
        let (file, data) = match read_whole(&path) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(%digest, path = %path.display(), "cached chunk file vanished");
                let mut state = self.lock();
                state.forget(digest, generation);
                state.counters.misses += 1;
                return Ok(None);
            }
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let actual = Digest::of(&data);
        if actual != *digest {
            self.drop_corrupt(digest, generation, &path, actual);
            self.lock().counters.misses += 1;
            return Ok(None);
        }

        let bytes = Bytes::from(data);
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            state.counters.hits_disk += 1;
            if let Some(entry) = state.disk.peek_mut(digest) {
                if entry.generation == generation {
                    entry.verified = true;
                    state.memory.put(*digest, bytes.clone());
                }
            }
        }
        record_use(&file, &path);
        Ok(Some(bytes))
    }

    /// Stores `data` under `digest` after checking that it is its sha256 (else
    /// [`CacheError::DigestMismatch`] and nothing is stored).
    ///
    /// The file is written to a private temp file, fsynced, renamed into place (atomic) and its directory
    /// fsynced, so a reader or a restart only ever sees whole, verified entries. Then it becomes the most
    /// recently used entry in both tiers, and least-recently-used unpinned entries are evicted until the
    /// disk total is within the cap. Fails with [`CacheError::Full`] (storing nothing) when that is
    /// impossible because the rest is pinned, and with [`CacheError::Io`] (leaving nothing behind) when
    /// writing fails, e.g. on a full disk. Storing a digest that is already present only refreshes it.
    pub fn insert(&self, digest: &Digest, data: &[u8]) -> Result<(), CacheError> {
        let actual = Digest::of(data);
        if actual != *digest {
            return Err(CacheError::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        let size = data.len() as u64;
        {
            let mut state = self.lock();
            if state.refresh_if_present(digest) {
                return Ok(());
            }
            self.check_room(&state, digest, size)?;
        }

        let temp = self.write_temp(digest, data)?;
        let target = self.path(digest);
        let fanout = target
            .parent()
            .expect("an entry path has a fan-out directory")
            .to_path_buf();
        fs::create_dir_all(&fanout).map_err(CacheError::io(&fanout))?;
        let for_memory =
            (size <= self.inner.config.memory_bytes).then(|| Bytes::copy_from_slice(data));

        let victims = {
            let mut state = self.lock();
            // An eviction of this digest is unlinking the old file; renaming ours in first would lose it.
            while state.evicting.contains(digest) {
                state = self
                    .inner
                    .evicted
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.refresh_if_present(digest) {
                // A concurrent insert of the same digest won; our temp file is removed on drop.
                return Ok(());
            }
            self.check_room(&state, digest, size)?;
            fs::rename(temp.path(), &target).map_err(CacheError::io(&target))?;
            temp.disarm();
            state.add_disk(*digest, size, true);
            if let Some(bytes) = for_memory {
                state.memory.put(*digest, bytes);
            }
            state.counters.inserts += 1;
            state.select_victims(self.inner.config.disk_bytes, Some(digest))
        };
        tracing::debug!(%digest, size, evicted = victims.len(), "stored chunk");

        if let Err(e) = sync_dir(&fanout) {
            // The entry is whole and visible; at worst a crash loses it, which is a cache miss.
            tracing::warn!(path = %fanout.display(), error = %e, "could not fsync chunk directory");
        }
        self.finish_eviction(victims);
        Ok(())
    }

    /// Whether `digest` is stored on disk (and so `get` will return it unless the file turns out corrupt).
    /// Does not refresh recency.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().disk.contains(digest)
    }

    /// Keeps `digest` from being evicted from disk while the returned guard (or another one for it) lives.
    /// A digest may be pinned before it is stored. Pinned entries still count against the disk cap.
    #[must_use = "the pin is released when the guard is dropped"]
    pub fn pin(&self, digest: &Digest) -> PinGuard {
        *self.lock().pins.entry(*digest).or_insert(0) += 1;
        PinGuard {
            inner: Arc::clone(&self.inner),
            digest: *digest,
        }
    }

    /// Where the file of `digest` lives (or would live): `DIR/sha256/<first 2 hex>/<64 hex>`.
    ///
    /// For passthrough: take a [`pin`](Self::pin), check [`verify`](Self::verify) (or at least
    /// [`contains`](Self::contains)), then open this path read-only while holding the pin.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.inner.objects.join(&hex[..2]).join(hex)
    }

    /// Records a use of `digest` without reading it (passthrough reads bypass the cache): refreshes its
    /// recency in both tiers and stamps the file's access time so the order survives a restart. Does nothing
    /// if the digest is not stored.
    pub fn touch(&self, digest: &Digest) {
        {
            let mut state = self.lock();
            if !state.disk.promote(digest) {
                return;
            }
            state.memory.promote(digest);
        }
        let path = self.path(digest);
        match File::open(&path) {
            Ok(file) => record_use(&file, &path),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "could not stamp chunk use")
            }
        }
    }

    /// Whether a verified copy of `digest` is on disk, hashing the file if this process has not yet verified
    /// it (only entries found at open need that, once). A corrupt file is deleted and `false` returned.
    /// Use before handing the file to the kernel for passthrough, since those reads are never checked.
    pub fn verify(&self, digest: &Digest) -> Result<bool, CacheError> {
        let generation = match self.lock().disk.peek(digest) {
            None => return Ok(false),
            Some(entry) if entry.verified => return Ok(true),
            Some(entry) => entry.generation,
        };
        let path = self.path(digest);
        let actual = match hash_file(&path) {
            Ok(actual) => actual,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(%digest, path = %path.display(), "cached chunk file vanished");
                self.lock().forget(digest, generation);
                return Ok(false);
            }
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        if actual != *digest {
            self.drop_corrupt(digest, generation, &path, actual);
            return Ok(false);
        }
        let mut state = self.lock();
        match state.disk.peek_mut(digest) {
            Some(entry) if entry.generation == generation => {
                entry.verified = true;
                Ok(true)
            }
            // Evicted or replaced meanwhile: a replacement was verified by its insert.
            Some(entry) => Ok(entry.verified),
            None => Ok(false),
        }
    }

    /// Sizes and counters.
    pub fn stats(&self) -> CacheStats {
        let state = self.lock();
        CacheStats {
            disk_bytes: state.disk_bytes,
            disk_entries: state.disk.len() as u64,
            memory_bytes: state.memory.bytes(),
            memory_entries: state.memory.len() as u64,
            ..state.counters
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Fails with `Full` if `size` more bytes cannot fit under the cap even after evicting every unpinned
    /// entry.
    fn check_room(&self, state: &State, digest: &Digest, size: u64) -> Result<(), CacheError> {
        let Some(cap) = self.inner.config.disk_bytes else {
            return Ok(());
        };
        let pinned: u64 = state
            .pins
            .keys()
            .filter(|pinned| *pinned != digest)
            .filter_map(|pinned| state.disk.peek(pinned))
            .map(|entry| entry.size)
            .sum();
        if pinned.saturating_add(size) > cap {
            return Err(CacheError::Full { needed: size, cap });
        }
        Ok(())
    }

    /// Writes `data` to a new private temp file, fsynced and read-only. The returned guard removes the file
    /// unless it is disarmed after a successful rename.
    fn write_temp(&self, digest: &Digest, data: &[u8]) -> Result<TempFile, CacheError> {
        let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.{}.{unique}{TEMP_SUFFIX}",
            digest.hex(),
            std::process::id()
        );
        let path = self.inner.temp.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(TEMP_MODE)
            .open(&path)
            .map_err(CacheError::io(&path))?;
        let temp = TempFile { path: Some(path) };
        let now = SystemTime::now();
        file.write_all(data)
            .and_then(|()| file.set_permissions(Permissions::from_mode(ENTRY_MODE)))
            // A precise stamp, so entries written within one clock tick still order correctly after a restart.
            .and_then(|()| file.set_times(FileTimes::new().set_accessed(now).set_modified(now)))
            .and_then(|()| file.sync_all())
            .map_err(CacheError::io(temp.path()))?;
        Ok(temp)
    }

    /// Deletes a file found corrupt, if the index still holds the generation that was read.
    fn drop_corrupt(&self, digest: &Digest, generation: u64, path: &Path, actual: Digest) {
        let mut state = self.lock();
        if !state.forget(digest, generation) {
            return;
        }
        state.counters.corrupt_dropped += 1;
        // Unlinked under the lock (rare): an insert of the same digest must not rename a good file in first.
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove corrupt chunk file")
            }
        }
        drop(state);
        tracing::warn!(%digest, %actual, path = %path.display(), "dropped corrupt chunk file");
    }

    /// Unlinks the files of entries already removed from the index, then lets waiting inserts proceed.
    fn finish_eviction(&self, victims: Vec<Digest>) {
        if victims.is_empty() {
            return;
        }
        for digest in &victims {
            let path = self.path(digest);
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!(%digest, "evicted chunk"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Left on disk but out of the index; the next open indexes it again.
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove evicted chunk")
                }
            }
        }
        let mut state = self.lock();
        for digest in &victims {
            state.evicting.remove(digest);
        }
        drop(state);
        self.inner.evicted.notify_all();
    }
}

impl fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkStore")
            .field("dir", &self.inner.dir)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps one digest from being evicted from disk until dropped. See [`ChunkStore::pin`].
pub struct PinGuard {
    inner: Arc<Inner>,
    digest: Digest,
}

impl PinGuard {
    /// The pinned digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PinGuard").field(&self.digest).finish()
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if let Some(count) = state.pins.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                state.pins.remove(&self.digest);
            }
        }
    }
}

impl State {
    fn new(memory_budget: u64) -> Self {
        State {
            memory: MemoryLru::new(memory_budget),
            disk: LruCache::unbounded(),
            disk_bytes: 0,
            pins: HashMap::new(),
            evicting: HashSet::new(),
            next_generation: 0,
            counters: CacheStats::default(),
        }
    }

    /// Adds an entry as the most recently used.
    fn add_disk(&mut self, digest: Digest, size: u64, verified: bool) {
        let entry = DiskEntry {
            size,
            generation: self.next_generation,
            verified,
        };
        self.next_generation += 1;
        if let Some(old) = self.disk.put(digest, entry) {
            self.disk_bytes -= old.size;
        }
        self.disk_bytes += size;
    }

    /// If `digest` is stored, marks it most recently used and returns true.
    fn refresh_if_present(&mut self, digest: &Digest) -> bool {
        if !self.disk.promote(digest) {
            return false;
        }
        self.memory.promote(digest);
        true
    }

    /// Removes `digest` from both tiers if the index still holds `generation`; returns whether it did.
    fn forget(&mut self, digest: &Digest, generation: u64) -> bool {
        match self.disk.peek(digest) {
            Some(entry) if entry.generation == generation => {
                let size = entry.size;
                self.disk.pop(digest);
                self.disk_bytes -= size;
                self.memory.remove(digest);
                true
            }
            _ => false,
        }
    }

    /// Picks least-recently-used unpinned entries (never `keep`) until the disk total is within `cap`,
    /// removes them from the index and marks them `evicting`; the caller unlinks their files.
    fn select_victims(&mut self, cap: Option<u64>, keep: Option<&Digest>) -> Vec<Digest> {
        let Some(cap) = cap else {
            return Vec::new();
        };
        let mut excess = self.disk_bytes.saturating_sub(cap);
        let mut victims = Vec::new();
        for (digest, entry) in self.disk.iter().rev() {
            if excess == 0 {
                break;
            }
            if self.pins.contains_key(digest) || Some(digest) == keep {
                continue;
            }
            victims.push(*digest);
            excess = excess.saturating_sub(entry.size);
        }
        for digest in &victims {
            if let Some(entry) = self.disk.pop(digest) {
                self.disk_bytes -= entry.size;
            }
            self.memory.remove(digest);
            self.evicting.insert(*digest);
            self.counters.evictions += 1;
        }
        victims
    }
}

/// A temp file that is removed when dropped, unless disarmed after it was renamed into place.
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("a temp file keeps its path until disarmed")
    }

    fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove temp file")
                }
            }
        }
    }
}

/// Opens and reads a whole file, keeping it open for `record_use`.
fn read_whole(path: &Path) -> io::Result<(File, Vec<u8>)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut data)?;
    Ok((file, data))
}

fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(Digest::from_hasher(hasher))
}

/// Stamps the file's access time with now: the recency `open` rebuilds the LRU order from. Best effort.
fn record_use(file: &File, path: &Path) {
    if let Err(e) = file.set_times(FileTimes::new().set_accessed(SystemTime::now())) {
        tracing::debug!(path = %path.display(), error = %e, "could not stamp chunk use");
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes everything left in `tmp/` by an earlier run (only one process uses a store directory).
fn remove_stale_temp_files(temp: &Path) -> Result<(), CacheError> {
    for entry in fs::read_dir(temp).map_err(CacheError::io(temp))? {
        let entry = entry.map_err(CacheError::io(temp))?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            tracing::warn!(path = %path.display(), "ignoring directory in the chunk cache temp area");
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed stale temp file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove stale temp file")
            }
        }
    }
    Ok(())
}

/// One entry found on disk: last use, digest, size.
type Found = (SystemTime, Digest, u64);

/// Lists the entries under `sha256/`, removing files that are not named by a digest in the right fan-out
/// directory. Unexpected directories are left alone with a warning.
fn scan_objects(objects: &Path) -> Result<Vec<Found>, CacheError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(objects).map_err(CacheError::io(objects))? {
        let entry = entry.map_err(CacheError::io(objects))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(CacheError::io(&path))?.is_dir();
        let name = entry.file_name();
        let fanout = name
            .to_str()
            .filter(|n| n.len() == 2 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        match (fanout, is_dir) {
            (Some(prefix), true) => scan_fanout(&path, prefix, &mut found)?,
            (None, true) => {
                tracing::warn!(path = %path.display(), "ignoring unexpected directory in the chunk cache")
            }
            (_, false) => remove_foreign(&path),
        }
    }
    Ok(found)
}

fn scan_fanout(dir: &Path, prefix: &str, found: &mut Vec<Found>) -> Result<(), CacheError> {
    for entry in fs::read_dir(dir).map_err(CacheError::io(dir))? {
        let entry = entry.map_err(CacheError::io(dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(CacheError::io(&path))?;
        let name = entry.file_name();
        let digest = name
            .to_str()
            .filter(|n| n.starts_with(prefix))
            .and_then(|hex| Digest::from_hex(hex).ok());
        match digest {
            Some(digest) if file_type.is_file() => match entry.metadata() {
                Ok(meta) => {
                    let used = meta.accessed().ok().max(meta.modified().ok());
                    found.push((used.unwrap_or(UNIX_EPOCH), digest, meta.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Io { path, source }),
            },
            _ if file_type.is_dir() => {
                tracing::warn!(path = %path.display(), "ignoring unexpected directory in the chunk cache")
            }
            _ => remove_foreign(&path),
        }
    }
    Ok(())
}

fn remove_foreign(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "removed a file that is not a cache entry")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a foreign file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(fill: u8, len: usize) -> (Digest, Vec<u8>) {
        let data = vec![fill; len];
        (Digest::of(&data), data)
    }

    fn config(memory_bytes: u64, disk_bytes: Option<u64>) -> CacheConfig {
        CacheConfig {
            memory_bytes,
            disk_bytes,
        }
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChunkStore>();
        assert_send_sync::<PinGuard>();
    }

    #[test]
    fn entries_live_in_a_fan_out_directory_and_are_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
        let (digest, data) = chunk(b'a', 10);
        store.insert(&digest, &data).unwrap();
        let hex = digest.hex();
        let expected = dir.path().join("sha256").join(&hex[..2]).join(&hex);
        assert_eq!(store.path(&digest), expected);
        let meta = fs::metadata(&expected).unwrap();
        assert_eq!(meta.len(), 10);
        assert_eq!(meta.permissions().mode() & 0o777, ENTRY_MODE);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
        let (digest, data) = chunk(b'a', 10);
        // Make the fan-out directory impossible to create: a file stands where it should be.
        let hex = digest.hex();
        fs::write(dir.path().join("sha256").join(&hex[..2]), b"in the way").unwrap();
        let err = store.insert(&digest, &data).unwrap_err();
        assert!(matches!(err, CacheError::Io { .. }), "{err:?}");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(!store.contains(&digest));
        assert_eq!(store.stats().disk_bytes, 0);
    }

    #[test]
    fn an_insert_of_an_evicting_digest_waits_for_the_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), config(0, Some(100))).unwrap();
        let (digest, data) = chunk(b'a', 10);
        store.insert(&digest, &data).unwrap();
        // Simulate an eviction whose unlink has not run yet.
        let victims = {
            let mut state = store.lock();
            let victims = state.select_victims(Some(0), None);
            assert_eq!(victims, vec![digest]);
            victims
        };
        assert!(!store.contains(&digest));
        let inserter = {
            let store = store.clone();
            let data = data.clone();
            std::thread::spawn(move || store.insert(&digest, &data))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !inserter.is_finished(),
            "the insert must wait for the eviction"
        );
        store.finish_eviction(victims);
        inserter.join().unwrap().unwrap();
        assert!(store.contains(&digest));
        assert_eq!(fs::read(store.path(&digest)).unwrap(), data);
        assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&data[..]));
    }

    #[test]
    fn a_slow_reader_does_not_drop_a_newer_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
        let (digest, data) = chunk(b'a', 10);
        store.insert(&digest, &data).unwrap();
        let old = store.lock().disk.peek(&digest).unwrap().generation;
        // Evicted and stored again while a reader held the old generation.
        store.lock().forget(&digest, old);
        store.insert(&digest, &data).unwrap();
        let mut state = store.lock();
        assert!(!state.forget(&digest, old));
        assert!(state.disk.contains(&digest));
    }

    #[test]
    fn verify_hashes_entries_found_at_open_once() {
        let dir = tempfile::tempdir().unwrap();
        let (good, good_data) = chunk(b'g', 100);
        let (bad, bad_data) = chunk(b'b', 100);
        {
            let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
            store.insert(&good, &good_data).unwrap();
            store.insert(&bad, &bad_data).unwrap();
            assert!(store.verify(&good).unwrap(), "written by this process");
            let path = store.path(&bad);
            fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
            fs::write(&path, vec![b'x'; 100]).unwrap();
        }
        let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
        assert!(!store.lock().disk.peek(&good).unwrap().verified);
        assert!(store.verify(&good).unwrap());
        assert!(store.lock().disk.peek(&good).unwrap().verified);
        assert!(!store.verify(&bad).unwrap());
        assert!(!store.contains(&bad));
        assert!(!store.path(&bad).exists());
        assert_eq!(store.stats().corrupt_dropped, 1);
        assert!(!store.verify(&Digest::of(b"absent")).unwrap());
    }

    #[test]
    fn pins_are_counted_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
        let digest = Digest::of(b"p");
        let first = store.pin(&digest);
        let second = store.pin(&digest);
        assert_eq!(store.lock().pins.get(&digest), Some(&2));
        drop(first);
        assert_eq!(store.lock().pins.get(&digest), Some(&1));
        assert_eq!(second.digest(), &digest);
        drop(second);
        assert!(store.lock().pins.is_empty());
    }
}
