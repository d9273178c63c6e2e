//! The content store: sha256-addressed blobs (manifests, configs, indexes, layer blobs) on local disk.
//!
//! It owns the directory `DAEMON_ROOT/content`:
//!
//! ```text
//! content/
//!   blobs/sha256/<hex>     committed blobs, verified, read-only, never partial
//!   ingest/<unique>.tmp    in-flight writes; removed on drop, on failed commit and at open
//! ```
//!
//! A blob only becomes visible under `blobs/` through [`ContentWriter::commit`], which checks the size and the
//! sha256 of what was written, fsyncs the file, renames it into place (atomic) and fsyncs the directory.
//! Concurrent writers of one digest each write their own temp file; whichever renames last replaces an
//! identical file, so readers always see a whole, verified blob.
//!
//! It does not know which namespace or image references a blob: that lives in the metadata store
//! ([`crate::meta`]), and deciding when a blob is unreferenced and may be deleted is the daemon's job.
//!
//! Writing and reading blob bytes is async (`tokio::fs`: [`ContentStore::writer`],
//! [`ContentStore::ingest_bytes`], [`ContentStore::read_all`], [`ContentStore::open_blob`]); lookups,
//! listing and deletion are short synchronous filesystem calls. A layer served lazily is not downloaded
//! into this store: its chunks go to the lazy filesystem's chunk cache as they are read.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};
pub use skiff_types::Digest;
use tokio::io::AsyncWriteExt;

/// Suffix of in-flight ingest files.
const INGEST_SUFFIX: &str = ".tmp";

/// Failures of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// No committed blob has this digest.
    #[error("blob {digest} not found")]
    NotFound { digest: Digest },
    /// The bytes written hash to something else than the expected digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// More or fewer bytes were written than expected (`actual` may be a lower bound when a write overflows).
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// A filesystem operation on `path` failed.
    #[error("content store io on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ContentError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ContentError::Io { path, source }
    }
}

/// What the store knows about one committed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// When the blob was committed (file birth time, or modification time where the filesystem has none).
    pub created: SystemTime,
}

/// A sha256 content-addressed blob store rooted at `DAEMON_ROOT/content`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    ingest: PathBuf,
}

/// Distinguishes ingest files created by this process.
static INGEST_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    /// Opens (creating if needed) the store at `root`, and removes ingest files left by a previous run.
    ///
    /// Only one process may use a content root at a time: stale-ingest cleanup assumes no writer is active.
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        std::fs::create_dir_all(&blobs).map_err(ContentError::io(&blobs))?;
        std::fs::create_dir_all(&ingest).map_err(ContentError::io(&ingest))?;
        let entries = std::fs::read_dir(&ingest).map_err(ContentError::io(&ingest))?;
        for entry in entries {
            let entry = entry.map_err(ContentError::io(&ingest))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::warn!(path = %path.display(), "ignoring directory in ingest area");
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "removed stale ingest file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(ContentError::Io { path, source }),
            }
        }
        Ok(ContentStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                blobs,
                ingest,
            }),
        })
    }

    /// The root directory this store was opened on.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob for `digest` lives (or would live): `root/blobs/sha256/<hex>`.
    ///
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.inner.blobs.join(digest.hex())
    }

    /// Whether a committed blob with this digest exists.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Size and commit time of a committed blob.
    pub fn info(&self, digest: &Digest) -> Result<BlobInfo, ContentError> {
        let path = self.path(digest);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(blob_info(*digest, &meta)),
            Ok(_) => Err(ContentError::NotFound { digest: *digest }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound { digest: *digest })
            }
            Err(source) => Err(ContentError::Io { path, source }),
        }
    }

    /// Every committed blob, sorted by digest. Files under `blobs/sha256` that are not named by a hex digest
    /// are skipped with a warning.
    pub fn list(&self) -> Result<Vec<BlobInfo>, ContentError> {
        let dir = &self.inner.blobs;
        let mut blobs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(ContentError::io(dir))? {
            let entry = entry.map_err(ContentError::io(dir))?;
            let name = entry.file_name();
            let digest = name.to_str().and_then(|hex| Digest::from_hex(hex).ok());
            let Some(digest) = digest else {
                tracing::warn!(path = %entry.path().display(), "ignoring foreign file in content store");
                continue;
            };
            match entry.metadata() {
                Ok(meta) if meta.is_file() => blobs.push(blob_info(digest, &meta)),
                Ok(_) => {}
                // Deleted between read_dir and stat.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ContentError::Io {
                        path: entry.path(),
                        source,
                    })
                }
            }
        }
        blobs.sort_by_key(|blob| blob.digest);
        Ok(blobs)
    }

    /// The whole blob in memory; meant for small blobs (manifests, configs, indexes).
    pub async fn read_all(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.path(digest);
        tokio::fs::read(&path)
            .await
            .map_err(|source| not_found_or_io(digest, path, source))
    }

    /// Opens the blob for streaming reads.
    pub async fn open_blob(&self, digest: &Digest) -> Result<tokio::fs::File, ContentError> {
        let path = self.path(digest);
        tokio::fs::File::open(&path)
            .await
            .map_err(|source| not_found_or_io(digest, path, source))
    }

    /// Starts an ingest of the blob `expected`. The bytes go to a private temp file under `root/ingest` and
    /// only reach `blobs/` through [`ContentWriter::commit`].
    pub async fn writer(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<ContentWriter, ContentError> {
        let unique = INGEST_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.{}.{unique}{INGEST_SUFFIX}",
            expected.hex(),
            std::process::id()
        );
        let temp = self.inner.ingest.join(name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(ContentError::io(&temp))?;
        Ok(ContentWriter {
            store: self.clone(),
            expected: *expected,
            expected_size,
            hasher: Sha256::new(),
            written: 0,
            file: Some(file),
            temp: Some(temp),
        })
    }

    /// Writes `bytes` as the blob `expected` in one go (verified like any ingest). Returns the existing blob's
    /// info if it was already present.
    pub async fn ingest_bytes(
        &self,
        expected: &Digest,
        bytes: &[u8],
    ) -> Result<BlobInfo, ContentError> {
        let mut writer = self.writer(expected, Some(bytes.len() as u64)).await?;
        writer.write(bytes).await?;
        writer.commit().await
    }

    /// Removes a committed blob. Readers that already opened it keep reading the old file.
    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.path(digest);
        std::fs::remove_file(&path).map_err(|source| not_found_or_io(digest, path, source))
    }
}

