//! The containerd remote-snapshotter contract over a fake `LayerMounter` that "mounts" a layer by writing
//! its files into the mountpoint (and removes them on unmount): label parsing at the gRPC edge,
//! `AlreadyExists` for a layer served remotely, the fallback for a layer that is not lazy, unmounting on
//! Remove and Cleanup, mounting again after a restart (RocksDB), and unmounting at shutdown.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use skiff_api::containerd::snapshots::v1 as api;
use skiff_api::containerd::snapshots::v1::snapshots_server::Snapshots as _;
use skiff_daemon::grpc::SnapshotsService;
use skiff_daemon::lazy_layers::{LayerMounter, RemoteSnapshots};
use skiff_snapshotter::meta::{Labels, MetaStore};
use skiff_snapshotter::snapshots::{
    AnyFilter, RemoteError, RemoteLayer, RemoteMounts, SnapshotError, SnapshotKind, Snapshotter,
};
use skiff_types::{
    LayerDescriptor, LABEL_CRI_IMAGE_LAYERS, LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST,
    LABEL_CRI_MANIFEST_DIGEST, LABEL_STARGZ_DIGEST, LABEL_STARGZ_REFERENCE, LABEL_TARGET_REF,
};
use tonic::{Code, Request};

const LAZY: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const LAZY2: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const PLAIN: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const MANIFEST: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

/// What the fake has mounted, by mountpoint.
#[derive(Default)]
struct FakeState {
    mounted: BTreeMap<PathBuf, String>,
    mount_calls: Vec<(String, PathBuf)>,
    unmount_calls: Vec<PathBuf>,
}

/// Serves the layers in `lazy` by writing `layer.txt` (the digest) into the mountpoint; any other layer
/// is `NotLazy`; `fail` makes every mount fail otherwise.
#[derive(Default)]
struct FakeRemote {
    lazy: Vec<&'static str>,
    fail: Mutex<bool>,
    state: Mutex<FakeState>,
}

impl FakeRemote {
    fn new(lazy: &[&'static str]) -> Arc<Self> {
        Arc::new(FakeRemote {
            lazy: lazy.to_vec(),
            ..FakeRemote::default()
        })
    }

    fn mounted(&self) -> BTreeMap<PathBuf, String> {
        self.state.lock().unwrap().mounted.clone()
    }

    fn mount_calls(&self) -> usize {
        self.state.lock().unwrap().mount_calls.len()
    }
}

impl FakeRemote {
    fn mount_now(
        &self,
        layer: &RemoteLayer,
        mountpoint: &Path,
    ) -> Result<LayerDescriptor, RemoteError> {
        let mut state = self.state.lock().unwrap();
        let digest = layer.layer_digest.to_string();
        state
            .mount_calls
            .push((digest.clone(), mountpoint.to_path_buf()));
        if !self.lazy.contains(&digest.as_str()) {
            return Err(RemoteError::NotLazy {
                digest: layer.layer_digest,
                reason: "no TOC".into(),
            });
        }
        if *self.fail.lock().unwrap() {
            return Err(RemoteError::Mount {
                digest: layer.layer_digest,
                image_ref: layer.image_ref.clone(),
                source: "registry unreachable".into(),
            });
        }
        assert!(
            !state.mounted.contains_key(mountpoint),
            "mounted twice at {}",
            mountpoint.display()
        );
        assert!(
            std::fs::read_dir(mountpoint).unwrap().next().is_none(),
            "mountpoint not empty"
        );
        std::fs::write(mountpoint.join("layer.txt"), &digest).unwrap();
        state.mounted.insert(mountpoint.to_path_buf(), digest);
        Ok(LayerDescriptor {
            digest: layer.layer_digest,
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            annotations: layer.annotations.clone(),
        })
    }
}

impl LayerMounter for FakeRemote {
    fn mount<'a>(
        &'a self,
        layer: &'a RemoteLayer,
        _descriptor: Option<&'a LayerDescriptor>,
        mountpoint: &'a Path,
    ) -> BoxFuture<'a, Result<LayerDescriptor, RemoteError>> {
        async move { self.mount_now(layer, mountpoint) }.boxed()
    }
}

