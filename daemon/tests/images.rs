//! `Images` against a recording fake registry and lazy-layer mounter, over real stores (content on disk,
//! snapshots unpacked with overlayfs semantics, metadata in memory): a pull resolves once and hands each
//! lazy layer its resolved descriptor, plain layers are fetched and unpacked, a failed or cancelled pull
//! leaves nothing, and removing an image collects what no other image uses.

mod common;

use common::{image, Bed, Layer};
use skiff_daemon::images::{image_snapshot_key, ImageError, PullEvent};
use skiff_snapshotter::snapshots::{AnyFilter, SnapshotKind};
use skiff_types::{ChainId, Digest};
use tokio_util::sync::CancellationToken;

const NS: &str = "default";

fn two_layers(reference: &str) -> common::TestImage {
    image(
        reference,
        &[
            Layer {
                files: vec![("etc/hostname", b"plain\n"), ("bin/tool", b"#!/bin/sh\n")],
                lazy: false,
            },
            Layer {
                files: vec![("data/lazy.txt", b"lazy\n")],
                lazy: true,
            },
        ],
    )
}

/// The chain ids of an image's layers, from its config.
fn chain(image: &common::TestImage) -> Vec<ChainId> {
    let config: serde_json::Value = serde_json::from_slice(&image.resolved.config_bytes).unwrap();
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().parse().unwrap())
        .collect();
    ChainId::chain(&diff_ids)
}

