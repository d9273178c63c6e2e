//! Containers (containerd's model): metadata only — the image, a writable snapshot of its rootfs, the OCI
//! runtime spec skiffd generated for it, the runtime that will run it, labels. Running it is a task's job.
//!
//! `create` checks the request, prepares the container's snapshot (`skiff.ns/{namespace}/{id}`, an active
//! snapshot on the image's top layer snapshot), mounts it on a temporary directory just long enough for the
//! spec generator to resolve the user in the image's `/etc/passwd` and `/etc/group`, and writes the record.
//! Anything that fails on the way leaves nothing behind. `delete` removes the snapshot, then the record.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use oci_spec::image::ImageConfiguration;
use skiff_runtime::options::{self, OptionError};
use skiff_runtime::spec::{self, SpecError, SpecOptions};
use skiff_types::snapshot_key::NAMESPACE_PREFIX;
use tracing::{debug, warn};

use crate::images::{ImageError, Images};
use skiff_snapshotter::content::{ContentError, ContentStore, Digest};
use skiff_snapshotter::meta::{
    validate_container_id, ContainerRecord, Labels, MetaError, MetaStore,
};
use skiff_snapshotter::snapshots::{unmount_and_remove, Mount, SnapshotError, Snapshotter};

/// The runtime a container gets when the request names none.
pub const DEFAULT_RUNTIME: &str = "runc";

/// The key of a container's rootfs snapshot: `skiff.ns/{namespace}/{id}` (the key `skiff snapshot` shows as
/// `{id}` in that namespace).
pub fn container_snapshot_key(namespace: &str, id: &str) -> String {
    format!("{NAMESPACE_PREFIX}{namespace}/{id}")
}

/// Failures of container operations; [`crate::grpc::status`] maps them to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A flag's value does not parse (`--memory`, `--mount`, …).
    #[error("{flag}: {source}")]
    InvalidOption {
        flag: &'static str,
        #[source]
        source: OptionError,
    },
    #[error("invalid {field}: {reason}")]
    InvalidRequest {
        field: &'static str,
        reason: &'static str,
    },
    #[error("runtime spec of container {id}")]
    Spec {
        id: String,
        #[source]
        source: SpecError,
    },
    #[error("image {image} has no rootfs snapshot; pull it again")]
    ImageNotUnpacked { image: String },
    #[error("image config {digest} is not valid JSON")]
    ImageConfig {
        digest: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("{action} {}", path.display())]
    Mount {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a `create` asks for, with the flags still as the user typed them.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub id: String,
    pub image: String,
    pub runtime: String,
    pub labels: Labels,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub hostname: String,
    pub mounts: Vec<String>,
    pub memory: String,
    pub cpus: String,
    pub pids_limit: i64,
    pub read_only: bool,
    pub tty: bool,
    pub hooks: Vec<String>,
}

impl CreateRequest {
    /// The spec generator's options; every flag parsed, errors naming the flag.
    fn spec_options(&self, namespace: &str) -> Result<SpecOptions, ContainerError> {
        fn parsed<T>(
            flag: &'static str,
            value: &str,
            parse: fn(&str) -> Result<T, OptionError>,
        ) -> Result<T, ContainerError> {
            parse(value).map_err(|source| ContainerError::InvalidOption { flag, source })
        }
        let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
        if self.pids_limit < 0 {
            return Err(ContainerError::InvalidRequest {
                field: "--pids-limit",
                reason: "must not be negative",
            });
        }
        Ok(SpecOptions {
            id: self.id.clone(),
            args: self.args.clone(),
            env: self
                .env
                .iter()
                .map(|e| parsed("--env", e, options::parse_env))
                .collect::<Result<_, _>>()?,
            user: non_empty(&self.user)
                .map(|u| parsed("--user", &u, options::parse_user))
                .transpose()?,
            hostname: non_empty(&self.hostname),
            tty: self.tty,
            read_only: self.read_only,
            mounts: self
                .mounts
                .iter()
                .map(|m| parsed("--mount", m, options::parse_mount))
                .collect::<Result<_, _>>()?,
            memory_limit: non_empty(&self.memory)
                .map(|m| parsed("--memory", &m, options::parse_memory))
                .transpose()?,
            cpus: non_empty(&self.cpus)
                .map(|c| parsed("--cpus", &c, options::parse_cpus))
                .transpose()?,
            pids_limit: (self.pids_limit > 0).then_some(self.pids_limit),
            cgroups_path: Some(format!("/skiff/{namespace}/{}", self.id)),
            hooks: self
                .hooks
                .iter()
                .map(|h| parsed("--hook", h, options::parse_hook))
                .collect::<Result<_, _>>()?,
            ..SpecOptions::default()
        })
    }
}

