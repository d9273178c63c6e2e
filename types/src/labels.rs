//! The containerd remote-snapshot labels, as one typed value and one codec.
//!
//! containerd's unpacker (and CRI) calls `Prepare(key, parent, labels)` with `containerd.io/snapshot.ref`
//! naming what the layer will be committed under, plus labels saying which layer of which image it is. Two
//! label families carry the layer: CRI's (`containerd.io/snapshot/cri.*`, also written by `skiff image
//! rpull`) and stargz-snapshotter's (`containerd.io/snapshot/remote/stargz.*`, written by `ctr-remote image
//! rpull`). [`RemoteLayer::from_labels`] accepts either (CRI's wins when both are present);
//! [`RemoteLayer::to_labels`] writes CRI's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Labels of a snapshot, container, image or namespace.
pub type Labels = BTreeMap<String, String>;

/// The name the layer is committed under.
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
/// containerd's limit on a label's key and value together.
pub const MAX_LABEL_BYTES: usize = 4096;

/// Checks labels by containerd's rules (a non-empty key; key and value together at most
/// [`MAX_LABEL_BYTES`]); every record skiffd keeps labels on follows them. The first bad label is named
/// (shortened for an error message) with what is wrong with it.
pub fn check_labels(labels: &Labels) -> Result<(), (String, &'static str)> {
    for (key, value) in labels {
        let problem = if key.is_empty() {
            "the key must not be empty"
        } else if key.len() + value.len() > MAX_LABEL_BYTES {
            "key and value together exceed 4096 bytes"
        } else {
            continue;
        };
        return Err((shorten_for_error(key), problem));
    }
    Ok(())
}

/// A name, key or path from a request as an error message shows it: at most 100 characters (a 4 KB or
/// 3 MB value would bury the message).
pub fn shorten_for_error(text: &str) -> String {
    const SHOWN: usize = 100;
    if text.chars().count() <= SHOWN {
        text.to_owned()
    } else {
        let bytes = text.len();
        format!(
            "{}… ({bytes} bytes)",
            text.chars().take(SHOWN).collect::<String>()
        )
    }
}

const CRI_PREFIX: &str = "containerd.io/snapshot/cri.";
const REMOTE_PREFIX: &str = "containerd.io/snapshot/remote/";

/// A remote-snapshot label that is present but malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid label {label:?}: {reason}")]
pub struct LabelError {
    pub label: String,
    pub reason: &'static str,
}

fn invalid(label: &str, reason: &'static str) -> LabelError {
    LabelError {
        label: label.to_owned(),
        reason,
    }
}

/// Which layer of which image a `Prepare` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The snapshot name (`containerd.io/snapshot.ref`) the layer is committed under.
    pub target: String,
    /// The image reference the layer is pulled from (`registry/repo:tag` or `…@sha256:…`).
    pub image_ref: String,
    /// The layer blob.
    pub layer_digest: Digest,
    /// The image manifest listing the layer, when the client said.
    #[serde(default)]
    pub manifest_digest: Option<Digest>,
    /// Layers of the image (a hint for prefetching; `rpull` sends this one and those above it, as CRI
    /// does), possibly empty.
    #[serde(default)]
    pub image_layers: Vec<Digest>,
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
    /// an image reference and layer digest (an ordinary prepare); an error when a label is present but
    /// malformed.
    pub fn from_labels(labels: &Labels) -> Result<Option<RemoteLayer>, LabelError> {
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
                let stray = manifest_digest
                    .map(|_| LABEL_CRI_MANIFEST_DIGEST)
                    .or(image_layers.map(|(label, _)| label));
                return match stray {
                    Some(label) => Err(invalid(
                        label,
                        "layer labels need an image reference and a layer digest",
                    )),
                    None => Ok(None),
                };
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
        let layer_digest = parse_digest(label, value)?;
        let manifest_digest = manifest_digest
            .map(|value| parse_digest(LABEL_CRI_MANIFEST_DIGEST, value))
            .transpose()?;
        let image_layers = match image_layers {
            None => Vec::new(),
            Some((label, value)) => value
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| parse_digest(label, d))
                .collect::<Result<_, _>>()?,
        };
        let annotations = labels
            .iter()
            .filter(|(key, _)| is_inherited_annotation(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Some(RemoteLayer {
            target: target.clone(),
            image_ref,
            layer_digest,
            manifest_digest,
            image_layers,
            annotations,
            plain_http: false,
        }))
    }

    /// The labels that ask a remote snapshotter for this layer (CRI's family), as `skiff image rpull`
    /// sends them: the inherited annotations, the target, and `cri.image-layers` cut to as many layers
    /// as fit in one containerd label.
    pub fn to_labels(&self) -> Labels {
        let mut labels: Labels = self
            .annotations
            .iter()
            .filter(|(key, _)| is_inherited_annotation(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_TARGET_REF.into(), self.target.clone());
        labels.insert(LABEL_CRI_IMAGE_REF.into(), self.image_ref.clone());
        if let Some(manifest) = &self.manifest_digest {
            labels.insert(LABEL_CRI_MANIFEST_DIGEST.into(), manifest.to_string());
        }
        labels.insert(LABEL_CRI_LAYER_DIGEST.into(), self.layer_digest.to_string());
        let mut layers = String::new();
        for layer in &self.image_layers {
            let item = layer.to_string();
            let comma = usize::from(!layers.is_empty());
            if LABEL_CRI_IMAGE_LAYERS.len() + layers.len() + comma + item.len() > MAX_LABEL_BYTES {
                break;
            }
            if comma == 1 {
                layers.push(',');
            }
            layers.push_str(&item);
        }
        labels.insert(LABEL_CRI_IMAGE_LAYERS.into(), layers);
        labels
    }
}

