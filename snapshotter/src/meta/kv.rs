//! The ordered key-value seam under [`MetaStore`](super::MetaStore): point reads, sorted prefix scans and
//! atomic write batches. Two implementations: [`RocksKv`] (RocksDB, fsynced writes) for the daemon and
//! [`MemKv`] (a `BTreeMap` behind a mutex) for tests.
//!
//! It knows bytes only; what the keys mean is [`super::keys`]'s business. No `rocksdb` type leaves this file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::MetaError;

/// A key and its value, as scans return them.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// A sorted key-value store with atomic batches. Calls block; async callers use `spawn_blocking`.
pub trait KvStore: Send + Sync + 'static {
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError>;

    /// Every pair whose key starts with `prefix`, sorted by key, read from one consistent view.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KvPair>, MetaError>;

    /// The first pair (by key) whose key starts with `prefix`. Implementations should stop at the first hit.
    fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvPair>, MetaError> {
        Ok(self.scan_prefix(prefix)?.into_iter().next())
    }

    /// Applies every operation of `batch`, in order, atomically: readers see all of it or none of it.
    fn write(&self, batch: WriteBatch) -> Result<(), MetaError>;
}

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// Puts and deletes applied together by [`KvStore::write`]; later operations on a key win.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Delete { key: key.into() });
        self
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// In-memory [`KvStore`] for tests: a `BTreeMap` under a mutex, so every batch and every scan is atomic.
#[derive(Debug, Default)]
pub struct MemKv {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemKv {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // Nothing panics while holding the lock with a batch half-applied (see `write`), so a poisoned map is
        // still consistent.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KvStore for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KvPair>, MetaError> {
        Ok(self
            .lock()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvPair>, MetaError> {
        Ok(self
            .lock()
            .range(prefix.to_vec()..)
            .next()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), MetaError> {
        // Applied under one lock hold; `insert`/`remove` cannot fail part-way (allocation failure aborts).
        let mut map = self.lock();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { key, value } => {
                    map.insert(key, value);
                }
                BatchOp::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }
}

/// RocksDB-backed [`KvStore`]. Every batch is written with `sync = true`: when `write` returns, the batch is
/// on disk.
pub struct RocksKv {
    db: rocksdb::DB,
}

impl std::fmt::Debug for RocksKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKv")
            .field("path", &self.db.path())
            .finish()
    }
}

impl RocksKv {
    /// Opens (creating if needed) the database directory at `path`.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        std::fs::create_dir_all(path).map_err(|source| MetaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let db = rocksdb::DB::open(&options, path).map_err(db_error("open"))?;
        Ok(RocksKv { db })
    }
}

fn db_error(op: &'static str) -> impl Fn(rocksdb::Error) -> MetaError {
    move |e| MetaError::Db {
        op,
        source: Box::new(e),
    }
}

impl KvStore for RocksKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.db.get(key).map_err(db_error("get"))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KvPair>, MetaError> {
        // An iterator reads from an implicit snapshot, so the scan is consistent even under concurrent writes.
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        let mut pairs = Vec::new();
        for item in self.db.iterator(mode) {
            let (key, value) = item.map_err(db_error("scan"))?;
            if !key.starts_with(prefix) {
                break;
            }
            pairs.push((key.into_vec(), value.into_vec()));
        }
        Ok(pairs)
    }

    fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<KvPair>, MetaError> {
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        match self.db.iterator(mode).next() {
            Some(item) => {
                let (key, value) = item.map_err(db_error("scan"))?;
                Ok(key
                    .starts_with(prefix)
                    .then(|| (key.into_vec(), value.into_vec())))
            }
            None => Ok(None),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), MetaError> {
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { key, value } => rocks_batch.put(key, value),
                BatchOp::Delete { key } => rocks_batch.delete(key),
            }
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(rocks_batch, &options)
            .map_err(db_error("write"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<(Box<dyn KvStore>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksKv::open(&dir.path().join("db")).unwrap();
        vec![(Box::new(MemKv::new()), None), (Box::new(rocks), Some(dir))]
    }

    #[test]
    fn get_put_delete_and_sorted_prefix_scan() {
        for (kv, _dir) in backends() {
            let mut batch = WriteBatch::new();
            batch
                .put(b"p\0b".to_vec(), b"2".to_vec())
                .put(b"p\0a".to_vec(), b"1".to_vec())
                .put(b"p".to_vec(), b"no".to_vec())
                .put(b"p.x\0a".to_vec(), b"other".to_vec())
                .put(b"q\0a".to_vec(), b"other".to_vec())
                .put(b"p\0c".to_vec(), b"3".to_vec())
                .delete(b"p\0c".to_vec());
            kv.write(batch).unwrap();

            assert_eq!(kv.get(b"p\0a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(kv.get(b"p\0c").unwrap(), None);
            assert_eq!(
                kv.scan_prefix(b"p\0").unwrap(),
                vec![
                    (b"p\0a".to_vec(), b"1".to_vec()),
                    (b"p\0b".to_vec(), b"2".to_vec())
                ]
            );
            assert_eq!(
                kv.first_with_prefix(b"p\0").unwrap(),
                Some((b"p\0a".to_vec(), b"1".to_vec()))
            );
            assert_eq!(kv.first_with_prefix(b"r").unwrap(), None);
            assert_eq!(kv.first_with_prefix(b"p\0z").unwrap(), None);
            assert!(kv.scan_prefix(b"zz").unwrap().is_empty());
        }
    }

    #[test]
    fn later_ops_in_a_batch_win() {
        for (kv, _dir) in backends() {
            let mut batch = WriteBatch::new();
            batch.put(b"k".to_vec(), b"1".to_vec());
            batch.delete(b"k".to_vec());
            batch.put(b"k".to_vec(), b"2".to_vec());
            kv.write(batch).unwrap();
            assert_eq!(kv.get(b"k").unwrap(), Some(b"2".to_vec()));
        }
    }

    #[test]
    fn rocks_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let kv = RocksKv::open(&path).unwrap();
            let mut batch = WriteBatch::new();
            batch.put(b"a".to_vec(), b"1".to_vec());
            batch.put(b"b".to_vec(), b"2".to_vec());
            kv.write(batch).unwrap();
        }
        let kv = RocksKv::open(&path).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.scan_prefix(b"").unwrap().len(), 2);
    }
}
