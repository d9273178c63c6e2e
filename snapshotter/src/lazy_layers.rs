//! The daemon's wiring of the lazy filesystem into the snapshotter: [`FuseRemoteLayers`] implements the
//! snapshotter's [`RemoteLayers`] with `skiff_fuse`'s `LayerManager`. It is the only module of this crate
//! that names the lazy filesystem's types.
//!
//! To mount a layer it needs the layer's descriptor (size, media type, annotations with the TOC digest):
//! it fetches the image manifest named by the `cri.manifest-digest` label (or, without one, resolves the
//! image reference for the host platform) from the registry with skiffd's own `[registry]` settings, and
//! keeps the layer list of every manifest it has read.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use skiff_fuse::cache::{CacheError, ChunkStore};
use skiff_fuse::lazyfs::{LayerDescriptor, OpenError};
use skiff_fuse::manager::{LayerManager, ManagerError};
use skiff_fuse::registry::{Descriptor, Digest, Reference, RegistryClient, RegistryError};
use tokio::runtime::Handle;
use tracing::debug;

use crate::config::Config;
use crate::snapshots::{RemoteError, RemoteLayer, RemoteLayerStats, RemoteLayers};

#[derive(Debug, thiserror::Error)]
pub enum LazyLayersError {
    #[error("chunk cache")]
    Cache(#[from] CacheError),
    #[error("registry client")]
    Registry(#[from] RegistryError),
}

/// Failures of finding a layer's descriptor.
#[derive(Debug, thiserror::Error)]
enum DescribeError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("manifest {manifest} does not list layer {layer}")]
    LayerNotListed { manifest: String, layer: String },
}

/// Lazy layers served by FUSE, reached through skiffd's registry configuration.
pub struct FuseRemoteLayers {
    manager: LayerManager,
    client: RegistryClient,
    /// The same settings, over plain HTTP, for layers of `skiff image pull --plain-http`.
    plain_client: RegistryClient,
    runtime: Handle,
    /// Layers of each manifest read so far, by manifest digest.
    manifests: Mutex<HashMap<String, Arc<Vec<Descriptor>>>>,
}

impl FuseRemoteLayers {
    /// Opens the chunk cache (`ROOT/chunks`) and the registry client of `config`.
    pub fn open(config: &Config, runtime: Handle) -> Result<Self, LazyLayersError> {
        let store = ChunkStore::open(&config.chunks_dir(), config.cache.cache_config())?;
        // Plain HTTP registries are named by their hosts.toml `server = "http://…"`.
        let client = RegistryClient::new(config.registry.client_config(false, None))?;
        let plain_client = RegistryClient::new(config.registry.client_config(true, None))?;
        Ok(FuseRemoteLayers {
            manager: LayerManager::new(store, config.lazy.layer_config(), runtime.clone()),
            client,
            plain_client,
            runtime,
            manifests: Mutex::new(HashMap::new()),
        })
    }

    fn client_for(&self, layer: &RemoteLayer) -> &RegistryClient {
        if layer.plain_http {
            &self.plain_client
        } else {
            &self.client
        }
    }

    /// Unmounts every layer still mounted (shutdown).
    pub fn unmount_all(&self) {
        self.manager.unmount_all();
    }

    /// The layers of the manifest `layer` names (fetched once per manifest digest).
    async fn manifest_layers(
        &self,
        reference: &Reference,
        layer: &RemoteLayer,
    ) -> Result<(String, Arc<Vec<Descriptor>>), DescribeError> {
        if let Some(digest) = &layer.manifest_digest {
            let cached = self
                .manifests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(digest)
                .cloned();
            if let Some(layers) = cached {
                return Ok((digest.clone(), layers));
            }
        }
        let pinned = match &layer.manifest_digest {
            Some(digest) => reference.with_digest(Digest::from_str(digest).map_err(|_| {
                RegistryError::InvalidReference {
                    reference: digest.clone(),
                    reason: "not a digest".to_owned(),
                }
            })?),
            None => reference.clone(),
        };
        let resolved = self.client_for(layer).resolve(&pinned).await?;
        let digest = resolved.manifest.digest().to_string();
        let layers = Arc::new(resolved.image_manifest.layers().clone());
        self.manifests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest.clone(), Arc::clone(&layers));
        Ok((digest, layers))
    }

    async fn describe(
        &self,
        reference: &Reference,
        layer: &RemoteLayer,
    ) -> Result<LayerDescriptor, DescribeError> {
        let (manifest, layers) = self.manifest_layers(reference, layer).await?;
        let found = layers
            .iter()
            .find(|d| d.digest().to_string() == layer.layer_digest)
            .ok_or_else(|| DescribeError::LayerNotListed {
                manifest,
                layer: layer.layer_digest.clone(),
            })?;
        Ok(LayerDescriptor::from(found))
    }

    async fn mount_async(&self, layer: &RemoteLayer, mountpoint: &Path) -> Result<(), RemoteError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| RemoteError::Mount {
            digest: layer.layer_digest.clone(),
            image_ref: layer.image_ref.clone(),
            source,
        };
        let reference = Reference::from_str(&layer.image_ref).map_err(|e| failed(e.into()))?;
        let descriptor = self
            .describe(&reference, layer)
            .await
            .map_err(|e| failed(e.into()))?;
        debug!(layer = %descriptor.digest, media_type = %descriptor.media_type, "mounting remote layer");
        match self
            .manager
            .mount(
                self.client_for(layer).clone(),
                reference,
                descriptor,
                mountpoint,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(ManagerError::Open(OpenError::NotLazy { digest, reason })) => {
                Err(RemoteError::NotLazy { digest, reason })
            }
            Err(err) => Err(failed(err.into())),
        }
    }
}

impl RemoteLayers for FuseRemoteLayers {
    fn mount(&self, layer: &RemoteLayer, mountpoint: &Path) -> Result<(), RemoteError> {
        // Called on the blocking pool (or a plain thread), never on a runtime worker.
        self.runtime.block_on(self.mount_async(layer, mountpoint))
    }

    fn stats(&self, mountpoint: &Path) -> Option<RemoteLayerStats> {
        self.manager.info(mountpoint).map(|m| RemoteLayerStats {
            bytes_fetched: m.stats.bytes_fetched,
            requests: m.stats.requests,
            file_bytes: m.total_file_bytes,
            background_bytes: m.stats.background_bytes,
            bytes_read: m.stats.bytes_read,
            chunks_total: m.chunks.total,
            chunks_cached: m.chunks.cached,
            duplicate_fetches: m.stats.duplicate_fetches,
        })
    }

    fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteError> {
        match self.manager.unmount(mountpoint) {
            Ok(()) => Ok(()),
            Err(ManagerError::NotMounted { mountpoint }) => {
                Err(RemoteError::NotMounted { mountpoint })
            }
            Err(err) => Err(RemoteError::Unmount {
                mountpoint: mountpoint.to_path_buf(),
                source: err.into(),
            }),
        }
    }
}
