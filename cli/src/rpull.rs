//! `skiff image rpull`: pulls an image **through a containerd**, the way containerd's unpacker does when CRI
//! attaches the remote-snapshotter labels, so a remote snapshotter (skiffd, as containerd's proxy
//! snapshotter) can serve lazy layers without containerd downloading them.
//!
//! The CLI resolves the reference itself (skiff-registry's client: manifest and config only), then,
//! inside a containerd lease: writes index, manifest and config into containerd's content store with the
//! `containerd.io/gc.ref.content.*` labels that keep them alive; for each layer, asks containerd's Snapshots
//! service to `Prepare` an extraction snapshot labelled with the layer's chain id and the `cri.*` labels. An
//! `AlreadyExists` answer means the snapshotter committed the layer remotely; otherwise the blob is fetched
//! into containerd's content store, applied with containerd's Diff service and committed under its chain id.
//! Last, the config is labelled `containerd.io/gc.ref.snapshot.SNAPSHOTTER` and the image record is created
//! or updated, which is all `ctr run --snapshotter SNAPSHOTTER` needs.
//!
//! It speaks only containerd's public gRPC API (the `containerd-client` crate); it knows nothing of skiffd.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snapshots_api;
use containerd_client::types as ctypes;
use futures::StreamExt;
use skiff_registry::{
    BlobStream, Credentials, Descriptor, ImageIndex, LayerDescriptor, Reference, RegistryClient,
    RegistryConfig, ResolvedImage,
};
use skiff_types::{ChainId, Digest, RemoteLayer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::output::{self, rfc3339};

/// The gRPC metadata key containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The gRPC metadata key containerd reads the lease from.
const LEASE_HEADER: &str = "containerd-lease";
/// Where containerd listens by default.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";

/// The largest piece of a blob sent in one `Content.Write` message (containerd accepts 16 MiB messages).
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// `skiff image rpull`'s arguments (the namespace is the global `-n`).
#[derive(clap::Args, Debug)]
pub struct RpullArgs {
    /// Image reference: HOST[:PORT]/REPO[:TAG][@sha256:DIGEST].
    pub reference: String,
    /// containerd's gRPC socket.
    #[arg(long, value_name = "SOCK", default_value = DEFAULT_CONTAINERD_ADDRESS)]
    pub containerd: PathBuf,
    /// The containerd snapshotter to unpack into (skiffd's proxy plugin name).
    #[arg(long, default_value = "skiff")]
    pub snapshotter: String,
    /// Speak plain HTTP to the registry (for a local registry without TLS).
    #[arg(long)]
    pub plain_http: bool,
    /// Registry credentials (otherwise the docker config.json of the caller is used).
    #[command(flatten)]
    pub auth: crate::credentials::UserArgs,
    /// A containerd hosts.toml directory (HOST[:PORT]/hosts.toml) for mirrors and TLS settings.
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
}

/// What happened to one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerOutcome {
    /// The snapshotter committed it itself (`AlreadyExists` on Prepare): served remotely, nothing downloaded.
    Remote,
    /// Fetched into containerd's content store and applied by containerd's Diff service.
    Unpacked,
    /// A snapshot with its chain id already existed in the namespace.
    Present,
}

impl LayerOutcome {
    fn describe(self) -> &'static str {
        match self {
            LayerOutcome::Remote => "lazy (remote)",
            LayerOutcome::Unpacked => "unpacked",
            LayerOutcome::Present => "already present",
        }
    }
}

/// The labels of the extraction snapshot of layer `index`, as containerd's unpacker sends them for CRI:
/// the chain id it is committed under, the remote-snapshot labels (`skiff_types`' codec) and the layer's
/// inherited annotations.
fn prepare_labels(
    image_ref: &str,
    manifest_digest: Digest,
    layers: &[LayerDescriptor],
    index: usize,
    chain_id: &ChainId,
) -> HashMap<String, String> {
    let layer = &layers[index];
    RemoteLayer {
        target: chain_id.to_string(),
        image_ref: image_ref.to_owned(),
        layer_digest: layer.digest,
        manifest_digest: Some(manifest_digest),
        image_layers: layers[index..].iter().map(|layer| layer.digest).collect(),
        annotations: layer.annotations.clone(),
        plain_http: false,
    }
    .to_labels()
    .into_iter()
    .collect()
}

