//! Snapshots (containerd's snapshots.v1 model) over overlayfs, with their metadata in the [`MetaStore`].
//!
//! A snapshot is a directory `ROOT/snapshots/{id}` with `fs` (its tree) and, while active, `work`
//! (overlayfs's work dir), plus a [`SnapshotRecord`] under its key. Kinds follow containerd: `Prepare` makes
//! an *active* (writable) snapshot, `View` a read-only *view*, `Commit` turns an active snapshot into a
//! *committed* one under a new name, and only committed snapshots can be parents. [`mounts()`] says how the
//! caller mounts one, as containerd's overlayfs snapshotter would: a bind mount (`rw`, or `ro` for a view)
//! when there is one directory to show, otherwise `overlay` with `lowerdir` = the parents' `fs` dirs,
//! nearest first, plus `upperdir` / `workdir` for an active snapshot. Nothing is mounted here. `List` takes
//! containerd's filter syntax ([`filter`]); `Update` changes labels only.
//!
//! Keys are one global space (snapshots.v1 is not namespaced by the request: containerd puts its namespace
//! into its keys); skiff's own keys (`skiff.image/<chain id>`, `skiff.ns/NAMESPACE/KEY`) are
//! `skiff_types::SnapshotKey`'s scheme, and this module treats every key alike.
//!
//! Crash safety: a new snapshot's directory is made under a temporary name, renamed to its id, and only
//! then its record (and the id counter) is written in one batch; removal deletes the record first, then the
//! directory. So a crash leaves either a consistent record or a directory without one, which
//! [`Snapshotter::open`] and [`Snapshotter::cleanup`] delete. Every change of records is one batch, made under
//! one lock that also orders the directory work; only the mount of a remote layer (network IO) runs
//! without it, its target name, parent and directory reserved meanwhile.
//!
//! Remote (lazy) layers plug in through a reservation ([`Snapshotter::reserve_remote`]): the target name,
//! its parent and a fresh directory are reserved under the lock (the id counter is written first, so no
//! other snapshot takes the id), the caller mounts the layer read-only at the reservation's
//! [`mountpoint`](RemoteReservation::mountpoint) without the lock (network IO, async), and
//! [`RemoteReservation::commit`] records it as a committed snapshot; dropping the reservation abandons it
//! (unmounts, removes the directory, frees the name) and leaves nothing behind (the containerd remote
//! snapshotter contract, see [`remote`]). While a reservation lives, a second reservation of the same name
//! waits for it (one mount; the second then finds the snapshot), creating or committing that name is
//! `AlreadyExists`, removing its parent is `HasChildren`, and `cleanup` leaves its directory alone.
//! Such a snapshot's record remembers the layer and its descriptor, so the daemon can mount it again after
//! a restart ([`Snapshotter::remote_snapshots`]); [`Snapshotter::remove`] unmounts it through the
//! [`RemoteMounts`] it was given. This module must not know FUSE.
//!
//! [`Snapshotter::unpack_layer`] turns a layer blob into a committed snapshot: an active snapshot under a
//! temporary key ([`UNPACK_KEY_PREFIX`]; left-overs of a crash are removed at open) gets the layer
//! ([`crate::unpack`]) outside the lock, and is committed under the layer's name; on failure it is removed
//! and nothing is committed.
//!
//! All methods block (disk and database); async callers use `spawn_blocking`.

pub mod filter;
pub mod mounts;
pub mod remote;

pub mod usage;

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tracing::{debug, info, warn};

use crate::meta::{
    validate_snapshot_key, Labels, MetaError, MetaStore, SnapshotRecord, WriteBatch,
};
pub use crate::meta::{SnapshotKind, UsageRecord as Usage};
pub use filter::{AnyFilter, Fields, FilterError};
pub use mounts::{mounts, unmount_and_remove, Mount, SnapshotDirs};
pub use remote::{RemoteError, RemoteLayer, RemoteLayerStats, RemoteMounts, RemoteSnapshot};

use crate::unpack::{apply_layer, Applied, LayerBlob, UnpackError};