/// An in-flight ingest of one blob: a private temp file under `root/ingest`, hashed as it is written.
///
/// Dropping it without [`commit`](ContentWriter::commit) removes the temp file, so an abandoned or failed
/// ingest leaves nothing behind.
#[derive(Debug)]
pub struct ContentWriter {
    store: ContentStore,
    expected: Digest,
    expected_size: Option<u64>,
    hasher: Sha256,
    written: u64,
    /// `None` only while `commit` runs.
    file: Option<tokio::fs::File>,
    /// `None` once the file has been renamed into `blobs/` or removed.
    temp: Option<PathBuf>,
}

impl ContentWriter {
    /// Appends `chunk`. Fails early, before writing, if it would exceed the expected size.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ContentError> {
        let after = self.written + chunk.len() as u64;
        if let Some(expected) = self.expected_size {
            if after > expected {
                return Err(ContentError::SizeMismatch {
                    digest: self.expected,
                    expected,
                    actual: after,
                });
            }
        }
        let (Some(file), Some(temp)) = (self.file.as_mut(), self.temp.as_ref()) else {
            unreachable!("a content writer keeps its file until commit consumes it");
        };
        file.write_all(chunk)
            .await
            .map_err(ContentError::io(temp))?;
        self.hasher.update(chunk);
        self.written = after;
        Ok(())
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest this writer was opened for.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Verifies size and sha256, fsyncs the file, renames it into `blobs/sha256/<hex>` and fsyncs the
    /// directory. If the blob already exists (dedup), discards the temp file and returns the existing info.
    /// On any error the temp file is removed and nothing appears under `blobs/`.
    pub async fn commit(mut self) -> Result<BlobInfo, ContentError> {
        if let Some(expected) = self.expected_size {
            if self.written != expected {
                return Err(ContentError::SizeMismatch {
                    digest: self.expected,
                    expected,
                    actual: self.written,
                });
            }
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.expected {
            return Err(ContentError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }

        let store = self.store.clone();
        let target = store.path(&self.expected);
        let temp = self
            .temp
            .clone()
            .expect("the temp path is kept until commit finishes");
        let mut file = self
            .file
            .take()
            .expect("a content writer keeps its file until commit");

        if let Ok(info) = store.info(&self.expected) {
            // Dedup: Drop removes the temp file.
            drop(file);
            return Ok(info);
        }

        file.flush().await.map_err(ContentError::io(&temp))?;
        file.sync_all().await.map_err(ContentError::io(&temp))?;
        let mut perms = file
            .metadata()
            .await
            .map_err(ContentError::io(&temp))?
            .permissions();
        perms.set_readonly(true);
        file.set_permissions(perms)
            .await
            .map_err(ContentError::io(&temp))?;
        drop(file);

        tokio::fs::rename(&temp, &target)
            .await
            .map_err(ContentError::io(&target))?;
        // Renamed away: nothing left for Drop to clean up.
        self.temp = None;
        sync_dir(&store.inner.blobs).await?;

        let meta = tokio::fs::metadata(&target)
            .await
            .map_err(ContentError::io(&target))?;
        tracing::debug!(digest = %self.expected, size = self.written, "committed blob");
        Ok(blob_info(self.expected, &meta))
    }
}

impl Drop for ContentWriter {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            // Close before unlinking; both are cheap, so doing them synchronously here is fine.
            drop(self.file.take());
            match std::fs::remove_file(&temp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %temp.display(), error = %e, "could not remove ingest file");
                }
            }
        }
    }
}

