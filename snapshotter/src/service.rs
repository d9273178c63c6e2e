//! skiffd's gRPC services (`skiff.v1`): a thin edge over `Images`, `ContentStore` and `MetaStore`.
//! The only place errors become `tonic::Status`, with the codes containerd clients rely on.

use std::pin::Pin;
use std::time::SystemTime;

use futures::Stream;
use skiff_api::v1;
use skiff_fuse::registry::{Credentials, RegistryError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::containers::{ContainerError, Containers, CreateRequest};
use crate::content::{ContentError, ContentStore, Digest};
use crate::images::{ImageDetail, ImageError, Images, PullEvent, SnapshotSource};
use crate::meta::{ContainerRecord, DescriptorRecord, ImageRecord, MetaError, MetaStore};
use crate::tasks::{ExecRequest, TaskFailure, Tasks};

type ServiceStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Bytes per message when streaming a blob.
const READ_CHUNK: usize = 1 << 20;

/// Everything the services share; cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub content: ContentStore,
    pub meta: MetaStore,
    pub images: Images,
}

impl From<ContentError> for Status {
    fn from(err: ContentError) -> Status {
        let message = skiff_api::error_chain(&err);
        match err {
            ContentError::NotFound { .. } => Status::not_found(message),
            ContentError::UnsupportedDigest { .. } => Status::invalid_argument(message),
            ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. } => {
                Status::data_loss(message)
            }
            _ => Status::internal(message),
        }
    }
}

impl From<MetaError> for Status {
    fn from(err: MetaError) -> Status {
        let message = skiff_api::error_chain(&err);
        match err {
            MetaError::NotFound { .. } => Status::not_found(message),
            MetaError::AlreadyExists { .. } | MetaError::RecordExists { .. } => {
                Status::already_exists(message)
            }
            MetaError::NamespaceNotEmpty { .. } => Status::failed_precondition(message),
            MetaError::InvalidNamespace { .. }
            | MetaError::InvalidImageName { .. }
            | MetaError::InvalidDigest { .. }
            | MetaError::InvalidSnapshotKey { .. }
            | MetaError::InvalidContainerId { .. } => Status::invalid_argument(message),
            _ => Status::internal(message),
        }
    }
}

fn registry_status(err: RegistryError) -> Status {
    let message = skiff_api::error_chain(&err);
    match err {
        RegistryError::InvalidReference { .. } => Status::invalid_argument(message),
        RegistryError::NotFound { .. } => Status::not_found(message),
        RegistryError::Unauthorized { .. } => Status::unauthenticated(message),
        RegistryError::Forbidden { .. } => Status::permission_denied(message),
        RegistryError::DigestMismatch { .. } => Status::data_loss(message),
        RegistryError::UnsupportedMediaType { .. }
        | RegistryError::ManifestTooLarge { .. }
        | RegistryError::InvalidManifest { .. } => Status::failed_precondition(message),
        _ => Status::unavailable(message),
    }
}

impl From<ImageError> for Status {
    fn from(err: ImageError) -> Status {
        match err {
            ImageError::Registry(err) => registry_status(err),
            ImageError::Content(err) => err.into(),
            ImageError::Meta(err) => err.into(),
            ImageError::NotFound { .. } => Status::not_found(skiff_api::error_chain(&err)),
            ImageError::InvalidBlob { .. }
            | ImageError::NoPlatformManifest { .. }
            | ImageError::LayerCountMismatch { .. } => {
                Status::failed_precondition(skiff_api::error_chain(&err))
            }
            ImageError::Snapshot(err) => err.into(),
            ImageError::Task(err) => Status::internal(format!("pull task failed: {err}")),
        }
    }
}

