//! Opening a lazy layer: its footer and TOC read through the layer's [`BlobSource`] (two or three Range
//! requests), the format told by the descriptor's annotations (zstd:chunked names its TOC's position;
//! otherwise an eStargz footer is looked for), and the TOC checked against the digest the manifest pins.
//! A blob with no lazy format is [`OpenError::NotLazy`], which its user unpacks the ordinary way.
//!
//! A fault on the way (a failed or short Range read, a flipped byte that breaks the footer, the TOC's
//! compression or its pinned digest) is tried again like a chunk read ([`find_toc_retrying`], up to the
//! fetch config's `attempts`): one transient fault must not turn a lazy layer into a full download.

use std::time::Duration;

use skiff_types::{error_chain, Digest, LayerDescriptor};
use tracing::warn;

use super::{LayerConfig, LayerFormat, OpenError};
use crate::cache::TocCache;
use crate::fetch::{BlobSource, FetchError, TocBudget, TocPermit};
use crate::format::chunk::Compression;
use crate::format::toc::{self, Limits, Toc};
use crate::format::{estargz, zstd_chunked, FormatError};

/// Whether the descriptor's annotations announce a lazy format (an eStargz TOC digest or a zstd:chunked
/// manifest position): such a layer with no footer is a fault, not a plain layer.
pub fn announces_lazy_format(descriptor: &LayerDescriptor) -> bool {
    [
        estargz::TOC_DIGEST_ANNOTATION,
        zstd_chunked::MANIFEST_POSITION_ANNOTATION,
        zstd_chunked::LEGACY_MANIFEST_POSITION_ANNOTATION,
    ]
    .iter()
    .any(|key| descriptor.annotations.contains_key(*key))
}