/// The containers of every namespace.
#[derive(Clone)]
pub struct Containers {
    meta: MetaStore,
    content: ContentStore,
    images: Images,
    snapshotter: Snapshotter,
    /// Where rootfs snapshots are mounted while a spec is generated.
    scratch: PathBuf,
}

impl Containers {
    pub fn new(
        meta: MetaStore,
        content: ContentStore,
        images: Images,
        snapshotter: Snapshotter,
        scratch: PathBuf,
    ) -> Self {
        Containers {
            meta,
            content,
            images,
            snapshotter,
            scratch,
        }
    }

    /// Creates a container of a pulled image (see the module docs).
    pub async fn create(
        &self,
        namespace: &str,
        request: CreateRequest,
    ) -> Result<ContainerRecord, ContainerError> {
        validate_container_id(&request.id)?;
        if request.image.is_empty() {
            return Err(ContainerError::InvalidRequest {
                field: "image",
                reason: "must not be empty",
            });
        }
        let spec_options = request.spec_options(namespace)?;
        if self.meta.get_container(namespace, &request.id)?.is_some() {
            return Err(MetaError::RecordExists {
                kind: skiff_snapshotter::meta::RecordKind::Container,
                namespace: namespace.to_owned(),
                name: request.id.clone(),
            }
            .into());
        }
        let detail = self.images.detail(namespace, &request.image).await?;
        let parent = detail
            .snapshot
            .clone()
            .ok_or_else(|| ContainerError::ImageNotUnpacked {
                image: request.image.clone(),
            })?;
        let config_digest: Digest =
            detail
                .config
                .digest
                .parse()
                .map_err(|_| ContainerError::InvalidRequest {
                    field: "image config digest",
                    reason: "not a digest",
                })?;
        let config_bytes = self.content.read_all(&config_digest).await?;
        let config =
            ImageConfiguration::from_reader(config_bytes.as_slice()).map_err(|source| {
                ContainerError::ImageConfig {
                    digest: detail.config.digest.clone(),
                    source,
                }
            })?;

        let key = container_snapshot_key(namespace, &request.id);
        let labels = Labels::from([(
            "containerd.io/snapshot/skiff.container".to_owned(),
            format!("{namespace}/{}", request.id),
        )]);
        let (snapshotter, k, p) = (self.snapshotter.clone(), key.clone(), parent.clone());
        let mounts = tokio::task::spawn_blocking(move || snapshotter.prepare(&k, Some(&p), labels))
            .await??;
        let (scratch, id) = (self.scratch.clone(), request.id.clone());
        let generated = tokio::task::spawn_blocking(move || {
            with_mounted(&scratch, &mounts, |rootfs| {
                spec::generate(&config, rootfs, &spec_options)
                    .map_err(|source| ContainerError::Spec { id, source })
            })
        })
        .await
        .map_err(ContainerError::from)
        .and_then(|result| result);
        let record = generated.and_then(|mut spec| {
            if let Some(mut root) = spec.root().clone() {
                root.set_path(PathBuf::from("rootfs"));
                spec.set_root(Some(root));
            }
            let now = SystemTime::now();
            Ok(ContainerRecord {
                id: request.id.clone(),
                image: request.image.clone(),
                snapshot_key: key.clone(),
                runtime: if request.runtime.is_empty() {
                    DEFAULT_RUNTIME.to_owned()
                } else {
                    request.runtime.clone()
                },
                spec: serde_json::to_value(&spec).map_err(|_| ContainerError::InvalidRequest {
                    field: "spec",
                    reason: "does not serialize",
                })?,
                labels: request.labels.clone(),
                created_at: now,
                updated_at: now,
            })
        });
        let stored = record.and_then(|record| {
            self.meta.create_container(namespace, &record)?;
            Ok(record)
        });
        if stored.is_err() {
            let snapshotter = self.snapshotter.clone();
            let removed = tokio::task::spawn_blocking(move || snapshotter.remove(&key)).await;
            if let Ok(Err(err)) = removed {
                warn!(error = %skiff_types::error_chain(&err), "cannot remove the snapshot of a failed create");
            }
        }
        let record = stored?;
        debug!(namespace, id = %record.id, image = %record.image, "container created");
        Ok(record)
    }

