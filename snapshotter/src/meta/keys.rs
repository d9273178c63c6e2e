//! Key encoding for the metadata keyspace, and validation of the names that go into keys.
//!
//! Layout (`\0` is a NUL byte, which no namespace, image name or digest may contain, so every prefix below
//! ends at a component boundary and namespace `a` never sees the keys of namespace `a.b`):
//!
//! ```text
//! v1\0ns\0{namespace}                          -> NamespaceRecord
//! v1\0nsdata\0{namespace}\0images\0{name}      -> ImageRecord      (names may contain '/', ':', '@')
//! v1\0nsdata\0{namespace}\0content\0{digest}   -> ContentRefRecord
//! v1\0nsdata\0{namespace}\0containers\0{id}   -> ContainerRecord
//! v1\0nsdata\0{namespace}\0{kind}\0{id}        -> later kinds (leases…)
//! ```
//!
//! Everything a namespace owns lives under `v1\0nsdata\0{namespace}\0`, so "is this namespace empty" is one
//! prefix probe, and the `{kind}` component names what was found. `v1` versions the whole layout.
//!
//! Snapshots of the snapshots.v1 API are not namespaced by the request (containerd's metadata layer puts the
//! namespace into the key itself), so they have their own top-level keyspace. Snapshot keys are any non-empty
//! string without NUL (they may contain `/` and be absolute paths):
//!
//! ```text
//! v1\0snap\0rec\0{key}                 -> SnapshotRecord
//! v1\0snap\0child\0{parent}\0{child}    -> empty (parent -> children index)
//! v1\0snap\0nextid                     -> the next snapshot id, decimal
//! ```

use super::{Labels, MetaError};

/// Prefix of every namespace record.
pub(crate) const NAMESPACES: &[u8] = b"v1\0ns\0";
/// Prefix of every per-namespace record.
const NAMESPACE_DATA: &[u8] = b"v1\0nsdata\0";
/// Separator between key components.
const SEP: u8 = 0;

/// The `{kind}` component of image records.
pub(crate) const IMAGES: &str = "images";
/// The `{kind}` component of content references.
pub(crate) const CONTENT: &str = "content";
/// The `{kind}` component of container records.
pub(crate) const CONTAINERS: &str = "containers";

/// Prefix of every snapshot record.
pub(crate) const SNAPSHOTS: &[u8] = b"v1\0snap\0rec\0";
/// Prefix of the parent -> children index.
const SNAPSHOT_CHILDREN: &[u8] = b"v1\0snap\0child\0";
/// The snapshot id counter.
pub(crate) const SNAPSHOT_NEXT_ID: &[u8] = b"v1\0snap\0nextid";

/// Longest namespace name containerd accepts.
pub const MAX_NAMESPACE_LEN: usize = 76;

/// `v1\0ns\0{namespace}`
pub(crate) fn namespace(namespace: &str) -> Vec<u8> {
    let mut key = NAMESPACES.to_vec();
    key.extend_from_slice(namespace.as_bytes());
    key
}

/// `v1\0nsdata\0{namespace}\0`: everything the namespace owns.
pub(crate) fn namespace_data(namespace: &str) -> Vec<u8> {
    let mut key = NAMESPACE_DATA.to_vec();
    key.extend_from_slice(namespace.as_bytes());
    key.push(SEP);
    key
}

/// `v1\0nsdata\0{namespace}\0{kind}\0`: every record of one kind in the namespace.
pub(crate) fn kind_prefix(namespace: &str, kind: &str) -> Vec<u8> {
    let mut key = namespace_data(namespace);
    key.extend_from_slice(kind.as_bytes());
    key.push(SEP);
    key
}

/// `v1\0nsdata\0{namespace}\0{kind}\0{id}`
pub(crate) fn record(namespace: &str, kind: &str, id: &str) -> Vec<u8> {
    let mut key = kind_prefix(namespace, kind);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The `{kind}` component of a key found under [`namespace_data`]`(namespace)`.
pub(crate) fn kind_of(namespace: &str, key: &[u8]) -> String {
    let rest = key
        .strip_prefix(namespace_data(namespace).as_slice())
        .unwrap_or(key);
    let kind = rest.split(|b| *b == SEP).next().unwrap_or_default();
    String::from_utf8_lossy(kind).into_owned()
}

/// `v1\0snap\0rec\0{key}`
pub(crate) fn snapshot(key: &str) -> Vec<u8> {
    let mut out = SNAPSHOTS.to_vec();
    out.extend_from_slice(key.as_bytes());
    out
}

/// `v1\0snap\0child\0{parent}\0`: every child of `parent`.
pub(crate) fn snapshot_children(parent: &str) -> Vec<u8> {
    let mut out = SNAPSHOT_CHILDREN.to_vec();
    out.extend_from_slice(parent.as_bytes());
    out.push(SEP);
    out
}

/// `v1\0snap\0child\0{parent}\0{child}`
pub(crate) fn snapshot_child(parent: &str, child: &str) -> Vec<u8> {
    let mut out = snapshot_children(parent);
    out.extend_from_slice(child.as_bytes());
    out
}

/// Snapshot keys: non-empty, no NUL (the key separator).
pub fn validate_snapshot_key(key: &str) -> Result<(), MetaError> {
    skiff_types::SnapshotKey::new(key)
        .map(drop)
        .map_err(|err| MetaError::InvalidSnapshotKey {
            key: skiff_types::shorten_for_error(key),
            reason: err.reason,
        })
}

/// containerd's rule: `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`, at most 76 characters.
pub fn validate_namespace(name: &str) -> Result<(), MetaError> {
    let invalid = |reason| MetaError::InvalidNamespace {
        name: skiff_types::shorten_for_error(name),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_NAMESPACE_LEN {
        return Err(invalid("must be at most 76 characters"));
    }
    let mut previous_was_separator = true; // so a leading separator is refused
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            previous_was_separator = false;
        } else if matches!(c, '.' | '_' | '-') && !previous_was_separator {
            previous_was_separator = true;
        } else {
            return Err(invalid(
                "must be letters and digits joined by single '.', '_' or '-'",
            ));
        }
    }
    if previous_was_separator {
        return Err(invalid("must end with a letter or digit"));
    }
    Ok(())
}

