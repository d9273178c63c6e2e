//! The pull path: resolve once, store the small blobs, then build the image's snapshot chain bottom up,
//! each layer either mounted lazily (its resolved descriptor handed to [`RemoteSnapshots::commit`]: no
//! second resolve, no lookup) or fetched, verified and unpacked into a committed snapshot named by its
//! chain id. A failed pull removes what it created that nothing else uses.

use std::sync::Mutex;
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use oci_spec::image::ImageConfiguration;
use skiff_fuse::lazyfs::announces_lazy_format;
use skiff_registry::{Credentials, Reference, ResolvedImage};
use skiff_snapshotter::content::{ContentError, Digest};
use skiff_snapshotter::meta::{ContentRefRecord, DescriptorRecord, ImageRecord, Labels};
use skiff_snapshotter::snapshots::{LayerSnapshot, SnapshotError, Snapshotter};
use skiff_snapshotter::unpack::LayerBlob;
use skiff_types::{is_inherited_annotation, ChainId, LayerDescriptor, RemoteLayer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use super::source::ImageSource;
use super::{
    image_snapshot_key, lock, BlobProgress, ImageError, Images, LayerProgress, PullEvent,
    SnapshotSource,
};
use crate::lazy_layers::LazyOutcome;

/// Bytes between two progress reports of one blob.
const PROGRESS_STEP: u64 = 512 * 1024;

/// One layer of a pull.
struct LayerPlan {
    descriptor: LayerDescriptor,
    diff_id: Digest,
    chain: ChainId,
    /// `image_snapshot_key(chain)`.
    key: String,
    /// Set when the layer is to be mounted lazily first.
    lazy: Option<RemoteLayer>,
    /// The blob is fetched with the others before the chain is built (not lazy, no snapshot yet).
    fetch_first: bool,
}

/// A small blob of the image (index, manifest, config), already fetched and verified by the resolve.
struct SmallBlob<'a> {
    record: DescriptorRecord,
    digest: Digest,
    bytes: &'a [u8],
}

/// What one pull works with.
struct Pull<'a> {
    source: &'a dyn ImageSource,
    reference: &'a Reference,
    progress: &'a mpsc::Sender<PullEvent>,
    /// Shutdown: the pull stops at its next step and cleans up like a failed one.
    cancel: &'a CancellationToken,
    /// Blobs it wrote into the content store (removed again if the pull fails).
    written: Mutex<Vec<Digest>>,
}

impl Pull<'_> {
    /// `Err(Cancelled)` once shutdown has begun.
    fn go_on(&self) -> Result<(), ImageError> {
        if self.cancel.is_cancelled() {
            Err(ImageError::Cancelled)
        } else {
            Ok(())
        }
    }
}