/// [`find_toc`], tried again after what may be a transient fault, up to `config.fetch.attempts` times in
/// all, with a short backoff. A layer that is plainly not lazy (no footer, no annotation saying it has
/// one) or whose manifest pins no TOC digest is not tried again.
pub(super) async fn find_toc_retrying(
    source: &dyn BlobSource,
    descriptor: &LayerDescriptor,
    limits: &Limits,
    config: &LayerConfig,
    budget: &TocBudget,
    tocs: Option<&TocCache>,
) -> Result<FoundToc, OpenError> {
    let attempts = config.fetch.attempts.max(1);
    let mut attempt = 1;
    loop {
        let result = find_toc(source, descriptor, limits, config, budget, tocs).await;
        if let (Err(err), Some(tocs)) = (&result, tocs) {
            if tocs.holds(&descriptor.digest) {
                // What was kept may be what failed: read the registry instead, without counting an attempt
                // (a failed read keeps nothing, so this happens once).
                warn!(layer = %descriptor.digest, error = %error_chain(err), "the kept TOC did not check out; reading it again");
                tocs.remove(&descriptor.digest);
                continue;
            }
        }
        match result {
            Err(err) if attempt < attempts && may_be_transient(&err, descriptor) => {
                warn!(layer = %descriptor.digest, attempt, error = %error_chain(&err), "reading the TOC failed; trying again");
                tokio::time::sleep(Duration::from_millis(50 << (attempt - 1).min(4))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn may_be_transient(err: &OpenError, descriptor: &LayerDescriptor) -> bool {
    match err {
        OpenError::Fetch { .. }
        | OpenError::Format { .. }
        | OpenError::TocOutOfBounds { .. }
        | OpenError::TocDigestMismatch { .. } => true,
        OpenError::NotLazy { .. } => announces_lazy_format(descriptor),
        OpenError::TocDigestMissing { .. } | OpenError::TocBudget { .. } => false,
    }
}

/// Finds the layer's TOC and checks it against the manifest's annotation (or, when the manifest pins
/// none, refuses it or trusts it as `config.require_toc_digest` says).
pub(super) async fn find_toc(
    source: &dyn BlobSource,
    descriptor: &LayerDescriptor,
    limits: &Limits,
    config: &LayerConfig,
    budget: &TocBudget,
    tocs: Option<&TocCache>,
) -> Result<FoundToc, OpenError> {
    let reader = TocReader {
        source,
        descriptor,
        limits,
        budget,
        tocs,
        reads: std::sync::Mutex::new(Vec::new()),
    };
    let found = match descriptor_annotation(
        descriptor,
        zstd_chunked::MANIFEST_POSITION_ANNOTATION,
        zstd_chunked::LEGACY_MANIFEST_POSITION_ANNOTATION,
    ) {
        Some(position) => reader.zstd_chunked(&position).await?,
        None => reader.estargz().await?,
    };
    let digest = descriptor.digest;
    match &found.pinned {
        Some(expected) if *expected != found.toc_digest.to_string() => {
            return Err(OpenError::TocDigestMismatch {
                digest,
                expected: expected.clone(),
                actual: found.toc_digest.to_string(),
            })
        }
        Some(_) => {}
        None if config.require_toc_digest => {
            return Err(OpenError::TocDigestMissing {
                digest,
                annotation: found.pin_annotation,
            })
        }
        None => {
            warn!(layer = %digest, "TOC digest not pinned by the manifest; trusting the TOC")
        }
    }
    if let Some(tocs) = tocs {
        let reads = std::mem::take(&mut *reader.reads.lock().unwrap_or_else(|e| e.into_inner()));
        if !reads.is_empty() {
            tocs.put(&digest, &reads);
        }
    }
    Ok(found)
}

/// A TOC as found in a blob, before it is trusted.
pub(super) struct FoundToc {
    pub(super) format: LayerFormat,
    pub(super) compression: Compression,
    pub(super) toc: Toc,
    /// Where the last chunk's compressed bytes end at the latest.
    pub(super) toc_end: u64,
    toc_digest: Digest,
    /// The TOC budget this TOC holds until its file tree is built.
    pub(super) _parse_budget: TocPermit,
    /// The digest the manifest pins, if it does, and the annotation that would pin it.
    pinned: Option<String>,
    pin_annotation: &'static str,
}

/// An annotation under its current name or the older `io.containers.` one (stargz-snapshotter's
/// converter writes those).
fn descriptor_annotation(descriptor: &LayerDescriptor, name: &str, legacy: &str) -> Option<String> {
    descriptor
        .annotations
        .get(name)
        .or_else(|| descriptor.annotations.get(legacy))
        .cloned()
}

/// Reads a layer's footer and TOC region through its source.
struct TocReader<'a> {
    source: &'a dyn BlobSource,
    descriptor: &'a LayerDescriptor,
    limits: &'a Limits,
    budget: &'a TocBudget,
    /// Where checked TOC reads are kept, and read again from.
    tocs: Option<&'a TocCache>,
    /// The reads made from the source, to keep once the TOC checks out.
    reads: std::sync::Mutex<Vec<(std::ops::Range<u64>, bytes::Bytes)>>,
}

impl TocReader<'_> {
    fn digest(&self) -> Digest {
        self.descriptor.digest
    }

    fn format_error(&self, source: FormatError) -> OpenError {
        OpenError::Format {
            digest: self.digest(),
            source,
        }
    }

    async fn read(&self, range: std::ops::Range<u64>) -> Result<bytes::Bytes, OpenError> {
        if let Some(kept) = self
            .tocs
            .and_then(|t| t.get(&self.descriptor.digest, &range))
        {
            return Ok(kept);
        }
        let bytes = self
            .source
            .read_range(range.clone())
            .await
            .map_err(|source| OpenError::Fetch {
                digest: self.digest(),
                source: FetchError::Source {
                    blob: self.source.describe(),
                    start: range.start,
                    end: range.end,
                    source,
                },
            })?;
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((range, bytes.clone()));
        Ok(bytes)
    }

    /// Reads a TOC region after checking it lies in the blob and within the TOC size limit.
    async fn read_toc_region(
        &self,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, OpenError> {
        let size = self.source.size();
        if range.start > range.end
            || range.end > size
            || range.end - range.start > self.limits.max_toc_bytes
        {
            return Err(OpenError::TocOutOfBounds {
                digest: self.digest(),
                start: range.start,
                end: range.end,
                size,
            });
        }
        self.read(range).await
    }

    /// Parses TOC JSON once the TOC budget has room for it; the permit is held until the layer's file
    /// tree is built.
    async fn parse(&self, json: Vec<u8>) -> Result<(Toc, TocPermit), OpenError> {
        let permit = self
            .budget
            .reserve(&json)
            .await
            .map_err(|cost| OpenError::TocBudget {
                digest: self.digest(),
                cost,
                budget: self.budget.bytes(),
            })?;
        let toc = toc::parse_toc_json(&json, self.limits).map_err(|err| self.format_error(err))?;
        Ok((toc, permit))
    }

    async fn zstd_chunked(&self, position: &str) -> Result<FoundToc, OpenError> {
        let position = zstd_chunked::parse_manifest_position(position)
            .map_err(|err| self.format_error(err))?;
        let region = self.read_toc_region(position.range()).await?;
        let (json, toc_digest) = zstd_chunked::decompress_toc(&region, &position, self.limits)
            .map_err(|err| self.format_error(err))?;
        let (toc, permit) = self.parse(json).await?;
        Ok(FoundToc {
            format: LayerFormat::ZstdChunked,
            compression: Compression::Zstd,
            toc,
            _parse_budget: permit,
            toc_end: position.payload_end(),
            toc_digest,
            pinned: descriptor_annotation(
                self.descriptor,
                zstd_chunked::MANIFEST_CHECKSUM_ANNOTATION,
                zstd_chunked::LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
            ),
            pin_annotation: zstd_chunked::MANIFEST_CHECKSUM_ANNOTATION,
        })
    }

    async fn estargz(&self) -> Result<FoundToc, OpenError> {
        let size = self.source.size();
        if size < estargz::LEGACY_FOOTER_SIZE {
            return Err(OpenError::NotLazy {
                digest: self.digest(),
                reason: format!("{size} bytes is too small for an eStargz footer"),
            });
        }
        let tail = self
            .read(size - estargz::FOOTER_SIZE.min(size)..size)
            .await?;
        let footer = estargz::parse_footer(&tail).map_err(|err| OpenError::NotLazy {
            digest: self.digest(),
            reason: format!("no eStargz footer ({err})"),
        })?;
        let range = footer
            .toc_range(size)
            .map_err(|err| self.format_error(err))?;
        let region = self.read_toc_region(range).await?;
        let (json, toc_digest) =
            estargz::decompress_toc(&region, self.limits).map_err(|err| self.format_error(err))?;
        let (toc, permit) = self.parse(json).await?;
        Ok(FoundToc {
            format: LayerFormat::Estargz,
            compression: Compression::Gzip,
            toc,
            _parse_budget: permit,
            toc_end: footer.toc_offset,
            toc_digest,
            pinned: self
                .descriptor
                .annotations
                .get(estargz::TOC_DIGEST_ANNOTATION)
                .cloned(),
            pin_annotation: estargz::TOC_DIGEST_ANNOTATION,
        })
    }
}
