//! Images: pulling a reference (`pull.rs`: manifest, config and index into the content store, then the
//! image's snapshot chain, each layer either mounted lazily as a remote snapshot, its blob never
//! downloaded, or downloaded, verified and unpacked into a committed snapshot named by its chain id),
//! describing a stored image, and deleting one with garbage collection of the blobs and snapshots no
//! image uses any more. The registry is reached through the [`ImageSource`] seam ([`source`]); nothing
//! here speaks gRPC.
//!
//! The layer snapshots of skiff's own images are keyed `skiff.image/<chain id>`
//! (`SnapshotKey::image_layer`), so they never meet the keys containerd uses on the same socket
//! (`NAMESPACE/N/…`, N a number).

mod pull;
pub mod source;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use skiff_registry::{Reference, RegistryError};
use skiff_snapshotter::content::{ContentError, ContentStore, Digest};
use skiff_snapshotter::meta::{DescriptorRecord, ImageRecord, MetaError, MetaStore};
use skiff_snapshotter::snapshots::{RemoteLayerStats, SnapshotError, Snapshotter};
use skiff_types::{ChainId, SnapshotKey};
use tracing::{info, instrument, warn};

pub use source::{ImageSource, ImageSources, RegistrySources};

use crate::lazy_layers::RemoteSnapshots;

/// The key of the committed snapshot of a layer stack of skiff's own images (`skiff.image/<chain id>`).
pub fn image_snapshot_key(chain: &ChainId) -> String {
    SnapshotKey::image_layer(chain).into()
}

/// How a layer of a pull became a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSource {
    /// Downloaded (or found in the content store) and unpacked.
    Unpacked,
    /// Mounted lazily from the registry; the blob was not downloaded.
    Lazy,
    /// The snapshot existed already (another image, an earlier pull).
    Existed,
}

/// A layer's snapshot, once it is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerProgress {
    pub digest: String,
    pub total: u64,
    pub chain_id: String,
    pub key: String,
    pub source: SnapshotSource,
    /// Why a layer that announced a lazy format was downloaded and unpacked instead.
    pub fallback: Option<String>,
}

/// Progress of a pull as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum PullEvent {
    /// The reference was resolved; `blobs` are everything the image is made of.
    Resolved {
        name: String,
        target: DescriptorRecord,
        blobs: Vec<DescriptorRecord>,
    },
    Blob(BlobProgress),
    Layer(LayerProgress),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlobProgress {
    pub digest: String,
    pub offset: u64,
    pub total: u64,
    pub done: bool,
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("image {name} not found in namespace {namespace}")]
    NotFound { namespace: String, name: String },
    #[error("stored blob {digest} is not a valid {kind}: {reason}")]
    InvalidBlob {
        digest: String,
        kind: &'static str,
        reason: String,
    },
    #[error("image {name} has no manifest for this platform in the content store")]
    NoPlatformManifest { name: String },
    #[error("image config {config} lists {diff_ids} diff ids for {layers} layers")]
    LayerCountMismatch {
        config: String,
        diff_ids: usize,
        layers: usize,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("snapshot task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("skiffd is shutting down")]
    Cancelled,
}

/// What a stored image resolves to on this host.
#[derive(Debug, Clone)]
pub struct ImageDetail {
    pub image: ImageRecord,
    pub manifest: DescriptorRecord,
    pub config: DescriptorRecord,
    pub layers: Vec<DescriptorRecord>,
    pub platform: String,
    /// The key of the committed snapshot of all the image's layers, when it exists.
    pub snapshot: Option<String>,
    /// Per layer (bottom first, as `layers`): what a lazily mounted layer has fetched; `None` for a layer
    /// that is unpacked or has no snapshot.
    pub lazy: Vec<Option<RemoteLayerStats>>,
}

#[derive(Clone)]
pub struct Images {
    content: ContentStore,
    meta: MetaStore,
    /// Where pulls read images (the registry in skiffd).
    sources: Arc<dyn ImageSources>,
    /// Layer blobs a full pull fetches at once.
    downloads: usize,
    /// Where pulls build the images' snapshot chains; without one a pull only fills the content store.
    snapshotter: Option<Snapshotter>,
    /// How pulls mount layers lazily; without it every layer is unpacked.
    remote: Option<RemoteSnapshots>,
    /// Blobs and snapshot keys that running pulls rely on, with how many pulls do: a failed pull (or an
    /// image removal) must not delete a blob or snapshot another pull is about to use.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// Registers a pull's blobs and snapshot keys as in flight for as long as it lives.
struct InFlight<'a> {
    images: &'a Images,
    digests: Vec<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.images.in_flight);
        for digest in &self.digests {
            if let Some(count) = in_flight.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    in_flight.remove(digest);
                }
            }
        }
    }
}

