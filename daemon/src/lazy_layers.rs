//! The glue between remote snapshots and the FUSE lazy filesystem: the only module of the daemon that
//! names the lazy filesystem's types.
//!
//! - [`RegistryBlob`]: a layer blob read with HTTP Range requests through the registry client, the
//!   [`BlobSource`] the lazy filesystem reads through;
//! - [`LayerMounter`]: what mounts a layer lazily at a directory (async: the footer and TOC come over the
//!   network), with [`FuseRemoteLayers`], the real one;
//! - [`RemoteSnapshots`]: the one path from "this layer of this image" to a committed remote snapshot:
//!   reserve (snapshotter, blocking pool) → mount (async) → commit; a failed mount drops the reservation,
//!   which leaves nothing behind. skiff's own pull enters with the descriptor it already resolved;
//!   containerd's `Prepare` enters with the labels' [`RemoteLayer`] and the layer is looked up in its
//!   manifest (read once per manifest digest).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use skiff_fuse::cache::{CacheError, ChunkStore};
use skiff_fuse::fetch::{check_range, BlobSource, SourceError};
use skiff_fuse::lazyfs::OpenError;
use skiff_fuse::manager::{ConnectionKeeper, LayerManager, ManagerError};
use skiff_registry::{Reference, RegistryClient, RegistryError};
use skiff_snapshotter::meta::Labels;
use skiff_snapshotter::snapshots::{
    Mount, RemoteError, RemoteLayerStats, RemoteMounts, RemoteReservation, RemoteSnapshot,
    SnapshotError, Snapshotter,
};
use skiff_types::{Digest, LayerDescriptor, RemoteLayer};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::keeper::Keeper;

/// A layer blob in a registry, read with HTTP Range requests through the shared client.
pub struct RegistryBlob {
    client: RegistryClient,
    reference: Reference,
    digest: Digest,
    size: u64,
}

impl RegistryBlob {
    pub fn new(client: RegistryClient, reference: Reference, layer: &LayerDescriptor) -> Self {
        RegistryBlob {
            client,
            reference,
            digest: layer.digest,
            size: layer.size,
        }
    }
}

impl BlobSource for RegistryBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, SourceError>> {
        async move {
            check_range(&range, self.size)?;
            self.client
                .read_range(&self.reference, &self.digest, range)
                .await
                .map_err(|err| SourceError::Remote(Arc::new(err)))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("{}@{}", self.reference.repository(), self.digest)
    }
}

/// Mounts layers lazily at snapshot directories.
pub trait LayerMounter: RemoteMounts {
    /// Mounts `layer` read-only at `mountpoint` (an empty directory) and says which descriptor it
    /// mounted; [`RemoteError::NotLazy`] when the layer has no lazy format. Without `descriptor` the
    /// layer is looked up in its image's manifest.
    fn mount<'a>(
        &'a self,
        layer: &'a RemoteLayer,
        descriptor: Option<&'a LayerDescriptor>,
        mountpoint: &'a Path,
    ) -> BoxFuture<'a, Result<LayerDescriptor, RemoteError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum LazyLayersError {
    #[error("chunk cache")]
    Cache(#[from] CacheError),
    #[error("registry client")]
    Registry(#[from] RegistryError),
}

/// Failures of finding a layer's descriptor in its manifest.
#[derive(Debug, thiserror::Error)]
enum DescribeError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("manifest {manifest} does not list layer {layer}")]
    LayerNotListed { manifest: Digest, layer: Digest },
}

/// Lazy layers served by FUSE, read through skiffd's registry configuration.
pub struct FuseRemoteLayers {
    manager: LayerManager,
    client: RegistryClient,
    /// The same settings, over plain HTTP, for layers of `skiff image pull --plain-http`.
    plain_client: RegistryClient,
    /// Layers of each manifest read so far (containerd's `Prepare` names a layer, not its descriptor).
    manifests: Mutex<HashMap<Digest, Arc<Vec<LayerDescriptor>>>>,
    /// Holds every mount's connection so mounts outlive skiffd; `None`: they end with it.
    keeper: Option<Arc<Keeper>>,
    /// Until [`finish_startup`](Self::finish_startup): mounts go to snapshot directories an earlier skiffd
    /// may have left mounted. Afterwards every mount goes to a fresh directory.
    starting: std::sync::atomic::AtomicBool,
}

