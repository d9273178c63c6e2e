//! The metadata store: namespaces, images, content references and containers (per namespace), and the
//! records of snapshots (a key space of their own, since snapshots.v1 is not namespaced), as typed records
//! over an ordered key-value seam ([`KvStore`]) that is RocksDB in the daemon ([`RocksKv`], under
//! `ROOT/metadata`, writes synced) and a map in tests ([`MemKv`]). No `rocksdb` type leaves `kv.rs`.
//!
//! It owns the keyspace layout (documented in [`keys`]) and the rules containerd clients rely on: valid
//! namespace names, a namespace is created implicitly by the first record put into it, a namespace is only
//! removed when empty, and a record and everything it implies (an image and the blobs it references, an
//! implicit namespace) are written in one atomic batch. Snapshot records are staged into batches by
//! [`crate::snapshots`], which owns their rules (`stage_*`, [`MetaStore::write_batch`]).
//!
//! It does not touch blob files: [`crate::content`] stores them, and the daemon asks
//! [`MetaStore::content_referenced_anywhere`] before deleting one. All calls block on the database; async
//! callers go through [`MetaStore::blocking`] (tokio's blocking pool).

mod containers;
pub mod keys;
mod kv;
mod records;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use keys::{
    validate_container_id, validate_digest, validate_image_name, validate_labels,
    validate_namespace, validate_snapshot_key, MAX_CONTAINER_ID_LEN, MAX_NAMESPACE_LEN,
};
pub use kv::{BatchOp, KvPair, KvStore, MemKv, RocksKv, WriteBatch};
pub use records::{
    ContainerRecord, ContentRefRecord, DescriptorRecord, ImageRecord, Labels, NamespaceRecord,
    SnapshotKind, SnapshotRecord, UsageRecord,
};

/// The kinds of record the store keeps, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Namespace,
    Image,
    ContentRef,
    Snapshot,
    Container,
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordKind::Namespace => "namespace",
            RecordKind::Image => "image",
            RecordKind::ContentRef => "content reference",
            RecordKind::Snapshot => "snapshot",
            RecordKind::Container => "container",
        })
    }
}