impl From<ContainerError> for Status {
    fn from(err: ContainerError) -> Status {
        let message = skiff_api::error_chain(&err);
        match err {
            ContainerError::Meta(err) => err.into(),
            ContainerError::Image(err) => err.into(),
            ContainerError::Content(err) => err.into(),
            ContainerError::Snapshot(err) => err.into(),
            ContainerError::InvalidOption { .. }
            | ContainerError::InvalidRequest { .. }
            | ContainerError::Spec { .. } => Status::invalid_argument(message),
            ContainerError::ImageNotUnpacked { .. } | ContainerError::ImageConfig { .. } => {
                Status::failed_precondition(message)
            }
            _ => Status::internal(message),
        }
    }
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
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
                }
            })
            .collect(),
    }
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

#[tonic::async_trait]
impl v1::version_server::Version for Services {
    async fn version(
        &self,
        _: Request<v1::VersionRequest>,
    ) -> Result<Response<v1::VersionResponse>, Status> {
        Ok(Response::new(v1::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: option_env!("SKIFF_REVISION").unwrap_or("").to_string(),
        }))
    }
}

#[tonic::async_trait]
impl v1::namespaces_server::Namespaces for Services {
    async fn list(
        &self,
        _: Request<v1::ListNamespacesRequest>,
    ) -> Result<Response<v1::ListNamespacesResponse>, Status> {
        let namespaces = self
            .meta
            .list_namespaces()?
            .into_iter()
            .map(|ns| v1::Namespace {
                name: ns.name,
                labels: ns.labels.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(v1::ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        request: Request<v1::CreateNamespaceRequest>,
    ) -> Result<Response<v1::Namespace>, Status> {
        let request = request.into_inner();
        let record = self
            .meta
            .blocking(move |meta| {
                meta.create_namespace(&request.name, request.labels.into_iter().collect())
            })
            .await?;
        Ok(Response::new(v1::Namespace {
            name: record.name,
            labels: record.labels.into_iter().collect(),
        }))
    }

    async fn remove(
        &self,
        request: Request<v1::RemoveNamespaceRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let name = request.into_inner().name;
        self.meta
            .blocking(move |meta| meta.remove_namespace(&name))
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}

#[tonic::async_trait]
impl v1::images_server::Images for Services {
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
        // The pull runs to completion even if the client goes away; its record then waits for the next `ls`.
        tokio::spawn(async move {
            let pull = images.pull(
                &request.namespace,
                &request.reference,
                request.plain_http,
                credentials,
                events_tx,
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
                }),
            })
        }
    };
    v1::PullProgress { event: Some(event) }
}

impl Services {
    /// A blob is visible in a namespace only if the namespace references it, as in containerd.
    fn content_info(&self, namespace: &str, digest: &str) -> Result<v1::ContentInfo, Status> {
        let parsed = parse_digest(digest)?;
        let reference = self
            .meta
            .get_content_ref(namespace, digest)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "content {digest} not found in namespace {namespace}"
                ))
            })?;
        let info = self.content.info(&parsed)?;
        Ok(v1::ContentInfo {
            digest: digest.to_string(),
            size: info.size,
            created_at: Some(timestamp(info.created)),
            labels: reference.labels.into_iter().collect(),
        })
    }
}

#[tonic::async_trait]
impl v1::content_server::Content for Services {
    type ReadStream = ServiceStream<v1::ReadContentResponse>;

