//! Test support for the daemon's per-crate tests: images built in code (gzip tar layers, config, manifest)
//! served by a recording [`FakeSource`], lazy layers "mounted" by a recording [`FakeMounter`], and the
//! stores on temporary directories. Honest fakes: every method of the seams does what the real one
//! promises (verified blobs, mounts that show the layer's files, unmounts that take them away).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use skiff_daemon::images::{ImageSource, ImageSources, Images, PullEvent};
use skiff_daemon::lazy_layers::{LayerMounter, RemoteSnapshots};
use skiff_registry::{
    BlobStream, Credentials, Descriptor, ImageManifest, MediaType, Reference, RegistryError,
    ResolvedImage,
};
use skiff_snapshotter::content::ContentStore;
use skiff_snapshotter::meta::MetaStore;
use skiff_snapshotter::snapshots::{RemoteError, RemoteLayerStats, RemoteMounts, Snapshotter};
use skiff_types::{Digest, LayerDescriptor, RemoteLayer};

pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation that makes a layer announce eStargz.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// A layer built in code: its files, and whether it announces a lazy format.
pub struct Layer {
    pub files: Vec<(&'static str, &'static [u8])>,
    pub lazy: bool,
}

/// A gzip tar of `files` (regular files, parents made implicitly), and the tar's digest (the diff id).
pub fn tar_gz(files: &[(&str, &[u8])]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, *data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// An image in the fake registry.
pub struct TestImage {
    pub reference: Reference,
    pub resolved: ResolvedImage,
    pub blobs: HashMap<Digest, Bytes>,
}

/// Builds an image of `layers` named `reference`.
pub fn image(reference: &str, layers: &[Layer]) -> TestImage {
    let reference: Reference = reference.parse().unwrap();
    let mut blobs = HashMap::new();
    let mut diff_ids = Vec::new();
    let mut layer_json = Vec::new();
    for layer in layers {
        let (gz, diff_id) = tar_gz(&layer.files);
        let digest = Digest::of(&gz);
        let mut entry = serde_json::json!({
            "mediaType": GZIP_LAYER,
            "digest": digest.to_string(),
            "size": gz.len(),
        });
        if layer.lazy {
            entry["annotations"] =
                serde_json::json!({ TOC_DIGEST: Digest::of(b"toc").to_string() });
        }
        layer_json.push(entry);
        diff_ids.push(diff_id.to_string());
        blobs.insert(digest, Bytes::from(gz));
    }
    let config = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap(),
    );
    let config_digest = Digest::of(&config);
    blobs.insert(config_digest, config.clone());
    let manifest = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layer_json,
        }))
        .unwrap(),
    );
    let manifest_digest = Digest::of(&manifest);
    blobs.insert(manifest_digest, manifest.clone());
    let image_manifest: ImageManifest = serde_json::from_slice(&manifest).unwrap();
    let target = Descriptor::new(
        MediaType::ImageManifest,
        manifest.len() as u64,
        manifest_digest.to_oci(),
    );
    let resolved = ResolvedImage {
        reference: reference.with_digest(manifest_digest),
        target: target.clone(),
        target_bytes: manifest.clone(),
        manifest: target,
        manifest_bytes: manifest,
        config: image_manifest.config().clone(),
        config_bytes: config,
        layers: image_manifest
            .layers()
            .iter()
            .map(|layer| LayerDescriptor::try_from(layer).unwrap())
            .collect(),
        image_manifest,
        target_digest: manifest_digest,
        manifest_digest,
        config_digest,
    };
    TestImage {
        reference,
        resolved,
        blobs,
    }
}

/// A registry in memory that records what it is asked for.
#[derive(Default)]
pub struct FakeSource {
    images: Mutex<HashMap<String, Arc<TestImage>>>,
    /// Blobs served with their last byte flipped (a registry that lies).
    corrupt: Mutex<Vec<Digest>>,
    pub resolves: Mutex<Vec<String>>,
    pub fetched: Mutex<Vec<Digest>>,
    /// (plain HTTP, explicit credentials) of every pull's source.
    pub opened: Mutex<Vec<(bool, bool)>>,
}

impl FakeSource {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeSource::default())
    }

    pub fn add(&self, image: TestImage) -> Arc<TestImage> {
        let image = Arc::new(image);
        self.images
            .lock()
            .unwrap()
            .insert(image.reference.to_string(), Arc::clone(&image));
        image
    }

    pub fn corrupt(&self, digest: Digest) {
        self.corrupt.lock().unwrap().push(digest);
    }

    pub fn resolve_count(&self) -> usize {
        self.resolves.lock().unwrap().len()
    }

    pub fn fetched(&self) -> Vec<Digest> {
        self.fetched.lock().unwrap().clone()
    }

    fn find(&self, reference: &Reference) -> Result<Arc<TestImage>, RegistryError> {
        self.images
            .lock()
            .unwrap()
            .get(&reference.to_string())
            .cloned()
            .ok_or_else(|| RegistryError::NotFound {
                url: reference.to_string(),
            })
    }
}

impl ImageSource for FakeSource {
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<ResolvedImage, RegistryError>> {
        async move {
            self.resolves.lock().unwrap().push(reference.to_string());
            Ok(self.find(reference)?.resolved.clone())
        }
        .boxed()
    }

