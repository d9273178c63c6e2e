//! `LayerManager`: the lazy layers one daemon has mounted. It owns the shared chunk store (with the
//! layers' readers and tasks) and settings, mounts a layer at a directory on request, and unmounts one or
//! all of them (on snapshot removal and at shutdown); at shutdown it first stops the layers' work
//! ([`LayerManager::stop_work`]), so no task outlives the daemon that made them. The mounts either go
//! with it ([`LayerManager::unmount_all`]) or stay for the next daemon ([`LayerManager::hand_over_all`]):
//! a [`ConnectionKeeper`] holds a copy of each mount's FUSE connection from the moment it is mounted, so
//! a daemon that dies unannounced leaves its mounts alive too, and the next one
//! [resumes](LayerManager::resume) them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::adapter::{MountError, MountedLayer};
use crate::cache::{ChunkStore, TocCache};
use crate::connection::FuseConnection;
use crate::fetch::{BlobSource, SharedStore, StatsSnapshot, TocBudget};
use crate::lazyfs::{ChunkCounts, LayerConfig, LazyLayer, OpenError};
use skiff_types::{Digest, LayerDescriptor};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{} already has a lazy layer mounted", mountpoint.display())]
    AlreadyMounted { mountpoint: PathBuf },
    #[error("no lazy layer is mounted at {}", mountpoint.display())]
    NotMounted { mountpoint: PathBuf },
}

impl ManagerError {
    /// The layer has no lazy format: the caller unpacks it the ordinary way.
    pub fn is_not_lazy(&self) -> bool {
        matches!(self, ManagerError::Open(OpenError::NotLazy { .. }))
    }
}

/// One mounted layer, as reported to operators.
#[derive(Debug, Clone)]
pub struct MountedInfo {
    pub mountpoint: PathBuf,
    pub layer_digest: Digest,
    pub stats: StatsSnapshot,
    pub total_file_bytes: u64,
    /// The layer's distinct chunks and how many are in the chunk store, counted when asked.
    pub chunks: ChunkCounts,
}

/// Who else holds each mount's FUSE connection, so that it outlives the daemon (skiffd: the keeper).
/// Failures are the keeper's to log: a mount it could not keep works, but dies with the daemon.
pub trait ConnectionKeeper: Send + Sync {
    fn keep(&self, mountpoint: &Path, layer: &LayerDescriptor, connection: &FuseConnection);
    fn forget(&self, mountpoint: &Path);
}

pub struct LayerManager {
    /// Shared by every layer mounted here, with its readers: one layer's background fetching yields to
    /// readers of all of them.
    store: SharedStore,
    config: LayerConfig,
    runtime: Handle,
    mounts: Mutex<BTreeMap<PathBuf, MountedLayer>>,
    keeper: Option<Arc<dyn ConnectionKeeper>>,
}

impl LayerManager {
    pub fn new(store: ChunkStore, config: LayerConfig, runtime: Handle) -> Self {
        LayerManager {
            store: Self::shared(store, &config),
            config,
            runtime,
            mounts: Mutex::new(BTreeMap::new()),
            keeper: None,
        }
    }

    /// The store shared by the layers, with the TOC budget and the TOC cache (`STORE/tocs`).
    fn shared(store: ChunkStore, config: &LayerConfig) -> SharedStore {
        let tocs = TocCache::open(&store.dir().join("tocs"));
        let shared =
            SharedStore::new(store).with_toc_budget(TocBudget::new(config.toc_memory_bytes));
        match tocs {
            Ok(tocs) => shared.with_toc_cache(tocs),
            Err(err) => {
                warn!(error = %err, "no TOC cache: a restart needs the registry to mount lazy layers again");
                shared
            }
        }
    }

    /// Has `keeper` hold every connection mounted from now on.
    pub fn with_keeper(mut self, keeper: Arc<dyn ConnectionKeeper>) -> Self {
        self.keeper = Some(keeper);
        self
    }