/// Failures of snapshot operations; skiffd maps each to the gRPC code containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {key:?} not found")]
    NotFound { key: String },
    #[error("parent {parent:?} of snapshot {key:?} not found")]
    ParentNotFound { key: String, parent: String },
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },
    #[error("parent {parent:?} of snapshot {key:?} is not committed (it is {kind})")]
    ParentNotCommitted {
        key: String,
        parent: String,
        kind: SnapshotKind,
    },
    #[error("snapshot {key:?} is {kind}, not active")]
    NotActive { key: String, kind: SnapshotKind },
    #[error("snapshot {key:?} has a child {child:?}; remove it first")]
    HasChildren { key: String, child: String },
    #[error("invalid label {label:?}: {reason}")]
    InvalidLabel { label: String, reason: &'static str },
    #[error("cannot update field {field:?} of snapshot {key:?}: only labels are mutable")]
    ImmutableField { key: String, field: String },
    #[error(transparent)]
    InvalidFilter(#[from] FilterError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io {
        action,
        path,
        source,
    }
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SnapshotKind {
    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::View => "view",
            SnapshotKind::Active => "active",
            SnapshotKind::Committed => "committed",
        }
    }
}

/// What `Stat`, `Update` and `List` report about a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub key: String,
    pub parent: Option<String>,
    pub kind: SnapshotKind,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl From<&SnapshotRecord> for SnapshotInfo {
    fn from(record: &SnapshotRecord) -> Self {
        SnapshotInfo {
            key: record.key.clone(),
            parent: record.parent.clone(),
            kind: record.kind,
            labels: record.labels.clone(),
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// The fields containerd's snapshot filters name: `kind`, `name`, `parent`, `labels.KEY`.
impl Fields for SnapshotInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first()?.as_str() {
            "kind" => Some(self.kind.as_str().to_owned()),
            "name" => Some(self.key.clone()),
            "parent" => Some(self.parent.clone().unwrap_or_default()),
            "labels" if !self.labels.is_empty() => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

/// One change `Update` makes to a snapshot's labels, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelChange {
    /// Field path `labels`, or no field path at all: the labels become exactly these.
    ReplaceAll(Labels),
    /// Field path `labels.KEY`: set KEY, or remove it when the request carries no value for it.
    Set { key: String, value: Option<String> },
}

impl LabelChange {
    /// containerd's `Update` field paths (`labels`, `labels.KEY`) with the request's labels; any other field
    /// is immutable (`InvalidArgument`).
    pub fn from_field_paths<S: AsRef<str>>(
        snapshot: &str,
        paths: &[S],
        labels: &Labels,
    ) -> Result<Vec<LabelChange>, SnapshotError> {
        if paths.is_empty() {
            return Ok(vec![LabelChange::ReplaceAll(labels.clone())]);
        }
        paths
            .iter()
            .map(|path| match path.as_ref() {
                "labels" => Ok(LabelChange::ReplaceAll(labels.clone())),
                path => match path.strip_prefix("labels.") {
                    Some(key) => Ok(LabelChange::Set {
                        key: key.to_owned(),
                        value: labels.get(key).cloned(),
                    }),
                    None => Err(SnapshotError::ImmutableField {
                        key: snapshot.to_owned(),
                        field: path.to_owned(),
                    }),
                },
            })
            .collect()
    }

    fn apply(self, labels: &mut Labels) {
        match self {
            LabelChange::ReplaceAll(new) => *labels = new,
            LabelChange::Set {
                key,
                value: Some(value),
            } => {
                labels.insert(key, value);
            }
            LabelChange::Set { key, value: None } => {
                labels.remove(&key);
            }
        }
    }
}

/// Longest label key plus value containerd accepts.
pub const MAX_LABEL_LEN: usize = 4096;

/// containerd's label rules: a non-empty key, key and value together at most 4096 bytes.
pub fn validate_labels(labels: &Labels) -> Result<(), SnapshotError> {
    skiff_types::check_labels(labels)
        .map_err(|(label, reason)| SnapshotError::InvalidLabel { label, reason })
}

/// The snapshots of one skiffd root. Cheap to clone; clones share the lock.
#[derive(Clone)]
pub struct Snapshotter {
    root: PathBuf,
    meta: MetaStore,
    /// Orders every change; holds the remote layers being mounted (outside the lock).
    lock: Arc<Mutex<Mounting>>,
    /// Signalled when a mount in [`Mounting`] ends.
    mount_done: Arc<Condvar>,
    remote: Option<Arc<dyn RemoteMounts>>,
}

/// Remote layers being mounted, by target name: the snapshot id their directory has and their parent.
/// A name here is taken (`AlreadyExists` for anyone else creating it), a parent here has a child, an id
/// here is not an orphan directory.
#[derive(Default)]
struct Mounting(HashMap<String, (u64, Option<String>)>);

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.root)
            .field("remote", &self.remote.is_some())
            .finish_non_exhaustive()
    }
}

