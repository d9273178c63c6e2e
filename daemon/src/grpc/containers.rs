//! `skiff.v1.Containers` over [`Containers`]: container records (rootfs snapshot + OCI spec); a container
//! with a task is not deleted.

use skiff_api::v1;
use skiff_snapshotter::meta::ContainerRecord;
use tonic::{Request, Response, Status};

use super::timestamp;
use crate::containers::{Containers, CreateRequest};
use crate::tasks::Tasks;

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