/// Failures of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("invalid namespace {name:?}: {reason}")]
    InvalidNamespace { name: String, reason: &'static str },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidImageName { name: String, reason: &'static str },
    #[error("invalid snapshot key {key:?}: {reason}")]
    InvalidSnapshotKey { key: String, reason: &'static str },
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },
    #[error("invalid container id {id:?}: {reason}")]
    InvalidContainerId { id: String, reason: &'static str },
    #[error("invalid label {label:?}: {reason}")]
    InvalidLabel { label: String, reason: &'static str },
    #[error("namespace {namespace} already exists")]
    AlreadyExists { namespace: String },
    #[error("{kind} {name} already exists in namespace {namespace}")]
    RecordExists {
        kind: RecordKind,
        namespace: String,
        name: String,
    },
    /// `what` is the first kind of record found under the namespace (`images`, `content`, …).
    #[error("namespace {namespace} is not empty: it still has {what}")]
    NamespaceNotEmpty { namespace: String, what: String },
    /// For [`RecordKind::Namespace`], `namespace` and `name` are both the namespace's name.
    #[error("{}", describe_missing(*kind, namespace, name))]
    NotFound {
        kind: RecordKind,
        namespace: String,
        name: String,
    },
    /// A stored value does not decode: the database was written by something else or is damaged.
    #[error("corrupt {kind} record under key {key:?}")]
    Corrupt {
        kind: RecordKind,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {kind} record")]
    Encode {
        kind: RecordKind,
        #[source]
        source: serde_json::Error,
    },
    /// The database refused an operation (`open`, `get`, `scan`, `write`).
    #[error("metadata database {op} failed")]
    Db {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("metadata store io on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MetaError {
    /// A namespace or record that does not exist (gRPC `NotFound`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, MetaError::NotFound { .. })
    }

    fn namespace_not_found(namespace: &str) -> Self {
        MetaError::NotFound {
            kind: RecordKind::Namespace,
            namespace: namespace.to_owned(),
            name: namespace.to_owned(),
        }
    }
}

fn describe_missing(kind: RecordKind, namespace: &str, name: &str) -> String {
    match kind {
        RecordKind::Namespace => format!("namespace {name} not found"),
        _ => format!("{kind} {name} not found in namespace {namespace}"),
    }
}

/// Typed access to namespaces, images and content references. Cheap to clone; clones share one database and
/// one write lock, which serializes the read-check-write operations (keeping `created_at`, refusing to remove
/// a non-empty namespace) against each other.
#[derive(Clone)]
pub struct MetaStore {
    kv: Arc<dyn KvStore>,
    write_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore").finish_non_exhaustive()
    }
}

impl MetaStore {
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        MetaStore {
            kv,
            write_lock: Arc::new(Mutex::new(())),
        }
    }

    /// Runs `call` on tokio's blocking pool: RocksDB writes are synced to disk and must not stall the
    /// async workers. A panic in `call` resumes in the caller.
    pub async fn blocking<T, F>(&self, call: F) -> Result<T, MetaError>
    where
        F: FnOnce(&MetaStore) -> Result<T, MetaError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || call(&store)).await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(MetaError::Db {
                op: "blocking call",
                source: Box::new(err),
            }),
        }
    }

    /// Opens (creating if needed) a RocksDB database at `path`.
    pub fn open_rocks(path: &Path) -> Result<Self, MetaError> {
        Ok(Self::new(Arc::new(RocksKv::open(path)?)))
    }

    /// An empty store in memory, for tests.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemKv::new()))
    }

    /// The key-value store underneath, for modules that add record kinds under [`keys`]'s layout.
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data, only ordering; poisoning carries no meaning here.
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        key: &[u8],
    ) -> Result<Option<T>, MetaError> {
        self.kv
            .get(key)?
            .map(|bytes| decode(kind, key, &bytes))
            .transpose()
    }

    fn read_all<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        prefix: &[u8],
    ) -> Result<Vec<T>, MetaError> {
        self.kv
            .scan_prefix(prefix)?
            .iter()
            .map(|(key, value)| decode(kind, key, value))
            .collect()
    }

    /// The record `name` of a namespace's `collection` (its name already checked), or `None`.
    fn namespaced_record<T: DeserializeOwned>(
        &self,
        namespace: &str,
        kind: RecordKind,
        collection: &str,
        name: &str,
    ) -> Result<Option<T>, MetaError> {
        validate_namespace(namespace)?;
        self.read(kind, &keys::record(namespace, collection, name))
    }

    /// Every record of a namespace's `collection`, sorted by name.
    fn namespaced_records<T: DeserializeOwned>(
        &self,
        namespace: &str,
        kind: RecordKind,
        collection: &str,
    ) -> Result<Vec<T>, MetaError> {
        validate_namespace(namespace)?;
        self.read_all(kind, &keys::kind_prefix(namespace, collection))
    }

    /// Adds a put of an empty namespace record to `batch` unless the namespace exists (containerd creates
    /// namespaces implicitly on first use).
    fn ensure_namespace(&self, batch: &mut WriteBatch, namespace: &str) -> Result<(), MetaError> {
        let key = keys::namespace(namespace);
        if self.kv.get(&key)?.is_none() {
            let record = NamespaceRecord {
                name: namespace.to_owned(),
                labels: Labels::new(),
            };
            batch.put(key, encode(RecordKind::Namespace, &record)?);
        }
        Ok(())
    }

    // ---- namespaces ----

    /// Creates a namespace; `AlreadyExists` if it exists.
    pub fn create_namespace(
        &self,
        name: &str,
        labels: Labels,
    ) -> Result<NamespaceRecord, MetaError> {
        validate_namespace(name)?;
        validate_labels(&labels)?;
        let _guard = self.lock();
        let key = keys::namespace(name);
        if self.kv.get(&key)?.is_some() {
            return Err(MetaError::AlreadyExists {
                namespace: name.to_owned(),
            });
        }
        let record = NamespaceRecord {
            name: name.to_owned(),
            labels,
        };
        let mut batch = WriteBatch::new();
        batch.put(key, encode(RecordKind::Namespace, &record)?);
        self.kv.write(batch)?;
        Ok(record)
    }

    /// The namespace, or `None` if it does not exist.
    pub fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRecord>, MetaError> {
        validate_namespace(name)?;
        self.read(RecordKind::Namespace, &keys::namespace(name))
    }

    /// Every namespace, sorted by name.
    pub fn list_namespaces(&self) -> Result<Vec<NamespaceRecord>, MetaError> {
        self.read_all(RecordKind::Namespace, keys::NAMESPACES)
    }

    /// Replaces a namespace's labels; `NotFound` if absent.
    pub fn set_namespace_labels(
        &self,
        name: &str,
        labels: Labels,
    ) -> Result<NamespaceRecord, MetaError> {
        validate_namespace(name)?;
        validate_labels(&labels)?;
        let _guard = self.lock();
        let mut record = self
            .get_namespace(name)?
            .ok_or_else(|| MetaError::namespace_not_found(name))?;
        record.labels = labels;
        let mut batch = WriteBatch::new();
        batch.put(
            keys::namespace(name),
            encode(RecordKind::Namespace, &record)?,
        );
        self.kv.write(batch)?;
        Ok(record)
    }

    /// Removes an empty namespace. Refused with `NamespaceNotEmpty` while any record of any kind is stored
    /// under it; `NotFound` if absent.
    pub fn remove_namespace(&self, name: &str) -> Result<(), MetaError> {
        validate_namespace(name)?;
        let _guard = self.lock();
        let key = keys::namespace(name);
        if self.kv.get(&key)?.is_none() {
            return Err(MetaError::namespace_not_found(name));
        }
        if let Some((found, _)) = self.kv.first_with_prefix(&keys::namespace_data(name))? {
            return Err(MetaError::NamespaceNotEmpty {
                namespace: name.to_owned(),
                what: keys::kind_of(name, &found),
            });
        }
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.kv.write(batch)
    }

    // ---- images ----

    /// Creates or replaces an image (creating the namespace if needed, in the same batch). On replace the
    /// stored `created_at` is kept; every other field, `updated_at` included, is taken from `image`.
    /// Returns the record as stored.
    pub fn put_image(&self, namespace: &str, image: ImageRecord) -> Result<ImageRecord, MetaError> {
        self.put_image_with_content(namespace, image, &[])
    }

    /// Writes an image and the content references of every blob it needs in one atomic batch (how a pull
    /// commits), creating the namespace if needed. Same replace rules as [`put_image`](Self::put_image) and
    /// [`add_content_refs`](Self::add_content_refs).
    pub fn put_image_with_content(
        &self,
        namespace: &str,
        mut image: ImageRecord,
        refs: &[ContentRefRecord],
    ) -> Result<ImageRecord, MetaError> {
        validate_namespace(namespace)?;
        validate_labels(&image.labels)?;
        for record in refs {
            validate_labels(&record.labels)?;
        }
        validate_image_name(&image.name)?;
        validate_digest(&image.target.digest)?;
        for record in refs {
            validate_digest(&record.digest)?;
        }
        let _guard = self.lock();
        let mut batch = WriteBatch::new();
        self.ensure_namespace(&mut batch, namespace)?;
        let key = keys::record(namespace, keys::IMAGES, &image.name);
        if let Some(existing) = self.read::<ImageRecord>(RecordKind::Image, &key)? {
            image.created_at = existing.created_at;
        }
        batch.put(key, encode(RecordKind::Image, &image)?);
        self.stage_content_refs(&mut batch, namespace, refs)?;
        self.kv.write(batch)?;
        Ok(image)
    }

    /// The image, or `None` if the namespace has no image by that name.
    pub fn get_image(&self, namespace: &str, name: &str) -> Result<Option<ImageRecord>, MetaError> {
        validate_image_name(name)?;
        self.namespaced_record(namespace, RecordKind::Image, keys::IMAGES, name)
    }

    /// Every image of the namespace, sorted by name; empty if the namespace does not exist.
    pub fn list_images(&self, namespace: &str) -> Result<Vec<ImageRecord>, MetaError> {
        self.namespaced_records(namespace, RecordKind::Image, keys::IMAGES)
    }

    /// Deletes an image record (not its content references); `NotFound` if absent.
    pub fn delete_image(&self, namespace: &str, name: &str) -> Result<(), MetaError> {
        validate_namespace(namespace)?;
        validate_image_name(name)?;
        let _guard = self.lock();
        let key = keys::record(namespace, keys::IMAGES, name);
        if self.kv.get(&key)?.is_none() {
            return Err(MetaError::NotFound {
                kind: RecordKind::Image,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.kv.write(batch)
    }

    // ---- content references ----

    /// Adds references from `namespace` to blobs, in one batch (creating the namespace if needed). A
    /// reference that already exists keeps its `created_at` and takes the new labels.
    pub fn add_content_refs(
        &self,
        namespace: &str,
        refs: &[ContentRefRecord],
    ) -> Result<(), MetaError> {
        validate_namespace(namespace)?;
        for record in refs {
            validate_digest(&record.digest)?;
            validate_labels(&record.labels)?;
        }
        let _guard = self.lock();
        let mut batch = WriteBatch::new();
        self.ensure_namespace(&mut batch, namespace)?;
        self.stage_content_refs(&mut batch, namespace, refs)?;
        self.kv.write(batch)
    }

    /// Adds puts for `refs` to `batch`, keeping the `created_at` of references already stored.
    fn stage_content_refs(
        &self,
        batch: &mut WriteBatch,
        namespace: &str,
        refs: &[ContentRefRecord],
    ) -> Result<(), MetaError> {
        for record in refs {
            let key = keys::record(namespace, keys::CONTENT, &record.digest);
            let mut record = record.clone();
            if let Some(existing) = self.read::<ContentRefRecord>(RecordKind::ContentRef, &key)? {
                record.created_at = existing.created_at;
            }
            batch.put(key, encode(RecordKind::ContentRef, &record)?);
        }
        Ok(())
    }

    /// The namespace's reference to the blob, or `None` if it does not reference it.
    pub fn get_content_ref(
        &self,
        namespace: &str,
        digest: &str,
    ) -> Result<Option<ContentRefRecord>, MetaError> {
        validate_digest(digest)?;
        self.namespaced_record(namespace, RecordKind::ContentRef, keys::CONTENT, digest)
    }

    /// Every content reference of the namespace, sorted by digest; empty if the namespace does not exist.
    pub fn list_content_refs(&self, namespace: &str) -> Result<Vec<ContentRefRecord>, MetaError> {
        self.namespaced_records(namespace, RecordKind::ContentRef, keys::CONTENT)
    }

    /// Removes references in one batch. Digests that are not referenced are skipped; returns how many
    /// references were removed.
    pub fn remove_content_refs<D: AsRef<str>>(
        &self,
        namespace: &str,
        digests: &[D],
    ) -> Result<usize, MetaError> {
        validate_namespace(namespace)?;
        for digest in digests {
            validate_digest(digest.as_ref())?;
        }
        let _guard = self.lock();
        let mut batch = WriteBatch::new();
        let mut removed = std::collections::BTreeSet::new();
        for digest in digests {
            let key = keys::record(namespace, keys::CONTENT, digest.as_ref());
            if !removed.contains(&key) && self.kv.get(&key)?.is_some() {
                batch.delete(key.clone());
                removed.insert(key);
            }
        }
        if !batch.is_empty() {
            self.kv.write(batch)?;
        }
        Ok(removed.len())
    }

    /// Whether any namespace references the blob; the daemon deletes a blob file only when this is false.
    pub fn content_referenced_anywhere(&self, digest: &str) -> Result<bool, MetaError> {
        validate_digest(digest)?;
        for namespace in self.list_namespaces()? {
            let key = keys::record(&namespace.name, keys::CONTENT, digest);
            if self.kv.get(&key)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

// ---- snapshots (their own keyspace; the rules live in `crate::snapshots`) ----

impl MetaStore {
    /// The snapshot stored under `key`, or `None`.
    pub fn get_snapshot(&self, key: &str) -> Result<Option<SnapshotRecord>, MetaError> {
        validate_snapshot_key(key)?;
        self.read(RecordKind::Snapshot, &keys::snapshot(key))
    }

    /// Every snapshot, sorted by key.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, MetaError> {
        self.read_all(RecordKind::Snapshot, keys::SNAPSHOTS)
    }

    /// One child of `parent` (a snapshot naming it as parent), or `None` when it has none.
    pub fn first_snapshot_child(&self, parent: &str) -> Result<Option<String>, MetaError> {
        validate_snapshot_key(parent)?;
        let prefix = keys::snapshot_children(parent);
        Ok(self
            .kv
            .first_with_prefix(&prefix)?
            .map(|(key, _)| String::from_utf8_lossy(&key[prefix.len()..]).into_owned()))
    }

    /// The id the next snapshot gets; stage [`stage_snapshot_next_id`](Self::stage_snapshot_next_id) in the
    /// same batch that writes it, so a crash before the write reuses the id.
    pub fn next_snapshot_id(&self) -> Result<u64, MetaError> {
        Ok(self
            .read::<u64>(RecordKind::Snapshot, keys::SNAPSHOT_NEXT_ID)?
            .unwrap_or(1))
    }

    /// Adds the counter's new value (`used + 1`) to `batch`.
    pub fn stage_snapshot_next_id(&self, batch: &mut WriteBatch, used: u64) {
        batch.put(keys::SNAPSHOT_NEXT_ID, (used + 1).to_string().into_bytes());
        // A decimal number is also its JSON encoding, which `next_snapshot_id` decodes.
    }

    /// Adds a put of `record` (and its parent link) to `batch`.
    pub fn stage_put_snapshot(
        &self,
        batch: &mut WriteBatch,
        record: &SnapshotRecord,
    ) -> Result<(), MetaError> {
        validate_snapshot_key(&record.key)?;
        batch.put(
            keys::snapshot(&record.key),
            encode(RecordKind::Snapshot, record)?,
        );
        if let Some(parent) = &record.parent {
            validate_snapshot_key(parent)?;
            batch.put(keys::snapshot_child(parent, &record.key), Vec::new());
        }
        Ok(())
    }

    /// Adds the deletion of `record` (and its parent link) to `batch`.
    pub fn stage_delete_snapshot(&self, batch: &mut WriteBatch, record: &SnapshotRecord) {
        batch.delete(keys::snapshot(&record.key));
        if let Some(parent) = &record.parent {
            batch.delete(keys::snapshot_child(parent, &record.key));
        }
    }

    /// Writes a batch staged with the `stage_*` methods atomically.
    pub fn write_batch(&self, batch: WriteBatch) -> Result<(), MetaError> {
        self.kv.write(batch)
    }
}

fn encode<T: Serialize>(kind: RecordKind, value: &T) -> Result<Vec<u8>, MetaError> {
    serde_json::to_vec(value).map_err(|source| MetaError::Encode { kind, source })
}

fn decode<T: DeserializeOwned>(kind: RecordKind, key: &[u8], bytes: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|source| MetaError::Corrupt {
        kind,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime};

    /// One store per backend; the tempdir keeps the RocksDB directory alive.
    fn stores() -> Vec<(&'static str, MetaStore, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let rocks = MetaStore::open_rocks(&dir.path().join("meta")).unwrap();
        vec![
            ("mem", MetaStore::in_memory(), None),
            ("rocks", rocks, Some(dir)),
        ]
    }

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn image(name: &str, target: u8, time: u64) -> ImageRecord {
        ImageRecord {
            name: name.to_owned(),
            target: DescriptorRecord {
                media_type: "application/vnd.oci.image.index.v1+json".to_owned(),
                digest: digest(target),
                size: 1234,
                annotations: Labels::new(),
            },
            labels: [("io.skiff.test".to_owned(), name.to_owned())].into(),
            created_at: at(time),
            updated_at: at(time),
        }
    }

    fn content_ref(n: u8, time: u64) -> ContentRefRecord {
        ContentRefRecord {
            digest: digest(n),
            labels: Labels::new(),
            created_at: at(time),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn labels_follow_containerds_limit_on_every_record_and_errors_stay_short() {
        let store = MetaStore::in_memory();
        let at_limit = labels(&[("k", &"v".repeat(4095))]);
        let over = labels(&[("k", &"v".repeat(4096))]);
        let huge_key = labels(&[(&"k".repeat(3 << 20), "v")]);
        let empty_key = labels(&[("", "v")]);
        store.create_namespace("ok", at_limit.clone()).unwrap();
        for bad in [&over, &huge_key, &empty_key] {
            let err = store.create_namespace("bad", bad.clone()).unwrap_err();
            assert!(matches!(err, MetaError::InvalidLabel { .. }), "{err}");
            assert!(
                err.to_string().len() < 300,
                "{} bytes",
                err.to_string().len()
            );
            assert!(matches!(
                store.set_namespace_labels("ok", bad.clone()),
                Err(MetaError::InvalidLabel { .. })
            ));
            let mut bad_image = image("docker.io/library/a:1", 1, 1);
            bad_image.labels = bad.clone();
            assert!(matches!(
                store.put_image("ok", bad_image),
                Err(MetaError::InvalidLabel { .. })
            ));
            let mut bad_ref = content_ref(1, 1);
            bad_ref.labels = bad.clone();
            assert!(matches!(
                store.add_content_refs("ok", &[bad_ref]),
                Err(MetaError::InvalidLabel { .. })
            ));
        }
        assert!(store.get_namespace("bad").unwrap().is_none());
        // Names in errors are shortened too.
        let err = store
            .create_namespace(&"n".repeat(5000), Labels::new())
            .unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn namespace_lifecycle() {
        for (backend, store, _dir) in stores() {
            assert!(store.list_namespaces().unwrap().is_empty(), "{backend}");
            let created = store
                .create_namespace("default", labels(&[("a", "1")]))
                .unwrap();
            assert_eq!(store.get_namespace("default").unwrap(), Some(created));
            assert!(matches!(
                store.create_namespace("default", Labels::new()),
                Err(MetaError::AlreadyExists { .. })
            ));
            store.create_namespace("k8s.io", Labels::new()).unwrap();
            let names: Vec<_> = store
                .list_namespaces()
                .unwrap()
                .into_iter()
                .map(|n| n.name)
                .collect();
            assert_eq!(names, ["default", "k8s.io"], "{backend}");

            let updated = store
                .set_namespace_labels("default", labels(&[("b", "2")]))
                .unwrap();
            assert_eq!(updated.labels, labels(&[("b", "2")]));
            assert_eq!(store.get_namespace("default").unwrap(), Some(updated));

            store.remove_namespace("k8s.io").unwrap();
            assert_eq!(store.get_namespace("k8s.io").unwrap(), None, "{backend}");
            let err = store.remove_namespace("k8s.io").unwrap_err();
            assert!(err.is_not_found(), "{backend}: {err}");
            assert_eq!(err.to_string(), "namespace k8s.io not found");
            assert!(matches!(
                store.set_namespace_labels("nope", Labels::new()),
                Err(MetaError::NotFound {
                    kind: RecordKind::Namespace,
                    ..
                })
            ));
            assert!(matches!(
                store.create_namespace("bad/name", Labels::new()),
                Err(MetaError::InvalidNamespace { .. })
            ));
        }
    }

    #[test]
    fn non_empty_namespace_is_not_removed() {
        for (backend, store, _dir) in stores() {
            store
                .put_image("ns", image("busybox:latest", 1, 10))
                .unwrap();
            match store.remove_namespace("ns").unwrap_err() {
                MetaError::NamespaceNotEmpty { namespace, what } => {
                    assert_eq!((namespace.as_str(), what.as_str()), ("ns", "images"));
                }
                other => panic!("{backend}: unexpected {other}"),
            }

            store.delete_image("ns", "busybox:latest").unwrap();
            store.add_content_refs("ns", &[content_ref(2, 10)]).unwrap();
            match store.remove_namespace("ns").unwrap_err() {
                MetaError::NamespaceNotEmpty { what, .. } => assert_eq!(what, "content"),
                other => panic!("{backend}: unexpected {other}"),
            }
            assert_eq!(store.remove_content_refs("ns", &[digest(2)]).unwrap(), 1);

            // Record kinds added later under the same per-namespace prefix are covered too.
            let mut batch = WriteBatch::new();
            batch.put(keys::record("ns", "containers", "c1"), b"{}".to_vec());
            store.kv().write(batch).unwrap();
            match store.remove_namespace("ns").unwrap_err() {
                MetaError::NamespaceNotEmpty { what, .. } => assert_eq!(what, "containers"),
                other => panic!("{backend}: unexpected {other}"),
            }
            let mut batch = WriteBatch::new();
            batch.delete(keys::record("ns", "containers", "c1"));
            store.kv().write(batch).unwrap();

            store.remove_namespace("ns").unwrap();
            assert!(store.list_namespaces().unwrap().is_empty(), "{backend}");
        }
    }

    #[test]
    fn image_put_replace_list_delete() {
        for (backend, store, _dir) in stores() {
            let name = "registry.example:5000/team/app:v1";
            let stored = store.put_image("default", image(name, 1, 100)).unwrap();
            assert_eq!(stored, image(name, 1, 100));
            // Implicit namespace.
            assert_eq!(
                store.get_namespace("default").unwrap().unwrap().name,
                "default"
            );

            let mut replacement = image(name, 2, 200);
            replacement.labels = labels(&[("new", "label")]);
            let stored = store.put_image("default", replacement.clone()).unwrap();
            assert_eq!(stored.created_at, at(100), "{backend}: created_at kept");
            assert_eq!(stored.updated_at, at(200));
            assert_eq!(stored.target.digest, digest(2));
            assert_eq!(stored.labels, replacement.labels);
            assert_eq!(store.get_image("default", name).unwrap(), Some(stored));

            store
                .put_image("default", image("a/b@sha256:x", 3, 50))
                .unwrap();
            let names: Vec<_> = store
                .list_images("default")
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
            assert_eq!(names, ["a/b@sha256:x", name], "{backend}");
            assert!(store.list_images("elsewhere").unwrap().is_empty());

            store.delete_image("default", name).unwrap();
            assert_eq!(store.get_image("default", name).unwrap(), None);
            let err = store.delete_image("default", name).unwrap_err();
            assert!(
                matches!(
                    err,
                    MetaError::NotFound {
                        kind: RecordKind::Image,
                        ..
                    }
                ),
                "{backend}: {err}"
            );
            assert_eq!(
                err.to_string(),
                format!("image {name} not found in namespace default")
            );
            assert_eq!(store.list_images("default").unwrap().len(), 1);

            assert!(matches!(
                store.put_image("default", image("", 1, 1)),
                Err(MetaError::InvalidImageName { .. })
            ));
            let mut bad_target = image("x", 1, 1);
            bad_target.target.digest = "sha256:nothex".to_owned();
            assert!(matches!(
                store.put_image("default", bad_target),
                Err(MetaError::InvalidDigest { .. })
            ));
        }
    }

    #[test]
    fn content_refs() {
        for (backend, store, _dir) in stores() {
            let mut first = content_ref(1, 10);
            first.labels = labels(&[("containerd.io/gc.root", "x")]);
            store
                .add_content_refs("default", &[first.clone(), content_ref(2, 10)])
                .unwrap();
            assert_eq!(
                store.get_content_ref("default", &digest(1)).unwrap(),
                Some(first)
            );
            assert!(
                store.get_namespace("default").unwrap().is_some(),
                "implicit namespace"
            );

            // Re-adding keeps created_at and takes the new labels.
            let mut again = content_ref(1, 99);
            again.labels = labels(&[("l", "v")]);
            store.add_content_refs("default", &[again]).unwrap();
            let stored = store
                .get_content_ref("default", &digest(1))
                .unwrap()
                .unwrap();
            assert_eq!(stored.created_at, at(10), "{backend}");
            assert_eq!(stored.labels, labels(&[("l", "v")]));

            store
                .add_content_refs("other", &[content_ref(2, 10)])
                .unwrap();
            let listed: Vec<_> = store
                .list_content_refs("default")
                .unwrap()
                .into_iter()
                .map(|r| r.digest)
                .collect();
            assert_eq!(listed, [digest(1), digest(2)]);

            assert!(store.content_referenced_anywhere(&digest(1)).unwrap());
            assert!(store.content_referenced_anywhere(&digest(2)).unwrap());
            assert!(!store.content_referenced_anywhere(&digest(3)).unwrap());

            let removed = store
                .remove_content_refs("default", &[digest(1), digest(2), digest(3), digest(1)])
                .unwrap();
            assert_eq!(removed, 2, "{backend}");
            assert!(!store.content_referenced_anywhere(&digest(1)).unwrap());
            assert!(
                store.content_referenced_anywhere(&digest(2)).unwrap(),
                "still in other"
            );
            assert_eq!(store.get_content_ref("default", &digest(1)).unwrap(), None);
            assert_eq!(store.remove_content_refs("other", &[digest(2)]).unwrap(), 1);
            assert!(!store.content_referenced_anywhere(&digest(2)).unwrap());
            assert!(matches!(
                store.content_referenced_anywhere("garbage"),
                Err(MetaError::InvalidDigest { .. })
            ));
        }
    }

    #[test]
    fn namespaces_with_a_common_prefix_are_isolated() {
        for (backend, store, _dir) in stores() {
            store.put_image("a", image("img", 1, 1)).unwrap();
            store.put_image("a.b", image("img-of-ab", 1, 1)).unwrap();
            store.put_image("ab", image("img-of-ab2", 1, 1)).unwrap();
            store.add_content_refs("a.b", &[content_ref(7, 1)]).unwrap();

            let names: Vec<_> = store
                .list_images("a")
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
            assert_eq!(names, ["img"], "{backend}");
            assert!(store.list_content_refs("a").unwrap().is_empty());
            assert_eq!(store.get_image("a", "img-of-ab").unwrap(), None);

            store.delete_image("a", "img").unwrap();
            store.remove_namespace("a").unwrap();
            assert_eq!(store.list_images("a.b").unwrap().len(), 1);
            assert_eq!(store.list_content_refs("a.b").unwrap().len(), 1);
            let names: Vec<_> = store
                .list_namespaces()
                .unwrap()
                .into_iter()
                .map(|n| n.name)
                .collect();
            assert_eq!(names, ["a.b", "ab"], "{backend}");
        }
    }

    #[test]
    fn rocks_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let store = MetaStore::open_rocks(&path).unwrap();
            store
                .put_image_with_content("default", image("img", 1, 5), &[content_ref(1, 5)])
                .unwrap();
            store
                .create_namespace("empty", labels(&[("k", "v")]))
                .unwrap();
        }
        let store = MetaStore::open_rocks(&path).unwrap();
        assert_eq!(
            store.get_image("default", "img").unwrap(),
            Some(image("img", 1, 5))
        );
        assert_eq!(
            store.get_content_ref("default", &digest(1)).unwrap(),
            Some(content_ref(1, 5))
        );
        assert_eq!(
            store.get_namespace("empty").unwrap().unwrap().labels,
            labels(&[("k", "v")])
        );
    }

    /// Counts batches so tests can prove an operation is one atomic write.
    struct CountingKv {
        inner: MemKv,
        writes: AtomicUsize,
    }

    impl KvStore for CountingKv {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
            self.inner.get(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KvPair>, MetaError> {
            self.inner.scan_prefix(prefix)
        }
        fn write(&self, batch: WriteBatch) -> Result<(), MetaError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.write(batch)
        }
    }

    #[test]
    fn put_image_with_content_is_one_batch() {
        let kv = Arc::new(CountingKv {
            inner: MemKv::new(),
            writes: AtomicUsize::new(0),
        });
        let store = MetaStore::new(kv.clone());
        let refs: Vec<_> = (1..=5).map(|n| content_ref(n, 1)).collect();
        store
            .put_image_with_content("fresh", image("img", 1, 1), &refs)
            .unwrap();
        assert_eq!(kv.writes.load(Ordering::SeqCst), 1);
        assert!(store.get_namespace("fresh").unwrap().is_some());
        assert_eq!(store.list_content_refs("fresh").unwrap().len(), 5);

        // A bad reference refuses the whole pull commit: nothing of it is written.
        let mut bad = refs.clone();
        bad.push(ContentRefRecord {
            digest: "sha256:short".to_owned(),
            ..content_ref(9, 1)
        });
        assert!(matches!(
            store.put_image_with_content("other", image("img", 1, 1), &bad),
            Err(MetaError::InvalidDigest { .. })
        ));
        assert_eq!(kv.writes.load(Ordering::SeqCst), 1);
        assert_eq!(store.get_namespace("other").unwrap(), None);
        assert!(store.list_images("other").unwrap().is_empty());
        assert!(store.list_content_refs("other").unwrap().is_empty());
    }

    #[test]
    fn readers_never_see_half_a_pull() {
        for (backend, store, _dir) in stores() {
            let writer = {
                let store = store.clone();
                std::thread::spawn(move || {
                    for n in 0..50u8 {
                        let refs = [content_ref(n, 1), content_ref(n.wrapping_add(100), 1)];
                        store
                            .put_image_with_content("ns", image(&format!("img{n:03}"), n, 1), &refs)
                            .unwrap();
                    }
                })
            };
            loop {
                let done = writer.is_finished();
                // One scan = one consistent view of everything under the namespace.
                let pairs = store.kv().scan_prefix(&keys::namespace_data("ns")).unwrap();
                let images = pairs
                    .iter()
                    .filter(|(k, _)| k.starts_with(&keys::kind_prefix("ns", keys::IMAGES)))
                    .count();
                let refs = pairs
                    .iter()
                    .filter(|(k, _)| k.starts_with(&keys::kind_prefix("ns", keys::CONTENT)))
                    .count();
                assert_eq!(refs, images * 2, "{backend}: partial batch visible");
                if done {
                    assert_eq!(images, 50, "{backend}");
                    break;
                }
            }
            writer.join().unwrap();
        }
    }

    #[test]
    fn corrupt_records_are_reported() {
        let store = MetaStore::in_memory();
        let mut batch = WriteBatch::new();
        batch.put(keys::namespace("default"), b"not json".to_vec());
        store.kv().write(batch).unwrap();
        assert!(matches!(
            store.get_namespace("default"),
            Err(MetaError::Corrupt {
                kind: RecordKind::Namespace,
                ..
            })
        ));
    }
}
