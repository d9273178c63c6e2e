//! Remote (lazy) layers: the containerd remote-snapshotter contract, seen from the snapshots side.
//!
//! containerd's unpacker calls `Prepare(key, parent, labels)` with `containerd.io/snapshot.ref` naming the
//! chain id the layer will be committed under, plus labels saying which layer of which image it is. The
//! gRPC handler parses them once into a [`RemoteLayer`]; [`Snapshotter::prepare_with`](super::Snapshotter::prepare_with)
//! asks [`RemoteLayers`] to mount the layer at the new snapshot's `fs` dir, commits it under the chain id
//! and answers `AlreadyExists`, so containerd neither downloads nor unpacks the blob.
//!
//! Two label families carry the layer: CRI's (`containerd.io/snapshot/cri.*`, also added by skiff's own
//! pull) and stargz-snapshotter's (`containerd.io/snapshot/remote/stargz.*`, added by `ctr-remote image
//! rpull`). Either is accepted; CRI's wins when both are present.
//!
//! This module knows no FUSE and no registry client: whatever serves the layers implements
//! [`RemoteLayers`] (the daemon wires the lazy filesystem in).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::meta::Labels;

/// The name the layer is committed under (containerd's chain id for an unpacked layer).
pub const LABEL_TARGET_REF: &str = "containerd.io/snapshot.ref";
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const LABEL_CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const LABEL_CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
pub const LABEL_STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
pub const LABEL_STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
pub const LABEL_STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
/// Labels containerd copies from the layer descriptor's annotations start with this.
pub const INHERITED_LABEL_PREFIX: &str = "containerd.io/snapshot/";

/// Which layer of which image a `Prepare` asks for, parsed once from its labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The chain id (`containerd.io/snapshot.ref`) the layer is committed under.
    pub target: String,
    /// The image reference the layer is pulled from (`registry/repo:tag` or `…@sha256:…`).
    pub image_ref: String,
    /// `sha256:…` of the layer blob.
    pub layer_digest: String,
    /// `sha256:…` of the image manifest listing the layer, when the client said.
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// Every layer digest of the image (a hint for prefetching), possibly empty.
    #[serde(default)]
    pub image_layers: Vec<String>,
    /// The layer descriptor's annotations containerd passed on (`containerd.io/snapshot/…`), e.g. the
    /// eStargz TOC digest.
    #[serde(default)]
    pub annotations: Labels,
    /// Reach the registry over plain HTTP (skiff's own `pull --plain-http`; containerd's labels never
    /// say so, a `hosts.toml` does).
    #[serde(default)]
    pub plain_http: bool,
}

impl RemoteLayer {
    /// The remote layer a `Prepare`'s labels name: `None` without `containerd.io/snapshot.ref` or without
    /// an image reference and layer digest (an ordinary prepare); `InvalidLabel` when a label is present
    /// but malformed.
    pub fn from_labels(labels: &Labels) -> Result<Option<RemoteLayer>, SnapshotError> {
        let Some(target) = labels.get(LABEL_TARGET_REF) else {
            return Ok(None);
        };
        let either = |cri: &'static str, stargz: &'static str| {
            labels
                .get(cri)
                .map(|v| (cri, v))
                .or_else(|| labels.get(stargz).map(|v| (stargz, v)))
        };
        let image_ref = either(LABEL_CRI_IMAGE_REF, LABEL_STARGZ_REFERENCE);
        let layer_digest = either(LABEL_CRI_LAYER_DIGEST, LABEL_STARGZ_DIGEST);
        let manifest_digest = labels.get(LABEL_CRI_MANIFEST_DIGEST);
        let image_layers = either(LABEL_CRI_IMAGE_LAYERS, LABEL_STARGZ_LAYERS);
        let (image_ref, layer_digest) = match (image_ref, layer_digest) {
            (None, None) => {
                if let Some(label) = [
                    manifest_digest.map(|_| LABEL_CRI_MANIFEST_DIGEST),
                    image_layers.map(|(label, _)| label),
                ]
                .into_iter()
                .flatten()
                .next()
                {
                    return Err(invalid(
                        label,
                        "layer labels need an image reference and a layer digest",
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(invalid(
                    LABEL_CRI_LAYER_DIGEST,
                    "an image reference needs a layer digest label",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    LABEL_CRI_IMAGE_REF,
                    "a layer digest needs an image reference label",
                ))
            }
            (Some(image_ref), Some(layer_digest)) => (image_ref, layer_digest),
        };
        if target.is_empty() {
            return Err(invalid(
                LABEL_TARGET_REF,
                "the target name must not be empty",
            ));
        }
        let (label, value) = image_ref;
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                label,
                "not an image reference (empty or with white space)",
            ));
        }
        let image_ref = value.clone();
        let (label, value) = layer_digest;
        check_digest(label, value)?;
        let layer_digest = value.clone();
        if let Some(value) = manifest_digest {
            check_digest(LABEL_CRI_MANIFEST_DIGEST, value)?;
        }
        let image_layers = match image_layers {
            None => Vec::new(),
            Some((label, value)) => value
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| check_digest(label, d).map(|()| d.to_owned()))
                .collect::<Result<_, _>>()?,
        };
        let annotations = labels
            .iter()
            .filter(|(key, _)| {
                key.starts_with(INHERITED_LABEL_PREFIX)
                    && !key.starts_with("containerd.io/snapshot/cri.")
                    && !key.starts_with("containerd.io/snapshot/remote/")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Some(RemoteLayer {
            target: target.clone(),
            image_ref,
            layer_digest,
            manifest_digest: manifest_digest.cloned(),
            image_layers,
            annotations,
            plain_http: false,
        }))
    }
}

