//! skiff's gRPC protocol (`skiff.v1`), containerd's snapshots.v1 protocol (`containerd`), and what skiffd
//! and the `skiff` CLI both need to speak them over a unix socket (the key scheme of skiff's own
//! snapshots is `skiff_types::snapshot_key`). This crate is deliberately small: the CLI links it and
//! nothing of the daemon (no RocksDB, no FUSE, no registry client).

pub mod v1 {
    //! Generated messages, clients and servers of `proto/skiff/v1/skiff.proto`.
    tonic::include_proto!("skiff.v1");
}

pub mod containerd {
    //! containerd's own protocol, generated from `proto/containerd/**`: the same packages, messages and
    //! field numbers as containerd 1.6, so containerd talks to skiffd as to any proxy snapshotter.

    pub mod types {
        //! `containerd.types`: `Mount`.
        tonic::include_proto!("containerd.types");
    }

    pub mod services {
        //! `containerd.services.*`.
        pub mod snapshots {
            //! `containerd.services.snapshots.*`.
            pub mod v1 {
                //! `containerd.services.snapshots.v1`: the `Snapshots` service (containerd's snapshots API).
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }

    pub use services::snapshots;
}

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where skiffd listens unless told otherwise.
pub const DEFAULT_ADDRESS: &str = "/run/skiff/skiffd.sock";

/// The namespace used when a client names none, as in containerd.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Opens a gRPC channel to a server on the unix socket `path`.
///
/// The connection is made eagerly so a missing or dead daemon is reported here, naming the socket.
pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, ConnectError> {
    let path: PathBuf = path.as_ref().to_path_buf();
    let socket = path.clone();
    // The URI is required by tonic but unused: every connection goes to the socket.
    Endpoint::from_static("http://skiffd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| ConnectError { path, source })
}

/// The daemon could not be reached on its socket.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to skiffd at {}: {}", path.display(), error_chain(source))]
pub struct ConnectError {
    pub path: PathBuf,
    #[source]
    pub source: tonic::transport::Error,
}

pub use skiff_types::error_chain;