/// The content labels that make containerd's garbage collector keep a manifest's config and layers.
fn manifest_gc_labels(resolved: &ResolvedImage) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    labels.insert(
        "containerd.io/gc.ref.content.config".to_string(),
        resolved.config.digest().to_string(),
    );
    for (i, layer) in resolved.image_manifest.layers().iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest().to_string(),
        );
    }
    labels
}

/// The diff ids (`rootfs.diff_ids`) of an image config.
fn diff_ids(config: &[u8]) -> anyhow::Result<Vec<Digest>> {
    let value: serde_json::Value =
        serde_json::from_slice(config).context("image config is not JSON")?;
    value["rootfs"]["diff_ids"]
        .as_array()
        .context("image config has no rootfs.diff_ids")?
        .iter()
        .map(|d| {
            let d = d.as_str().context("a diff id is not a string")?;
            d.parse::<Digest>().context("a diff id")
        })
        .collect()
}

fn to_containerd(descriptor: &Descriptor) -> ctypes::Descriptor {
    ctypes::Descriptor {
        media_type: descriptor.media_type().to_string(),
        digest: descriptor.digest().to_string(),
        size: descriptor.size() as i64,
        annotations: descriptor.annotations().clone().unwrap_or_default(),
    }
}

/// A time-based unique part for ingest refs, extraction keys and leases.
fn unique_part() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos}-{}", std::process::id())
}

/// A gRPC status from containerd as an error naming the operation.
fn failed(what: String) -> impl FnOnce(Status) -> anyhow::Error {
    move |status| output::status(status).context(what)
}

/// A channel to containerd plus the namespace (and lease) every request carries.
#[derive(Clone)]
struct Containerd {
    channel: Channel,
    metadata: MetadataMap,
}

impl Containerd {
    async fn connect(socket: &std::path::Path, namespace: &str) -> anyhow::Result<Self> {
        let channel = skiff_api::connect(socket).await.map_err(|err| {
            anyhow!(
                "cannot connect to containerd at {}: {}",
                socket.display(),
                skiff_api::error_chain(&err.source)
            )
        })?;
        let mut metadata = MetadataMap::new();
        metadata.insert(
            NAMESPACE_HEADER,
            AsciiMetadataValue::try_from(namespace)
                .map_err(|_| anyhow!("namespace {namespace:?} is not printable ASCII"))?,
        );
        let this = Containerd { channel, metadata };
        // containerd answers Version without a namespace; this tells a containerd from another socket.
        api::version_client::VersionClient::new(this.channel.clone())
            .version(Request::new(()))
            .await
            .map_err(|status| {
                anyhow!(
                    "{} does not answer as containerd: {}",
                    socket.display(),
                    output::status(status)
                )
            })?;
        Ok(this)
    }

    fn with_lease(&self, lease: &str) -> anyhow::Result<Self> {
        let mut this = self.clone();
        this.metadata.insert(
            LEASE_HEADER,
            AsciiMetadataValue::try_from(lease).context("lease id")?,
        );
        Ok(this)
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        request
    }

    fn content(&self) -> api::content_client::ContentClient<Channel> {
        api::content_client::ContentClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
    }

    fn snapshots(&self) -> snapshots_api::snapshots_client::SnapshotsClient<Channel> {
        snapshots_api::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }

