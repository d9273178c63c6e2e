//! Chain ids (OCI image spec, "Layer ChainID"): the identity of a stack of layers, under which skiff and
//! containerd commit a layer's snapshot. `chain(L0) = diffid(L0)`, `chain(L0..Ln) = sha256(chain(L0..Ln-1)
//! + " " + diffid(Ln))`, as the text `sha256:<hex>`.

use sha2::{Digest as _, Sha256};

/// The chain id of a stack of layers (`sha256:<64 hex>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId(String);

impl ChainId {
    /// The chain id of `parent` (if any) with the layer `diff_id` on top.
    pub fn next(parent: Option<&ChainId>, diff_id: &str) -> ChainId {
        match parent {
            None => ChainId(diff_id.to_owned()),
            Some(parent) => {
                let digest = Sha256::digest(format!("{} {diff_id}", parent.0));
                ChainId(format!("sha256:{}", hex::encode(digest)))
            }
        }
    }

    /// The chain ids of every prefix of `diff_ids`, bottom layer first.
    pub fn chain<S: AsRef<str>>(diff_ids: &[S]) -> Vec<ChainId> {
        let mut chain: Vec<ChainId> = Vec::with_capacity(diff_ids.len());
        for diff_id in diff_ids {
            let next = ChainId::next(chain.last(), diff_id.as_ref());
            chain.push(next);
        }
        chain
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ChainId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const B: &str = "sha256:7f8d1a5b0b4bbd7b2cbb1e5e8f0b2b3e5f6c7d8e9fa0b1c2d3e4f5a6b7c8d9e0";

    #[test]
    fn bottom_layer_is_its_diff_id() {
        assert_eq!(ChainId::next(None, A).as_str(), A);
    }

    #[test]
    fn upper_layers_hash_parent_space_diff_id() {
        let chain = ChainId::chain(&[A, B, A]);
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[0].as_str(), A);
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{A} {B}").as_bytes()))
        );
        assert_eq!(chain[1].as_str(), expected);
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{expected} {A}").as_bytes()))
        );
        assert_eq!(chain[2].as_str(), expected);
        assert_eq!(ChainId::chain::<&str>(&[]), Vec::<ChainId>::new());
    }

    #[test]
    fn known_chain_of_the_oci_spec_shape() {
        // Computed independently: `printf "%s %s" A B | sha256sum`.
        let chain = ChainId::chain(&[
            "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        ]);
        assert_eq!(
            chain[1].as_str(),
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
    }
}