/// Key prefix of the active snapshots [`Snapshotter::unpack_layer`] works in; any left over by a crash
/// are removed at [`Snapshotter::open`].
pub const UNPACK_KEY_PREFIX: &str = "skiff.unpack/";

/// Tells concurrent unpacks' temporary keys apart.
static UNPACK_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// What [`Snapshotter::unpack_layer`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSnapshot {
    /// The layer was unpacked and committed.
    Unpacked(Applied),
    /// A committed snapshot of that name existed already (possibly made by a concurrent unpack).
    Existed,
}

/// Name prefix of directories being created; never a snapshot id.
const NEW_PREFIX: &str = "new-";
/// Name prefix of directories being removed.
const REMOVING_PREFIX: &str = "rm-";

impl Snapshotter {
    /// Opens the snapshots kept in `root` (`ROOT/snapshots`, created mode 0700 if absent) and deletes the
    /// directories a crash left without a record.
    pub fn open(root: &Path, meta: MetaStore) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(root).map_err(io_error("create", root))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("chmod", root))?;
        let snapshotter = Snapshotter {
            root: root.to_path_buf(),
            meta,
            lock: Arc::new(Mutex::new(Mounting::default())),
            mount_done: Arc::new(Condvar::new()),
            remote: None,
        };
        snapshotter.cleanup()?;
        snapshotter.remove_unfinished_unpacks()?;
        Ok(snapshotter)
    }

    /// Removes the active snapshots of unpacks a crash interrupted.
    fn remove_unfinished_unpacks(&self) -> Result<(), SnapshotError> {
        for record in self.meta.list_snapshots()? {
            if record.kind == SnapshotKind::Active && record.key.starts_with(UNPACK_KEY_PREFIX) {
                warn!(key = %record.key, "removing the snapshot of an unfinished unpack");
                self.remove(&record.key)?;
            }
        }
        Ok(())
    }

    /// Applies a layer read from `blob` as the committed snapshot `name` on top of `parent`: an active
    /// snapshot under a temporary key gets the layer ([`apply_layer`], digests verified), then is
    /// committed as `name` with `labels`. On any failure the active snapshot is removed and nothing is
    /// committed. A snapshot `name` that exists already (before or, from a concurrent unpack, after)
    /// is [`LayerSnapshot::Existed`]. The unpack itself runs outside the lock.
    pub fn unpack_layer(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &LayerBlob,
        blob: impl Read,
        labels: Labels,
    ) -> Result<LayerSnapshot, SnapshotError> {
        validate_snapshot_key(name)?;
        validate_labels(&labels)?;
        if self.meta.get_snapshot(name)?.is_some() {
            return Ok(LayerSnapshot::Existed);
        }
        let key = format!(
            "{UNPACK_KEY_PREFIX}{}-{}/{name}",
            std::process::id(),
            UNPACK_SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        self.prepare(&key, parent, Labels::new())?;
        let applied = self.get(&key).and_then(|record| {
            let upper = self.dirs().fs(record.id);
            let lowers: Vec<PathBuf> = self
                .parent_ids(&record)?
                .into_iter()
                .map(|id| self.dirs().fs(id))
                .collect();
            Ok(apply_layer(blob, layer, &upper, &lowers)?)
        });
        let result = applied.and_then(|applied| match self.commit(name, &key, labels) {
            Ok(()) => Ok(LayerSnapshot::Unpacked(applied)),
            Err(SnapshotError::AlreadyExists { .. }) => Ok(LayerSnapshot::Existed),
            Err(err) => Err(err),
        });
        if !matches!(result, Ok(LayerSnapshot::Unpacked(_))) {
            if let Err(err) = self.remove(&key) {
                warn!(key, error = %skiff_types::error_chain(&err), "cannot remove the snapshot of a failed unpack");
            }
        }
        match &result {
            Ok(LayerSnapshot::Unpacked(applied)) => {
                info!(name, layer = %layer.digest, entries = applied.entries, "layer unpacked")
            }
            Ok(LayerSnapshot::Existed) => debug!(name, "layer snapshot exists"),
            Err(err) => {
                warn!(name, layer = %layer.digest, error = %skiff_types::error_chain(err), "unpack failed")
            }
        }
        result
    }

    /// Remote snapshots are unmounted through `remote` when they go (see [`remote`]).
    pub fn with_remote_mounts(mut self, remote: Arc<dyn RemoteMounts>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Whether layers can be served remotely (lazily) here.
    pub fn serves_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Every remote snapshot: its key, what is mounted at its `fs` dir, and that directory (for mounting
    /// them again after a restart).
    pub fn remote_snapshots(
        &self,
    ) -> Result<Vec<(String, RemoteSnapshot, PathBuf)>, SnapshotError> {
        Ok(self
            .meta
            .list_snapshots()?
            .into_iter()
            .filter_map(|record| {
                let fs = self.dirs().fs(record.id);
                record.remote.map(|remote| (record.key, remote, fs))
            })
            .collect())
    }

    /// Unmounts every remote snapshot (shutdown); failures are logged.
    pub fn unmount_remote(&self) -> Result<(), SnapshotError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let _guard = self.lock();
        for record in self.meta.list_snapshots()? {
            if record.remote.is_some() {
                unmount_quietly(remote.as_ref(), &self.dirs().fs(record.id));
            }
        }
        Ok(())
    }

    /// For a remote snapshot: what its layer has fetched so far (`mounted: false` when its mount is not in
    /// place); `None` for any other snapshot.
    pub fn remote_stats(&self, key: &str) -> Result<Option<RemoteLayerStats>, SnapshotError> {
        let record = self.get(key)?;
        Ok(record.remote.as_ref().map(|_| {
            self.remote
                .as_ref()
                .and_then(|remote| remote.stats(&self.dirs().fs(record.id)))
                .unwrap_or_default()
        }))
    }

    /// Where the snapshot directories are.
    pub fn dirs(&self) -> SnapshotDirs<'_> {
        SnapshotDirs::new(&self.root)
    }

    fn lock(&self) -> MutexGuard<'_, Mounting> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits (releasing the lock) until no mount of `target` is in flight.
    fn wait_for_mount<'a>(
        &self,
        guard: MutexGuard<'a, Mounting>,
        target: &str,
    ) -> MutexGuard<'a, Mounting> {
        self.mount_done
            .wait_while(guard, |mounting| mounting.0.contains_key(target))
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Result<SnapshotRecord, SnapshotError> {
        self.meta
            .get_snapshot(key)?
            .ok_or_else(|| SnapshotError::NotFound {
                key: key.to_owned(),
            })
    }

    /// The ids of `record`'s ancestors, nearest first.
    fn parent_ids(&self, record: &SnapshotRecord) -> Result<Vec<u64>, SnapshotError> {
        let mut ids = Vec::new();
        let mut next = record.parent.clone();
        while let Some(parent) = next {
            let parent_record =
                self.meta
                    .get_snapshot(&parent)?
                    .ok_or_else(|| SnapshotError::ParentNotFound {
                        key: record.key.clone(),
                        parent: parent.clone(),
                    })?;
            ids.push(parent_record.id);
            next = parent_record.parent;
        }
        Ok(ids)
    }

    fn mounts_of(&self, record: &SnapshotRecord) -> Result<Vec<Mount>, SnapshotError> {
        Ok(mounts(
            self.dirs(),
            record.kind,
            record.id,
            &self.parent_ids(record)?,
        ))
    }

    /// A writable snapshot on top of `parent` (a committed snapshot) or of nothing.
    pub fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(SnapshotKind::Active, key, parent, labels)
    }

    /// A read-only snapshot of `parent` (a committed snapshot) or of an empty tree.
    pub fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(SnapshotKind::View, key, parent, labels)
    }

    /// Creates an active snapshot or a view: directory under a temporary name, renamed to its id, then the
    /// record and the id counter in one batch.
    pub fn create(
        &self,
        kind: SnapshotKind,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        validate_snapshot_key(key)?;
        validate_labels(&labels)?;
        let parent = parent.filter(|p| !p.is_empty());
        let guard = self.lock();
        let parent_ids = self.check_new(&guard, key, parent)?;
        self.create_locked(kind, key, parent, labels, &parent_ids)
    }

    /// Reserves the committed snapshot `target` on `parent` for a remote layer about to be mounted.
    /// `Ok(None)` when `target` exists already (nothing to mount). Otherwise the checks of an ordinary
    /// create run first, on `check_key` (containerd's `Prepare` key, which becomes an ordinary active
    /// snapshot if the mount fails) or on `target` itself; a reservation of the same target in flight is
    /// waited for (blocking). Under the reservation, the target name is taken, the parent has a child and
    /// the directory is no orphan; the id counter is written first so no other snapshot takes its id.
    pub fn reserve_remote(
        &self,
        target: &str,
        parent: Option<&str>,
        check_key: Option<&str>,
        labels: &Labels,
    ) -> Result<Option<RemoteReservation>, SnapshotError> {
        validate_snapshot_key(target)?;
        if let Some(key) = check_key {
            validate_snapshot_key(key)?;
        }
        validate_labels(labels)?;
        let parent = parent.filter(|p| !p.is_empty());
        let mut guard = self.wait_for_mount(self.lock(), target);
        if self.meta.get_snapshot(target)?.is_some() {
            return Ok(None);
        }
        let parent_ids = self.check_new(&guard, check_key.unwrap_or(target), parent)?;
        let id = self.meta.next_snapshot_id()?;
        let mut batch = WriteBatch::new();
        self.meta.stage_snapshot_next_id(&mut batch, id);
        self.meta.write_batch(batch)?;
        let dir = self.dirs().dir(id);
        let temp = self.root.join(format!("{NEW_PREFIX}{id}"));
        let result = self
            .make_snapshot_dir(&temp, SnapshotKind::Committed, parent_ids.first().copied())
            .and_then(|()| {
                remove_dir_if_present(&dir)?;
                std::fs::rename(&temp, &dir).map_err(io_error("rename into place", &temp))
            });
        if let Err(err) = result {
            let _ = remove_dir_if_present(&temp);
            return Err(err);
        }
        guard
            .0
            .insert(target.to_owned(), (id, parent.map(str::to_owned)));
        Ok(Some(RemoteReservation {
            snapshotter: self.clone(),
            target: target.to_owned(),
            parent: parent.map(str::to_owned),
            labels: labels.clone(),
            id,
            committed: false,
        }))
    }

    /// Checks that `key` is free and `parent` (if any) is committed; returns the parent's id and its
    /// ancestors', nearest first. Called under the lock.
    fn check_new(
        &self,
        mounting: &Mounting,
        key: &str,
        parent: Option<&str>,
    ) -> Result<Vec<u64>, SnapshotError> {
        if mounting.0.contains_key(key) || self.meta.get_snapshot(key)?.is_some() {
            return Err(SnapshotError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let parent_record = match parent {
            None => None,
            Some(parent) => {
                validate_snapshot_key(parent)?;
                let record = self.meta.get_snapshot(parent)?.ok_or_else(|| {
                    SnapshotError::ParentNotFound {
                        key: key.to_owned(),
                        parent: parent.to_owned(),
                    }
                })?;
                if record.kind != SnapshotKind::Committed {
                    return Err(SnapshotError::ParentNotCommitted {
                        key: key.to_owned(),
                        parent: parent.to_owned(),
                        kind: record.kind,
                    });
                }
                Some(record)
            }
        };
        let mut parent_ids = Vec::new();
        if let Some(parent_record) = &parent_record {
            parent_ids.push(parent_record.id);
            parent_ids.extend(self.parent_ids(parent_record)?);
        }
        Ok(parent_ids)
    }

    /// The directory work and the batch of `create`, under the lock, after `check_new`.
    fn create_locked(
        &self,
        kind: SnapshotKind,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        parent_ids: &[u64],
    ) -> Result<Vec<Mount>, SnapshotError> {
        let id = self.meta.next_snapshot_id()?;
        let now = SystemTime::now();
        let record = SnapshotRecord {
            key: key.to_owned(),
            id,
            kind,
            parent: parent.map(str::to_owned),
            labels,
            created_at: now,
            updated_at: now,
            usage: None,
            remote: None,
        };

        let dir = self.dirs().dir(id);
        let temp = self.root.join(format!("{NEW_PREFIX}{id}"));
        let result = self
            .make_snapshot_dir(&temp, kind, parent_ids.first().copied())
            .and_then(|()| {
                // A directory under this id has no record (ids are never reused once written): a crash
                // left it; it goes.
                remove_dir_if_present(&dir)?;
                std::fs::rename(&temp, &dir).map_err(io_error("rename into place", &temp))
            });
        if let Err(err) = result {
            let _ = remove_dir_if_present(&temp);
            return Err(err);
        }
        let mut batch = WriteBatch::new();
        self.meta.stage_put_snapshot(&mut batch, &record)?;
        self.meta.stage_snapshot_next_id(&mut batch, id);
        if let Err(err) = self.meta.write_batch(batch) {
            let _ = remove_dir_if_present(&dir);
            return Err(err.into());
        }
        debug!(key, id, %kind, "snapshot created");
        Ok(mounts(self.dirs(), kind, id, parent_ids))
    }

    /// `fs` (0755, owned like the parent's `fs`) and, for active snapshots, `work` (0711), under `temp`.
    fn make_snapshot_dir(
        &self,
        temp: &Path,
        kind: SnapshotKind,
        parent: Option<u64>,
    ) -> Result<(), SnapshotError> {
        remove_dir_if_present(temp)?;
        make_dir(temp, 0o700)?;
        let fs = temp.join("fs");
        make_dir(&fs, 0o755)?;
        if kind == SnapshotKind::Active {
            make_dir(&temp.join("work"), 0o711)?;
        }
        if let Some(parent) = parent {
            let parent_fs = self.dirs().fs(parent);
            let owner = std::fs::metadata(&parent_fs).map_err(io_error("stat", &parent_fs))?;
            std::os::unix::fs::lchown(&fs, Some(owner.uid()), Some(owner.gid()))
                .map_err(io_error("chown", &fs))?;
        }
        Ok(())
    }

    /// How to mount the snapshot.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let record = self.get(key)?;
        self.mounts_of(&record)
    }

    /// Turns the active snapshot `key` into the committed snapshot `name` (its usage measured now, its labels
    /// replaced by `labels`); `key` is gone afterwards.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), SnapshotError> {
        validate_snapshot_key(name)?;
        validate_snapshot_key(key)?;
        validate_labels(&labels)?;
        let guard = self.lock();
        if guard.0.contains_key(name) || self.meta.get_snapshot(name)?.is_some() {
            return Err(SnapshotError::AlreadyExists {
                key: name.to_owned(),
            });
        }
        let active = self.get(key)?;
        if active.kind != SnapshotKind::Active {
            return Err(SnapshotError::NotActive {
                key: key.to_owned(),
                kind: active.kind,
            });
        }
        let fs = self.dirs().fs(active.id);
        let usage = usage::disk_usage(&fs).map_err(io_error("measure", &fs))?;
        let now = SystemTime::now();
        let committed = SnapshotRecord {
            key: name.to_owned(),
            kind: SnapshotKind::Committed,
            labels,
            created_at: now,
            updated_at: now,
            usage: Some(usage),
            ..active.clone()
        };
        let mut batch = WriteBatch::new();
        self.meta.stage_delete_snapshot(&mut batch, &active);
        self.meta.stage_put_snapshot(&mut batch, &committed)?;
        self.meta.write_batch(batch)?;
        debug!(key, name, id = active.id, "snapshot committed");
        Ok(())
    }

    /// Removes a snapshot that no other snapshot names as parent: its record, then its directory.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        validate_snapshot_key(key)?;
        let removing = {
            let guard = self.lock();
            let record = self.get(key)?;
            let mounting_child = guard
                .0
                .iter()
                .find(|(_, (_, parent))| parent.as_deref() == Some(key))
                .map(|(child, _)| child.clone());
            if let Some(child) = mounting_child.or(self.meta.first_snapshot_child(key)?) {
                return Err(SnapshotError::HasChildren {
                    key: key.to_owned(),
                    child,
                });
            }
            let mut batch = WriteBatch::new();
            self.meta.stage_delete_snapshot(&mut batch, &record);
            self.meta.write_batch(batch)?;
            if let (Some(_), Some(remote)) = (&record.remote, &self.remote) {
                unmount_quietly(remote.as_ref(), &self.dirs().fs(record.id));
            }
            // Renamed under the lock so a new snapshot never meets it; deleted outside it.
            let dir = self.dirs().dir(record.id);
            let removing = self.root.join(format!("{REMOVING_PREFIX}{}", record.id));
            match std::fs::rename(&dir, &removing) {
                Ok(()) => removing,
                Err(err) => {
                    warn!(key, dir = %dir.display(), error = %err, "snapshot dir left for cleanup");
                    return Ok(());
                }
            }
        };
        if let Err(err) = remove_dir_if_present(&removing) {
            warn!(key, error = %err, "snapshot dir left for cleanup");
        }
        debug!(key, "snapshot removed");
        Ok(())
    }

    /// The snapshot's metadata.
    pub fn stat(&self, key: &str) -> Result<SnapshotInfo, SnapshotError> {
        Ok(SnapshotInfo::from(&self.get(key)?))
    }

    /// Changes the snapshot's labels (the only mutable field) and its `updated_at`.
    pub fn update(
        &self,
        key: &str,
        changes: Vec<LabelChange>,
    ) -> Result<SnapshotInfo, SnapshotError> {
        validate_snapshot_key(key)?;
        let _guard = self.lock();
        let mut record = self.get(key)?;
        for change in changes {
            change.apply(&mut record.labels);
        }
        validate_labels(&record.labels)?;
        record.updated_at = SystemTime::now();
        let mut batch = WriteBatch::new();
        self.meta.stage_put_snapshot(&mut batch, &record)?;
        self.meta.write_batch(batch)?;
        Ok(SnapshotInfo::from(&record))
    }

    /// Bytes and inodes of the snapshot's own tree: stored at commit, measured now otherwise.
    pub fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let record = self.get(key)?;
        match record.usage {
            Some(usage) => Ok(usage),
            None => {
                let fs = self.dirs().fs(record.id);
                usage::disk_usage(&fs).map_err(io_error("measure", &fs))
            }
        }
    }

    /// Every snapshot matching `filter`, sorted by key.
    pub fn list(&self, filter: &AnyFilter) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        Ok(self
            .meta
            .list_snapshots()?
            .iter()
            .map(SnapshotInfo::from)
            .filter(|info| filter.matches(info))
            .collect())
    }

    /// Deletes every directory under the snapshots root that belongs to no snapshot (left by a crash or a
    /// removal that could not finish). Returns how many went.
    pub fn cleanup(&self) -> Result<usize, SnapshotError> {
        let guard = self.lock();
        let live: std::collections::HashSet<u64> = self
            .meta
            .list_snapshots()?
            .iter()
            .map(|record| record.id)
            .chain(guard.0.values().map(|(id, _)| *id))
            .collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.root).map_err(io_error("list", &self.root))? {
            let entry = entry.map_err(io_error("list", &self.root))?;
            let name = entry.file_name();
            let is_live = name
                .to_str()
                .and_then(|name| name.parse::<u64>().ok())
                .is_some_and(|id| live.contains(&id));
            if !is_live {
                let path = entry.path();
                if let Some(remote) = &self.remote {
                    // A removal whose unmount failed, or a crash between mount and commit.
                    unmount_quietly(remote.as_ref(), &path.join("fs"));
                }
                match remove_dir_if_present(&path) {
                    Ok(()) => removed += 1,
                    Err(err) => warn!(path = %path.display(), error = %err, "cannot clean up"),
                }
            }
        }
        if removed > 0 {
            debug!(removed, "orphan snapshot dirs removed");
        }
        Ok(removed)
    }
}

