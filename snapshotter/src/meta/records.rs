//! The typed records the metadata store keeps, serialized as JSON values.
//!
//! Maps default to empty when absent, so older records keep decoding when fields are added.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// containerd-style labels; sorted so records serialize deterministically.
pub type Labels = BTreeMap<String, String>;

/// A namespace (`default`, `k8s.io`, …) and its labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

/// An OCI descriptor as stored in an image record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorRecord {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: Labels,
}

impl From<&oci_spec::image::Descriptor> for DescriptorRecord {
    fn from(descriptor: &oci_spec::image::Descriptor) -> Self {
        DescriptorRecord {
            media_type: descriptor.media_type().to_string(),
            digest: descriptor.digest().to_string(),
            size: descriptor.size(),
            annotations: descriptor
                .annotations()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

impl From<&skiff_types::LayerDescriptor> for DescriptorRecord {
    fn from(layer: &skiff_types::LayerDescriptor) -> Self {
        DescriptorRecord {
            media_type: layer.media_type.clone(),
            digest: layer.digest.to_string(),
            size: layer.size,
            annotations: layer.annotations.clone(),
        }
    }
}

/// A named image in a namespace: a reference pointing at an index or manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub target: DescriptorRecord,
    #[serde(default)]
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A namespace's reference to a blob of the content store, with its labels (GC roots, distribution sources…).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRefRecord {
    pub digest: String,
    #[serde(default)]
    pub labels: Labels,
    pub created_at: SystemTime,
}

/// What a snapshot is: read-only view, writable active snapshot, or committed (immutable, a parent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    View,
    Active,
    Committed,
}

/// Disk usage of a snapshot's own directory: bytes allocated and inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub size: u64,
    pub inodes: u64,
}

/// A snapshot (snapshots.v1): its key, its directory id (`snapshots/{id}`), kind, parent key and labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub key: String,
    pub id: u64,
    pub kind: SnapshotKind,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// Stored at commit; active snapshots and views are measured when asked.
    #[serde(default)]
    pub usage: Option<UsageRecord>,
    /// Set for a committed snapshot whose `fs` is a remote (lazily read) layer: what to mount there again
    /// after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::snapshots::RemoteSnapshot>,
}

/// A container: metadata only (containerd's model); a running process is a task of the runtime layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The image name it was created from.
    pub image: String,
    /// Its writable rootfs: the key of an active snapshot.
    pub snapshot_key: String,
    /// The OCI runtime binary's name or path (`runc`, `crun`, …).
    pub runtime: String,
    /// The OCI runtime spec (`config.json`), as JSON.
    pub spec: serde_json::Value,
    #[serde(default)]
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn descriptor_from_oci() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let mut annotations = std::collections::HashMap::new();
        annotations.insert("k".to_owned(), "v".to_owned());
        let descriptor = oci_spec::image::DescriptorBuilder::default()
            .media_type(oci_spec::image::MediaType::ImageManifest)
            .digest(oci_spec::image::Digest::from_str(&digest).unwrap())
            .size(42u64)
            .annotations(annotations)
            .build()
            .unwrap();
        let record = DescriptorRecord::from(&descriptor);
        assert_eq!(
            record,
            DescriptorRecord {
                media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
                digest,
                size: 42,
                annotations: [("k".to_owned(), "v".to_owned())].into(),
            }
        );
    }

    #[test]
    fn missing_maps_decode_as_empty() {
        let record: NamespaceRecord = serde_json::from_str(r#"{"name":"default"}"#).unwrap();
        assert!(record.labels.is_empty());
    }
}
