//! The key scheme of skiff's own snapshots on skiffd's `snapshots.v1` service.
//!
//! snapshots.v1 has one global key space: containerd, a client of the same socket, puts its own namespace
//! into its keys (`NAMESPACE/NUMBER/…`). skiff's snapshots take two forms that never meet those:
//!
//! * `skiff.image/<chain id>`: the committed layer snapshots of images pulled with `skiff image pull`,
//!   shared by every namespace (an image in two namespaces uses the same layers);
//! * `skiff.ns/<namespace>/<key>`: everything a user or a container of a namespace makes (a container's
//!   rootfs is `namespaced(ns, container_id)`).
//!
//! [`namespaced`] builds the second form and [`visible_key`] maps a stored key back to what a namespace
//! shows. Pure string functions, no IO.

/// Key prefix of the committed layer snapshots of skiff's own images: `skiff.image/` + chain id.
pub const IMAGE_PREFIX: &str = "skiff.image/";

/// Key prefix of the snapshots of a namespace: `skiff.ns/` + namespace + `/` + key.
pub const NAMESPACE_PREFIX: &str = "skiff.ns/";

/// The stored key of `key` in `namespace`: `skiff.ns/{namespace}/{key}`.
///
/// `namespace` must not contain `/` (containerd's namespace names never do), or two namespaces could
/// share keys.
pub fn namespaced(namespace: &str, key: &str) -> String {
    format!("{NAMESPACE_PREFIX}{namespace}/{key}")
}

/// What `namespace` shows of the stored key `full_key`: the key relative to the namespace for its own
/// snapshots, image layer snapshots (`skiff.image/…`) unchanged, and `None` for anything else (other
/// namespaces' snapshots, containerd's keys).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_keys_round_trip() {
        let full = namespaced("default", "my-snapshot");
        assert_eq!(full, "skiff.ns/default/my-snapshot");
        assert_eq!(
            visible_key("default", &full).as_deref(),
            Some("my-snapshot")
        );
        // Keys may contain slashes of their own.
        let full = namespaced("default", "a/b/c");
        assert_eq!(visible_key("default", &full).as_deref(), Some("a/b/c"));
    }

    #[test]
    fn image_layers_are_visible_in_every_namespace_as_they_are() {
        let layer = format!("{IMAGE_PREFIX}sha256:{}", "ab".repeat(32));
        for namespace in ["default", "a", "k8s.io"] {
            assert_eq!(
                visible_key(namespace, &layer).as_deref(),
                Some(layer.as_str())
            );
        }
    }

    #[test]
    fn other_namespaces_and_containerd_keys_are_hidden() {
        assert_eq!(visible_key("b", &namespaced("a", "x")), None);
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
        assert_eq!(visible_key("a", &in_a).as_deref(), Some("x"));
        assert_eq!(visible_key("a", &in_ab), None);
        assert_eq!(visible_key("a.b", &in_ab).as_deref(), Some("x"));
        assert_eq!(visible_key("a.b", &in_a), None);
        // A key that itself looks like a namespace stays inside its own namespace.
        let tricky = namespaced("a", "b/x");
        assert_eq!(visible_key("a", &tricky).as_deref(), Some("b/x"));
        assert_eq!(visible_key("a.b", &tricky), None);
    }
}