    fn fetch_blob<'a>(
        &'a self,
        reference: &'a Reference,
        layer: &'a LayerDescriptor,
    ) -> BoxFuture<'a, Result<BlobStream, RegistryError>> {
        async move {
            self.fetched.lock().unwrap().push(layer.digest);
            let image = self.find(reference)?;
            let mut bytes = image
                .blobs
                .get(&layer.digest)
                .cloned()
                .ok_or_else(|| RegistryError::NotFound {
                    url: layer.digest.to_string(),
                })?
                .to_vec();
            if self.corrupt.lock().unwrap().contains(&layer.digest) {
                *bytes.last_mut().unwrap() ^= 1;
            }
            // As the registry client does: the stream ends with an error when the bytes do not verify.
            let verified = if Digest::of(&bytes) == layer.digest {
                Ok(Bytes::from(bytes))
            } else {
                Err(RegistryError::DigestMismatch {
                    expected: layer.digest.to_string(),
                    actual: Digest::of(&bytes).to_string(),
                })
            };
            let stream: BlobStream = Box::pin(futures::stream::iter([verified]));
            Ok(stream)
        }
        .boxed()
    }
}

/// Opens the one fake registry for every pull, recording the pull's settings.
pub struct FakeSources(pub Arc<FakeSource>);

impl ImageSources for FakeSources {
    fn open(
        &self,
        plain_http: bool,
        credentials: Option<Credentials>,
    ) -> Result<Arc<dyn ImageSource>, RegistryError> {
        self.0
            .opened
            .lock()
            .unwrap()
            .push((plain_http, credentials.is_some()));
        Ok(Arc::clone(&self.0) as Arc<dyn ImageSource>)
    }
}

/// "Mounts" a lazy layer by writing `layer.txt` (its digest) into the mountpoint; refuses the layers in
/// `not_lazy`. Records the descriptor of every mount.
#[derive(Default)]
pub struct FakeMounter {
    pub not_lazy: Mutex<Vec<Digest>>,
    pub mounted: Mutex<BTreeMap<PathBuf, Digest>>,
    pub descriptors: Mutex<Vec<Option<LayerDescriptor>>>,
}

impl RemoteMounts for FakeMounter {
    fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteError> {
        if self.mounted.lock().unwrap().remove(mountpoint).is_none() {
            return Err(RemoteError::NotMounted {
                mountpoint: mountpoint.to_path_buf(),
            });
        }
        std::fs::remove_file(mountpoint.join("layer.txt")).unwrap();
        Ok(())
    }

    fn stats(&self, mountpoint: &Path) -> Option<RemoteLayerStats> {
        self.mounted
            .lock()
            .unwrap()
            .contains_key(mountpoint)
            .then(RemoteLayerStats::default)
    }
}

impl LayerMounter for FakeMounter {
    fn mount<'a>(
        &'a self,
        layer: &'a RemoteLayer,
        descriptor: Option<&'a LayerDescriptor>,
        mountpoint: &'a Path,
    ) -> BoxFuture<'a, Result<LayerDescriptor, RemoteError>> {
        async move {
            self.descriptors.lock().unwrap().push(descriptor.cloned());
            if self.not_lazy.lock().unwrap().contains(&layer.layer_digest) {
                return Err(RemoteError::NotLazy {
                    digest: layer.layer_digest,
                    reason: "no TOC".into(),
                });
            }
            let descriptor = descriptor
                .cloned()
                .expect("skiff's own pull passes the descriptor");
            std::fs::write(mountpoint.join("layer.txt"), layer.layer_digest.to_string()).unwrap();
            self.mounted
                .lock()
                .unwrap()
                .insert(mountpoint.to_path_buf(), layer.layer_digest);
            Ok(descriptor)
        }
        .boxed()
    }
}

/// The stores of one daemon on a temporary directory, with images pulled through `source` and lazy
/// layers mounted by `mounter`.
pub struct Bed {
    pub dir: tempfile::TempDir,
    pub content: ContentStore,
    pub meta: MetaStore,
    pub snapshotter: Snapshotter,
    pub images: Images,
    pub source: Arc<FakeSource>,
    pub mounter: Arc<FakeMounter>,
}

impl Bed {
    pub fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(&dir.path().join("content")).unwrap();
        let meta = MetaStore::in_memory();
        let mounter = Arc::new(FakeMounter::default());
        let snapshotter = Snapshotter::open(&dir.path().join("snapshots"), meta.clone())
            .unwrap()
            .with_remote_mounts(Arc::clone(&mounter) as Arc<dyn RemoteMounts>);
        let remote = RemoteSnapshots::new(
            snapshotter.clone(),
            Arc::clone(&mounter) as Arc<dyn LayerMounter>,
        );
        let source = FakeSource::new();
        let images = Images::new(
            content.clone(),
            meta.clone(),
            Arc::new(FakeSources(Arc::clone(&source))),
            2,
        )
        .with_snapshotter(snapshotter.clone(), Some(remote));
        Bed {
            dir,
            content,
            meta,
            snapshotter,
            images,
            source,
            mounter,
        }
    }

    /// Pulls `reference` into `namespace`, the progress events dropped.
    pub async fn pull(
        &self,
        namespace: &str,
        reference: &str,
    ) -> Result<skiff_snapshotter::meta::ImageRecord, skiff_daemon::images::ImageError> {
        self.pull_events(namespace, reference).await.0
    }

    /// Pulls `reference` into `namespace`, with the progress events it sent.
    pub async fn pull_events(
        &self,
        namespace: &str,
        reference: &str,
    ) -> (
        Result<skiff_snapshotter::meta::ImageRecord, skiff_daemon::images::ImageError>,
        Vec<PullEvent>,
    ) {
        let (events, mut drain) = tokio::sync::mpsc::channel(1024);
        let drained = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(event) = drain.recv().await {
                seen.push(event);
            }
            seen
        });
        let pulled = self
            .images
            .pull(
                namespace,
                reference,
                false,
                None,
                events,
                &tokio_util::sync::CancellationToken::new(),
            )
            .await;
        (pulled, drained.await.unwrap())
    }
}