    async fn create_lease(&self) -> anyhow::Result<String> {
        let id = format!("skiff-rpull-{}", unique_part());
        // The lease expires by itself if this process dies before deleting it.
        let expire = SystemTime::now() + std::time::Duration::from_secs(24 * 3600);
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), rfc3339(expire))]);
        api::leases_client::LeasesClient::new(self.channel.clone())
            .create(self.request(api::CreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(failed("create a containerd lease".into()))?;
        Ok(id)
    }

    async fn delete_lease(&self, id: &str) -> anyhow::Result<()> {
        api::leases_client::LeasesClient::new(self.channel.clone())
            .delete(self.request(api::DeleteRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await
            .map_err(failed(format!("delete containerd lease {id}")))?;
        Ok(())
    }

    /// Whether containerd's content store (in this namespace) has `digest`.
    async fn has_content(&self, digest: &str) -> anyhow::Result<bool> {
        match self
            .content()
            .info(self.request(api::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(failed(format!("content info {digest}"))(status)),
        }
    }

    /// Sets `labels` on a blob in the content store, leaving its other labels alone.
    async fn label_content(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.request(api::UpdateRequest {
                info: Some(api::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(failed(format!("label content {digest}")))?;
        Ok(())
    }

    /// Puts a blob into containerd's content store (streamed, checked by containerd against `digest` and
    /// `size`) with `labels`; a blob already there only gets the labels. Returns whether it was written.
    async fn put_content<F, Fut>(
        &self,
        digest: &str,
        size: u64,
        labels: HashMap<String, String>,
        body: F,
    ) -> anyhow::Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<BlobStream>>,
    {
        if self.has_content(digest).await? {
            self.label_content(digest, labels).await?;
            return Ok(false);
        }
        let body = body().await?;
        match self.write_content(digest, size, labels.clone(), body).await {
            Ok(()) => Ok(true),
            Err(WriteError::Exists) => {
                self.label_content(digest, labels).await?;
                Ok(false)
            }
            Err(WriteError::Failed(err)) => Err(err),
        }
    }

    async fn write_content(
        &self,
        digest: &str,
        size: u64,
        labels: HashMap<String, String>,
        mut body: BlobStream,
    ) -> Result<(), WriteError> {
        let total = i64::try_from(size).map_err(|_| anyhow!("blob {digest} is too large"))?;
        let (sender, receiver) = tokio::sync::mpsc::channel::<api::WriteContentRequest>(4);
        let ingest_ref = format!("skiff-rpull-{}-{digest}", unique_part());
        let message =
            |action: api::WriteAction, offset: i64, data: Vec<u8>| api::WriteContentRequest {
                action: action as i32,
                r#ref: ingest_ref.clone(),
                total,
                expected: digest.to_string(),
                offset,
                data,
                labels: HashMap::new(),
            };
        let produce = async move {
            let mut offset = 0i64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.with_context(|| format!("fetch blob {digest}"))?;
                for piece in chunk.chunks(WRITE_CHUNK_BYTES) {
                    let request = message(api::WriteAction::Write, offset, piece.to_vec());
                    if sender.send(request).await.is_err() {
                        // containerd ended the write; its answer says why.
                        return Ok(());
                    }
                    offset += piece.len() as i64;
                }
            }
            let mut commit = message(api::WriteAction::Commit, offset, Vec::new());
            commit.labels = labels;
            let _ = sender.send(commit).await;
            anyhow::Ok(())
        };
        let consume = async {
            let mut responses = self
                .content()
                .write(self.request(ReceiverStream::new(receiver)))
                .await?
                .into_inner();
            let mut committed = false;
            while let Some(response) = responses.message().await? {
                committed |= response.action == api::WriteAction::Commit as i32;
            }
            Ok::<bool, Status>(committed)
        };
        let (produced, consumed) = tokio::join!(produce, consume);
        produced?;
        match consumed {
            Ok(true) => Ok(()),
            Ok(false) => Err(anyhow!("containerd did not commit blob {digest}").into()),
            Err(status) if status.code() == Code::AlreadyExists => Err(WriteError::Exists),
            Err(status) => Err(failed(format!("write blob {digest} to containerd"))(status).into()),
        }
    }
}

/// Why a content write did not store the blob.
enum WriteError {
    /// Someone else stored it meanwhile.
    Exists,
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for WriteError {
    fn from(err: anyhow::Error) -> Self {
        WriteError::Failed(err)
    }
}

/// Runs `skiff image rpull`.
pub async fn run(namespace: &str, args: RpullArgs) -> anyhow::Result<()> {
    let reference: Reference = args
        .reference
        .parse()
        .with_context(|| format!("rpull {}", args.reference))?;
    let registry = RegistryClient::new(RegistryConfig {
        hosts_dir: args.hosts_dir.clone(),
        plain_http: args.plain_http,
        credentials: args
            .auth
            .credentials()?
            .map(|(username, password)| Credentials { username, password }),
        ..RegistryConfig::default()
    })
    .context("registry client")?;
    let containerd = Containerd::connect(&args.containerd, namespace).await?;
    let resolved = registry
        .resolve(&reference)
        .await
        .with_context(|| format!("resolve {reference}"))?;
    let name = reference.to_string();
    if resolved.target.digest() == resolved.manifest.digest() {
        println!("{name}: resolved {}", resolved.target.digest());
    } else {
        println!(
            "{name}: resolved {} (manifest {} for this platform)",
            resolved.target.digest(),
            resolved.manifest.digest()
        );
    }

    let lease = containerd.create_lease().await?;
    let leased = containerd.with_lease(&lease)?;
    let pulled = pull(&leased, &registry, &reference, &resolved, &args.snapshotter).await;
    let released = containerd.delete_lease(&lease).await;
    let outcomes = pulled.with_context(|| format!("rpull {name}"))?;
    released?;

    let count = |o: LayerOutcome| outcomes.iter().filter(|(x, _)| *x == o).count();
    let fetched: u64 = outcomes.iter().map(|(_, bytes)| bytes).sum();
    let total: u64 = resolved
        .image_manifest
        .layers()
        .iter()
        .map(Descriptor::size)
        .sum();
    println!(
        "{name}: {} layers into snapshotter {}: {} lazy (remote), {} unpacked, {} already present; \
         {} of {} layer bytes downloaded",
        outcomes.len(),
        args.snapshotter,
        count(LayerOutcome::Remote),
        count(LayerOutcome::Unpacked),
        count(LayerOutcome::Present),
        output::size(fetched),
        output::size(total),
    );
    Ok(())
}

/// Everything after resolving, inside the lease: content, snapshots, the image record. Returns each
/// layer's outcome and the bytes downloaded for it.
async fn pull(
    containerd: &Containerd,
    registry: &RegistryClient,
    reference: &Reference,
    resolved: &ResolvedImage,
    snapshotter: &str,
) -> anyhow::Result<Vec<(LayerOutcome, u64)>> {
    let layers = resolved.image_manifest.layers();
    let diff_ids = diff_ids(&resolved.config_bytes)?;
    ensure!(
        diff_ids.len() == layers.len(),
        "the manifest lists {} layers but the config {} diff ids",
        layers.len(),
        diff_ids.len()
    );
    let chain = ChainId::chain(&diff_ids);
    let image_ref = reference.to_string();
    let manifest_digest = resolved.manifest_digest.to_string();

    // Config, manifest, then index: each parent labelled with the children the collector must keep.
    let bytes_body = |bytes: bytes::Bytes| async move {
        anyhow::Ok(Box::pin(futures::stream::once(async move { Ok(bytes) })) as BlobStream)
    };
    containerd
        .put_content(
            resolved.config.digest().as_ref(),
            resolved.config.size(),
            HashMap::new(),
            || bytes_body(resolved.config_bytes.clone()),
        )
        .await?;
    containerd
        .put_content(
            &manifest_digest,
            resolved.manifest.size(),
            manifest_gc_labels(resolved),
            || bytes_body(resolved.manifest_bytes.clone()),
        )
        .await?;
    if resolved.target.digest() != resolved.manifest.digest() {
        let index: ImageIndex =
            serde_json::from_slice(&resolved.target_bytes).context("parse the image index")?;
        let labels = index
            .manifests()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.digest() == resolved.manifest.digest())
            .map(|(i, m)| {
                (
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    m.digest().to_string(),
                )
            })
            .collect();
        containerd
            .put_content(
                resolved.target.digest().as_ref(),
                resolved.target.size(),
                labels,
                || bytes_body(resolved.target_bytes.clone()),
            )
            .await?;
    }

    let mut outcomes = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].to_string()
        };
        let labels = prepare_labels(
            &image_ref,
            resolved.manifest_digest,
            &resolved.layers,
            i,
            &chain[i],
        );
        let (outcome, fetched) = unpack_layer(
            containerd,
            snapshotter,
            LayerJob {
                registry,
                reference,
                layer,
                diff_id: &diff_ids[i],
                chain_id: &chain[i].to_string(),
                parent: &parent,
                labels,
            },
        )
        .await
        .with_context(|| format!("layer {} ({})", i + 1, layer.digest()))?;
        println!(
            "layer {}/{} {}: {}",
            i + 1,
            layers.len(),
            layer.digest(),
            outcome.describe()
        );
        outcomes.push((outcome, fetched));
    }

    if let Some(top) = chain.last() {
        containerd
            .label_content(
                resolved.config.digest().as_ref(),
                HashMap::from([(
                    format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                    top.to_string(),
                )]),
            )
            .await?;
    }
    put_image(containerd, &image_ref, &resolved.target).await?;
    Ok(outcomes)
}

/// One layer to bring into the snapshotter.
struct LayerJob<'a> {
    registry: &'a RegistryClient,
    reference: &'a Reference,
    layer: &'a Descriptor,
    diff_id: &'a Digest,
    chain_id: &'a str,
    parent: &'a str,
    labels: HashMap<String, String>,
}

/// containerd's unpack of one layer: nothing if its chain id exists; Prepare with the remote labels;
/// `AlreadyExists` = committed remotely; otherwise fetch, apply, commit.
async fn unpack_layer(
    containerd: &Containerd,
    snapshotter: &str,
    job: LayerJob<'_>,
) -> anyhow::Result<(LayerOutcome, u64)> {
    let mut snapshots = containerd.snapshots();
    let stat = |key: &str| snapshots_api::StatSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: key.to_string(),
    };
    match containerd
        .snapshots()
        .stat(containerd.request(stat(job.chain_id)))
        .await
    {
        Ok(_) => return Ok((LayerOutcome::Present, 0)),
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => return Err(failed(format!("stat snapshot {}", job.chain_id))(status)),
    }
    let key = format!("extract-{} {}", unique_part(), job.chain_id);
    let prepared = snapshots
        .prepare(containerd.request(snapshots_api::PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent: job.parent.to_string(),
            labels: job.labels.clone(),
        }))
        .await;
    let mounts = match prepared {
        Ok(response) => response.into_inner().mounts,
        Err(status) if status.code() == Code::AlreadyExists => {
            // The snapshotter committed the layer under its chain id itself: a remote snapshot.
            containerd
                .snapshots()
                .stat(containerd.request(stat(job.chain_id)))
                .await
                .map_err(failed(format!(
                    "the snapshotter answered AlreadyExists but snapshot {} is not there",
                    job.chain_id
                )))?;
            return Ok((LayerOutcome::Remote, 0));
        }
        Err(status) => {
            return Err(failed(format!(
                "prepare snapshot {key:?} in snapshotter {snapshotter}"
            ))(status))
        }
    };
    let applied = apply_and_commit(containerd, snapshotter, &job, &key, mounts).await;
    if !matches!(applied, Ok((LayerOutcome::Unpacked, _))) {
        // Failed, or another client committed the chain id first: the extraction snapshot must not stay.
        let _ = snapshots
            .remove(containerd.request(snapshots_api::RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key,
            }))
            .await;
    }
    applied
}

