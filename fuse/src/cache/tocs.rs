//! The TOC cache: the bytes a layer's TOC was read from (the footer and the TOC region), kept on disk per
//! layer once the TOC checked out, so a restarted daemon opens a layer it served before — and takes its
//! mount over — without the registry. Entries are `DIR/HEX/START-END` files (the layer digest's hex, the
//! blob range), written atomically. Nothing here is trusted more than the registry: the bytes go through
//! the same TOC checks (the manifest's TOC digest among them), and a layer whose cached TOC fails them is
//! dropped from the cache and read from the registry again.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use skiff_types::Digest;
use tracing::warn;

/// Cached TOC reads, by layer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TocCache {
    dir: PathBuf,
}

impl TocCache {
    /// The cache in `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<TocCache> {
        std::fs::create_dir_all(dir)?;
        Ok(TocCache {
            dir: dir.to_path_buf(),
        })
    }

    fn layer_dir(&self, layer: &Digest) -> PathBuf {
        self.dir.join(layer.hex())
    }

    fn path(&self, layer: &Digest, range: &Range<u64>) -> PathBuf {
        self.layer_dir(layer)
            .join(format!("{}-{}", range.start, range.end))
    }

    /// The bytes of `range` of `layer`'s blob, if a checked TOC read left them here.
    pub fn get(&self, layer: &Digest, range: &Range<u64>) -> Option<Bytes> {
        let bytes = std::fs::read(self.path(layer, range)).ok()?;
        (bytes.len() as u64 == range.end - range.start).then(|| Bytes::from(bytes))
    }

    /// Keeps the reads a checked TOC was made of. Failures are logged: the cache only saves a fetch.
    pub fn put(&self, layer: &Digest, reads: &[(Range<u64>, Bytes)]) {
        let dir = self.layer_dir(layer);
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            for (range, bytes) in reads {
                let path = self.path(layer, range);
                if path.exists() {
                    continue;
                }
                let temp = dir.join(format!(".tmp-{}-{}", std::process::id(), range.start));
                std::fs::write(&temp, bytes)?;
                std::fs::rename(&temp, &path)?;
            }
            Ok(())
        });
        if let Err(err) = written {
            warn!(layer = %layer, error = %err, "cannot keep the layer's TOC on disk");
        }
    }

    /// Forgets everything kept for `layer`.
    pub fn remove(&self, layer: &Digest) {
        match std::fs::remove_dir_all(self.layer_dir(layer)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => warn!(layer = %layer, error = %err, "cannot remove the layer's cached TOC"),
        }
    }

    /// Whether anything is kept for `layer`.
    pub fn holds(&self, layer: &Digest) -> bool {
        self.layer_dir(layer).is_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_reads_per_layer_and_range_and_forgets_a_layer() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TocCache::open(dir.path()).unwrap();
        let layer = Digest::of(b"layer");
        let other = Digest::of(b"other");
        cache.put(
            &layer,
            &[
                (10..14, Bytes::from_static(b"abcd")),
                (0..2, Bytes::from_static(b"xy")),
            ],
        );
        assert_eq!(cache.get(&layer, &(10..14)).unwrap(), &b"abcd"[..]);
        assert_eq!(cache.get(&layer, &(0..2)).unwrap(), &b"xy"[..]);
        assert!(cache.get(&layer, &(10..13)).is_none());
        assert!(cache.get(&other, &(10..14)).is_none());
        assert!(cache.holds(&layer) && !cache.holds(&other));
        // A file of the wrong length (a torn write by hand, say) is not served.
        std::fs::write(cache.path(&layer, &(20..30)), b"short").unwrap();
        assert!(cache.get(&layer, &(20..30)).is_none());
        cache.remove(&layer);
        assert!(cache.get(&layer, &(10..14)).is_none());
        assert!(!cache.holds(&layer));
        cache.remove(&layer);
    }
}
