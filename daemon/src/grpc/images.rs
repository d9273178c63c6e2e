//! `skiff.v1.Images` over [`Images`]: pulls streamed as progress events, list, detail (with each lazy
//! layer's fetch statistics), delete.

use skiff_api::v1;
use skiff_registry::Credentials;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::{timestamp, ServiceStream};
use crate::images::{ImageDetail, Images, PullEvent, SnapshotSource};
use crate::work::DaemonTasks;
use skiff_snapshotter::meta::{DescriptorRecord, ImageRecord};

/// The `Images` service.
#[derive(Clone)]
pub struct ImagesService {
    pub(crate) images: Images,
    /// Owns the pulls (they outlive the request that started them).
    pub(crate) work: DaemonTasks,
}

fn descriptor(record: &DescriptorRecord) -> v1::Descriptor {
    v1::Descriptor {
        media_type: record.media_type.clone(),
        digest: record.digest.clone(),
        size: record.size,
        annotations: record.annotations.clone().into_iter().collect(),
    }
}

fn image(record: &ImageRecord) -> v1::Image {
    v1::Image {
        name: record.name.clone(),
        target: Some(descriptor(&record.target)),
        labels: record.labels.clone().into_iter().collect(),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
    }
}

fn image_detail(detail: &ImageDetail) -> v1::ImageDetail {
    v1::ImageDetail {
        image: Some(image(&detail.image)),
        manifest: Some(descriptor(&detail.manifest)),
        config: Some(descriptor(&detail.config)),
        layers: detail.layers.iter().map(descriptor).collect(),
        platform: detail.platform.clone(),
        snapshot: detail.snapshot.clone().unwrap_or_default(),
        fetch: detail
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let lazy = detail.lazy.get(i).copied().flatten();
                v1::LayerFetch {
                    digest: layer.digest.clone(),
                    lazy: lazy.is_some(),
                    bytes_fetched: lazy.map_or(0, |s| s.bytes_fetched),
                    requests: lazy.map_or(0, |s| s.requests),
                    size: layer.size,
                    chunks_total: lazy.map_or(0, |s| s.chunks_total),
                    chunks_cached: lazy.map_or(0, |s| s.chunks_cached),
                    background_bytes: lazy.map_or(0, |s| s.background_bytes),
                    bytes_read: lazy.map_or(0, |s| s.bytes_read),
                    duplicate_fetches: lazy.map_or(0, |s| s.duplicate_fetches),
                    unmounted: lazy.is_some_and(|s| !s.mounted),
                }
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl v1::images_server::Images for ImagesService {
    type PullStream = ServiceStream<v1::PullProgress>;

    async fn pull(
        &self,
        request: Request<v1::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let request = request.into_inner();
        let credentials = request.credentials.map(|c| Credentials {
            username: c.username,
            password: c.password,
        });
        let (events_tx, mut events_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64);
        let images = self.images.clone();
        let cancel = self.work.token().clone();
        // The pull runs to completion even if the client goes away (its record then waits for the next
        // `ls`); shutdown stops it at its next step, and it cleans up after itself.
        self.work.spawn(async move {
            let pull = images.pull(
                &request.namespace,
                &request.reference,
                request.plain_http,
                credentials,
                events_tx,
                &cancel,
            );
            tokio::pin!(pull);
            let result = loop {
                tokio::select! {
                    result = &mut pull => break result,
                    Some(event) = events_rx.recv() => {
                        let _ = out_tx.send(Ok(progress_message(event))).await;
                    }
                }
            };
            while let Ok(event) = events_rx.try_recv() {
                let _ = out_tx.send(Ok(progress_message(event))).await;
            }
            let last = match result {
                Ok(record) => Ok(v1::PullProgress {
                    event: Some(v1::pull_progress::Event::Done(image(&record))),
                }),
                Err(err) => {
                    warn!(reference = %request.reference, error = %err, "pull failed");
                    Err(Status::from(err))
                }
            };
            let _ = out_tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn list(
        &self,
        request: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        let images = self.images.list(&request.into_inner().namespace)?;
        Ok(Response::new(v1::ListImagesResponse {
            images: images.iter().map(image).collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<v1::GetImageRequest>,
    ) -> Result<Response<v1::ImageDetail>, Status> {
        let request = request.into_inner();
        let detail = self
            .images
            .detail(&request.namespace, &request.name)
            .await?;
        Ok(Response::new(image_detail(&detail)))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteImageRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let request = request.into_inner();
        self.images
            .delete(&request.namespace, &request.name)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}

fn progress_message(event: PullEvent) -> v1::PullProgress {
    let event = match event {
        PullEvent::Resolved {
            name,
            target,
            blobs,
        } => v1::pull_progress::Event::Resolved(v1::PullResolved {
            name,
            target: Some(descriptor(&target)),
            blobs: blobs.iter().map(descriptor).collect(),
        }),
        PullEvent::Blob(blob) => v1::pull_progress::Event::Blob(v1::BlobProgress {
            digest: blob.digest,
            offset: blob.offset,
            total: blob.total,
            done: blob.done,
            cached: blob.cached,
            snapshot: None,
        }),
        // Sent as the layer's last blob progress, so clients that draw one bar per blob finish it.
        PullEvent::Layer(layer) => {
            let source = match layer.source {
                SnapshotSource::Unpacked => v1::layer_snapshot::Source::Unpacked,
                SnapshotSource::Lazy => v1::layer_snapshot::Source::Lazy,
                SnapshotSource::Existed => v1::layer_snapshot::Source::Existed,
            };
            v1::pull_progress::Event::Blob(v1::BlobProgress {
                digest: layer.digest,
                offset: if layer.source == SnapshotSource::Lazy {
                    0
                } else {
                    layer.total
                },
                total: layer.total,
                done: true,
                cached: layer.source == SnapshotSource::Existed,
                snapshot: Some(v1::LayerSnapshot {
                    key: layer.key,
                    chain_id: layer.chain_id,
                    source: source as i32,
                    fallback: layer.fallback.unwrap_or_default(),
                }),
            })
        }
    };
    v1::PullProgress { event: Some(event) }
}