impl FuseRemoteLayers {
    /// Opens the chunk cache (`ROOT/chunks`) and the registry clients of `config`.
    pub fn open(config: &Config, runtime: tokio::runtime::Handle) -> Result<Self, LazyLayersError> {
        let store = ChunkStore::open(&config.chunks_dir(), config.cache.clone())?;
        // Plain HTTP registries are named by their hosts.toml `server = "http://…"`.
        let client = RegistryClient::new(config.registry.client_config(false, None))?;
        let plain_client = RegistryClient::new(config.registry.client_config(true, None))?;
        let keeper = Keeper::start(config);
        let mut manager = LayerManager::new(store, config.lazy.clone(), runtime);
        if let Some(keeper) = &keeper {
            manager = manager.with_keeper(Arc::clone(keeper) as Arc<_>);
        }
        Ok(FuseRemoteLayers {
            manager,
            client,
            plain_client,
            manifests: Mutex::new(HashMap::new()),
            keeper,
            starting: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether mounts outlive skiffd (a keeper holds their connections).
    pub fn keeps_mounts(&self) -> bool {
        self.keeper.is_some()
    }

    /// Checks the keeper is alive; when it died, a new one is started and handed every mount again, so a
    /// later crash of skiffd still leaves the mounts alive (blocking: socket IO).
    pub fn check_keeper(&self) {
        if self
            .keeper
            .as_ref()
            .is_some_and(|keeper| keeper.restarted())
        {
            self.manager.keep_all();
            info!("the keeper was restarted and holds every lazy mount again");
        }
    }

    /// Leaves every mount to the keeper (shutdown for a restart or an upgrade): nothing is unmounted.
    pub fn hand_over(&self) {
        self.manager.hand_over_all();
    }

    /// After every remote snapshot is mounted again: mounts the keeper held that no snapshot claimed are
    /// detached, and new mounts no longer look for what an earlier skiffd left behind.
    pub fn finish_startup(&self) {
        self.starting
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(keeper) = &self.keeper {
            keeper.drop_unclaimed();
        }
    }

    /// At startup: serves again the connection the keeper holds for `mountpoint`, if it is this layer's
    /// and alive; otherwise clears whatever is mounted there (a mount whose server and keeper are both
    /// gone) so the layer can be mounted afresh. After startup there is nothing to take over.
    async fn take_over(
        &self,
        source: Arc<RegistryBlob>,
        descriptor: &LayerDescriptor,
        mountpoint: &Path,
    ) -> bool {
        if !self.starting.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let connection = self
            .keeper
            .as_ref()
            .and_then(|keeper| keeper.take_back(mountpoint, &descriptor.digest));
        if let Some(connection) = connection {
            let resumed = self
                .manager
                .resume(source, descriptor, mountpoint, connection)
                .await;
            let _ = tokio::task::spawn_blocking(crate::malloc::trim).await;
            match resumed {
                Ok(_) => return true,
                Err(err) => {
                    error!(
                        mountpoint = %mountpoint.display(),
                        error = %skiff_types::error_chain(&err),
                        "cannot serve the lazy mount again; its readers get ENOTCONN"
                    );
                    if let Some(keeper) = &self.keeper {
                        keeper.forget(mountpoint);
                    }
                }
            }
        }
        if matches!(skiff_fuse::connection::is_mount_point(mountpoint), Ok(true)) {
            let used_by = skiff_fuse::connection::overlays_above(mountpoint);
            warn!(
                mountpoint = %mountpoint.display(),
                ?used_by,
                "a lazy mount lost its server (and no keeper held it): detaching it; the containers on \
                 these root filesystems get ENOTCONN until restarted"
            );
            if let Err(err) = skiff_fuse::connection::abort_and_detach(mountpoint) {
                warn!(mountpoint = %mountpoint.display(), error = %err, "cannot detach");
            }
        }
        false
    }

    fn client_for(&self, layer: &RemoteLayer) -> &RegistryClient {
        if layer.plain_http {
            &self.plain_client
        } else {
            &self.client
        }
    }

    /// Stops the layers' fetching and waits for their tasks, up to `grace` (shutdown, before unmounting).
    pub async fn stop_work(&self, grace: std::time::Duration) {
        self.manager.stop_work(grace).await;
    }

    /// Unmounts every layer still mounted (shutdown).
    pub fn unmount_all(&self) {
        self.manager.unmount_all();
    }

    /// The layers of the manifest `layer` names (read once per manifest digest), and that digest.
    async fn manifest_layers(
        &self,
        reference: &Reference,
        layer: &RemoteLayer,
    ) -> Result<(Digest, Arc<Vec<LayerDescriptor>>), DescribeError> {
        if let Some(digest) = layer.manifest_digest {
            let cached = self
                .manifests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&digest)
                .cloned();
            if let Some(layers) = cached {
                return Ok((digest, layers));
            }
        }
        let pinned = match layer.manifest_digest {
            Some(digest) => reference.with_digest(digest),
            None => reference.clone(),
        };
        let resolved = self.client_for(layer).resolve(&pinned).await?;
        let layers = Arc::new(resolved.layers);
        self.manifests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(resolved.manifest_digest, Arc::clone(&layers));
        Ok((resolved.manifest_digest, layers))
    }

    async fn describe(
        &self,
        reference: &Reference,
        layer: &RemoteLayer,
    ) -> Result<LayerDescriptor, DescribeError> {
        let (manifest, layers) = self.manifest_layers(reference, layer).await?;
        layers
            .iter()
            .find(|d| d.digest == layer.layer_digest)
            .cloned()
            .ok_or(DescribeError::LayerNotListed {
                manifest,
                layer: layer.layer_digest,
            })
    }
}

impl RemoteMounts for FuseRemoteLayers {
    fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteError> {
        match self.manager.unmount(mountpoint) {
            Ok(()) => Ok(()),
            Err(ManagerError::NotMounted { mountpoint }) => {
                Err(RemoteError::NotMounted { mountpoint })
            }
            Err(err) => Err(RemoteError::Unmount {
                mountpoint: mountpoint.to_path_buf(),
                source: err.into(),
            }),
        }
    }

    fn stats(&self, mountpoint: &Path) -> Option<RemoteLayerStats> {
        self.manager.info(mountpoint).map(|m| RemoteLayerStats {
            mounted: true,
            bytes_fetched: m.stats.bytes_fetched,
            requests: m.stats.requests,
            file_bytes: m.total_file_bytes,
            background_bytes: m.stats.background_bytes,
            bytes_read: m.stats.bytes_read,
            chunks_total: m.chunks.total,
            chunks_cached: m.chunks.cached,
            duplicate_fetches: m.stats.duplicate_fetches,
        })
    }
}

impl LayerMounter for FuseRemoteLayers {
    fn mount<'a>(
        &'a self,
        layer: &'a RemoteLayer,
        descriptor: Option<&'a LayerDescriptor>,
        mountpoint: &'a Path,
    ) -> BoxFuture<'a, Result<LayerDescriptor, RemoteError>> {
        async move {
            let failed = |source: Box<dyn std::error::Error + Send + Sync>| RemoteError::Mount {
                digest: layer.layer_digest,
                image_ref: layer.image_ref.clone(),
                source,
            };
            let reference: Reference = layer.image_ref.parse().map_err(|e| failed(Box::new(e)))?;
            let descriptor = match descriptor {
                Some(descriptor) => descriptor.clone(),
                None => self
                    .describe(&reference, layer)
                    .await
                    .map_err(|e| failed(Box::new(e)))?,
            };
            debug!(layer = %descriptor.digest, media_type = %descriptor.media_type, "mounting remote layer");
            let source = Arc::new(RegistryBlob::new(
                self.client_for(layer).clone(),
                reference,
                &descriptor,
            ));
            if self
                .take_over(Arc::clone(&source), &descriptor, mountpoint)
                .await
            {
                return Ok(descriptor);
            }
            let mounted = self.manager.mount(source, &descriptor, mountpoint).await;
            // What parsing the TOC freed goes back to the kernel (bench/README.md, memory).
            let _ = tokio::task::spawn_blocking(crate::malloc::trim).await;
            match mounted {
                Ok(_) => Ok(descriptor),
                Err(ManagerError::Open(OpenError::NotLazy { digest, reason })) => {
                    Err(RemoteError::NotLazy { digest, reason })
                }
                Err(err) => Err(failed(Box::new(err))),
            }
        }
        .boxed()
    }
}