    fn mounts(&self) -> MutexGuard<'_, BTreeMap<PathBuf, MountedLayer>> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> &ChunkStore {
        self.store.store()
    }

    /// Opens `layer`, whose bytes `source` reads, from its TOC and mounts it read-only at `mountpoint`.
    /// A layer without a lazy format fails with an error for which `is_not_lazy()` holds.
    pub async fn mount(
        &self,
        source: Arc<dyn BlobSource>,
        layer: &LayerDescriptor,
        mountpoint: &Path,
    ) -> Result<Arc<LazyLayer>, ManagerError> {
        if self.mounts().contains_key(mountpoint) {
            return Err(ManagerError::AlreadyMounted {
                mountpoint: mountpoint.to_path_buf(),
            });
        }
        let lazy = LazyLayer::open(source, layer, self.store.clone(), &self.config).await?;
        let mounted = MountedLayer::mount(Arc::clone(&lazy), mountpoint, self.runtime.clone())?;
        self.insert(mounted, true)?;
        info!(layer = %layer.digest, mountpoint = %mountpoint.display(), "lazy layer mounted");
        Ok(lazy)
    }

    /// Opens `layer` from its TOC and serves `connection` again, which an earlier daemon mounted at
    /// `mountpoint` for the same layer (taken back from the keeper).
    pub async fn resume(
        &self,
        source: Arc<dyn BlobSource>,
        layer: &LayerDescriptor,
        mountpoint: &Path,
        connection: FuseConnection,
    ) -> Result<Arc<LazyLayer>, ManagerError> {
        if self.mounts().contains_key(mountpoint) {
            return Err(ManagerError::AlreadyMounted {
                mountpoint: mountpoint.to_path_buf(),
            });
        }
        let lazy = LazyLayer::open(source, layer, self.store.clone(), &self.config).await?;
        let mounted = MountedLayer::resume(
            Arc::clone(&lazy),
            mountpoint,
            self.runtime.clone(),
            connection,
        )?;
        self.insert(mounted, false)?;
        info!(layer = %layer.digest, mountpoint = %mountpoint.display(), "lazy layer taken over");
        Ok(lazy)
    }

    /// Records a mount (and has the keeper hold its connection when `keep`), unless someone mounted at
    /// the same place meanwhile: then ours is unmounted again.
    fn insert(&self, mounted: MountedLayer, keep: bool) -> Result<(), ManagerError> {
        let mountpoint = mounted.mountpoint().to_path_buf();
        let mut mounts = self.mounts();
        if mounts.contains_key(&mountpoint) {
            drop(mounts);
            mounted.unmount()?;
            return Err(ManagerError::AlreadyMounted { mountpoint });
        }
        if let (true, Some(keeper)) = (keep, &self.keeper) {
            keeper.keep(
                &mountpoint,
                mounted.layer().descriptor(),
                mounted.connection(),
            );
        }
        mounts.insert(mountpoint, mounted);
        Ok(())
    }

    /// Has the keeper hold every connection mounted here (again: after the keeper itself was restarted).
    pub fn keep_all(&self) {
        let Some(keeper) = &self.keeper else {
            return;
        };
        for (mountpoint, mounted) in self.mounts().iter() {
            keeper.keep(
                mountpoint,
                mounted.layer().descriptor(),
                mounted.connection(),
            );
        }
    }

    /// Unmounts the layer at `mountpoint`.
    pub fn unmount(&self, mountpoint: &Path) -> Result<(), ManagerError> {
        let mounted = self
            .mounts()
            .remove(mountpoint)
            .ok_or_else(|| ManagerError::NotMounted {
                mountpoint: mountpoint.to_path_buf(),
            })?;
        let layer = mounted.layer().descriptor().digest;
        let unmounted = mounted.unmount();
        self.forget(mountpoint);
        // The layer's kept TOC goes with its last mount.
        if let Some(tocs) = self.store.toc_cache() {
            let still_used = self
                .mounts()
                .values()
                .any(|m| m.layer().descriptor().digest == layer);
            if !still_used {
                tocs.remove(&layer);
            }
        }
        unmounted?;
        Ok(())
    }

    fn forget(&self, mountpoint: &Path) {
        if let Some(keeper) = &self.keeper {
            keeper.forget(mountpoint);
        }
    }

    /// Ends the layers' work (shutdown): fetches nobody waits for (background, readahead) stop, spans in
    /// flight give up, and the tasks are waited for, up to `grace`. The mounts stay until
    /// [`unmount_all`](Self::unmount_all).
    pub async fn stop_work(&self, grace: std::time::Duration) {
        let left = self.store.tasks().shutdown(grace).await;
        if left > 0 {
            warn!(
                left,
                "lazy layer tasks still running after the grace period"
            );
        }
    }

    /// Unmounts every layer (shutdown). Failures are logged; every mount is attempted.
    pub fn unmount_all(&self) {
        let mounts = std::mem::take(&mut *self.mounts());
        for (mountpoint, mounted) in mounts {
            if let Err(err) = mounted.unmount() {
                warn!(mountpoint = %mountpoint.display(), error = ?err, "unmount failed");
            }
            self.forget(&mountpoint);
        }
    }

    /// Leaves every layer mounted for the next daemon (shutdown for an upgrade or restart): background
    /// work stops; the keeper holds the connections.
    pub fn hand_over_all(&self) {
        let mounts = std::mem::take(&mut *self.mounts());
        let count = mounts.len();
        for mounted in mounts.into_values() {
            mounted.hand_over();
        }
        if count > 0 {
            info!(count, "lazy mounts left to the keeper");
        }
    }

    pub fn is_mounted(&self, mountpoint: &Path) -> bool {
        self.mounts().contains_key(mountpoint)
    }

    /// Every mounted layer (the chunk counts are taken outside the lock on the mounts).
    pub fn list(&self) -> Vec<MountedInfo> {
        let layers: Vec<(PathBuf, Arc<LazyLayer>)> = self
            .mounts()
            .iter()
            .map(|(mountpoint, mounted)| (mountpoint.clone(), Arc::clone(mounted.layer())))
            .collect();
        layers
            .into_iter()
            .map(|(mountpoint, layer)| Self::info_of(mountpoint, &layer))
            .collect()
    }

    /// The layer mounted at `mountpoint`, if any.
    pub fn info(&self, mountpoint: &Path) -> Option<MountedInfo> {
        let layer = Arc::clone(self.mounts().get(mountpoint)?.layer());
        Some(Self::info_of(mountpoint.to_path_buf(), &layer))
    }

    fn info_of(mountpoint: PathBuf, layer: &LazyLayer) -> MountedInfo {
        MountedInfo {
            mountpoint,
            layer_digest: layer.descriptor().digest,
            stats: layer.stats().snapshot(),
            total_file_bytes: layer.tree().total_file_bytes(),
            chunks: layer.chunk_counts(),
        }
    }
}

impl Drop for LayerManager {
    fn drop(&mut self) {
        self.unmount_all();
    }
}