impl Images {
    /// Images in `content` and `meta`, pulled through `sources` with up to `downloads` layer blobs at
    /// once.
    pub fn new(
        content: ContentStore,
        meta: MetaStore,
        sources: Arc<dyn ImageSources>,
        downloads: usize,
    ) -> Self {
        Images {
            content,
            meta,
            sources,
            downloads,
            snapshotter: None,
            remote: None,
            in_flight: Arc::default(),
        }
    }

    /// Pulls build snapshot chains in `snapshotter` from now on, mounting lazy layers through `remote`
    /// when given.
    pub fn with_snapshotter(
        mut self,
        snapshotter: Snapshotter,
        remote: Option<RemoteSnapshots>,
    ) -> Self {
        self.snapshotter = Some(snapshotter);
        self.remote = remote;
        self
    }

    fn hold(&self, names: Vec<String>) -> InFlight<'_> {
        let mut in_flight = lock(&self.in_flight);
        for name in &names {
            *in_flight.entry(name.clone()).or_default() += 1;
        }
        InFlight {
            images: self,
            digests: names,
        }
    }

    /// The chain ids of an image's layers, bottom first, from its stored config.
    async fn image_chain(&self, namespace: &str, name: &str) -> Result<Vec<ChainId>, ImageError> {
        let detail = self.detail_without_snapshot(namespace, name).await?;
        self.chain_of(&detail).await
    }

    async fn chain_of(&self, detail: &ImageDetail) -> Result<Vec<ChainId>, ImageError> {
        let digest = parse_digest(&detail.config.digest)?;
        let config: ImageConfiguration = self.read_json(&digest, "image config").await?;
        Ok(ChainId::chain(&diff_ids(&config, &digest)?))
    }

    /// After an image is gone: removes its layer snapshots that no image of any namespace (and no
    /// running pull) uses, top first; a snapshot with a child (a container's, say) stays, and so does
    /// everything below it.
    async fn remove_unused_snapshots(&self, chain: &[ChainId]) -> Result<(), ImageError> {
        let Some(snapshotter) = self.snapshotter.clone() else {
            return Ok(());
        };
        let mut keep = HashSet::new();
        for namespace in self.meta.list_namespaces()? {
            for image in self.meta.list_images(&namespace.name)? {
                match self.image_chain(&namespace.name, &image.name).await {
                    Ok(chain) => keep.extend(chain),
                    Err(err) => warn!(
                        namespace = %namespace.name,
                        image = %image.name,
                        error = %err,
                        "cannot read the image's layers; its snapshots are not known"
                    ),
                }
            }
        }
        let keys: Vec<String> = {
            let in_flight = lock(&self.in_flight);
            chain
                .iter()
                .rev()
                .filter(|chain| !keep.contains(*chain))
                .map(image_snapshot_key)
                .filter(|key| !in_flight.contains_key(key))
                .collect()
        };
        tokio::task::spawn_blocking(move || remove_snapshots(&snapshotter, &keys)).await?;
        Ok(())
    }

    /// The image's platform manifest, config and layers as stored, and its top layer snapshot.
    pub async fn detail(&self, namespace: &str, name: &str) -> Result<ImageDetail, ImageError> {
        let mut detail = self.detail_without_snapshot(namespace, name).await?;
        if let Some(snapshotter) = &self.snapshotter {
            let chain = self.chain_of(&detail).await?;
            if let Some(top) = chain.last() {
                let key = image_snapshot_key(top);
                if snapshotter.stat(&key).is_ok() {
                    detail.snapshot = Some(key);
                }
            }
            detail.lazy = chain
                .iter()
                .map(|chain| {
                    snapshotter
                        .remote_stats(&image_snapshot_key(chain))
                        .ok()
                        .flatten()
                })
                .collect();
        }
        Ok(detail)
    }

    async fn detail_without_snapshot(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ImageDetail, ImageError> {
        let image = self.get(namespace, name)?;
        let target = record_descriptor(&image.target)?;
        let manifest = if is_index(target.media_type()) {
            let index: ImageIndex = self
                .read_json(&blob_digest(&target)?, "image index")
                .await?;
            index
                .manifests()
                .iter()
                .find(|m| blob_digest(m).is_ok_and(|digest| self.content.contains(&digest)))
                .cloned()
                .ok_or_else(|| ImageError::NoPlatformManifest {
                    name: name.to_string(),
                })?
        } else {
            target
        };
        let parsed: ImageManifest = self
            .read_json(&blob_digest(&manifest)?, "image manifest")
            .await?;
        let config: ImageConfiguration = self
            .read_json(&blob_digest(parsed.config())?, "image config")
            .await?;
        let platform = match config.variant() {
            Some(variant) => format!("{}/{}/{variant}", config.os(), config.architecture()),
            None => format!("{}/{}", config.os(), config.architecture()),
        };
        Ok(ImageDetail {
            image,
            manifest: DescriptorRecord::from(&manifest),
            config: DescriptorRecord::from(parsed.config()),
            layers: parsed.layers().iter().map(DescriptorRecord::from).collect(),
            platform,
            snapshot: None,
            lazy: Vec::new(),
        })
    }

    /// The image stored under `name`, or under the normalized form of `name` when it is a reference
    /// (`busybox` finds `docker.io/library/busybox:latest`, as nerdctl does).
    pub fn get(&self, namespace: &str, name: &str) -> Result<ImageRecord, ImageError> {
        if let Some(image) = self.meta.get_image(namespace, name)? {
            return Ok(image);
        }
        if let Ok(reference) = name.parse::<Reference>() {
            if let Some(image) = self.meta.get_image(namespace, &reference.to_string())? {
                return Ok(image);
            }
        }
        Err(ImageError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    pub fn list(&self, namespace: &str) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.meta.list_images(namespace)?)
    }

    /// Removes the image, then the namespace's references to blobs no remaining image of the namespace
    /// uses, then the blob files no namespace references.
    #[instrument(skip_all, fields(namespace = %namespace, image = %name))]
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<(), ImageError> {
        let image = self.get(namespace, name)?;
        // Read before the blobs may go.
        let chain = match self.image_chain(namespace, &image.name).await {
            Ok(chain) => chain,
            Err(err) => {
                warn!(image = %image.name, error = %err, "cannot read the image's layers; its snapshots stay");
                Vec::new()
            }
        };
        let ns = namespace.to_string();
        self.meta
            .blocking(move |meta| meta.delete_image(&ns, &image.name))
            .await?;
        let mut keep = BTreeSet::new();
        for image in self.meta.list_images(namespace)? {
            self.collect_blobs(&record_descriptor(&image.target)?, &mut keep)
                .await?;
        }
        let unused: Vec<String> = self
            .meta
            .list_content_refs(namespace)?
            .into_iter()
            .map(|r| r.digest)
            .filter(|d| !keep.contains(d))
            .collect();
        let (ns, refs) = (namespace.to_string(), unused.clone());
        self.meta
            .blocking(move |meta| meta.remove_content_refs(&ns, &refs))
            .await?;
        for digest in unused {
            if !self.meta.content_referenced_anywhere(&digest)? {
                let digest = parse_digest(&digest)?;
                match self.content.delete(&digest) {
                    Ok(()) | Err(ContentError::NotFound { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        self.remove_unused_snapshots(&chain).await
    }

    /// Every stored blob reachable from `root` (indexes, manifests, configs, layers).
    async fn collect_blobs(
        &self,
        root: &Descriptor,
        found: &mut BTreeSet<String>,
    ) -> Result<(), ImageError> {
        let mut pending = vec![root.clone()];
        while let Some(descriptor) = pending.pop() {
            let digest = blob_digest(&descriptor)?;
            if !found.insert(digest.to_string()) || !self.content.contains(&digest) {
                continue;
            }
            if is_index(descriptor.media_type()) {
                let index: ImageIndex = self.read_json(&digest, "image index").await?;
                pending.extend(index.manifests().iter().cloned());
            } else if is_manifest(descriptor.media_type()) {
                let manifest: ImageManifest = self.read_json(&digest, "image manifest").await?;
                pending.push(manifest.config().clone());
                pending.extend(manifest.layers().iter().cloned());
            }
        }
        Ok(())
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        digest: &Digest,
        kind: &'static str,
    ) -> Result<T, ImageError> {
        let bytes = self.content.read_all(digest).await?;
        serde_json::from_slice(&bytes).map_err(|err| ImageError::InvalidBlob {
            digest: digest.to_string(),
            kind,
            reason: err.to_string(),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(other) => other == DOCKER_MANIFEST_LIST,
        _ => false,
    }
}

fn is_manifest(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageManifest => true,
        MediaType::Other(other) => other == DOCKER_MANIFEST,
        _ => false,
    }
}

/// A digest of a stored record, parsed.
fn parse_digest(digest: &str) -> Result<Digest, ImageError> {
    digest.parse().map_err(|err| ImageError::InvalidBlob {
        digest: digest.to_string(),
        kind: "digest",
        reason: format!("{err}"),
    })
}

/// The digest of a descriptor read from a stored index or manifest.
fn blob_digest(descriptor: &Descriptor) -> Result<Digest, ImageError> {
    parse_digest(descriptor.digest().as_ref())
}

/// The diff ids of an image config, parsed (a config naming something else is refused).
fn diff_ids(config: &ImageConfiguration, digest: &Digest) -> Result<Vec<Digest>, ImageError> {
    config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|diff_id| {
            diff_id.parse().map_err(|err| ImageError::InvalidBlob {
                digest: digest.to_string(),
                kind: "image config",
                reason: format!("diff id: {err}"),
            })
        })
        .collect()
}

fn record_descriptor(record: &DescriptorRecord) -> Result<Descriptor, ImageError> {
    let mut descriptor = Descriptor::new(
        MediaType::from(record.media_type.as_str()),
        record.size,
        parse_digest(&record.digest)?.to_oci(),
    );
    if !record.annotations.is_empty() {
        descriptor.set_annotations(Some(
            record
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        ));
    }
    Ok(descriptor)
}

/// Removes snapshots in order; absent ones are skipped, and one with a child stops the walk (what is
/// below it is its parent). Failures are logged.
fn remove_snapshots(snapshotter: &Snapshotter, keys: &[String]) {
    for key in keys {
        match snapshotter.remove(key) {
            Ok(()) => info!(key, "image snapshot removed"),
            Err(SnapshotError::NotFound { .. }) => {}
            Err(SnapshotError::HasChildren { child, .. }) => {
                info!(key, child, "image snapshot kept: it has a child");
                return;
            }
            Err(err) => {
                warn!(key, error = %skiff_types::error_chain(&err), "cannot remove image snapshot");
                return;
            }
        }
    }
}