impl RemoteMounts for FakeRemote {
    fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteError> {
        let mut state = self.state.lock().unwrap();
        state.unmount_calls.push(mountpoint.to_path_buf());
        if state.mounted.remove(mountpoint).is_none() {
            return Err(RemoteError::NotMounted {
                mountpoint: mountpoint.to_path_buf(),
            });
        }
        std::fs::remove_file(mountpoint.join("layer.txt")).unwrap();
        Ok(())
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn cri_labels(target: &str, layer: &str) -> Labels {
    labels(&[
        (LABEL_TARGET_REF, target),
        (LABEL_CRI_IMAGE_REF, "127.0.0.1:5000/app:1"),
        (LABEL_CRI_LAYER_DIGEST, layer),
        (LABEL_CRI_MANIFEST_DIGEST, MANIFEST),
        (LABEL_CRI_IMAGE_LAYERS, &format!("{LAZY},{LAZY2}")),
        ("containerd.io/gc.root", "x"),
    ])
}

fn stargz_labels(target: &str, layer: &str) -> Labels {
    labels(&[
        (LABEL_TARGET_REF, target),
        (LABEL_STARGZ_REFERENCE, "127.0.0.1:5000/app:1"),
        (LABEL_STARGZ_DIGEST, layer),
        ("containerd.io/snapshot/stargz/toc.digest", MANIFEST),
    ])
}

fn open(root: &Path, meta: MetaStore, remote: &Arc<FakeRemote>) -> Snapshotter {
    Snapshotter::open(root, meta)
        .unwrap()
        .with_remote_mounts(Arc::clone(remote) as Arc<dyn RemoteMounts>)
}

fn remote_snapshots(snapshotter: &Snapshotter, remote: &Arc<FakeRemote>) -> RemoteSnapshots {
    RemoteSnapshots::new(
        snapshotter.clone(),
        Arc::clone(remote) as Arc<dyn LayerMounter>,
    )
}

/// The gRPC service of `snapshotter`, serving remote layers through `remote`.
fn service(snapshotter: &Snapshotter, remote: &Arc<FakeRemote>) -> SnapshotsService {
    SnapshotsService::new(snapshotter.clone()).with_remote(remote_snapshots(snapshotter, remote))
}

fn prepare_request(
    key: &str,
    parent: &str,
    labels: Labels,
) -> Request<api::PrepareSnapshotRequest> {
    Request::new(api::PrepareSnapshotRequest {
        snapshotter: "skiff".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels.into_iter().collect::<HashMap<_, _>>(),
    })
}

fn dir_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn remote_layers_commit_under_the_chain_id_and_answer_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snapshots");
    let remote = FakeRemote::new(&[LAZY, LAZY2]);
    let snapshotter = open(&root, MetaStore::in_memory(), &remote);
    let service = service(&snapshotter, &remote);

    // containerd's unpacker: Prepare the bottom layer with the labels, expect AlreadyExists.
    let status = service
        .prepare(prepare_request(
            "extract-1 chain1",
            "",
            cri_labels("chain1", LAZY),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("chain1"), "{status:?}");
    // Then Stat of the target: committed, with the Prepare's labels; the extract key does not exist.
    let info = snapshotter.stat("chain1").unwrap();
    assert_eq!(info.kind, SnapshotKind::Committed);
    assert_eq!(info.parent, None);
    assert_eq!(info.labels.get("containerd.io/gc.root").unwrap(), "x");
    assert!(matches!(
        snapshotter.stat("extract-1 chain1"),
        Err(SnapshotError::NotFound { .. })
    ));
    // The next layer (stargz-snapshotter's labels, as `ctr-remote image rpull` sends them).
    let status = service
        .prepare(prepare_request(
            "extract-2 chain2",
            "chain1",
            stargz_labels("chain2", LAZY2),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(
        snapshotter.stat("chain2").unwrap().parent.as_deref(),
        Some("chain1")
    );
    assert_eq!(remote.mounted().len(), 2);

    // Asking again: AlreadyExists without a second mount.
    let calls = remote.mount_calls();
    let status = service
        .prepare(prepare_request(
            "extract-3 chain1",
            "",
            cri_labels("chain1", LAZY),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(remote.mount_calls(), calls);

    // A container on top: the lazy layers are overlay lowers (their fs dirs), the files are visible.
    let mounts = snapshotter
        .prepare("container", Some("chain2"), Labels::new())
        .unwrap();
    assert_eq!(mounts[0].fs_type, "overlay");
    let lower = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    let lowers: Vec<&str> = lower.split(':').collect();
    assert_eq!(lowers.len(), 2);
    for (lower, digest) in lowers.iter().zip([LAZY2, LAZY]) {
        assert_eq!(
            std::fs::read_to_string(Path::new(lower).join("layer.txt")).unwrap(),
            digest
        );
        assert_eq!(remote.mounted().get(Path::new(lower)).unwrap(), digest);
    }

    // Remove: the parent with a child is refused, nothing unmounted; then top-down, each unmounted.
    assert!(matches!(
        snapshotter.remove("chain1"),
        Err(SnapshotError::HasChildren { .. })
    ));
    assert_eq!(remote.mounted().len(), 2);
    snapshotter.remove("container").unwrap();
    snapshotter.remove("chain2").unwrap();
    assert_eq!(remote.mounted().len(), 1);
    snapshotter.remove("chain1").unwrap();
    assert!(remote.mounted().is_empty());
    assert!(dir_names(&root).is_empty(), "{:?}", dir_names(&root));
}

#[tokio::test]
async fn layers_that_are_not_lazy_fall_back_to_an_ordinary_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snapshots");
    let remote = FakeRemote::new(&[LAZY]);
    let snapshotter = open(&root, MetaStore::in_memory(), &remote);
    let service = service(&snapshotter, &remote);

    // Not lazy: an active snapshot under the key, which containerd unpacks into and commits.
    let response = service
        .prepare(prepare_request(
            "extract-1 chainP",
            "",
            cri_labels("chainP", PLAIN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.mounts.len(), 1);
    assert_eq!(response.mounts[0].r#type, "bind");
    assert_eq!(
        snapshotter.stat("extract-1 chainP").unwrap().kind,
        SnapshotKind::Active
    );
    assert!(remote.mounted().is_empty());
    snapshotter
        .commit("chainP", "extract-1 chainP", Labels::new())
        .unwrap();

    // A lazy layer whose mount fails (registry down): the same fallback, nothing left behind.
    *remote.fail.lock().unwrap() = true;
    let response = service
        .prepare(prepare_request(
            "extract-2 chainL",
            "chainP",
            cri_labels("chainL", LAZY),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.mounts[0].r#type, "overlay");
    assert!(matches!(
        snapshotter.stat("chainL"),
        Err(SnapshotError::NotFound { .. })
    ));
    assert!(remote.mounted().is_empty());

    // Without layer labels (plain `ctr image pull`), the fake is never asked.
    let calls = remote.mount_calls();
    service
        .prepare(prepare_request(
            "extract-3",
            "",
            labels(&[(LABEL_TARGET_REF, "chainX")]),
        ))
        .await
        .unwrap();
    assert_eq!(remote.mount_calls(), calls);

    // Without remote layers at all, remote labels mean an ordinary prepare.
    let plain = Snapshotter::open(&dir.path().join("other"), MetaStore::in_memory()).unwrap();
    SnapshotsService::new(plain.clone())
        .prepare(prepare_request("k", "", cri_labels("chainY", LAZY)))
        .await
        .unwrap();
    assert_eq!(plain.stat("k").unwrap().kind, SnapshotKind::Active);
}

#[tokio::test]
async fn malformed_labels_are_invalid_argument_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snapshots");
    let remote = FakeRemote::new(&[LAZY]);
    let snapshotter = open(&root, MetaStore::in_memory(), &remote);
    let service = service(&snapshotter, &remote);
    let cases = [
        labels(&[
            (LABEL_TARGET_REF, "t"),
            (LABEL_CRI_IMAGE_REF, "r/x:1"),
            (LABEL_CRI_LAYER_DIGEST, "sha256:nothex"),
        ]),
        labels(&[(LABEL_TARGET_REF, "t"), (LABEL_CRI_IMAGE_REF, "r/x:1")]),
        labels(&[(LABEL_TARGET_REF, "t"), (LABEL_CRI_LAYER_DIGEST, LAZY)]),
        labels(&[
            (LABEL_TARGET_REF, "t"),
            (LABEL_CRI_IMAGE_REF, "r/x:1"),
            (LABEL_CRI_LAYER_DIGEST, LAZY),
            (LABEL_CRI_MANIFEST_DIGEST, "latest"),
        ]),
        labels(&[
            (LABEL_TARGET_REF, ""),
            (LABEL_CRI_IMAGE_REF, "r/x:1"),
            (LABEL_CRI_LAYER_DIGEST, LAZY),
        ]),
    ];
    for case in cases {
        let status = service
            .prepare(prepare_request("k", "", case.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case:?}: {status:?}");
        assert!(status.message().contains("label"), "{status:?}");
    }
    assert!(snapshotter.list(&AnyFilter::default()).unwrap().is_empty());
    assert!(dir_names(&root).is_empty());
    assert_eq!(remote.mount_calls(), 0);
}

#[tokio::test]
async fn remote_snapshots_are_mounted_again_after_a_restart_and_unmounted_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snapshots");
    let db = dir.path().join("metadata");
    {
        let remote = FakeRemote::new(&[LAZY]);
        let snapshotter = open(&root, MetaStore::open_rocks(&db).unwrap(), &remote);
        let layer = RemoteLayer::from_labels(&cri_labels("chain1", LAZY))
            .unwrap()
            .unwrap();
        assert!(matches!(
            remote_snapshots(&snapshotter, &remote)
                .prepare("extract-1".into(), None, cri_labels("chain1", LAZY), layer)
                .await,
            Err(SnapshotError::AlreadyExists { .. })
        ));
        snapshotter
            .prepare("ordinary", None, Labels::new())
            .unwrap();
        // Shutdown: every remote snapshot unmounted.
        snapshotter.unmount_remote().unwrap();
        assert!(remote.mounted().is_empty());
    }
    let remote = FakeRemote::new(&[LAZY]);
    let snapshotter = open(&root, MetaStore::open_rocks(&db).unwrap(), &remote);
    assert_eq!(
        remote_snapshots(&snapshotter, &remote)
            .remount_all()
            .await
            .unwrap(),
        1
    );
    let mounted = remote.mounted();
    assert_eq!(mounted.len(), 1);
    let (mountpoint, digest) = mounted.iter().next().unwrap();
    assert_eq!(digest, LAZY);
    let id = mountpoint.parent().unwrap().file_name().unwrap();
    assert_eq!(mountpoint, &root.join(id).join("fs"));
    assert_eq!(
        snapshotter.stat("chain1").unwrap().kind,
        SnapshotKind::Committed
    );
    assert_eq!(snapshotter.usage("chain1").unwrap().size, 0);

    // A remount that fails leaves the snapshot (logged), the daemon still starts.
    drop(snapshotter);
    let broken = FakeRemote::new(&[]);
    let snapshotter = open(&root, MetaStore::open_rocks(&db).unwrap(), &broken);
    assert_eq!(
        remote_snapshots(&snapshotter, &broken)
            .remount_all()
            .await
            .unwrap(),
        0
    );
    assert!(snapshotter.stat("chain1").is_ok());
}

#[tokio::test]
async fn cleanup_unmounts_what_an_orphan_dir_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snapshots");
    let remote = FakeRemote::new(&[LAZY]);
    let snapshotter = open(&root, MetaStore::in_memory(), &remote);
    // An orphan dir with a layer mounted in it (a removal whose unmount failed, say).
    let orphan = root.join("rm-77").join("fs");
    std::fs::create_dir_all(&orphan).unwrap();
    let layer = RemoteLayer::from_labels(&cri_labels("x", LAZY))
        .unwrap()
        .unwrap();
    remote.mount_now(&layer, &orphan).unwrap();
    assert_eq!(snapshotter.cleanup().unwrap(), 1);
    assert!(remote.mounted().is_empty());
    assert!(dir_names(&root).is_empty());
    assert!(remote.state.lock().unwrap().unmount_calls.contains(&orphan));
}
