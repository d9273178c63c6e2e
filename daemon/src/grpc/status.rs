//! The one place an error becomes a gRPC [`Status`], with the codes containerd and its clients rely on
//! (`NotFound`, `AlreadyExists`, `FailedPrecondition`, `InvalidArgument`, …). Every match is exhaustive: a
//! new error variant does not compile until someone decides its code here.
//!
//! The errors of other crates convert through [`ToStatus`] (`.or_status()?` in a handler); the daemon's own
//! errors also convert with `?` (`From<…> for Status`, which delegates here).

use skiff_registry::RegistryError;
use skiff_runtime::shim::{FailureKind, ShimError};
use skiff_snapshotter::content::ContentError;
use skiff_snapshotter::meta::MetaError;
use skiff_snapshotter::snapshots::SnapshotError;
use skiff_snapshotter::unpack::UnpackError;
use skiff_types::error_chain;
use tonic::Status;

use crate::containers::ContainerError;
use crate::images::ImageError;
use crate::tasks::TaskFailure;

/// An error that has a gRPC code.
pub trait ToStatus {
    fn to_status(self) -> Status;
}

/// `.or_status()` on a `Result` whose error has a gRPC code.
pub trait StatusExt<T> {
    fn or_status(self) -> Result<T, Status>;
}

impl<T, E: ToStatus> StatusExt<T> for Result<T, E> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(ToStatus::to_status)
    }
}

impl ToStatus for ContentError {
    fn to_status(self) -> Status {
        let message = error_chain(&self);
        match self {
            ContentError::NotFound { .. } => Status::not_found(message),
            ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. } => {
                Status::data_loss(message)
            }
            ContentError::Io { .. } => Status::internal(message),
        }
    }
}

impl ToStatus for MetaError {
    fn to_status(self) -> Status {
        let message = error_chain(&self);
        match self {
            MetaError::NotFound { .. } => Status::not_found(message),
            MetaError::AlreadyExists { .. } | MetaError::RecordExists { .. } => {
                Status::already_exists(message)
            }
            MetaError::NamespaceNotEmpty { .. } => Status::failed_precondition(message),
            MetaError::InvalidNamespace { .. }
            | MetaError::InvalidImageName { .. }
            | MetaError::InvalidDigest { .. }
            | MetaError::InvalidSnapshotKey { .. }
            | MetaError::InvalidContainerId { .. }
            | MetaError::InvalidLabel { .. } => Status::invalid_argument(message),
            MetaError::Corrupt { .. }
            | MetaError::Encode { .. }
            | MetaError::Db { .. }
            | MetaError::Io { .. } => Status::internal(message),
        }
    }
}

