//! The content store and the metadata store together, as a pull and a garbage collection use them: blobs are
//! ingested and verified, an image and its content references are committed in one batch, and a blob file is
//! deleted only once no namespace references it. Runs on RocksDB in a tempdir and survives a reopen.

use std::time::SystemTime;

use skiff_snapshotter::content::{ContentError, ContentStore, Digest};
use skiff_snapshotter::meta::{
    ContentRefRecord, DescriptorRecord, ImageRecord, Labels, MetaError, MetaStore,
};

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

struct Blob {
    digest: Digest,
    bytes: Vec<u8>,
}

fn blob(bytes: &[u8]) -> Blob {
    Blob {
        digest: digest_of(bytes),
        bytes: bytes.to_vec(),
    }
}

/// Ingests every blob and commits the image with references to all of them, as a pull does.
async fn pull(
    content: &ContentStore,
    meta: &MetaStore,
    namespace: &str,
    name: &str,
    blobs: &[&Blob],
) -> ImageRecord {
    for blob in blobs {
        content
            .ingest_bytes(&blob.digest, &blob.bytes)
            .await
            .unwrap();
    }
    let manifest = blobs[0];
    let now = SystemTime::now();
    let image = ImageRecord {
        name: name.to_owned(),
        target: DescriptorRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
            digest: manifest.digest.to_string(),
            size: manifest.bytes.len() as u64,
            annotations: Labels::new(),
        },
        labels: Labels::new(),
        created_at: now,
        updated_at: now,
    };
    let refs: Vec<_> = blobs
        .iter()
        .map(|b| ContentRefRecord {
            digest: b.digest.to_string(),
            labels: Labels::new(),
            created_at: now,
        })
        .collect();
    meta.put_image_with_content(namespace, image, &refs)
        .unwrap()
}

/// Deletes every blob no namespace references; returns how many were deleted.
fn collect_garbage(content: &ContentStore, meta: &MetaStore) -> usize {
    let mut deleted = 0;
    for info in content.list().unwrap() {
        if !meta
            .content_referenced_anywhere(&info.digest.to_string())
            .unwrap()
        {
            content.delete(&info.digest).unwrap();
            deleted += 1;
        }
    }
    deleted
}

/// Removes an image and the references it held, as `skiff image rm` would.
fn remove_image(meta: &MetaStore, namespace: &str, name: &str, blobs: &[&Blob]) {
    meta.delete_image(namespace, name).unwrap();
    let digests: Vec<_> = blobs.iter().map(|b| b.digest.to_string()).collect();
    meta.remove_content_refs(namespace, &digests).unwrap();
}

#[tokio::test]
async fn pull_share_remove_and_collect() {
    let dir = tempfile::tempdir().unwrap();
    let content_root = dir.path().join("content");
    let meta_path = dir.path().join("meta");

    let manifest_a = blob(b"{\"manifest\":\"a\"}");
    let manifest_b = blob(b"{\"manifest\":\"b\"}");
    let shared_layer = blob(&[7u8; 64 * 1024]);
    let layer_b = blob(b"only in b");

    {
        let content = ContentStore::open(&content_root).unwrap();
        let meta = MetaStore::open_rocks(&meta_path).unwrap();
        pull(
            &content,
            &meta,
            "default",
            "example.com/a:1",
            &[&manifest_a, &shared_layer],
        )
        .await;
        pull(
            &content,
            &meta,
            "k8s.io",
            "example.com/b:1",
            &[&manifest_b, &shared_layer, &layer_b],
        )
        .await;
        assert_eq!(content.list().unwrap().len(), 4);
        assert_eq!(collect_garbage(&content, &meta), 0);
    }

    // A daemon restart: both stores reopen with everything in place.
    let content = ContentStore::open(&content_root).unwrap();
    let meta = MetaStore::open_rocks(&meta_path).unwrap();
    let image = meta
        .get_image("default", "example.com/a:1")
        .unwrap()
        .unwrap();
    let target: Digest = image.target.digest.parse().unwrap();
    assert_eq!(content.read_all(&target).await.unwrap(), manifest_a.bytes);

    // The namespace cannot go while it holds the image.
    assert!(matches!(
        meta.remove_namespace("default"),
        Err(MetaError::NamespaceNotEmpty { .. })
    ));

    remove_image(
        &meta,
        "default",
        "example.com/a:1",
        &[&manifest_a, &shared_layer],
    );
    assert_eq!(
        collect_garbage(&content, &meta),
        1,
        "only manifest a is unreferenced"
    );
    assert!(!content.contains(&manifest_a.digest));
    assert!(
        content.contains(&shared_layer.digest),
        "k8s.io still references it"
    );
    meta.remove_namespace("default").unwrap();

    remove_image(
        &meta,
        "k8s.io",
        "example.com/b:1",
        &[&manifest_b, &shared_layer, &layer_b],
    );
    assert_eq!(collect_garbage(&content, &meta), 3);
    assert!(content.list().unwrap().is_empty());
    assert!(matches!(
        content.read_all(&shared_layer.digest).await,
        Err(ContentError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_corrupt_download_is_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let content = ContentStore::open(&dir.path().join("content")).unwrap();
    let good = blob(b"the layer the manifest names");
    let mut writer = content
        .writer(&good.digest, Some(good.bytes.len() as u64))
        .await
        .unwrap();
    let mut tampered = good.bytes.clone();
    tampered[0] ^= 0xff;
    writer.write(&tampered).await.unwrap();
    assert!(matches!(
        writer.commit().await,
        Err(ContentError::DigestMismatch { .. })
    ));
    assert!(!content.contains(&good.digest));
    assert!(content.list().unwrap().is_empty());

    // A retry with the right bytes succeeds.
    content
        .ingest_bytes(&good.digest, &good.bytes)
        .await
        .unwrap();
    assert!(content.contains(&good.digest));
}
