//! [`SnapshotKey`]: the name of a snapshot, and the key scheme of skiff's own snapshots on skiffd's
//! `snapshots.v1` service.
//!
//! snapshots.v1 has one global key space: containerd, a client of the same socket, puts its own namespace
//! into its keys (`NAMESPACE/NUMBER/…`). skiff's snapshots take two forms that never meet those:
//!
//! * `skiff.image/<chain id>` ([`SnapshotKey::image_layer`]): the committed layer snapshots of images
//!   pulled with `skiff image pull`, shared by every namespace (an image in two namespaces uses the same
//!   layers);
//! * `skiff.ns/<namespace>/<key>` ([`SnapshotKey::namespaced`]): everything a user or a container of a
//!   namespace makes (a container's rootfs is keyed by the container id).
//!
//! [`SnapshotKey::visible_in`] maps a stored key back to what a namespace shows.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ChainId;

/// Key prefix of the committed layer snapshots of skiff's own images: `skiff.image/` + chain id.
pub const IMAGE_PREFIX: &str = "skiff.image/";

/// Key prefix of the snapshots of a namespace: `skiff.ns/` + namespace + `/` + key.
pub const NAMESPACE_PREFIX: &str = "skiff.ns/";

/// A snapshot's key: not empty and without NUL (the metadata store's separator), as containerd allows.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotKey(String);

/// A string that cannot name a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot key {key:?}: {reason}")]
pub struct SnapshotKeyError {
    pub key: String,
    pub reason: &'static str,
}

impl SnapshotKey {
    /// Checks `key` against the rules of every snapshot key.
    pub fn new(key: impl Into<String>) -> Result<Self, SnapshotKeyError> {
        let key = key.into();
        let reason = if key.is_empty() {
            "must not be empty"
        } else if key.contains('\0') {
            "must not contain NUL"
        } else {
            return Ok(SnapshotKey(key));
        };
        Err(SnapshotKeyError {
            key: key.chars().take(256).collect(),
            reason,
        })
    }

    /// The committed snapshot of a layer stack of skiff's own images: `skiff.image/<chain id>`.
    pub fn image_layer(chain: &ChainId) -> Self {
        SnapshotKey(format!("{IMAGE_PREFIX}{chain}"))
    }

    /// The stored key of `key` in `namespace`: `skiff.ns/{namespace}/{key}`. `namespace` must not contain
    /// `/` (containerd's namespace names never do), or two namespaces could share keys.
    pub fn namespaced(namespace: &str, key: &str) -> Result<Self, SnapshotKeyError> {
        let invalid = |reason| SnapshotKeyError {
            key: key.chars().take(256).collect(),
            reason,
        };
        if namespace.is_empty() || namespace.contains('/') {
            return Err(invalid("its namespace must not be empty or contain '/'"));
        }
        if key.is_empty() {
            return Err(invalid("must not be empty"));
        }
        SnapshotKey::new(format!("{NAMESPACE_PREFIX}{namespace}/{key}"))
    }

    /// Whether this is the layer snapshot of a pulled image (`skiff.image/…`).
    pub fn is_image_layer(&self) -> bool {
        self.0.starts_with(IMAGE_PREFIX)
    }

    /// What `namespace` shows of this stored key: the key relative to the namespace for its own
    /// snapshots, image layer snapshots unchanged, and `None` for anything else (other namespaces'
    /// snapshots, containerd's keys).
    pub fn visible_in(&self, namespace: &str) -> Option<String> {
        visible_key(namespace, &self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// [`SnapshotKey::visible_in`] for a stored key as the service lists it.
pub fn visible_key(namespace: &str, full_key: &str) -> Option<String> {
    if full_key.starts_with(IMAGE_PREFIX) {
        return Some(full_key.to_string());
    }
    let key = full_key
        .strip_prefix(NAMESPACE_PREFIX)?
        .strip_prefix(namespace)?
        .strip_prefix('/')?;
    Some(key.to_string())
}

impl TryFrom<String> for SnapshotKey {
    type Error = SnapshotKeyError;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        SnapshotKey::new(key)
    }
}

impl From<SnapshotKey> for String {
    fn from(key: SnapshotKey) -> String {
        key.0
    }
}

impl AsRef<str> for SnapshotKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotKey({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaced(namespace: &str, key: &str) -> SnapshotKey {
        SnapshotKey::namespaced(namespace, key).unwrap()
    }

    #[test]
    fn keys_are_checked() {
        assert!(SnapshotKey::new("a/1/sha256:x").is_ok());
        assert!(SnapshotKey::new("").is_err());
        assert!(SnapshotKey::new("a\0b").is_err());
        assert!(SnapshotKey::namespaced("", "x").is_err());
        assert!(SnapshotKey::namespaced("a/b", "x").is_err());
        assert!(SnapshotKey::namespaced("a", "").is_err());
        let json = serde_json::to_string(&namespaced("a", "x")).unwrap();
        assert_eq!(json, "\"skiff.ns/a/x\"");
        assert!(serde_json::from_str::<SnapshotKey>("\"\"").is_err());
    }

    #[test]
    fn namespaced_keys_round_trip() {
        let full = namespaced("default", "my-snapshot");
        assert_eq!(full.as_str(), "skiff.ns/default/my-snapshot");
        assert_eq!(full.visible_in("default").as_deref(), Some("my-snapshot"));
        // Keys may contain slashes of their own.
        let full = namespaced("default", "a/b/c");
        assert_eq!(full.visible_in("default").as_deref(), Some("a/b/c"));
    }

    #[test]
    fn image_layers_are_visible_in_every_namespace_as_they_are() {
        let chain = ChainId::next(None, &crate::Digest::of(b"layer"));
        let layer = SnapshotKey::image_layer(&chain);
        assert_eq!(layer.as_str(), format!("{IMAGE_PREFIX}{chain}"));
        assert!(layer.is_image_layer());
        for namespace in ["default", "a", "k8s.io"] {
            assert_eq!(layer.visible_in(namespace).as_deref(), Some(layer.as_str()));
        }
    }

    #[test]
    fn other_namespaces_and_containerd_keys_are_hidden() {
        assert_eq!(namespaced("a", "x").visible_in("b"), None);
        assert_eq!(visible_key("default", "default/1/sha256:abc"), None);
        assert_eq!(visible_key("default", "skiff.unpack/1"), None);
        assert_eq!(visible_key("default", "skiff.ns/default"), None);
        assert_eq!(visible_key("default", ""), None);
    }

    #[test]
    fn namespaces_that_are_prefixes_of_each_other_stay_apart() {
        let in_a = namespaced("a", "x");
        let in_ab = namespaced("a.b", "x");
        assert_ne!(in_a, in_ab);
        assert_eq!(in_a.visible_in("a").as_deref(), Some("x"));
        assert_eq!(in_ab.visible_in("a"), None);
        assert_eq!(in_ab.visible_in("a.b").as_deref(), Some("x"));
        assert_eq!(in_a.visible_in("a.b"), None);
        // A key that itself looks like a namespace stays inside its own namespace.
        let tricky = namespaced("a", "b/x");
        assert_eq!(tricky.visible_in("a").as_deref(), Some("b/x"));
        assert_eq!(tricky.visible_in("a.b"), None);
    }
}