fn not_found_or_io(digest: &Digest, path: PathBuf, source: io::Error) -> ContentError {
    if source.kind() == io::ErrorKind::NotFound {
        ContentError::NotFound { digest: *digest }
    } else {
        ContentError::Io { path, source }
    }
}

fn blob_info(digest: Digest, meta: &std::fs::Metadata) -> BlobInfo {
    let created = meta
        .created()
        .or_else(|_| meta.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    BlobInfo {
        digest,
        size: meta.len(),
        created,
    }
}

async fn sync_dir(dir: &Path) -> Result<(), ContentError> {
    let handle = tokio::fs::File::open(dir)
        .await
        .map_err(ContentError::io(dir))?;
    handle.sync_all().await.map_err(ContentError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest::of(bytes)
    }

    fn open_temp() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(&dir.path().join("content")).unwrap();
        (dir, store)
    }

    fn dir_entries(dir: &Path) -> Vec<PathBuf> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        entries
    }

    fn ingest_dir(store: &ContentStore) -> PathBuf {
        store.root().join("ingest")
    }

    fn blobs_dir(store: &ContentStore) -> PathBuf {
        store.root().join("blobs").join("sha256")
    }

    #[test]
    fn open_creates_layout_and_removes_stale_ingest_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("content");
        drop(ContentStore::open(&root).unwrap());
        assert!(root.join("blobs/sha256").is_dir());
        std::fs::write(root.join("ingest/stale.1.2.tmp"), b"half a blob").unwrap();
        std::fs::create_dir(root.join("ingest/stray-dir")).unwrap();
        let store = ContentStore::open(&root).unwrap();
        assert_eq!(
            dir_entries(&ingest_dir(&store)),
            [root.join("ingest/stray-dir")]
        );
    }

    #[tokio::test]
    async fn ingest_read_info_list_delete() {
        let (_dir, store) = open_temp();
        let data = b"hello, content store".to_vec();
        let digest = digest_of(&data);
        assert!(!store.contains(&digest));

        let info = store.ingest_bytes(&digest, &data).await.unwrap();
        assert_eq!(info.digest, digest);
        assert_eq!(info.size, data.len() as u64);
        assert!(store.contains(&digest));
        assert_eq!(store.path(&digest), blobs_dir(&store).join(digest.hex()));
        assert_eq!(store.read_all(&digest).await.unwrap(), data);
        assert_eq!(store.info(&digest).unwrap(), info);
        assert!(std::fs::metadata(store.path(&digest))
            .unwrap()
            .permissions()
            .readonly());

        let mut file = store.open_blob(&digest).await.unwrap();
        let mut read = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut file, &mut read)
            .await
            .unwrap();
        assert_eq!(read, data);

        let other = b"another blob";
        let other_digest = digest_of(other);
        store.ingest_bytes(&other_digest, other).await.unwrap();
        let mut expected = vec![digest, other_digest];
        expected.sort();
        let listed: Vec<_> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|i| i.digest)
            .collect();
        assert_eq!(listed, expected);

        store.delete(&digest).unwrap();
        assert!(!store.contains(&digest));
        assert!(matches!(
            store.delete(&digest),
            Err(ContentError::NotFound { .. })
        ));
        assert!(matches!(
            store.info(&digest),
            Err(ContentError::NotFound { .. })
        ));
        assert!(matches!(
            store.read_all(&digest).await,
            Err(ContentError::NotFound { .. })
        ));
        assert!(matches!(
            store.open_blob(&digest).await,
            Err(ContentError::NotFound { .. })
        ));
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(dir_entries(&ingest_dir(&store)).is_empty());
    }

    #[tokio::test]
    async fn chunked_writer_without_size() {
        let (_dir, store) = open_temp();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let digest = digest_of(&data);
        let mut writer = store.writer(&digest, None).await.unwrap();
        for chunk in data.chunks(4096) {
            writer.write(chunk).await.unwrap();
        }
        assert_eq!(writer.written(), data.len() as u64);
        let info = writer.commit().await.unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(store.read_all(&digest).await.unwrap(), data);
        assert!(dir_entries(&ingest_dir(&store)).is_empty());
    }

    #[tokio::test]
    async fn dedup_returns_existing_blob() {
        let (_dir, store) = open_temp();
        let data = b"same bytes twice";
        let digest = digest_of(data);
        let first = store.ingest_bytes(&digest, data).await.unwrap();
        let second = store.ingest_bytes(&digest, data).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(dir_entries(&ingest_dir(&store)).is_empty());
    }

    #[tokio::test]
    async fn digest_mismatch_leaves_nothing() {
        let (_dir, store) = open_temp();
        let claimed = digest_of(b"what the manifest promised");
        let err = store
            .ingest_bytes(&claimed, b"what the registry sent")
            .await
            .unwrap_err();
        match err {
            ContentError::DigestMismatch { expected, actual } => {
                assert_eq!(expected, claimed);
                assert_eq!(actual, digest_of(b"what the registry sent"));
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(!store.contains(&claimed));
        assert!(dir_entries(&blobs_dir(&store)).is_empty());
        assert!(dir_entries(&ingest_dir(&store)).is_empty());
    }

    #[tokio::test]
    async fn size_mismatch_leaves_nothing() {
        let (_dir, store) = open_temp();
        let data = b"twelve bytes";
        let digest = digest_of(data);

        // Too many bytes: refused at write time, before touching the disk.
        let mut writer = store.writer(&digest, Some(4)).await.unwrap();
        let err = writer.write(data).await.unwrap_err();
        assert!(matches!(
            err,
            ContentError::SizeMismatch {
                expected: 4,
                actual: 12,
                ..
            }
        ));
        assert_eq!(writer.written(), 0);
        drop(writer);

        // Too few bytes: refused at commit.
        let mut writer = store.writer(&digest, Some(100)).await.unwrap();
        writer.write(data).await.unwrap();
        let err = writer.commit().await.unwrap_err();
        assert!(matches!(
            err,
            ContentError::SizeMismatch {
                expected: 100,
                actual: 12,
                ..
            }
        ));

        assert!(dir_entries(&blobs_dir(&store)).is_empty());
        assert!(dir_entries(&ingest_dir(&store)).is_empty());
    }

    #[tokio::test]
    async fn drop_without_commit_cleans_up() {
        let (_dir, store) = open_temp();
        let data = b"abandoned halfway";
        let digest = digest_of(data);
        let mut writer = store
            .writer(&digest, Some(data.len() as u64))
            .await
            .unwrap();
        writer.write(&data[..5]).await.unwrap();
        assert_eq!(dir_entries(&ingest_dir(&store)).len(), 1);
        drop(writer);
        assert!(dir_entries(&ingest_dir(&store)).is_empty());
        assert!(dir_entries(&blobs_dir(&store)).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_of_one_digest() {
        let (_dir, store) = open_temp();
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
        let digest = digest_of(&data);
        let data = Arc::new(data);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            let data = Arc::clone(&data);
            tasks.push(tokio::spawn(async move {
                let mut writer = store.writer(&digest, Some(data.len() as u64)).await?;
                for chunk in data.chunks(16 * 1024) {
                    writer.write(chunk).await?;
                    tokio::task::yield_now().await;
                }
                writer.commit().await
            }));
        }
        for task in tasks {
            let info = task.await.unwrap().unwrap();
            assert_eq!(info.size, data.len() as u64);
        }
        assert_eq!(store.read_all(&digest).await.unwrap(), *data);
        assert_eq!(dir_entries(&blobs_dir(&store)).len(), 1);
        assert!(dir_entries(&ingest_dir(&store)).is_empty());
    }

    #[test]
    fn other_algorithms_are_refused() {
        // The store takes skiff's sha256 `Digest`: a digest of another algorithm is refused where the
        // text is parsed, before it can name a blob.
        let sha512 = format!("sha512:{}", "a".repeat(128));
        assert!(sha512.parse::<Digest>().is_err());
        let oci: oci_spec::image::Digest = sha512.parse().unwrap();
        assert!(Digest::try_from(&oci).is_err());
    }

    #[test]
    fn list_skips_foreign_files() {
        let (_dir, store) = open_temp();
        std::fs::write(blobs_dir(&store).join("not-a-digest"), b"x").unwrap();
        assert!(store.list().unwrap().is_empty());
    }
}