/// A descriptor annotation containerd passes on as a label (`containerd.io/snapshot/…`), not one of the
/// remote-snapshot labels themselves.
pub fn is_inherited_annotation(key: &str) -> bool {
    key.starts_with(INHERITED_LABEL_PREFIX)
        && !key.starts_with(CRI_PREFIX)
        && !key.starts_with(REMOTE_PREFIX)
}

fn parse_digest(label: &str, value: &str) -> Result<Digest, LabelError> {
    value
        .parse()
        .map_err(|_| invalid(label, "not a sha256 digest (sha256:<64 hex digits>)"))
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

    fn digest(s: &str) -> Digest {
        s.parse().unwrap()
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
        assert_eq!(layer.layer_digest, digest(D1));
        assert_eq!(layer.manifest_digest, None);
        assert_eq!(layer.image_layers, [digest(D1), digest(D2)]);
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
            assert!(result.is_err(), "{case:?}: {result:?}");
        }
    }

    fn layer(n: u8) -> Digest {
        digest(&format!("sha256:{}", format!("{n:02x}").repeat(32)))
    }

    #[test]
    fn to_labels_carries_the_cri_labels_and_the_snapshot_annotations() {
        let remote = RemoteLayer {
            target: "sha256:chain".into(),
            image_ref: "reg/app:1".into(),
            layer_digest: layer(2),
            manifest_digest: Some(layer(9)),
            image_layers: vec![layer(2), layer(3)],
            annotations: labels(&[
                ("containerd.io/snapshot/stargz/toc.digest", "sha256:toc"),
                ("org.opencontainers.image.title", "ignored"),
            ]),
            plain_http: false,
        };
        let labels = remote.to_labels();
        assert_eq!(labels[LABEL_TARGET_REF], "sha256:chain");
        assert_eq!(labels[LABEL_CRI_IMAGE_REF], "reg/app:1");
        assert_eq!(labels[LABEL_CRI_MANIFEST_DIGEST], layer(9).to_string());
        assert_eq!(labels[LABEL_CRI_LAYER_DIGEST], layer(2).to_string());
        assert_eq!(
            labels[LABEL_CRI_IMAGE_LAYERS],
            format!("{},{}", layer(2), layer(3))
        );
        assert_eq!(
            labels["containerd.io/snapshot/stargz/toc.digest"],
            "sha256:toc"
        );
        assert!(!labels.contains_key("org.opencontainers.image.title"));
        // What one end writes, the other reads back.
        let read = RemoteLayer::from_labels(&labels).unwrap().unwrap();
        assert_eq!(
            read,
            RemoteLayer {
                annotations: labels
                    .iter()
                    .filter(|(k, _)| k.contains("stargz/toc"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ..remote
            }
        );
    }

    #[test]
    fn image_layers_stay_within_containerds_label_limit() {
        let remote = RemoteLayer {
            target: "t".into(),
            image_ref: "r/x:1".into(),
            layer_digest: layer(0),
            manifest_digest: None,
            image_layers: (0..100).map(layer).collect(),
            annotations: Labels::new(),
            plain_http: false,
        };
        let value = &remote.to_labels()[LABEL_CRI_IMAGE_LAYERS];
        assert!(LABEL_CRI_IMAGE_LAYERS.len() + value.len() <= MAX_LABEL_BYTES);
        let listed: Vec<&str> = value.split(',').collect();
        assert!(listed.len() > 10 && listed.len() < 100, "{}", listed.len());
        assert_eq!(listed[0], layer(0).to_string());
    }

    #[test]
    fn records_of_the_string_form_still_read() {
        let json = format!(
            r#"{{"target":"t","image_ref":"r/x:1","layer_digest":"{D1}","manifest_digest":"{D2}","image_layers":["{D1}"],"annotations":{{}},"plain_http":true}}"#
        );
        let layer: RemoteLayer = serde_json::from_str(&json).unwrap();
        assert_eq!(layer.layer_digest, digest(D1));
        assert_eq!(layer.manifest_digest, Some(digest(D2)));
        assert!(layer.plain_http);
        assert_eq!(serde_json::to_string(&layer).unwrap(), json);
    }
}