/// What became of a layer offered to be served lazily.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LazyOutcome {
    /// Its remote snapshot is committed (now or before).
    Committed,
    /// It cannot be served lazily, for this reason (nothing is left behind; the caller unpacks it).
    Fallback(String),
}

/// Remote snapshots: the snapshotter's reservations, filled by a [`LayerMounter`]. Cheap to clone.
#[derive(Clone)]
pub struct RemoteSnapshots {
    snapshotter: Snapshotter,
    mounter: Arc<dyn LayerMounter>,
}

impl RemoteSnapshots {
    /// Remote snapshots of `snapshotter`, which must unmount through the same `mounter`
    /// ([`Snapshotter::with_remote_mounts`]).
    pub fn new(snapshotter: Snapshotter, mounter: Arc<dyn LayerMounter>) -> Self {
        RemoteSnapshots {
            snapshotter,
            mounter,
        }
    }

    /// skiff's own pull: mounts `layer` (whose descriptor the pull resolved) and commits it as the
    /// snapshot `layer.target` on `parent`, or says why it cannot be served lazily.
    pub async fn commit(
        &self,
        parent: Option<&str>,
        layer: RemoteLayer,
        descriptor: &LayerDescriptor,
    ) -> Result<LazyOutcome, SnapshotError> {
        let reservation = {
            let (snapshotter, target, parent) = (
                self.snapshotter.clone(),
                layer.target.clone(),
                parent.map(str::to_owned),
            );
            blocking(move || {
                snapshotter.reserve_remote(&target, parent.as_deref(), None, &Labels::new())
            })
            .await?
        };
        match reservation {
            None => Ok(LazyOutcome::Committed),
            Some(reservation) => self.fill(reservation, layer, Some(descriptor)).await,
        }
    }

