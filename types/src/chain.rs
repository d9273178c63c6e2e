//! Chain ids (OCI image spec, "Layer ChainID"): the identity of a stack of layers, under which skiff and
//! containerd commit a layer's snapshot. The bottom layer's chain id is its diff id; each next one is
//! `sha256(parent chain id + " " + diff id)`, written `sha256:<hex>` like any digest.

use std::fmt;

use crate::Digest;

/// The chain id of a stack of layers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId(Digest);

impl ChainId {
    /// The chain id of `parent` (if any) with the layer whose diff id is `diff_id` on top.
    pub fn next(parent: Option<&ChainId>, diff_id: &Digest) -> ChainId {
        match parent {
            None => ChainId(*diff_id),
            Some(parent) => ChainId(Digest::of(format!("{} {diff_id}", parent.0).as_bytes())),
        }
    }

    /// The chain ids of every prefix of `diff_ids`, bottom layer first.
    pub fn chain(diff_ids: &[Digest]) -> Vec<ChainId> {
        let mut chain: Vec<ChainId> = Vec::with_capacity(diff_ids.len());
        for diff_id in diff_ids {
            let next = ChainId::next(chain.last(), diff_id);
            chain.push(next);
        }
        chain
    }

    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(s: &str) -> Digest {
        s.parse().unwrap()
    }

    const A: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const B: &str = "sha256:7f8d1a5b0b4bbd7b2cbb1e5e8f0b2b3e5f6c7d8e9fa0b1c2d3e4f5a6b7c8d9e0";

    #[test]
    fn bottom_layer_is_its_diff_id() {
        assert_eq!(ChainId::next(None, &digest(A)).to_string(), A);
    }

    #[test]
    fn upper_layers_hash_parent_space_diff_id() {
        let chain = ChainId::chain(&[digest(A), digest(B), digest(A)]);
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[0].to_string(), A);
        let expected = Digest::of(format!("{A} {B}").as_bytes()).to_string();
        assert_eq!(chain[1].to_string(), expected);
        let expected = Digest::of(format!("{expected} {A}").as_bytes()).to_string();
        assert_eq!(chain[2].to_string(), expected);
        assert_eq!(ChainId::chain(&[]), Vec::<ChainId>::new());
    }

    #[test]
    fn known_chains_computed_outside_this_code() {
        // `printf "%s %s" A B | sha256sum`.
        let chain = ChainId::chain(&[
            digest("sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            digest("sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
        ]);
        assert_eq!(
            chain[1].to_string(),
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
        let a = digest(&("sha256:a".to_string() + &"0".repeat(63)));
        let b = digest(&("sha256:b".to_string() + &"0".repeat(63)));
        assert_eq!(
            ChainId::chain(&[a, b])[1].to_string(),
            "sha256:73adce8fecb4776739b11dbd0e35a8007b6bca7af6ba22949cd8e7b15e5c19b6"
        );
    }
}
