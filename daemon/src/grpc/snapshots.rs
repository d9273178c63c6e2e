//! The `containerd.services.snapshots.v1.Snapshots` gRPC service over a [`Snapshotter`]: requests become
//! typed calls on the blocking pool, and [`SnapshotError`]s become the codes containerd relies on (in
//! [`super::status`]). The request's `snapshotter` name is ignored: skiffd
//! serves one snapshotter, as proxy snapshotters do.

use std::pin::Pin;

use futures::Stream;
use skiff_api::containerd::snapshots::v1 as api;
use skiff_api::containerd::types;
use tonic::{Request, Response, Status};

use skiff_snapshotter::meta::Labels;
use skiff_snapshotter::snapshots::{
    AnyFilter, LabelChange, Mount, RemoteLayer, SnapshotError, SnapshotInfo, SnapshotKind,
    Snapshotter,
};

use super::status::{StatusExt, ToStatus};
use crate::lazy_layers::RemoteSnapshots;

/// Infos per `List` message, as containerd's own service batches them.
const LIST_BATCH: usize = 100;

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct SnapshotsService {
    snapshotter: Snapshotter,
    /// Serves the layers that `Prepare` labels name remotely; without it every prepare is ordinary.
    remote: Option<RemoteSnapshots>,
}

impl SnapshotsService {
    pub fn new(snapshotter: Snapshotter) -> Self {
        SnapshotsService {
            snapshotter,
            remote: None,
        }
    }

    /// Layers that `Prepare` labels name are served through `remote` from now on.
    pub fn with_remote(mut self, remote: RemoteSnapshots) -> Self {
        self.remote = Some(remote);
        self
    }

    pub fn into_server(self) -> api::snapshots_server::SnapshotsServer<Self> {
        api::snapshots_server::SnapshotsServer::new(self)
    }

    /// Runs `call` on the blocking pool (disk and database work).
    async fn blocking<T, F>(&self, call: F) -> Result<T, Status>
    where
        F: FnOnce(&Snapshotter) -> Result<T, SnapshotError> + Send + 'static,
        T: Send + 'static,
    {
        let snapshotter = self.snapshotter.clone();
        match tokio::task::spawn_blocking(move || call(&snapshotter)).await {
            Ok(result) => result.or_status(),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(Status::internal(format!("snapshot task failed: {err}"))),
        }
    }
}

fn labels(map: std::collections::HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

/// containerd sends `""` for "no parent".
fn parent(parent: String) -> Option<String> {
    (!parent.is_empty()).then_some(parent)
}

fn mount(mount: Mount) -> types::Mount {
    types::Mount {
        r#type: mount.fs_type,
        source: mount.source,
        target: String::new(),
        options: mount.options,
    }
}

fn mounts(list: Vec<Mount>) -> Vec<types::Mount> {
    list.into_iter().map(mount).collect()
}

fn kind(kind: SnapshotKind) -> api::Kind {
    match kind {
        SnapshotKind::View => api::Kind::View,
        SnapshotKind::Active => api::Kind::Active,
        SnapshotKind::Committed => api::Kind::Committed,
    }
}

fn info(info: SnapshotInfo) -> api::Info {
    api::Info {
        name: info.key,
        parent: info.parent.unwrap_or_default(),
        kind: kind(info.kind) as i32,
        created_at: Some(info.created_at.into()),
        updated_at: Some(info.updated_at.into()),
        labels: info.labels.into_iter().collect(),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<api::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl api::snapshots_server::Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let request = request.into_inner();
        let labels = labels(request.labels);
        // The containerd remote-snapshotter labels, parsed here once.
        let layer = RemoteLayer::from_labels(&labels)
            .map_err(|err| SnapshotError::from(err).to_status())?;
        tracing::debug!(key = %request.key, labels = ?labels.keys().collect::<Vec<_>>(), remote = layer.is_some(), "prepare");
        let list = match (layer, &self.remote) {
            (Some(layer), Some(remote)) => remote
                .prepare(request.key, parent(request.parent), labels, layer)
                .await
                .or_status()?,
            _ => {
                self.blocking(move |s| {
                    s.prepare(&request.key, parent(request.parent).as_deref(), labels)
                })
                .await?
            }
        };
        Ok(Response::new(api::PrepareSnapshotResponse {
            mounts: mounts(list),
        }))
    }

    async fn view(
        &self,
        request: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let request = request.into_inner();
        let list = self
            .blocking(move |s| {
                s.view(
                    &request.key,
                    parent(request.parent).as_deref(),
                    labels(request.labels),
                )
            })
            .await?;
        Ok(Response::new(api::ViewSnapshotResponse {
            mounts: mounts(list),
        }))
    }

    async fn mounts(
        &self,
        request: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let key = request.into_inner().key;
        let list = self.blocking(move |s| s.mounts(&key)).await?;
        Ok(Response::new(api::MountsResponse {
            mounts: mounts(list),
        }))
    }

    async fn commit(
        &self,
        request: Request<api::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        self.blocking(move |s| s.commit(&request.name, &request.key, labels(request.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<api::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        self.blocking(move |s| s.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        let found = self.blocking(move |s| s.stat(&key)).await?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(info(found)),
        }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let request = request.into_inner();
        let requested = request
            .info
            .ok_or_else(|| Status::invalid_argument("update without snapshot info"))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let changes =
            LabelChange::from_field_paths(&requested.name, &paths, &labels(requested.labels))
                .or_status()?;
        let key = requested.name;
        let updated = self.blocking(move |s| s.update(&key, changes)).await?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(info(updated)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filter = AnyFilter::parse(&request.into_inner().filters)
            .map_err(|err| SnapshotError::from(err).to_status())?;
        let found = self.blocking(move |s| s.list(&filter)).await?;
        let mut batches = Vec::new();
        let mut infos = found.into_iter().map(info).peekable();
        while infos.peek().is_some() {
            let info = infos.by_ref().take(LIST_BATCH).collect();
            batches.push(Ok(api::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        request: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        let key = request.into_inner().key;
        let usage = self.blocking(move |s| s.usage(&key)).await?;
        Ok(Response::new(api::UsageResponse {
            size: i64::try_from(usage.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(usage.inodes).unwrap_or(i64::MAX),
        }))
    }

    async fn cleanup(
        &self,
        _request: Request<api::CleanupRequest>,
    ) -> Result<Response<()>, Status> {
        self.blocking(|s| s.cleanup().map(drop)).await?;
        Ok(Response::new(()))
    }
}
