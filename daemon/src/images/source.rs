//! Where pulls read images: [`ImageSource`], the seam between [`Images`](super::Images) and the registry
//! client, so pulls are tested against a recording fake (`daemon/tests/images.rs`) and run against
//! [`RegistryClient`] in skiffd.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use skiff_registry::{
    BlobStream, Credentials, Reference, RegistryClient, RegistryError, ResolvedImage,
};
use skiff_types::LayerDescriptor;

use crate::config::RegistrySection;

/// The registry side of one pull.
pub trait ImageSource: Send + Sync {
    /// What `reference` names for this host's platform: target, manifest, config and layers, verified.
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<ResolvedImage, RegistryError>>;

    /// A layer blob as a stream that verifies size and digest (its last item is an error otherwise).
    fn fetch_blob<'a>(
        &'a self,
        reference: &'a Reference,
        layer: &'a LayerDescriptor,
    ) -> BoxFuture<'a, Result<BlobStream, RegistryError>>;
}

/// Opens the [`ImageSource`] of a pull with its own settings.
pub trait ImageSources: Send + Sync {
    /// A source over plain HTTP or not, with explicit credentials or skiffd's own.
    fn open(
        &self,
        plain_http: bool,
        credentials: Option<Credentials>,
    ) -> Result<Arc<dyn ImageSource>, RegistryError>;
}

impl ImageSource for RegistryClient {
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<ResolvedImage, RegistryError>> {
        RegistryClient::resolve(self, reference).boxed()
    }

    fn fetch_blob<'a>(
        &'a self,
        reference: &'a Reference,
        layer: &'a LayerDescriptor,
    ) -> BoxFuture<'a, Result<BlobStream, RegistryError>> {
        async move { RegistryClient::fetch_blob(self, reference, &layer.to_oci()).await }.boxed()
    }
}

/// Registry clients with skiffd's `[registry]` settings.
pub struct RegistrySources(pub RegistrySection);

impl ImageSources for RegistrySources {
    fn open(
        &self,
        plain_http: bool,
        credentials: Option<Credentials>,
    ) -> Result<Arc<dyn ImageSource>, RegistryError> {
        let client = RegistryClient::new(self.0.client_config(plain_http, credentials))?;
        Ok(Arc::new(client))
    }
}