    pub fn get(&self, namespace: &str, id: &str) -> Result<ContainerRecord, ContainerError> {
        self.meta
            .get_container(namespace, id)?
            .ok_or_else(|| not_found(namespace, id))
    }

    pub fn list(&self, namespace: &str) -> Result<Vec<ContainerRecord>, ContainerError> {
        Ok(self.meta.list_containers(namespace)?)
    }

    pub fn set_labels(
        &self,
        namespace: &str,
        id: &str,
        labels: Labels,
    ) -> Result<ContainerRecord, ContainerError> {
        Ok(self
            .meta
            .set_container_labels(namespace, id, labels, SystemTime::now())?)
    }

    /// Removes the container's snapshot, then its record.
    pub async fn delete(&self, namespace: &str, id: &str) -> Result<(), ContainerError> {
        let record = self.get(namespace, id)?;
        let snapshotter = self.snapshotter.clone();
        let key = record.snapshot_key.clone();
        match tokio::task::spawn_blocking(move || snapshotter.remove(&key)).await? {
            Ok(()) | Err(SnapshotError::NotFound { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        self.meta.delete_container(namespace, id)?;
        debug!(namespace, id, "container deleted");
        Ok(())
    }
}

fn not_found(namespace: &str, id: &str) -> ContainerError {
    MetaError::NotFound {
        kind: skiff_snapshotter::meta::RecordKind::Container,
        namespace: namespace.to_owned(),
        name: id.to_owned(),
    }
    .into()
}

/// Mounts `mounts` on a fresh directory under `scratch`, runs `f` on it, unmounts and removes it whatever
/// `f` returned.
fn with_mounted<T>(
    scratch: &Path,
    mounts: &[Mount],
    f: impl FnOnce(&Path) -> Result<T, ContainerError>,
) -> Result<T, ContainerError> {
    std::fs::create_dir_all(scratch).map_err(|source| ContainerError::Io {
        action: "create",
        path: scratch.to_path_buf(),
        source,
    })?;
    // Not a TempDir: its recursive removal must never run over a rootfs that is still mounted.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let target = scratch.join(format!(
        "rootfs-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let [mount] = mounts else {
        return Err(ContainerError::InvalidRequest {
            field: "snapshot mounts",
            reason: "expected exactly one mount",
        });
    };
    std::fs::create_dir(&target).map_err(|source| ContainerError::Io {
        action: "create the mount point",
        path: target.clone(),
        source,
    })?;
    if let Err(source) = mount.mount_at(&target) {
        let _ = std::fs::remove_dir(&target);
        return Err(ContainerError::Mount {
            action: "mount the rootfs at",
            path: target,
            source,
        });
    }
    let result = f(&target);
    if let Err(err) = unmount_and_remove(&target) {
        warn!(path = %target.display(), error = %err, "cannot unmount and remove a scratch rootfs");
    }
    result
}