impl ToStatus for RegistryError {
    fn to_status(self) -> Status {
        let message = error_chain(&self);
        match self {
            RegistryError::InvalidReference { .. } => Status::invalid_argument(message),
            RegistryError::NotFound { .. } => Status::not_found(message),
            RegistryError::Unauthorized { .. } => Status::unauthenticated(message),
            RegistryError::Forbidden { .. } => Status::permission_denied(message),
            RegistryError::DigestMismatch { .. } => Status::data_loss(message),
            RegistryError::UnsupportedMediaType { .. }
            | RegistryError::ManifestTooLarge { .. }
            | RegistryError::InvalidManifest { .. } => Status::failed_precondition(message),
            // Whatever else went wrong on the way to the registry: worth trying again later.
            RegistryError::InvalidPlatform { .. }
            | RegistryError::UnsupportedDigest { .. }
            | RegistryError::Status { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::Truncated { .. }
            | RegistryError::ConfigTooLarge { .. }
            | RegistryError::PlatformNotFound { .. }
            | RegistryError::InvalidRange { .. }
            | RegistryError::RangeNotHonoured { .. }
            | RegistryError::InvalidResponse { .. }
            | RegistryError::TooManyRedirects { .. }
            | RegistryError::Connect { .. }
            | RegistryError::Timeout { .. }
            | RegistryError::Transport { .. }
            | RegistryError::Token { .. }
            | RegistryError::HostsConfig { .. }
            | RegistryError::DockerConfig { .. }
            | RegistryError::Client { .. }
            | RegistryError::NoHosts { .. } => Status::unavailable(message),
        }
    }
}

impl ToStatus for SnapshotError {
    fn to_status(self) -> Status {
        let message = error_chain(&self);
        match self {
            SnapshotError::NotFound { .. } | SnapshotError::ParentNotFound { .. } => {
                Status::not_found(message)
            }
            SnapshotError::AlreadyExists { .. } => Status::already_exists(message),
            SnapshotError::NotActive { .. } | SnapshotError::HasChildren { .. } => {
                Status::failed_precondition(message)
            }
            SnapshotError::ParentNotCommitted { .. }
            | SnapshotError::InvalidLabel { .. }
            | SnapshotError::ImmutableField { .. }
            | SnapshotError::InvalidFilter(_) => Status::invalid_argument(message),
            SnapshotError::Meta(err) => err.to_status(),
            SnapshotError::Unpack(err) => unpack_status(err, message),
            SnapshotError::Io { .. } => Status::internal(message),
        }
    }
}

fn unpack_status(err: UnpackError, message: String) -> Status {
    match err {
        UnpackError::DigestMismatch { .. }
        | UnpackError::DiffIdMismatch { .. }
        | UnpackError::Decompress { .. }
        | UnpackError::Tar { .. } => Status::data_loss(message),
        UnpackError::UnsupportedMediaType { .. }
        | UnpackError::UnsafePath { .. }
        | UnpackError::UnsupportedEntry { .. }
        | UnpackError::InvalidEntry { .. } => Status::invalid_argument(message),
        UnpackError::Read { .. } | UnpackError::Write { .. } => Status::internal(message),
    }
}

impl ToStatus for ImageError {
    fn to_status(self) -> Status {
        match self {
            ImageError::Registry(err) => err.to_status(),
            ImageError::Content(err) => err.to_status(),
            ImageError::Meta(err) => err.to_status(),
            ImageError::Snapshot(err) => err.to_status(),
            ImageError::NotFound { .. } => Status::not_found(error_chain(&self)),
            ImageError::InvalidBlob { .. }
            | ImageError::NoPlatformManifest { .. }
            | ImageError::LayerCountMismatch { .. } => {
                Status::failed_precondition(error_chain(&self))
            }
            ImageError::Task(err) => Status::internal(format!("pull task failed: {err}")),
            ImageError::Cancelled => Status::unavailable(error_chain(&self)),
        }
    }
}

impl ToStatus for ContainerError {
    fn to_status(self) -> Status {
        let message = error_chain(&self);
        match self {
            ContainerError::Meta(err) => err.to_status(),
            ContainerError::Image(err) => err.to_status(),
            ContainerError::Content(err) => err.to_status(),
            ContainerError::Snapshot(err) => err.to_status(),
            ContainerError::InvalidOption { .. }
            | ContainerError::InvalidRequest { .. }
            | ContainerError::Spec { .. } => Status::invalid_argument(message),
            ContainerError::ImageNotUnpacked { .. } | ContainerError::ImageConfig { .. } => {
                Status::failed_precondition(message)
            }
            ContainerError::Mount { .. } | ContainerError::Io { .. } | ContainerError::Task(_) => {
                Status::internal(message)
            }
        }
    }
}

impl ToStatus for TaskFailure {
    fn to_status(self) -> Status {
        let message = error_chain(&self);
        match self {
            TaskFailure::Container(err) => err.to_status(),
            TaskFailure::Meta(err) => err.to_status(),
            TaskFailure::NotFound { .. } => Status::not_found(message),
            TaskFailure::AlreadyExists { .. } => Status::already_exists(message),
            TaskFailure::Invalid { .. } | TaskFailure::Task(_) => Status::invalid_argument(message),
            TaskFailure::Shim(shim) => shim_status(&shim, message),
            TaskFailure::Io { .. } | TaskFailure::Mount { .. } | TaskFailure::Join(_) => {
                Status::internal(message)
            }
        }
    }
}

/// A shim's own failure kind when it answered with one, else what the client-side error means.
fn shim_status(shim: &ShimError, message: String) -> Status {
    match shim.failure_kind() {
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
            ShimError::Task(_)
            | ShimError::NoShimBinary { .. }
            | ShimError::Spawn { .. }
            | ShimError::Connection { .. }
            | ShimError::UnexpectedReply { .. }
            | ShimError::Refused(_) => Status::internal(message),
        },
    }
}

/// The daemon's own errors also convert with `?`.
macro_rules! status_from {
    ($($error:ty),*) => {$(
        impl From<$error> for Status {
            fn from(err: $error) -> Status {
                err.to_status()
            }
        }
    )*};
}

status_from!(ImageError, ContainerError, TaskFailure);