    /// containerd's `Prepare` with remote-snapshot labels: the layer is mounted and committed under
    /// `layer.target`, and the answer is `AlreadyExists` for that name (what containerd expects of a
    /// remote snapshotter). A layer that cannot be served lazily (not lazy, or any failure) falls back to
    /// an ordinary active snapshot `key` that containerd unpacks into.
    pub async fn prepare(
        &self,
        key: String,
        parent: Option<String>,
        labels: Labels,
        layer: RemoteLayer,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let reservation = {
            let (snapshotter, target, parent, key, labels) = (
                self.snapshotter.clone(),
                layer.target.clone(),
                parent.clone(),
                key.clone(),
                labels.clone(),
            );
            blocking(move || {
                snapshotter.reserve_remote(&target, parent.as_deref(), Some(&key), &labels)
            })
            .await?
        };
        let target = layer.target.clone();
        let outcome = match reservation {
            None => LazyOutcome::Committed,
            Some(reservation) => self.fill(reservation, layer, None).await?,
        };
        if outcome == LazyOutcome::Committed {
            return Err(SnapshotError::AlreadyExists { key: target });
        }
        let snapshotter = self.snapshotter.clone();
        blocking(move || snapshotter.prepare(&key, parent.as_deref(), labels)).await
    }

    /// Mounts the layer at the reservation and commits it; a fallback (the reservation abandoned) when
    /// it cannot be mounted.
    async fn fill(
        &self,
        reservation: RemoteReservation,
        layer: RemoteLayer,
        descriptor: Option<&LayerDescriptor>,
    ) -> Result<LazyOutcome, SnapshotError> {
        let mountpoint = reservation.mountpoint();
        match self.mounter.mount(&layer, descriptor, &mountpoint).await {
            Ok(descriptor) => {
                let remote = RemoteSnapshot {
                    layer,
                    descriptor: Some(descriptor),
                };
                blocking(move || reservation.commit(remote)).await?;
                Ok(LazyOutcome::Committed)
            }
            Err(err) => {
                match &err {
                    RemoteError::NotLazy { .. } => {
                        debug!(layer = %layer.layer_digest, error = %err, "not a lazy layer; it is unpacked")
                    }
                    _ => warn!(
                        layer = %layer.layer_digest,
                        image = %layer.image_ref,
                        error = %skiff_types::error_chain(&err),
                        "remote layer unavailable; it is unpacked"
                    ),
                }
                blocking(move || {
                    drop(reservation);
                    Ok(())
                })
                .await?;
                Ok(LazyOutcome::Fallback(skiff_types::error_chain(&err)))
            }
        }
    }

    /// Mounts every remote snapshot again (after a restart, before the socket opens). A layer that cannot
    /// be mounted is logged and left empty; returns how many were mounted.
    pub async fn remount_all(&self) -> Result<usize, SnapshotError> {
        let snapshotter = self.snapshotter.clone();
        let remote = blocking(move || snapshotter.remote_snapshots()).await?;
        let mut mounted = 0;
        for (key, snapshot, fs) in remote {
            match self
                .mounter
                .mount(&snapshot.layer, snapshot.descriptor.as_ref(), &fs)
                .await
            {
                Ok(_) => mounted += 1,
                Err(err) => error!(
                    key,
                    layer = %snapshot.layer.layer_digest,
                    error = %skiff_types::error_chain(&err),
                    "cannot mount remote snapshot again; it reads as empty"
                ),
            }
        }
        if mounted > 0 {
            info!(mounted, "remote snapshots mounted again");
        }
        Ok(mounted)
    }
}

/// Runs snapshotter work (disk, database, waits on its lock) on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(SnapshotError::Io {
            action: "run snapshot work",
            path: Default::default(),
            source: std::io::Error::other(err),
        }),
    }
}