fn invalid(label: &str, reason: &'static str) -> SnapshotError {
    SnapshotError::InvalidLabel {
        label: label.to_owned(),
        reason,
    }
}

/// `sha256:` and 64 lowercase hex digits.
fn check_digest(label: &str, value: &str) -> Result<(), SnapshotError> {
    let ok = value.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            label,
            "not a sha256 digest (sha256:<64 hex digits>)",
        ))
    }
}

/// Why a remote layer could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The layer has no lazy format (no eStargz or zstd:chunked TOC): containerd unpacks it.
    #[error("layer {digest} is not lazily readable: {reason}")]
    NotLazy { digest: String, reason: String },
    #[error("no remote layer is mounted at {}", mountpoint.display())]
    NotMounted { mountpoint: std::path::PathBuf },
    #[error("mounting layer {digest} of {image_ref}")]
    Mount {
        digest: String,
        image_ref: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("unmounting {}", mountpoint.display())]
    Unmount {
        mountpoint: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Whatever serves layers lazily (skiffd: the FUSE lazy filesystem). The methods block (network, mount
/// syscalls); the snapshotter calls them from the blocking pool.
pub trait RemoteLayers: Send + Sync {
    /// Mounts `layer` read-only at `mountpoint` (an empty directory), or says [`RemoteError::NotLazy`].
    fn mount(&self, layer: &RemoteLayer, mountpoint: &Path) -> Result<(), RemoteError>;
    /// Unmounts what [`RemoteLayers::mount`] mounted at `mountpoint`; [`RemoteError::NotMounted`] if
    /// nothing is.
    fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteError>;
    /// What the layer mounted at `mountpoint` has fetched so far; `None` when nothing is mounted there.
    fn stats(&self, mountpoint: &Path) -> Option<RemoteLayerStats> {
        let _ = mountpoint;
        None
    }
}

/// How much of a remote layer has been read from the registry, and by whom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteLayerStats {
    /// Compressed bytes fetched (on demand, prefetch and background).
    pub bytes_fetched: u64,
    /// Range requests made.
    pub requests: u64,
    /// Bytes of all the layer's files, uncompressed.
    pub file_bytes: u64,
    /// The part of `bytes_fetched` that prefetch and background fetching brought in.
    pub background_bytes: u64,
    /// Uncompressed bytes the layer returned to readers (reads of passthrough opens bypass it).
    pub bytes_read: u64,
    /// Distinct chunks in the layer's TOC.
    pub chunks_total: u64,
    /// Of those, the chunks in the chunk cache now.
    pub chunks_cached: u64,
    /// Chunks fetched although the cache held them already when they arrived (goal: 0).
    pub duplicate_fetches: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_target_or_no_layer_labels_is_an_ordinary_prepare() {
        assert_eq!(RemoteLayer::from_labels(&labels(&[])).unwrap(), None);
        assert_eq!(
            RemoteLayer::from_labels(&labels(&[(LABEL_CRI_IMAGE_REF, "r/x:1")])).unwrap(),
            None
        );
        assert_eq!(
            RemoteLayer::from_labels(&labels(&[(LABEL_TARGET_REF, "chain")])).unwrap(),
            None
        );
    }

    #[test]
    fn stargz_labels_are_accepted() {
        let layer = RemoteLayer::from_labels(&labels(&[
            (LABEL_TARGET_REF, "chain"),
            (LABEL_STARGZ_REFERENCE, "127.0.0.1:5000/x:1"),
            (LABEL_STARGZ_DIGEST, D1),
            (LABEL_STARGZ_LAYERS, &format!("{D1},{D2}")),
            ("containerd.io/snapshot/stargz/toc.digest", D2),
            ("other", "x"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(layer.image_ref, "127.0.0.1:5000/x:1");
        assert_eq!(layer.layer_digest, D1);
        assert_eq!(layer.manifest_digest, None);
        assert_eq!(layer.image_layers, [D1, D2]);
        assert_eq!(
            layer.annotations,
            labels(&[("containerd.io/snapshot/stargz/toc.digest", D2)])
        );
    }

    #[test]
    fn malformed_labels_are_invalid() {
        let cases = [
            vec![(LABEL_CRI_IMAGE_REF, "r/x:1")],
            vec![(LABEL_CRI_LAYER_DIGEST, D1)],
            vec![
                (LABEL_CRI_IMAGE_REF, "r/x:1"),
                (LABEL_CRI_LAYER_DIGEST, "sha256:zz"),
            ],
            vec![(LABEL_CRI_IMAGE_REF, "r x"), (LABEL_CRI_LAYER_DIGEST, D1)],
            vec![
                (LABEL_CRI_IMAGE_REF, "r/x:1"),
                (LABEL_CRI_LAYER_DIGEST, D1),
                (LABEL_CRI_MANIFEST_DIGEST, "md5:1"),
            ],
            vec![
                (LABEL_CRI_IMAGE_REF, "r/x:1"),
                (LABEL_CRI_LAYER_DIGEST, D1),
                (LABEL_CRI_IMAGE_LAYERS, "sha256:1,"),
            ],
            vec![(LABEL_CRI_MANIFEST_DIGEST, D1)],
        ];
        for case in cases {
            let mut pairs = vec![(LABEL_TARGET_REF, "chain")];
            pairs.extend(case.iter().copied());
            let result = RemoteLayer::from_labels(&labels(&pairs));
            assert!(
                matches!(result, Err(SnapshotError::InvalidLabel { .. })),
                "{case:?}: {result:?}"
            );
        }
    }
}
