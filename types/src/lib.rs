//! skiff's shared vocabulary, parsed once at the edges and passed around typed:
//!
//! - [`Digest`]: a sha256 content digest (`sha256:<64 lowercase hex>`), the one digest type of every crate
//!   (blobs, manifests, diff ids, chunks);
//! - [`LayerDescriptor`]: a layer as its manifest lists it (digest, size, media type, annotations);
//! - [`ChainId`]: the identity of a stack of layers (OCI image spec), one function computes it;
//! - [`SnapshotKey`]: a snapshot's name, and the key scheme of skiff's own snapshots;
//! - [`RemoteLayer`]: which layer of which image containerd's remote-snapshot labels name, with the one
//!   codec both ends use ([`RemoteLayer::from_labels`] at skiffd's gRPC edge,
//!   [`RemoteLayer::to_labels`] in `skiff image rpull`).
//!
//! Plus [`error_chain`], how every edge shows an error with its sources.
//!
//! Pure types and functions: no IO, no async, nothing of registries, FUSE or containerd's API.

mod chain;
mod descriptor;
mod digest;
mod error_chain;
mod labels;
pub mod snapshot_key;

pub use chain::ChainId;
pub use descriptor::LayerDescriptor;
pub use digest::{Digest, DigestError};
pub use error_chain::error_chain;
pub use labels::{
    check_labels, is_inherited_annotation, shorten_for_error, LabelError, Labels, RemoteLayer,
    INHERITED_LABEL_PREFIX, LABEL_CRI_IMAGE_LAYERS, LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST,
    LABEL_CRI_MANIFEST_DIGEST, LABEL_STARGZ_DIGEST, LABEL_STARGZ_LAYERS, LABEL_STARGZ_REFERENCE,
    LABEL_TARGET_REF, MAX_LABEL_BYTES,
};
pub use snapshot_key::{SnapshotKey, SnapshotKeyError};