impl Images {
    /// Resolves `reference`, fetches every blob not yet stored, and records the image in `namespace`
    /// together with its content references in one batch. Progress goes to `progress`; a client that
    /// stops listening does not stop the pull; `cancel` does (shutdown), at the next step, and what the
    /// pull made is removed as after any failure.
    #[instrument(skip_all, fields(namespace = %namespace, reference = %reference))]
    pub async fn pull(
        &self,
        namespace: &str,
        reference: &str,
        plain_http: bool,
        credentials: Option<Credentials>,
        progress: mpsc::Sender<PullEvent>,
        cancel: &CancellationToken,
    ) -> Result<ImageRecord, ImageError> {
        let reference: Reference = reference.parse()?;
        let credentials_given = credentials.is_some();
        let source = self.sources.open(plain_http, credentials)?;
        let resolved = source.resolve(&reference).await?;
        let name = reference.to_string();

        let mut small = vec![SmallBlob {
            record: DescriptorRecord::from(&resolved.target),
            digest: resolved.target_digest,
            bytes: &resolved.target_bytes,
        }];
        if resolved.manifest_digest != resolved.target_digest {
            small.push(SmallBlob {
                record: DescriptorRecord::from(&resolved.manifest),
                digest: resolved.manifest_digest,
                bytes: &resolved.manifest_bytes,
            });
        }
        small.push(SmallBlob {
            record: DescriptorRecord::from(&resolved.config),
            digest: resolved.config_digest,
            bytes: &resolved.config_bytes,
        });
        let blobs: Vec<DescriptorRecord> = small
            .iter()
            .map(|blob| blob.record.clone())
            .chain(resolved.layers.iter().map(DescriptorRecord::from))
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
        let pull = Pull {
            source: source.as_ref(),
            reference: &reference,
            progress: &progress,
            cancel,
            written: Mutex::new(Vec::new()),
        };
        let mut created = Vec::new();
        let result = match self.fetch_blobs(&pull, &small, &plan).await {
            Ok(()) => self.build_snapshots(&pull, &plan, &mut created).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            self.discard_snapshots(&created).await;
            self.discard(&pull.written.into_inner().unwrap_or_else(|e| e.into_inner()));
            return Err(err);
        }

        let now = SystemTime::now();
        let source_label = (
            format!("containerd.io/distribution.source.{}", reference.registry()),
            reference.repository().to_string(),
        );
        // Lazy layers' blobs are not in the store: the namespace references what it holds.
        let stored = small
            .iter()
            .map(|blob| blob.digest)
            .chain(resolved.layers.iter().map(|layer| layer.digest))
            .filter(|digest| self.content.contains(digest));
        let refs: Vec<ContentRefRecord> = stored
            .map(|digest| ContentRefRecord {
                digest: digest.to_string(),
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

    /// Stores the small blobs and fetches the layers to fetch first, not yet stored.
    async fn fetch_blobs(
        &self,
        pull: &Pull<'_>,
        small: &[SmallBlob<'_>],
        plan: &[LayerPlan],
    ) -> Result<(), ImageError> {
        for blob in small {
            pull.go_on()?;
            let cached = self.content.contains(&blob.digest);
            if !cached {
                self.content.ingest_bytes(&blob.digest, blob.bytes).await?;
                lock(&pull.written).push(blob.digest);
            }
            report(
                pull.progress,
                &blob.digest,
                blob.record.size,
                blob.record.size,
                true,
                cached,
            )
            .await;
        }
        let first = plan.iter().filter(|layer| layer.fetch_first);
        futures::stream::iter(first.map(Ok::<_, ImageError>))
            .try_for_each_concurrent(self.downloads.max(1), |layer| {
                self.fetch_layer(pull, &layer.descriptor)
            })
            .await
    }

    async fn fetch_layer(
        &self,
        pull: &Pull<'_>,
        layer: &LayerDescriptor,
    ) -> Result<(), ImageError> {
        let progress = |offset, done, cached| {
            report(
                pull.progress,
                &layer.digest,
                offset,
                layer.size,
                done,
                cached,
            )
        };
        if self.content.contains(&layer.digest) {
            progress(layer.size, true, true).await;
            return Ok(());
        }
        // Recorded before writing: a failed pull may be cancelled anywhere, even between the rename into
        // the store and the return of `commit`.
        lock(&pull.written).push(layer.digest);
        let mut stream = pull.source.fetch_blob(pull.reference, layer).await?;
        let mut writer = self.content.writer(&layer.digest, Some(layer.size)).await?;
        let mut reported = 0;
        loop {
            let chunk = tokio::select! {
                chunk = stream.next() => chunk,
                () = pull.cancel.cancelled() => return Err(ImageError::Cancelled),
            };
            let Some(chunk) = chunk else {
                break;
            };
            writer.write(&chunk?).await?;
            if writer.written() - reported >= PROGRESS_STEP {
                reported = writer.written();
                progress(reported, false, false).await;
            }
        }
        writer.commit().await?;
        progress(layer.size, true, false).await;
        Ok(())
    }

    /// What to do with each layer: its chain id, snapshot key, and whether to try it lazily or fetch it
    /// before the chain is built.
    fn plan_layers(
        &self,
        resolved: &ResolvedImage,
        plain_http: bool,
        credentials_given: bool,
    ) -> Result<Vec<LayerPlan>, ImageError> {
        let layers = &resolved.layers;
        let Some(snapshotter) = &self.snapshotter else {
            // No snapshots: a full pull into the content store.
            return Ok(layers
                .iter()
                .map(|descriptor| LayerPlan {
                    descriptor: descriptor.clone(),
                    diff_id: descriptor.digest,
                    chain: ChainId::next(None, &descriptor.digest),
                    key: String::new(),
                    lazy: None,
                    fetch_first: true,
                })
                .collect());
        };
        let config: ImageConfiguration =
            serde_json::from_slice(&resolved.config_bytes).map_err(|err| {
                ImageError::InvalidBlob {
                    digest: resolved.config_digest.to_string(),
                    kind: "image config",
                    reason: err.to_string(),
                }
            })?;
        let diff_ids = super::diff_ids(&config, &resolved.config_digest)?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::LayerCountMismatch {
                config: resolved.config_digest.to_string(),
                diff_ids: diff_ids.len(),
                layers: layers.len(),
            });
        }
        let image_ref = resolved.reference.to_string();
        let chain = ChainId::chain(&diff_ids);
        let mut plan = Vec::with_capacity(layers.len());
        for (index, (descriptor, chain)) in layers.iter().zip(chain).enumerate() {
            let key = image_snapshot_key(&chain);
            let exists = match snapshotter.stat(&key) {
                Ok(_) => true,
                Err(SnapshotError::NotFound { .. }) => false,
                Err(err) => return Err(err.into()),
            };
            // A lazy layer keeps reading the registry for as long as it is mounted, also after a
            // restart, with skiffd's own credentials: a pull with explicit ones unpacks every layer.
            let lazy =
                (!credentials_given && self.remote.is_some() && announces_lazy_format(descriptor))
                    .then(|| RemoteLayer {
                        target: key.clone(),
                        image_ref: image_ref.clone(),
                        layer_digest: descriptor.digest,
                        manifest_digest: Some(resolved.manifest_digest),
                        image_layers: layers.iter().map(|layer| layer.digest).collect(),
                        annotations: descriptor
                            .annotations
                            .iter()
                            .filter(|(k, _)| is_inherited_annotation(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        plain_http,
                    });
            plan.push(LayerPlan {
                descriptor: descriptor.clone(),
                diff_id: diff_ids[index],
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
        pull: &Pull<'_>,
        plan: &[LayerPlan],
        created: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        let Some(snapshotter) = &self.snapshotter else {
            return Ok(());
        };
        let mut parent: Option<String> = None;
        for layer in plan {
            pull.go_on()?;
            let mut source = SnapshotSource::Existed;
            let mut fallback = None;
            if snapshotter.stat(&layer.key).is_err() {
                source = SnapshotSource::Unpacked;
                if let (Some(remote), Some(lazy)) = (&self.remote, &layer.lazy) {
                    match remote
                        .commit(parent.as_deref(), lazy.clone(), &layer.descriptor)
                        .await?
                    {
                        LazyOutcome::Committed => source = SnapshotSource::Lazy,
                        LazyOutcome::Fallback(reason) => {
                            info!(layer = %layer.descriptor.digest, %reason, "not served lazily; downloading it");
                            fallback = Some(reason);
                        }
                    }
                }
                if source == SnapshotSource::Unpacked {
                    if !self.content.contains(&layer.descriptor.digest) {
                        self.fetch_layer(pull, &layer.descriptor).await?;
                    }
                    if !unpack(
                        &self.content.path(&layer.descriptor.digest),
                        snapshotter,
                        layer,
                        parent.as_deref(),
                    )
                    .await?
                    {
                        source = SnapshotSource::Existed;
                    }
                }
                if source != SnapshotSource::Existed {
                    created.push(layer.key.clone());
                }
            }
            let _ = pull
                .progress
                .send(PullEvent::Layer(LayerProgress {
                    digest: layer.descriptor.digest.to_string(),
                    total: layer.descriptor.size,
                    chain_id: layer.chain.to_string(),
                    key: layer.key.clone(),
                    source,
                    fallback,
                }))
                .await;
            parent = Some(layer.key.clone());
        }
        Ok(())
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
                        tracing::warn!(digest = %key, error = %err, "cannot remove blob of a failed pull")
                    }
                }
            }
        }
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
        let _ =
            tokio::task::spawn_blocking(move || super::remove_snapshots(&snapshotter, &keys)).await;
    }
}

/// Unpacks a stored layer blob as its snapshot; `false` when it existed already.
async fn unpack(
    path: &std::path::Path,
    snapshotter: &Snapshotter,
    layer: &LayerPlan,
    parent: Option<&str>,
) -> Result<bool, ImageError> {
    let blob = LayerBlob {
        media_type: layer.descriptor.media_type.clone(),
        digest: layer.descriptor.digest,
        diff_id: layer.diff_id,
    };
    let (path, snapshotter, key, parent) = (
        path.to_path_buf(),
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
    Ok(matches!(unpacked, LayerSnapshot::Unpacked(_)))
}

async fn report(
    progress: &mpsc::Sender<PullEvent>,
    digest: &Digest,
    offset: u64,
    total: u64,
    done: bool,
    cached: bool,
) {
    let _ = progress
        .send(PullEvent::Blob(BlobProgress {
            digest: digest.to_string(),
            offset,
            total,
            done,
            cached,
        }))
        .await;
}
