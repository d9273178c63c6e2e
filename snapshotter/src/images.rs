//! Images: pulling a reference into the content store (a full pull: every layer blob is fetched and
//! verified), describing a stored image, and deleting one with garbage collection of the blobs no image
//! references any more. Registry access goes through `skiff_fuse::registry`; nothing here speaks gRPC.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use skiff_fuse::registry::{Credentials, Reference, RegistryClient, RegistryError};
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use crate::config::RegistrySection;
use crate::content::{ContentError, ContentStore};
use crate::meta::{ContentRefRecord, DescriptorRecord, ImageRecord, Labels, MetaError, MetaStore};

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
}

/// What a stored image resolves to on this host.
#[derive(Debug, Clone)]
pub struct ImageDetail {
    pub image: ImageRecord,
    pub manifest: DescriptorRecord,
    pub config: DescriptorRecord,
    pub layers: Vec<DescriptorRecord>,
    pub platform: String,
}

/// Bytes between two progress reports of one blob.
const PROGRESS_STEP: u64 = 512 * 1024;

#[derive(Clone)]
pub struct Images {
    content: ContentStore,
    meta: MetaStore,
    registry: RegistrySection,
    /// Blobs that running pulls rely on, with how many pulls do: a failed pull must not delete a
    /// blob another pull is about to reference.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// Registers a pull's blobs as in flight for as long as it lives.
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
            in_flight: Arc::default(),
        }
    }

    fn hold(&self, digests: &[DescriptorRecord]) -> InFlight<'_> {
        let mut in_flight = lock(&self.in_flight);
        for blob in digests {
            *in_flight.entry(blob.digest.clone()).or_default() += 1;
        }
        InFlight {
            images: self,
            digests: digests.iter().map(|b| b.digest.clone()).collect(),
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

        let _hold = self.hold(&blobs);
        let written = Mutex::new(Vec::new());
        if let Err(err) = self
            .fetch_blobs(&client, &reference, &small, layers, &progress, &written)
            .await
        {
            self.discard(&written.into_inner().unwrap_or_else(|e| e.into_inner()));
            return Err(err);
        }

        let now = SystemTime::now();
        let source_label = (
            format!("containerd.io/distribution.source.{}", reference.registry()),
            reference.repository().to_string(),
        );
        let refs: Vec<ContentRefRecord> = blobs
            .iter()
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

    /// The image's platform manifest, config and layers as stored.
    pub async fn detail(&self, namespace: &str, name: &str) -> Result<ImageDetail, ImageError> {
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
        Ok(())
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