/// Image names are references (`docker.io/library/busybox:latest`): non-empty, no NUL, no control characters.
pub fn validate_image_name(name: &str) -> Result<(), MetaError> {
    let invalid = |reason| MetaError::InvalidImageName {
        name: skiff_types::shorten_for_error(name),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(())
}

/// Longest container id containerd accepts.
pub const MAX_CONTAINER_ID_LEN: usize = 76;

/// Container ids follow containerd's identifier rule: ASCII letters and digits, with single `.`, `_` or `-`
/// between them, at most 76 characters (they become directory, cgroup and runc state names).
pub fn validate_container_id(id: &str) -> Result<(), MetaError> {
    let invalid = |reason| MetaError::InvalidContainerId {
        id: skiff_types::shorten_for_error(id),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if id.len() > MAX_CONTAINER_ID_LEN {
        return Err(invalid("longer than 76 characters"));
    }
    let mut previous_separator = true;
    for c in id.chars() {
        let separator = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || separator) {
            return Err(invalid(
                "only ASCII letters, digits, '.', '_' and '-' are allowed",
            ));
        }
        if separator && previous_separator {
            return Err(invalid(
                "must start with a letter or digit and have no two separators in a row",
            ));
        }
        previous_separator = separator;
    }
    if previous_separator {
        return Err(invalid("must end with a letter or digit"));
    }
    Ok(())
}

/// Digests are stored in their canonical form, `sha256:<64 lowercase hex>` (skiff's [`Digest`]).
///
/// [`Digest`]: skiff_types::Digest
pub fn validate_digest(digest: &str) -> Result<(), MetaError> {
    digest
        .parse::<skiff_types::Digest>()
        .map(drop)
        .map_err(|e| MetaError::InvalidDigest {
            digest: digest.to_owned(),
            reason: e.reason.to_owned(),
        })
}

/// Labels follow containerd's rules on every record that has them (namespaces, images, content
/// references, containers): a non-empty key, key and value together at most 4096 bytes.
pub fn validate_labels(labels: &Labels) -> Result<(), MetaError> {
    skiff_types::check_labels(labels)
        .map_err(|(label, reason)| MetaError::InvalidLabel { label, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_follow_containerds_rule() {
        for ok in ["a", "web-1", "a.b_c-d", "A9", &"x".repeat(76)] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "a/b",
            "a b",
            "..",
            "é",
            &"x".repeat(77),
        ] {
            assert!(
                matches!(
                    validate_container_id(bad),
                    Err(MetaError::InvalidContainerId { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn snapshot_keys_are_separate_and_unambiguous() {
        assert_eq!(snapshot("/tmp/a/b"), b"v1\0snap\0rec\0/tmp/a/b".to_vec());
        assert_eq!(
            snapshot_child("p", "c/d"),
            b"v1\0snap\0child\0p\0c/d".to_vec()
        );
        // Children of `a` never include children of `a/b` or `ab`.
        assert!(!snapshot_child("ab", "x").starts_with(&snapshot_children("a")));
        assert!(!snapshot_child("a/b", "x").starts_with(&snapshot_children("a")));
        assert!(snapshot_child("a", "x").starts_with(&snapshot_children("a")));
        // Nothing in the snapshot keyspace is under a namespace prefix, nor the reverse.
        assert!(!snapshot("x").starts_with(NAMESPACES));
        assert!(!snapshot("x").starts_with(NAMESPACE_DATA));
        assert!(!SNAPSHOT_NEXT_ID.starts_with(SNAPSHOTS));
        assert!(validate_snapshot_key("/abs/path with space").is_ok());
        assert!(validate_snapshot_key("").is_err());
        assert!(validate_snapshot_key("a\0b").is_err());
    }

    #[test]
    fn namespace_names_follow_containerd() {
        for ok in ["default", "k8s.io", "a", "A-b_c.d9", &"x".repeat(76)] {
            assert!(validate_namespace(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a-.b",
            "a/b",
            "a b",
            "a\0b",
            "é",
            &"x".repeat(77),
        ] {
            assert!(
                matches!(
                    validate_namespace(bad),
                    Err(MetaError::InvalidNamespace { .. })
                ),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn image_names_and_digests() {
        assert!(validate_image_name("docker.io/library/busybox:1.36@sha256:abc").is_ok());
        assert!(validate_image_name("").is_err());
        assert!(validate_image_name("a\0b").is_err());
        assert!(validate_digest(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert!(validate_digest("sha256:short").is_err());
        assert!(validate_digest("nope").is_err());
    }

    #[test]
    fn prefixes_stop_at_component_boundaries() {
        let a = namespace_data("a");
        assert!(!record("a.b", IMAGES, "x").starts_with(&a));
        assert!(!namespace("a.b").starts_with(&namespace_data("a")));
        assert!(record("a", IMAGES, "x").starts_with(&a));
        assert!(!record("a", IMAGES, "x").starts_with(&kind_prefix("a", CONTENT)));
        // Namespace records and namespace data never share a prefix.
        assert!(!namespace_data("a").starts_with(NAMESPACES));
        assert_eq!(kind_of("a", &record("a", CONTENT, "sha256:00")), CONTENT);
        assert_eq!(kind_of("a", &record("a", "containers", "c1")), "containers");
    }
}