/// The fallback for a layer the snapshotter cannot serve remotely, as containerd's unpacker does it.
async fn apply_and_commit(
    containerd: &Containerd,
    snapshotter: &str,
    job: &LayerJob<'_>,
    key: &str,
    mounts: Vec<ctypes::Mount>,
) -> anyhow::Result<(LayerOutcome, u64)> {
    let digest = job.layer.digest().to_string();
    let written = containerd
        .put_content(&digest, job.layer.size(), HashMap::new(), || async {
            job.registry
                .fetch_blob(job.reference, job.layer)
                .await
                .with_context(|| format!("fetch blob {digest}"))
        })
        .await?;
    let applied = api::diff_client::DiffClient::new(containerd.channel.clone())
        .apply(containerd.request(api::ApplyRequest {
            diff: Some(to_containerd(job.layer)),
            mounts,
            ..Default::default()
        }))
        .await
        .map_err(failed(format!("apply layer {digest}")))?
        .into_inner()
        .applied
        .context("containerd's diff service answered no descriptor")?;
    ensure!(
        applied.digest == job.diff_id.to_string(),
        "applying the layer gave diff id {} but the config says {}",
        applied.digest,
        job.diff_id
    );
    let committed = containerd
        .snapshots()
        .commit(containerd.request(snapshots_api::CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: job.chain_id.to_string(),
            key: key.to_string(),
            labels: job.labels.clone(),
        }))
        .await;
    match committed {
        Ok(_) => {}
        // Someone committed the same chain id meanwhile: theirs is as good (the caller removes ours).
        Err(status) if status.code() == Code::AlreadyExists => {
            return Ok((LayerOutcome::Present, 0));
        }
        Err(status) => return Err(failed(format!("commit snapshot {}", job.chain_id))(status)),
    }
    containerd
        .label_content(
            &digest,
            HashMap::from([("containerd.io/uncompressed".to_string(), applied.digest)]),
        )
        .await?;
    let fetched = if written { job.layer.size() } else { 0 };
    Ok((LayerOutcome::Unpacked, fetched))
}