/// A committed snapshot reserved for a remote layer while the caller mounts it (see
/// [`Snapshotter::reserve_remote`]). [`commit`](Self::commit) records it; dropping it abandons it: whatever
/// is mounted at the mountpoint is unmounted, the directory removed and the name released.
pub struct RemoteReservation {
    snapshotter: Snapshotter,
    target: String,
    parent: Option<String>,
    labels: Labels,
    id: u64,
    committed: bool,
}

impl std::fmt::Debug for RemoteReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReservation")
            .field("target", &self.target)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RemoteReservation {
    /// The empty directory to mount the layer at (the snapshot's `fs`).
    pub fn mountpoint(&self) -> PathBuf {
        self.snapshotter.dirs().fs(self.id)
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Records the snapshot, committed, with what is mounted at its mountpoint.
    pub fn commit(mut self, remote: RemoteSnapshot) -> Result<(), SnapshotError> {
        let snapshotter = self.snapshotter.clone();
        let guard = snapshotter.lock();
        let now = SystemTime::now();
        let record = SnapshotRecord {
            key: self.target.clone(),
            id: self.id,
            kind: SnapshotKind::Committed,
            parent: self.parent.clone(),
            labels: std::mem::take(&mut self.labels),
            created_at: now,
            updated_at: now,
            usage: Some(Usage::default()),
            remote: Some(remote),
        };
        // The counter was written at the reservation (and may have moved on since).
        let mut batch = WriteBatch::new();
        snapshotter.meta.stage_put_snapshot(&mut batch, &record)?;
        snapshotter.meta.write_batch(batch)?;
        self.committed = true;
        drop(guard);
        info!(target = %self.target, id = self.id, "remote snapshot committed");
        Ok(())
    }
}

impl Drop for RemoteReservation {
    fn drop(&mut self) {
        let snapshotter = &self.snapshotter;
        let mut guard = snapshotter.lock();
        guard.0.remove(&self.target);
        if !self.committed {
            if let Some(remote) = &snapshotter.remote {
                unmount_quietly(remote.as_ref(), &snapshotter.dirs().fs(self.id));
            }
            let dir = snapshotter.dirs().dir(self.id);
            if let Err(err) = remove_dir_if_present(&dir) {
                warn!(dir = %dir.display(), error = %err, "abandoned remote snapshot dir left for cleanup");
            }
        }
        drop(guard);
        snapshotter.mount_done.notify_all();
    }
}

/// Unmounts a remote layer; nothing mounted there is fine, other failures are logged.
fn unmount_quietly(remote: &dyn RemoteMounts, mountpoint: &Path) {
    match remote.unmount(mountpoint) {
        Ok(()) => debug!(mountpoint = %mountpoint.display(), "remote layer unmounted"),
        Err(RemoteError::NotMounted { .. }) => {}
        Err(err) => warn!(
            mountpoint = %mountpoint.display(),
            error = %skiff_types::error_chain(&err),
            "cannot unmount remote layer"
        ),
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    std::fs::create_dir(path).map_err(io_error("create", path))?;
    // Explicitly, so the umask does not decide.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("chmod", path))
}

/// Removes a directory tree (or a stray file); absent is fine.
fn remove_dir_if_present(path: &Path) -> Result<(), SnapshotError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error("remove", path)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn update_field_paths() {
        let request = labels(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            LabelChange::from_field_paths::<&str>("s", &[], &request).unwrap(),
            [LabelChange::ReplaceAll(request.clone())]
        );
        let changes =
            LabelChange::from_field_paths("s", &["labels.a", "labels.gone", "labels"], &request)
                .unwrap();
        assert_eq!(
            changes,
            [
                LabelChange::Set {
                    key: "a".into(),
                    value: Some("1".into())
                },
                LabelChange::Set {
                    key: "gone".into(),
                    value: None
                },
                LabelChange::ReplaceAll(request.clone()),
            ]
        );
        let mut current = labels(&[("gone", "x"), ("keep", "y")]);
        for change in changes.into_iter().take(2) {
            change.apply(&mut current);
        }
        assert_eq!(current, labels(&[("a", "1"), ("keep", "y")]));
        for field in ["parent", "name", "kind", "created_at", "labelsx"] {
            assert!(matches!(
                LabelChange::from_field_paths("s", &[field], &request),
                Err(SnapshotError::ImmutableField { .. })
            ));
        }
    }

    #[test]
    fn filter_fields_of_a_snapshot() {
        let info = SnapshotInfo {
            key: "k".into(),
            parent: None,
            kind: SnapshotKind::View,
            labels: labels(&[("x.y", "1")]),
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        };
        let path = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(info.field(&path(&["kind"])).as_deref(), Some("view"));
        assert_eq!(info.field(&path(&["parent"])).as_deref(), Some(""));
        assert_eq!(
            info.field(&path(&["labels", "x", "y"])).as_deref(),
            Some("1")
        );
        assert_eq!(info.field(&path(&["labels", "z"])), None);
        assert_eq!(info.field(&path(&["other"])), None);
    }
}