#[tokio::test]
async fn a_pull_resolves_once_and_hands_lazy_layers_their_resolved_descriptor() {
    let bed = Bed::new();
    let image = bed.source.add(two_layers("127.0.0.1:5000/app:1"));
    let record = bed.pull(NS, "127.0.0.1:5000/app:1").await.unwrap();
    assert_eq!(record.name, "127.0.0.1:5000/app:1");
    assert_eq!(
        record.target.digest,
        image.resolved.manifest_digest.to_string()
    );

    // One resolve; the lazy layer's blob is never fetched, the plain one is.
    assert_eq!(bed.source.resolve_count(), 1);
    let layers = &image.resolved.layers;
    assert_eq!(bed.source.fetched(), [layers[0].digest]);
    // The mount got the descriptor the pull resolved, nothing looked up again.
    assert_eq!(
        *bed.mounter.descriptors.lock().unwrap(),
        [Some(layers[1].clone())]
    );

    // The chain: the bottom layer unpacked, the top one a remote snapshot on it.
    let keys: Vec<String> = chain(&image).iter().map(image_snapshot_key).collect();
    let bottom = bed.snapshotter.stat(&keys[0]).unwrap();
    let top = bed.snapshotter.stat(&keys[1]).unwrap();
    assert_eq!(bottom.kind, SnapshotKind::Committed);
    assert_eq!(top.parent.as_deref(), Some(keys[0].as_str()));
    let remote = bed.snapshotter.remote_snapshots().unwrap();
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0].0, keys[1]);
    assert_eq!(remote[0].1.descriptor.as_ref(), Some(&layers[1]));

    // The content store holds what was fetched: manifest, config and the plain layer.
    let stored: Vec<Digest> = bed
        .content
        .list()
        .unwrap()
        .iter()
        .map(|b| b.digest)
        .collect();
    assert!(stored.contains(&layers[0].digest));
    assert!(!stored.contains(&layers[1].digest));
    assert!(stored.contains(&image.resolved.config_digest));

    // The detail: the top snapshot, statistics for the lazy layer only.
    let detail = bed.images.detail(NS, &record.name).await.unwrap();
    assert_eq!(detail.snapshot.as_deref(), Some(keys[1].as_str()));
    assert_eq!(detail.layers.len(), 2);
    assert!(detail.lazy[0].is_none() && detail.lazy[1].is_some());

    // A second pull finds everything in place: one more resolve, no fetch, no mount.
    bed.pull(NS, "127.0.0.1:5000/app:1").await.unwrap();
    assert_eq!(bed.source.resolve_count(), 2);
    assert_eq!(bed.source.fetched().len(), 1);
    assert_eq!(bed.mounter.descriptors.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_layer_that_is_not_lazy_after_all_is_fetched_and_unpacked() {
    let bed = Bed::new();
    let image = bed.source.add(two_layers("127.0.0.1:5000/app:2"));
    let layers = &image.resolved.layers;
    bed.mounter.not_lazy.lock().unwrap().push(layers[1].digest);
    let (pulled, events) = bed.pull_events(NS, "127.0.0.1:5000/app:2").await;
    pulled.unwrap();
    assert_eq!(bed.source.fetched(), [layers[0].digest, layers[1].digest]);
    // The client is told which layer fell back, and why.
    let fallbacks: Vec<(String, String)> = events
        .iter()
        .filter_map(|event| match event {
            PullEvent::Layer(layer) => Some((layer.digest.clone(), layer.fallback.clone()?)),
            _ => None,
        })
        .collect();
    assert_eq!(fallbacks.len(), 1, "{fallbacks:?}");
    assert_eq!(fallbacks[0].0, layers[1].digest.to_string());
    assert!(fallbacks[0].1.contains("no TOC"), "{fallbacks:?}");
    assert!(bed.snapshotter.remote_snapshots().unwrap().is_empty());
    assert!(bed.mounter.mounted.lock().unwrap().is_empty());
    let keys: Vec<String> = chain(&image).iter().map(image_snapshot_key).collect();
    assert_eq!(
        bed.snapshotter.stat(&keys[1]).unwrap().kind,
        SnapshotKind::Committed
    );
}

#[tokio::test]
async fn a_pull_with_credentials_unpacks_every_layer() {
    let bed = Bed::new();
    bed.source.add(two_layers("127.0.0.1:5000/private:1"));
    let (events, mut drain) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move { while drain.recv().await.is_some() {} });
    bed.images
        .pull(
            NS,
            "127.0.0.1:5000/private:1",
            true,
            Some(skiff_registry::Credentials {
                username: "u".into(),
                password: "p".into(),
            }),
            events,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    // A lazy layer would keep reading with skiffd's own credentials: none is mounted.
    assert_eq!(*bed.source.opened.lock().unwrap(), [(true, true)]);
    assert_eq!(bed.source.fetched().len(), 2);
    assert!(bed.mounter.descriptors.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_pull_leaves_the_stores_as_it_found_them() {
    let bed = Bed::new();
    // The bottom layer is unpacked; the top one turns out not to be lazy, and its blob does not verify:
    // the pull fails after it committed the bottom snapshot.
    let image = bed.source.add(two_layers("127.0.0.1:5000/broken:1"));
    let layers = &image.resolved.layers;
    bed.mounter.not_lazy.lock().unwrap().push(layers[1].digest);
    bed.source.corrupt(layers[1].digest);
    let err = bed.pull(NS, "127.0.0.1:5000/broken:1").await.unwrap_err();
    assert!(matches!(err, ImageError::Registry(_)), "{err}");
    assert_eq!(bed.source.fetched(), [layers[0].digest, layers[1].digest]);
    assert!(bed.content.list().unwrap().is_empty(), "no blob left");
    assert!(
        bed.snapshotter
            .list(&AnyFilter::default())
            .unwrap()
            .is_empty(),
        "no snapshot left"
    );
    assert!(
        bed.mounter.mounted.lock().unwrap().is_empty(),
        "nothing mounted"
    );
    assert!(bed.images.list(NS).unwrap().is_empty());
}

#[tokio::test]
async fn a_cancelled_pull_stops_and_leaves_nothing() {
    let bed = Bed::new();
    bed.source.add(two_layers("127.0.0.1:5000/app:3"));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (events, _drain) = tokio::sync::mpsc::channel(1024);
    let err = bed
        .images
        .pull(NS, "127.0.0.1:5000/app:3", false, None, events, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Cancelled), "{err}");
    assert!(bed.content.list().unwrap().is_empty());
    assert!(bed
        .snapshotter
        .list(&AnyFilter::default())
        .unwrap()
        .is_empty());
    assert!(bed.source.fetched().is_empty());
}

#[tokio::test]
async fn removing_an_image_collects_what_no_other_image_uses() {
    let bed = Bed::new();
    let first = bed.source.add(two_layers("127.0.0.1:5000/app:4"));
    // The same layers under another name, in another namespace.
    let mut second = two_layers("127.0.0.1:5000/copy:1");
    second.resolved = first.resolved.clone();
    second.resolved.reference = "127.0.0.1:5000/copy:1".parse().unwrap();
    second.blobs = first.blobs.clone();
    bed.source.add(second);
    bed.pull(NS, "127.0.0.1:5000/app:4").await.unwrap();
    bed.pull("other", "127.0.0.1:5000/copy:1").await.unwrap();
    let keys: Vec<String> = chain(&first).iter().map(image_snapshot_key).collect();

    bed.images.delete(NS, "127.0.0.1:5000/app:4").await.unwrap();
    // Still used by the other namespace's image.
    assert!(bed.snapshotter.stat(&keys[1]).is_ok());
    assert!(!bed.content.list().unwrap().is_empty());
    assert!(matches!(
        bed.images.detail(NS, "127.0.0.1:5000/app:4").await,
        Err(ImageError::NotFound { .. })
    ));

    bed.images
        .delete("other", "127.0.0.1:5000/copy:1")
        .await
        .unwrap();
    assert!(bed.content.list().unwrap().is_empty());
    assert!(bed
        .snapshotter
        .list(&AnyFilter::default())
        .unwrap()
        .is_empty());
    assert!(bed.mounter.mounted.lock().unwrap().is_empty(), "unmounted");
}
