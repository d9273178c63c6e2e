//! Images: pulling a reference (manifest, config and index into the content store, then the image's
//! snapshot chain: each layer either mounted lazily through the snapshotter's remote layers, its blob
//! never downloaded, or downloaded, verified and unpacked into a committed snapshot named by its chain
//! id), describing a stored image, and deleting one with garbage collection of the blobs and snapshots no
//! image uses any more. Registry access goes through `skiff_fuse::registry`; nothing here speaks gRPC.
//!
//! The layer snapshots of skiff's own images are keyed [`IMAGE_SNAPSHOT_PREFIX`] + chain id, so they never
//! meet the keys containerd uses on the same socket (`NAMESPACE/N/…`, N a number).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use skiff_fuse::format::{estargz, zstd_chunked};
use skiff_fuse::registry::{Credentials, Reference, RegistryClient, RegistryError};
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use crate::config::RegistrySection;
use crate::content::{ContentError, ContentStore};
use crate::meta::{ContentRefRecord, DescriptorRecord, ImageRecord, Labels, MetaError, MetaStore};
use crate::snapshots::remote::INHERITED_LABEL_PREFIX;
use crate::snapshots::{RemoteLayer, SnapshotError, Snapshotter};
use crate::unpack::{ChainId, LayerBlob};

/// Key prefix of the committed layer snapshots of skiff's own images: `skiff.image/` + chain id.
pub const IMAGE_SNAPSHOT_PREFIX: &str = skiff_api::snapshot_keys::IMAGE_PREFIX;

/// The key of the committed snapshot of a layer stack of skiff's own images.
pub fn image_snapshot_key(chain: &ChainId) -> String {
    format!("{IMAGE_SNAPSHOT_PREFIX}{chain}")
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
    pub lazy: Vec<Option<crate::snapshots::RemoteLayerStats>>,
}

/// Bytes between two progress reports of one blob.
const PROGRESS_STEP: u64 = 512 * 1024;

#[derive(Clone)]
pub struct Images {
    content: ContentStore,
    meta: MetaStore,
    registry: RegistrySection,
    /// Where pulls build the images' snapshot chains; without one a pull only fills the content store.
    snapshotter: Option<Snapshotter>,
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
    pub fn new(content: ContentStore, meta: MetaStore, registry: RegistrySection) -> Self {
        Images {
            content,
            meta,
            registry,
            snapshotter: None,
            in_flight: Arc::default(),
        }
    }

