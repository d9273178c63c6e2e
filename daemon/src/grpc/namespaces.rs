//! `skiff.v1.Namespaces` over the metadata store: list, create, remove (refused while a namespace holds
//! anything).

use skiff_api::v1;
use skiff_snapshotter::meta::MetaStore;
use tonic::{Request, Response, Status};

use super::status::StatusExt;

/// The `Namespaces` service.
#[derive(Clone)]
pub struct NamespacesService {
    pub(crate) meta: MetaStore,
}

#[tonic::async_trait]
impl v1::namespaces_server::Namespaces for NamespacesService {
    async fn list(
        &self,
        _: Request<v1::ListNamespacesRequest>,
    ) -> Result<Response<v1::ListNamespacesResponse>, Status> {
        let namespaces = self
            .meta
            .list_namespaces()
            .or_status()?
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
            .await
            .or_status()?;
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
            .await
            .or_status()?;
        Ok(Response::new(v1::Empty {}))
    }
}
