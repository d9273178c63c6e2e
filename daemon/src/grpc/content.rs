//! `skiff.v1.Content`: the blobs a namespace references (list, info, ranged reads streamed from the
//! content store).

use skiff_api::v1;
use skiff_snapshotter::content::{ContentStore, Digest};
use skiff_snapshotter::meta::MetaStore;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::status::StatusExt;
use super::{timestamp, ServiceStream};
use crate::work::DaemonTasks;

/// Bytes per message when streaming a blob.
const READ_CHUNK: usize = 1 << 20;

/// The `Content` service.
#[derive(Clone)]
pub struct ContentService {
    pub(crate) content: ContentStore,
    pub(crate) meta: MetaStore,
    /// Owns the read streams.
    pub(crate) work: DaemonTasks,
}

/// A digest from a client: only sha256 names content in skiff.
fn parse_digest(text: &str) -> Result<Digest, Status> {
    let digest: Digest = text
        .parse()
        .map_err(|err| Status::invalid_argument(format!("invalid digest {text:?}: {err}")))?;
    if !text.starts_with("sha256:") {
        return Err(Status::invalid_argument(format!(
            "invalid digest {text:?}: only sha256 digests are supported"
        )));
    }
    Ok(digest)
}

impl ContentService {
    /// A blob is visible in a namespace only if the namespace references it, as in containerd.
    fn content_info(&self, namespace: &str, digest: &str) -> Result<v1::ContentInfo, Status> {
        let parsed = parse_digest(digest)?;
        let reference = self
            .meta
            .get_content_ref(namespace, digest)
            .or_status()?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "content {digest} not found in namespace {namespace}"
                ))
            })?;
        let info = self.content.info(&parsed).or_status()?;
        Ok(v1::ContentInfo {
            digest: digest.to_string(),
            size: info.size,
            created_at: Some(timestamp(info.created)),
            labels: reference.labels.into_iter().collect(),
        })
    }
}

#[tonic::async_trait]
impl v1::content_server::Content for ContentService {
    type ReadStream = ServiceStream<v1::ReadContentResponse>;

    async fn list(
        &self,
        request: Request<v1::ListContentRequest>,
    ) -> Result<Response<v1::ListContentResponse>, Status> {
        let namespace = request.into_inner().namespace;
        let mut blobs = Vec::new();
        for reference in self.meta.list_content_refs(&namespace).or_status()? {
            match self.content_info(&namespace, &reference.digest) {
                Ok(info) => blobs.push(info),
                // A reference whose blob vanished (e.g. removed by hand) is not listed.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        Ok(Response::new(v1::ListContentResponse { blobs }))
    }

    async fn info(
        &self,
        request: Request<v1::ContentInfoRequest>,
    ) -> Result<Response<v1::ContentInfo>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            self.content_info(&request.namespace, &request.digest)?,
        ))
    }

    async fn read(
        &self,
        request: Request<v1::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let request = request.into_inner();
        let info = self.content_info(&request.namespace, &request.digest)?;
        if request.offset > info.size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of {} ({} bytes)",
                request.offset, request.digest, info.size
            )));
        }
        let end = match request.size {
            0 => info.size,
            n => request.offset.saturating_add(n).min(info.size),
        };
        let mut file = self
            .content
            .open_blob(&parse_digest(&request.digest)?)
            .await
            .or_status()?;
        file.seek(std::io::SeekFrom::Start(request.offset))
            .await
            .map_err(|err| Status::internal(format!("seek {}: {err}", request.digest)))?;
        let (tx, rx) = mpsc::channel(4);
        let digest = request.digest;
        let mut offset = request.offset;
        let shutdown = self.work.token().clone();
        self.work.spawn(async move {
            let mut buffer = vec![0u8; READ_CHUNK];
            while offset < end && !shutdown.is_cancelled() {
                let want = READ_CHUNK.min((end - offset) as usize);
                let message = match file.read(&mut buffer[..want]).await {
                    Ok(0) => Err(Status::data_loss(format!(
                        "blob {digest} ended at {offset}, before {end}"
                    ))),
                    Ok(n) => Ok(v1::ReadContentResponse {
                        offset,
                        data: buffer[..n].to_vec(),
                    }),
                    Err(err) => Err(Status::internal(format!("read {digest}: {err}"))),
                };
                let failed = message.is_err();
                if let Ok(m) = &message {
                    offset += m.data.len() as u64;
                }
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
