//! [`LayerDescriptor`]: an image layer as a manifest lists it, with its digest checked once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Digest, DigestError};

/// A layer blob of an image: what a lazy mount needs to open it (the media type and annotations say its
/// format and pin its TOC) and what a full pull needs to fetch and verify it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDescriptor {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl LayerDescriptor {
    /// The same layer as oci-spec's descriptor.
    pub fn to_oci(&self) -> oci_spec::image::Descriptor {
        let mut descriptor = oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::from(self.media_type.as_str()),
            self.size,
            self.digest.to_oci(),
        );
        if !self.annotations.is_empty() {
            descriptor.set_annotations(Some(
                self.annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ));
        }
        descriptor
    }
}

impl TryFrom<&oci_spec::image::Descriptor> for LayerDescriptor {
    type Error = DigestError;

    /// Refused only for a digest skiff cannot verify.
    fn try_from(descriptor: &oci_spec::image::Descriptor) -> Result<Self, Self::Error> {
        Ok(LayerDescriptor {
            digest: Digest::try_from(descriptor.digest())?,
            size: descriptor.size(),
            media_type: descriptor.media_type().to_string(),
            annotations: descriptor
                .annotations()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_oci_spec() {
        let layer = LayerDescriptor {
            digest: Digest::of(b"layer"),
            size: 5,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            annotations: [("a".to_owned(), "b".to_owned())].into(),
        };
        assert_eq!(LayerDescriptor::try_from(&layer.to_oci()).unwrap(), layer);
        let bare = LayerDescriptor {
            annotations: BTreeMap::new(),
            ..layer
        };
        assert!(bare.to_oci().annotations().is_none());
        assert_eq!(LayerDescriptor::try_from(&bare.to_oci()).unwrap(), bare);
    }

    #[test]
    fn other_algorithms_are_refused() {
        let json = format!(
            r#"{{"mediaType":"x","size":1,"digest":"sha512:{}"}}"#,
            "ab".repeat(64)
        );
        let descriptor: oci_spec::image::Descriptor = serde_json::from_str(&json).unwrap();
        assert!(LayerDescriptor::try_from(&descriptor).is_err());
    }
}
