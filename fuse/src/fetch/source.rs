//! Where a layer blob's bytes come from: the seam [`BlobSource`], with memory and local-file sources for
//! tests and tools (skiffd's registry source lives in the daemon). Only project types cross this seam.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::SourceError;

/// Random access to one immutable blob.
pub trait BlobSource: Send + Sync + 'static {
    /// The blob's size in bytes.
    fn size(&self) -> u64;
    /// Exactly the bytes `range` of the blob (`range.end <= size()`).
    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, SourceError>>;
    /// The blob, for logs and errors.
    fn describe(&self) -> String;
}

/// `OutOfBounds` unless `range` lies within a blob of `size` bytes (for sources' `read_range`).
pub fn check_range(range: &Range<u64>, size: u64) -> Result<(), SourceError> {
    if range.start > range.end || range.end > size {
        return Err(SourceError::OutOfBounds {
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(())
}

/// A blob held in memory.
pub struct MemoryBlob {
    name: String,
    bytes: Bytes,
}

impl MemoryBlob {
    pub fn new(name: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        MemoryBlob {
            name: name.into(),
            bytes: bytes.into(),
        }
    }
}

impl BlobSource for MemoryBlob {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, SourceError>> {
        let result = check_range(&range, self.size())
            .map(|()| self.bytes.slice(range.start as usize..range.end as usize));
        futures::future::ready(result).boxed()
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A blob in a local file (e.g. a layer already in the content store).
pub struct FileBlob {
    path: PathBuf,
    size: u64,
}

impl FileBlob {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SourceError> {
        let path = path.into();
        let size = std::fs::metadata(&path)
            .map_err(|source| SourceError::Io {
                path: path.clone(),
                source: Arc::new(source),
            })?
            .len();
        Ok(FileBlob { path, size })
    }
}

impl BlobSource for FileBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, SourceError>> {
        let path = self.path.clone();
        let size = self.size;
        async move {
            check_range(&range, size)?;
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(&path)?;
                let mut buffer = vec![0u8; (range.end - range.start) as usize];
                file.read_exact_at(&mut buffer, range.start)?;
                Ok(Bytes::from(buffer))
            })
            .await
            .map_err(|_| SourceError::Cancelled)?
            .map_err(|source| SourceError::Io {
                path: self.path.clone(),
                source: Arc::new(source),
            })
        }
        .boxed()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