    async fn list(
        &self,
        request: Request<v1::ListContentRequest>,
    ) -> Result<Response<v1::ListContentResponse>, Status> {
        let namespace = request.into_inner().namespace;
        let mut blobs = Vec::new();
        for reference in self.meta.list_content_refs(&namespace)? {
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
            .await?;
        file.seek(std::io::SeekFrom::Start(request.offset))
            .await
            .map_err(|err| Status::internal(format!("seek {}: {err}", request.digest)))?;
        let (tx, rx) = mpsc::channel(4);
        let digest = request.digest;
        let mut offset = request.offset;
        tokio::spawn(async move {
            let mut buffer = vec![0u8; READ_CHUNK];
            while offset < end {
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

/// The `Containers` service over [`Containers`]; a container with a task is not deleted.
#[derive(Clone)]
pub struct ContainersService(pub Containers, pub Tasks);

fn container(record: &ContainerRecord) -> v1::Container {
    v1::Container {
        id: record.id.clone(),
        image: record.image.clone(),
        snapshot_key: record.snapshot_key.clone(),
        runtime: record.runtime.clone(),
        spec: serde_json::to_vec(&record.spec).unwrap_or_default(),
        labels: record.labels.clone().into_iter().collect(),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
    }
}

#[tonic::async_trait]
impl v1::containers_server::Containers for ContainersService {
    async fn create(
        &self,
        request: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let request = request.into_inner();
        let options = request.options.unwrap_or_default();
        let create = CreateRequest {
            id: request.id,
            image: request.image,
            runtime: request.runtime,
            labels: request.labels.into_iter().collect(),
            args: options.args,
            env: options.env,
            user: options.user,
            hostname: options.hostname,
            mounts: options.mounts,
            memory: options.memory,
            cpus: options.cpus,
            pids_limit: options.pids_limit,
            read_only: options.read_only,
            tty: options.tty,
            hooks: options.hooks,
        };
        let record = self.0.create(&request.namespace, create).await?;
        Ok(Response::new(container(&record)))
    }

    async fn get(
        &self,
        request: Request<v1::GetContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let request = request.into_inner();
        let record = self.0.get(&request.namespace, &request.id)?;
        Ok(Response::new(container(&record)))
    }

    async fn list(
        &self,
        request: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        let records = self.0.list(&request.into_inner().namespace)?;
        Ok(Response::new(v1::ListContainersResponse {
            containers: records.iter().map(container).collect(),
        }))
    }

    async fn update(
        &self,
        request: Request<v1::UpdateContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let request = request.into_inner();
        let record = self.0.set_labels(
            &request.namespace,
            &request.id,
            request.labels.into_iter().collect(),
        )?;
        Ok(Response::new(container(&record)))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteContainerRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let request = request.into_inner();
        if self.1.exists(&request.namespace, &request.id)? {
            return Err(Status::failed_precondition(format!(
                "container {} has a task; delete the task first",
                request.id
            )));
        }
        self.0.delete(&request.namespace, &request.id).await?;
        Ok(Response::new(v1::Empty {}))
    }
}

impl From<TaskFailure> for Status {
    fn from(err: TaskFailure) -> Status {
        use skiff_runtime::shim::{FailureKind, ShimError};
        let message = skiff_api::error_chain(&err);
        match err {
            TaskFailure::Container(err) => err.into(),
            TaskFailure::Meta(err) => err.into(),
            TaskFailure::NotFound { .. } => Status::not_found(message),
            TaskFailure::AlreadyExists { .. } => Status::already_exists(message),
            TaskFailure::Invalid { .. } | TaskFailure::Task(_) => Status::invalid_argument(message),
            TaskFailure::Shim(ref shim) => match shim.failure_kind() {
                Some(FailureKind::NotFound) => Status::not_found(message),
                Some(FailureKind::AlreadyExists) => Status::already_exists(message),
                Some(FailureKind::InvalidArgument) => Status::invalid_argument(message),
                Some(FailureKind::FailedPrecondition) | Some(FailureKind::Runtime) => {
                    Status::failed_precondition(message)
                }
                Some(FailureKind::Internal) => Status::internal(message),
                None => match shim {
                    ShimError::Gone { .. } | ShimError::Lost { .. } | ShimError::Start { .. } => {
                        Status::failed_precondition(message)
                    }
                    ShimError::AlreadyRunning { .. } | ShimError::TaskDirInUse { .. } => {
                        Status::already_exists(message)
                    }
                    ShimError::Config(_) => Status::invalid_argument(message),
                    _ => Status::internal(message),
                },
            },
            _ => Status::internal(message),
        }
    }
}

fn exit_status(exit: &skiff_runtime::task::ExitStatus) -> v1::ExitStatus {
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(exit.exited_at_unix_ns);
    v1::ExitStatus {
        code: exit.code,
        exited_at: Some(timestamp(at)),
        unknown: false,
    }
}

fn unknown_exit() -> v1::ExitStatus {
    v1::ExitStatus {
        code: skiff_runtime::task::UNKNOWN_EXIT_CODE,
        exited_at: None,
        unknown: true,
    }
}

fn task(container_id: &str, state: &skiff_runtime::task::ProcessState) -> v1::Task {
    use skiff_runtime::task::TaskStatus as S;
    let status = match state.status {
        S::Created => v1::TaskStatus::Created,
        S::Running => v1::TaskStatus::Running,
        S::Pausing | S::Paused => v1::TaskStatus::Paused,
        S::Stopped => v1::TaskStatus::Stopped,
        S::Unknown => v1::TaskStatus::Unknown,
    };
    v1::Task {
        container_id: container_id.to_owned(),
        pid: state.pid.unwrap_or(0),
        status: status as i32,
        terminal: state.terminal,
        exit: state.exit.as_ref().map(exit_status),
    }
}

/// The `Tasks` service over [`Tasks`].
#[derive(Clone)]
pub struct TasksService(pub Tasks);

/// Bytes per message when streaming a process's output.
const OUTPUT_CHUNK: usize = 64 << 10;

/// Sends what was appended to `path` since `offset`; returns the new offset.
async fn send_appended(
    path: &std::path::Path,
    mut offset: u64,
    stream: v1::output_chunk::Stream,
    out: &mpsc::Sender<Result<v1::OutputChunk, Status>>,
) -> u64 {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return offset;
    };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return offset;
    }
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => return offset,
            Ok(n) => {
                offset += n as u64;
                let chunk = v1::OutputChunk {
                    stream: stream as i32,
                    data: buf[..n].to_vec(),
                };
                if out.send(Ok(chunk)).await.is_err() {
                    return offset;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl v1::tasks_server::Tasks for TasksService {
    type OutputStream = ServiceStream<v1::OutputChunk>;

    async fn create(
        &self,
        request: Request<v1::CreateTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let r = request.into_inner();
        let state = self
            .0
            .create(&r.namespace, &r.container_id, r.stdin)
            .await?;
        Ok(Response::new(task(&r.container_id, &state)))
    }

    async fn start(
        &self,
        request: Request<v1::StartTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let r = request.into_inner();
        if !r.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "exec processes start when they are created (Exec)",
            ));
        }
        let state = self.0.start(&r.namespace, &r.container_id).await?;
        Ok(Response::new(task(&r.container_id, &state)))
    }

    async fn get(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let r = request.into_inner();
        let state = self.0.state(&r.namespace, &r.container_id).await?;
        Ok(Response::new(task(&r.container_id, &state)))
    }

    async fn list(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let tasks = self.0.list(&request.into_inner().namespace).await?;
        Ok(Response::new(v1::ListTasksResponse {
            tasks: tasks.iter().map(|(id, state)| task(id, state)).collect(),
        }))
    }

    async fn kill(
        &self,
        request: Request<v1::KillTaskRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.0
            .kill(&r.namespace, &r.container_id, &r.exec_id, r.signal, r.all)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn pause(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.0.pause(&r.namespace, &r.container_id).await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn resume(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.0.resume(&r.namespace, &r.container_id).await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn exec(
        &self,
        request: Request<v1::ExecProcessRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        let exec = ExecRequest {
            exec_id: r.exec_id,
            args: r.args,
            env: r.env,
            cwd: r.cwd,
            user: r.user,
            terminal: r.terminal,
            stdin: r.stdin,
        };
        self.0.exec(&r.namespace, &r.container_id, exec).await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn wait(
        &self,
        request: Request<v1::WaitRequest>,
    ) -> Result<Response<v1::ExitStatus>, Status> {
        let r = request.into_inner();
        match self.0.wait(&r.namespace, &r.container_id, &r.exec_id).await {
            Ok(exit) => Ok(Response::new(exit_status(&exit))),
            Err(TaskFailure::Shim(skiff_runtime::shim::ShimError::Lost { .. })) => {
                Ok(Response::new(unknown_exit()))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteTaskRequest>,
    ) -> Result<Response<v1::ExitStatus>, Status> {
        let r = request.into_inner();
        let exit = self
            .0
            .delete(&r.namespace, &r.container_id, &r.exec_id, r.force)
            .await?;
        Ok(Response::new(
            exit.as_ref().map(exit_status).unwrap_or_else(unknown_exit),
        ))
    }

    async fn metrics(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::TaskMetrics>, Status> {
        let r = request.into_inner();
        let stats = self.0.metrics(&r.namespace, &r.container_id).await?;
        Ok(Response::new(v1::TaskMetrics {
            cpu_usage_ns: stats.cpu.usage_ns,
            memory_usage_bytes: stats.memory.usage_bytes,
            memory_limit_bytes: stats.memory.limit_bytes.unwrap_or(0),
            pids_current: stats.pids.current,
            pids_limit: stats.pids.limit.unwrap_or(0),
        }))
    }

    async fn output(
        &self,
        request: Request<v1::OutputRequest>,
    ) -> Result<Response<Self::OutputStream>, Status> {
        let r = request.into_inner();
        let (stdout, stderr, _) = self.0.stdio(&r.namespace, &r.container_id, &r.exec_id)?;
        let (tx, rx) = mpsc::channel(16);
        let tasks = self.0.clone();
        tokio::spawn(async move {
            let mut offsets = (0, 0);
            // One wait for the process's exit (a held connection to its shim), not a question per poll.
            let waited = async {
                if r.follow {
                    // Lost or gone: there is nothing more to wait for either.
                    let _ = tasks.wait(&r.namespace, &r.container_id, &r.exec_id).await;
                }
            };
            tokio::pin!(waited);
            let mut exited = false;
            loop {
                if !exited {
                    tokio::select! {
                        () = &mut waited => exited = true,
                        () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    }
                }
                // Read after the exit is known: a process's output is on disk before its exit is.
                offsets.0 =
                    send_appended(&stdout, offsets.0, v1::output_chunk::Stream::Stdout, &tx).await;
                offsets.1 =
                    send_appended(&stderr, offsets.1, v1::output_chunk::Stream::Stderr, &tx).await;
                if exited || tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn input(
        &self,
        request: Request<tonic::Streaming<v1::InputChunk>>,
    ) -> Result<Response<v1::Empty>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(v1::Empty {}));
        };
        let (_, _, fifo) = self
            .0
            .stdio(&first.namespace, &first.container_id, &first.exec_id)?;
        // Opening a FIFO for writing waits for its reader (the shim's relay).
        let opened = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new().write(true).open(&fifo)
            }),
        )
        .await
        .map_err(|_| {
            Status::failed_precondition("the process does not read stdin (created without it?)")
        })?
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(format!("open the process's stdin: {e}")))?;
        let mut writer = tokio::fs::File::from_std(opened);
        let mut chunk = Some(first);
        while let Some(message) = chunk {
            if !message.data.is_empty() {
                use tokio::io::AsyncWriteExt;
                writer.write_all(&message.data).await.map_err(|e| {
                    Status::failed_precondition(format!("write to the process's stdin: {e}"))
                })?;
                writer.flush().await.ok();
            }
            chunk = stream.message().await?;
        }
        // Dropping the writer closes the FIFO: EOF for the process.
        Ok(Response::new(v1::Empty {}))
    }

    async fn resize(
        &self,
        request: Request<v1::ResizeRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.0
            .resize(&r.namespace, &r.container_id, &r.exec_id, r.width, r.height)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}