    /// Pulls build snapshot chains in `snapshotter` from now on.
    pub fn with_snapshotter(mut self, snapshotter: Snapshotter) -> Self {
        self.snapshotter = Some(snapshotter);
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

    /// After a failed pull: deletes the blobs it wrote that no namespace references and no other pull
    /// is using, so a failed pull leaves the store as it found it.
    fn discard(&self, written: &[Digest]) {
        let in_flight = lock(&self.in_flight);
        for digest in written {
            let key = digest.to_string();
            let shared = in_flight.get(&key).is_some_and(|count| *count > 1);
            let referenced = self.meta.content_referenced_anywhere(&key).unwrap_or(true);
            if !shared && !referenced {
                match self.content.delete(digest) {
                    Ok(()) | Err(ContentError::NotFound { .. }) => {}
                    Err(err) => {
                        warn!(digest = %key, error = %err, "cannot remove blob of a failed pull")
                    }
                }
            }
        }
    }

    /// Resolves `reference`, fetches every blob not yet stored, and records the image in `namespace`
    /// together with its content references in one batch. Progress goes to `progress`; a client that
    /// stops listening does not stop the pull.
    #[instrument(skip_all, fields(namespace = %namespace, reference = %reference))]
    pub async fn pull(
        &self,
        namespace: &str,
        reference: &str,
        plain_http: bool,
        credentials: Option<Credentials>,
        progress: mpsc::Sender<PullEvent>,
    ) -> Result<ImageRecord, ImageError> {
        let reference: Reference = reference.parse()?;
        let credentials_given = credentials.is_some();
        let client = RegistryClient::new(self.registry.client_config(plain_http, credentials))?;
        let resolved = client.resolve(&reference).await?;
        let name = reference.to_string();

        let mut small = vec![(&resolved.target, &resolved.target_bytes)];
        if resolved.manifest.digest() != resolved.target.digest() {
            small.push((&resolved.manifest, &resolved.manifest_bytes));
        }
        small.push((&resolved.config, &resolved.config_bytes));
        let layers = resolved.image_manifest.layers();

        let blobs: Vec<DescriptorRecord> = small
            .iter()
            .map(|(d, _)| *d)
            .chain(layers.iter())
            .map(DescriptorRecord::from)
            .collect();
        let _ = progress
            .send(PullEvent::Resolved {
                name: name.clone(),
                target: DescriptorRecord::from(&resolved.target),
                blobs: blobs.clone(),
            })
            .await;

        let plan = self.plan_layers(&resolved, plain_http, credentials_given)?;
        let mut held: Vec<String> = blobs.iter().map(|b| b.digest.clone()).collect();
        held.extend(plan.iter().map(|layer| layer.key.clone()));
        let _hold = self.hold(held);
        let written = Mutex::new(Vec::new());
        let to_fetch: Vec<Descriptor> = plan
            .iter()
            .filter(|layer| layer.fetch_first)
            .map(|layer| layer.descriptor.clone())
            .collect();
        let mut created = Vec::new();
        let result = match self
            .fetch_blobs(&client, &reference, &small, &to_fetch, &progress, &written)
            .await
        {
            Ok(()) => {
                self.build_snapshots(
                    &client,
                    &reference,
                    &plan,
                    &progress,
                    &written,
                    &mut created,
                )
                .await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            self.discard_snapshots(&created).await;
            self.discard(&written.into_inner().unwrap_or_else(|e| e.into_inner()));
            return Err(err);
        }

        let now = SystemTime::now();
        let source_label = (
            format!("containerd.io/distribution.source.{}", reference.registry()),
            reference.repository().to_string(),
        );
        // Lazy layers' blobs are not in the store: the namespace references what it holds.
        let refs: Vec<ContentRefRecord> = blobs
            .iter()
            .filter(|blob| {
                blob.digest
                    .parse::<Digest>()
                    .is_ok_and(|digest| self.content.contains(&digest))
            })
            .map(|blob| ContentRefRecord {
                digest: blob.digest.clone(),
                labels: Labels::from([source_label.clone()]),
                created_at: now,
            })
            .collect();
        let record = ImageRecord {
            name,
            target: DescriptorRecord::from(&resolved.target),
            labels: Labels::new(),
            created_at: now,
            updated_at: now,
        };
        let namespace = namespace.to_string();
        let record = self
            .meta
            .blocking(move |meta| meta.put_image_with_content(&namespace, record, &refs))
            .await?;
        info!(image = %record.name, digest = %record.target.digest, "pulled");
        Ok(record)
    }

    /// Stores the small blobs and fetches the layers not yet stored; records what it wrote in `written`.
    async fn fetch_blobs(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        small: &[(&Descriptor, &bytes::Bytes)],
        layers: &[Descriptor],
        progress: &mpsc::Sender<PullEvent>,
        written: &Mutex<Vec<Digest>>,
    ) -> Result<(), ImageError> {
        for (descriptor, bytes) in small {
            let cached = self.content.contains(descriptor.digest());
            if !cached {
                self.content
                    .ingest_bytes(descriptor.digest(), bytes)
                    .await?;
                lock(written).push(descriptor.digest().clone());
            }
            report(progress, descriptor, descriptor.size(), true, cached).await;
        }
        futures::stream::iter(layers.iter().map(Ok::<_, ImageError>))
            .try_for_each_concurrent(self.registry.max_concurrent_downloads.max(1), |layer| {
                self.fetch_layer(client, reference, layer, progress, written)
            })
            .await
    }

    async fn fetch_layer(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        layer: &Descriptor,
        progress: &mpsc::Sender<PullEvent>,
        written: &Mutex<Vec<Digest>>,
    ) -> Result<(), ImageError> {
        if self.content.contains(layer.digest()) {
            report(progress, layer, layer.size(), true, true).await;
            return Ok(());
        }
        // Recorded before writing: a failed pull may be cancelled anywhere, even between the rename into
        // the store and the return of `commit`.
        lock(written).push(layer.digest().clone());
        let mut stream = client.fetch_blob(reference, layer).await?;
        let mut writer = self
            .content
            .writer(layer.digest(), Some(layer.size()))
            .await?;
        let mut reported = 0;
        while let Some(chunk) = stream.next().await {
            writer.write(&chunk?).await?;
            if writer.written() - reported >= PROGRESS_STEP {
                reported = writer.written();
                report(progress, layer, reported, false, false).await;
            }
        }
        writer.commit().await?;
        report(progress, layer, layer.size(), true, false).await;
        Ok(())
    }

    /// What to do with each layer: its chain id, snapshot key, and whether to try it lazily or fetch it
    /// before the chain is built.
    fn plan_layers(
        &self,
        resolved: &skiff_fuse::registry::ResolvedImage,
        plain_http: bool,
        credentials_given: bool,
    ) -> Result<Vec<LayerPlan>, ImageError> {
        let layers = resolved.image_manifest.layers();
        let Some(snapshotter) = &self.snapshotter else {
            // No snapshots: a full pull into the content store.
            return Ok(layers
                .iter()
                .map(|descriptor| LayerPlan {
                    descriptor: descriptor.clone(),
                    diff_id: String::new(),
                    chain: ChainId::next(None, ""),
                    key: String::new(),
                    lazy: None,
                    fetch_first: true,
                })
                .collect());
        };
        let config: ImageConfiguration =
            serde_json::from_slice(&resolved.config_bytes).map_err(|err| {
                ImageError::InvalidBlob {
                    digest: resolved.config.digest().to_string(),
                    kind: "image config",
                    reason: err.to_string(),
                }
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != layers.len() {
            return Err(ImageError::LayerCountMismatch {
                config: resolved.config.digest().to_string(),
                diff_ids: diff_ids.len(),
                layers: layers.len(),
            });
        }
        let image_layers: Vec<String> = layers.iter().map(|l| l.digest().to_string()).collect();
        let image_ref = resolved.reference.to_string();
        let mut plan = Vec::with_capacity(layers.len());
        for (descriptor, chain) in layers.iter().zip(ChainId::chain(diff_ids)) {
            let key = image_snapshot_key(&chain);
            let exists = match snapshotter.stat(&key) {
                Ok(_) => true,
                Err(SnapshotError::NotFound { .. }) => false,
                Err(err) => return Err(err.into()),
            };
            // A lazy layer keeps reading the registry for as long as it is mounted, also after a
            // restart, with skiffd's own credentials: a pull with explicit ones unpacks every layer.
            let lazy =
                (!credentials_given && snapshotter.serves_remote() && is_lazy_format(descriptor))
                    .then(|| RemoteLayer {
                        target: key.clone(),
                        image_ref: image_ref.clone(),
                        layer_digest: descriptor.digest().to_string(),
                        manifest_digest: Some(resolved.manifest.digest().to_string()),
                        image_layers: image_layers.clone(),
                        annotations: descriptor
                            .annotations()
                            .iter()
                            .flatten()
                            .filter(|(k, _)| k.starts_with(INHERITED_LABEL_PREFIX))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        plain_http,
                    });
            plan.push(LayerPlan {
                descriptor: descriptor.clone(),
                diff_id: diff_ids[plan.len()].clone(),
                chain,
                key,
                fetch_first: !exists && lazy.is_none(),
                lazy,
            });
        }
        Ok(plan)
    }

    /// Commits each layer's snapshot on the one below: existing ones are kept, lazy ones mounted (or,
    /// when that fails, fetched and unpacked), the others unpacked from the content store. The keys it
    /// committed go to `created`.
    async fn build_snapshots(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        plan: &[LayerPlan],
        progress: &mpsc::Sender<PullEvent>,
        written: &Mutex<Vec<Digest>>,
        created: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        let Some(snapshotter) = &self.snapshotter else {
            return Ok(());
        };
        let mut parent: Option<String> = None;
        for layer in plan {
            let mut source = SnapshotSource::Existed;
            if snapshotter.stat(&layer.key).is_err() {
                source = SnapshotSource::Unpacked;
                if let Some(remote) = &layer.lazy {
                    let (snapshotter, remote, below) =
                        (snapshotter.clone(), remote.clone(), parent.clone());
                    let mounted = tokio::task::spawn_blocking(move || {
                        snapshotter.commit_remote(below.as_deref(), &remote, Labels::new())
                    })
                    .await??;
                    if mounted {
                        source = SnapshotSource::Lazy;
                    }
                }
                if source == SnapshotSource::Unpacked {
                    if !self.content.contains(layer.descriptor.digest()) {
                        self.fetch_layer(client, reference, &layer.descriptor, progress, written)
                            .await?;
                    }
                    if !self.unpack(snapshotter, layer, parent.as_deref()).await? {
                        source = SnapshotSource::Existed;
                    }
                }
                if source != SnapshotSource::Existed {
                    created.push(layer.key.clone());
                }
            }
            let _ = progress
                .send(PullEvent::Layer(LayerProgress {
                    digest: layer.descriptor.digest().to_string(),
                    total: layer.descriptor.size(),
                    chain_id: layer.chain.to_string(),
                    key: layer.key.clone(),
                    source,
                }))
                .await;
            parent = Some(layer.key.clone());
        }
        Ok(())
    }

    /// Unpacks a stored layer blob as its snapshot; `false` when it existed already.
    async fn unpack(
        &self,
        snapshotter: &Snapshotter,
        layer: &LayerPlan,
        parent: Option<&str>,
    ) -> Result<bool, ImageError> {
        let path = self.content.path(layer.descriptor.digest());
        let blob = LayerBlob {
            media_type: layer.descriptor.media_type().to_string(),
            digest: layer.descriptor.digest().to_string(),
            diff_id: layer.diff_id.clone(),
        };
        let (snapshotter, key, parent) = (
            snapshotter.clone(),
            layer.key.clone(),
            parent.map(str::to_owned),
        );
        let unpacked = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|source| SnapshotError::Io {
                action: "open",
                path,
                source,
            })?;
            snapshotter.unpack_layer(
                &key,
                parent.as_deref(),
                &blob,
                std::io::BufReader::with_capacity(1 << 20, file),
                Labels::new(),
            )
        })
        .await??;
        Ok(matches!(
            unpacked,
            crate::snapshots::LayerSnapshot::Unpacked(_)
        ))
    }

    /// After a failed pull: removes the snapshots it committed (top first) unless another pull uses them.
    async fn discard_snapshots(&self, created: &[String]) {
        let Some(snapshotter) = self.snapshotter.clone() else {
            return;
        };
        let keys: Vec<String> = {
            let in_flight = lock(&self.in_flight);
            created
                .iter()
                .rev()
                .filter(|key| in_flight.get(*key).is_none_or(|count| *count <= 1))
                .cloned()
                .collect()
        };
        let _ = tokio::task::spawn_blocking(move || remove_snapshots(&snapshotter, &keys)).await;
    }

    /// The chain ids of an image's layers, bottom first, from its stored config.
    async fn image_chain(&self, namespace: &str, name: &str) -> Result<Vec<ChainId>, ImageError> {
        let detail = self.detail_without_snapshot(namespace, name).await?;
        self.chain_of(&detail).await
    }

    async fn chain_of(&self, detail: &ImageDetail) -> Result<Vec<ChainId>, ImageError> {
        let config: ImageConfiguration = self
            .read_json(&parse_digest(&detail.config.digest)?, "image config")
            .await?;
        Ok(ChainId::chain(config.rootfs().diff_ids()))
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
            let index: ImageIndex = self.read_json(target.digest(), "image index").await?;
            index
                .manifests()
                .iter()
                .find(|m| self.content.contains(m.digest()))
                .cloned()
                .ok_or_else(|| ImageError::NoPlatformManifest {
                    name: name.to_string(),
                })?
        } else {
            target
        };
        let parsed: ImageManifest = self.read_json(manifest.digest(), "image manifest").await?;
        let config: ImageConfiguration = self
            .read_json(parsed.config().digest(), "image config")
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
            if !found.insert(descriptor.digest().to_string())
                || !self.content.contains(descriptor.digest())
            {
                continue;
            }
            if is_index(descriptor.media_type()) {
                let index: ImageIndex = self.read_json(descriptor.digest(), "image index").await?;
                pending.extend(index.manifests().iter().cloned());
            } else if is_manifest(descriptor.media_type()) {
                let manifest: ImageManifest = self
                    .read_json(descriptor.digest(), "image manifest")
                    .await?;
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

async fn report(
    progress: &mpsc::Sender<PullEvent>,
    descriptor: &Descriptor,
    offset: u64,
    done: bool,
    cached: bool,
) {
    let _ = progress
        .send(PullEvent::Blob(BlobProgress {
            digest: descriptor.digest().to_string(),
            offset,
            total: descriptor.size(),
            done,
            cached,
        }))
        .await;
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

fn parse_digest(digest: &str) -> Result<Digest, ImageError> {
    digest.parse().map_err(|err| ImageError::InvalidBlob {
        digest: digest.to_string(),
        kind: "digest",
        reason: format!("{err}"),
    })
}

fn record_descriptor(record: &DescriptorRecord) -> Result<Descriptor, ImageError> {
    let mut descriptor = Descriptor::new(
        MediaType::from(record.media_type.as_str()),
        record.size,
        parse_digest(&record.digest)?,
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

/// One layer of a pull.
struct LayerPlan {
    descriptor: Descriptor,
    diff_id: String,
    chain: ChainId,
    /// `image_snapshot_key(chain)`.
    key: String,
    /// Set when the layer is to be mounted lazily first.
    lazy: Option<RemoteLayer>,
    /// The blob is fetched with the others before the chain is built (not lazy, no snapshot yet).
    fetch_first: bool,
}

/// Whether a layer descriptor announces a lazily readable format (an eStargz TOC digest or a
/// zstd:chunked manifest position); the remote layers still check the blob itself.
fn is_lazy_format(descriptor: &Descriptor) -> bool {
    descriptor
        .annotations()
        .as_ref()
        .is_some_and(|annotations| {
            [
                estargz::TOC_DIGEST_ANNOTATION,
                zstd_chunked::MANIFEST_POSITION_ANNOTATION,
                zstd_chunked::LEGACY_MANIFEST_POSITION_ANNOTATION,
            ]
            .iter()
            .any(|key| annotations.contains_key(*key))
        })
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
                warn!(key, error = %skiff_api::error_chain(&err), "cannot remove image snapshot");
                return;
            }
        }
    }
}