/// Creates the image record, or points an existing one at `target`.
async fn put_image(containerd: &Containerd, name: &str, target: &Descriptor) -> anyhow::Result<()> {
    let image = api::Image {
        name: name.to_string(),
        target: Some(to_containerd(target)),
        ..Default::default()
    };
    let mut images = api::images_client::ImagesClient::new(containerd.channel.clone());
    let created = images
        .create(containerd.request(api::CreateImageRequest {
            image: Some(image.clone()),
            ..Default::default()
        }))
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::AlreadyExists => {
            images
                .update(containerd.request(api::UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".to_string()],
                    }),
                    ..Default::default()
                }))
                .await
                .map_err(failed(format!("update image {name}")))?;
            Ok(())
        }
        Err(status) => Err(failed(format!("create image {name}"))(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn layer(n: u8, annotations: &[(&str, &str)]) -> LayerDescriptor {
        LayerDescriptor {
            digest: digest(n).parse().unwrap(),
            size: 10,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn prepare_labels_carry_the_cri_labels_and_the_snapshot_annotations() {
        let layers = vec![
            layer(1, &[]),
            layer(
                2,
                &[
                    ("containerd.io/snapshot/stargz/toc.digest", "sha256:toc"),
                    ("org.opencontainers.image.title", "ignored"),
                ],
            ),
            layer(3, &[]),
        ];
        let chain = ChainId::next(None, &digest(7).parse().unwrap());
        let manifest: Digest = digest(9).parse().unwrap();
        let labels = prepare_labels("reg/app:1", manifest, &layers, 1, &chain);
        assert_eq!(labels["containerd.io/snapshot.ref"], chain.to_string());
        assert_eq!(labels["containerd.io/snapshot/cri.image-ref"], "reg/app:1");
        assert_eq!(
            labels["containerd.io/snapshot/cri.manifest-digest"],
            digest(9)
        );
        assert_eq!(labels["containerd.io/snapshot/cri.layer-digest"], digest(2));
        assert_eq!(
            labels["containerd.io/snapshot/cri.image-layers"],
            format!("{},{}", digest(2), digest(3))
        );
        assert_eq!(
            labels["containerd.io/snapshot/stargz/toc.digest"],
            "sha256:toc"
        );
        assert!(!labels.contains_key("org.opencontainers.image.title"));
    }

    #[test]
    fn diff_ids_are_read_and_checked() {
        let config =
            serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [digest(1), digest(2)]}});
        assert_eq!(
            diff_ids(config.to_string().as_bytes()).unwrap(),
            vec![
                digest(1).parse::<Digest>().unwrap(),
                digest(2).parse().unwrap()
            ]
        );
        assert!(diff_ids(br#"{"rootfs": {}}"#).is_err());
        assert!(diff_ids(br#"{"rootfs": {"diff_ids": ["md5:00"]}}"#).is_err());
        assert!(diff_ids(b"not json").is_err());
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_796_147_130);
        assert_eq!(rfc3339(t), "2026-12-01T17:45:30Z");
    }
}
