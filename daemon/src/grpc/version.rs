//! `skiff.v1.Version`: the daemon's version and build revision.

use skiff_api::v1;
use tonic::{Request, Response, Status};

/// The `Version` service.
#[derive(Clone, Copy, Debug, Default)]
pub struct VersionService;

#[tonic::async_trait]
impl v1::version_server::Version for VersionService {
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
