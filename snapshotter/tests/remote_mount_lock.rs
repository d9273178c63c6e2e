//! A remote layer is mounted (network IO) without the snapshotter's lock: other snapshot operations go on
//! meanwhile, while the target name, its parent and its directory stay reserved: a concurrent prepare of
//! the same target waits and gets `AlreadyExists` with one mount in all, `Cleanup` leaves the directory
//! alone, removing the parent is refused, and a failed mount still falls back to an active snapshot.

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_snapshotter::meta::{Labels, MetaStore};
use skiff_snapshotter::snapshots::{
    RemoteError, RemoteLayer, RemoteLayers, SnapshotError, SnapshotKind, Snapshotter,
};

const LAYER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A remote that says when a mount starts and finishes it only when told (`Ok` mounts, `Err` is
/// `NotLazy`); it "mounts" by writing a file.
struct GatedRemote {
    started: Mutex<Sender<()>>,
    release: Mutex<Receiver<bool>>,
    mounts: Mutex<usize>,
}

impl RemoteLayers for GatedRemote {
    fn mount(&self, layer: &RemoteLayer, mountpoint: &Path) -> Result<(), RemoteError> {
        *self.mounts.lock().unwrap() += 1;
        self.started.lock().unwrap().send(()).unwrap();
        let lazy = self.release.lock().unwrap().recv().unwrap();
        if !lazy {
            return Err(RemoteError::NotLazy {
                digest: layer.layer_digest.clone(),
                reason: "no TOC".into(),
            });
        }
        std::fs::write(mountpoint.join("layer.txt"), "lazy").unwrap();
        Ok(())
    }

    fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteError> {
        match std::fs::remove_file(mountpoint.join("layer.txt")) {
            Ok(()) => Ok(()),
            Err(_) => Err(RemoteError::NotMounted {
                mountpoint: mountpoint.to_path_buf(),
            }),
        }
    }
}

fn layer(target: &str) -> RemoteLayer {
    RemoteLayer {
        target: target.into(),
        image_ref: "127.0.0.1:5000/app:1".into(),
        layer_digest: LAYER.into(),
        manifest_digest: None,
        image_layers: Vec::new(),
        annotations: Labels::new(),
        plain_http: false,
    }
}

struct Bed {
    _dir: tempfile::TempDir,
    snapshotter: Snapshotter,
    remote: Arc<GatedRemote>,
    started: Receiver<()>,
    release: Sender<bool>,
}

fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let (started_tx, started) = channel();
    let (release, release_rx) = channel();
    let remote = Arc::new(GatedRemote {
        started: Mutex::new(started_tx),
        release: Mutex::new(release_rx),
        mounts: Mutex::new(0),
    });
    let snapshotter = Snapshotter::open(&dir.path().join("snapshots"), MetaStore::in_memory())
        .unwrap()
        .with_remote_layers(Arc::clone(&remote) as Arc<dyn RemoteLayers>);
    Bed {
        _dir: dir,
        snapshotter,
        remote,
        started,
        release,
    }
}

fn prepare_in_thread(
    s: &Snapshotter,
    key: &str,
    parent: Option<&str>,
    target: &str,
) -> std::thread::JoinHandle<Result<Vec<skiff_snapshotter::snapshots::Mount>, SnapshotError>> {
    let (s, key, parent, layer) = (
        s.clone(),
        key.to_owned(),
        parent.map(str::to_owned),
        layer(target),
    );
    std::thread::spawn(move || s.prepare_with(&key, parent.as_deref(), Labels::new(), Some(layer)))
}

#[test]
fn other_work_goes_on_while_a_layer_mounts_and_the_target_is_reserved() {
    let bed = bed();
    let s = &bed.snapshotter;
    // A committed parent, made through an ordinary prepare + commit.
    s.prepare("p-active", None, Labels::new()).unwrap();
    s.commit("parent", "p-active", Labels::new()).unwrap();

    let first = prepare_in_thread(s, "extract-1", Some("parent"), "chain");
    bed.started.recv_timeout(Duration::from_secs(10)).unwrap();

    // The lock is free: unrelated snapshots come and go during the mount.
    s.prepare("unrelated", None, Labels::new()).unwrap();
    s.remove("unrelated").unwrap();
    // Cleanup does not take the directory being mounted for an orphan.
    assert_eq!(s.cleanup().unwrap(), 0);
    // The target is taken, its parent has a child.
    assert!(matches!(
        s.prepare("chain", None, Labels::new()),
        Err(SnapshotError::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.remove("parent"),
        Err(SnapshotError::HasChildren { child, .. }) if child == "chain"
    ));
    // A second prepare of the same target waits for the first mount.
    let second = prepare_in_thread(s, "extract-2", Some("parent"), "chain");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !second.is_finished(),
        "the second prepare waits for the mount in flight"
    );

    bed.release.send(true).unwrap();
    for handle in [first, second] {
        assert!(matches!(
            handle.join().unwrap(),
            Err(SnapshotError::AlreadyExists { key }) if key == "chain"
        ));
    }
    assert_eq!(*bed.remote.mounts.lock().unwrap(), 1, "one mount for both");
    let info = s.stat("chain").unwrap();
    assert_eq!(
        (info.kind, info.parent.as_deref()),
        (SnapshotKind::Committed, Some("parent"))
    );
    // No active snapshot was made for either key.
    assert!(matches!(
        s.stat("extract-1"),
        Err(SnapshotError::NotFound { .. })
    ));
    assert!(matches!(
        s.stat("extract-2"),
        Err(SnapshotError::NotFound { .. })
    ));
}

#[test]
fn a_layer_that_is_not_lazy_falls_back_after_the_unlocked_mount() {
    let bed = bed();
    let s = &bed.snapshotter;
    let first = prepare_in_thread(s, "extract", None, "chain");
    bed.started.recv_timeout(Duration::from_secs(10)).unwrap();
    // Ids handed out during the mount never collide with the reserved one.
    s.prepare("during", None, Labels::new()).unwrap();
    bed.release.send(false).unwrap();
    let mounts = first.join().unwrap().unwrap();
    assert_eq!(mounts[0].fs_type, "bind");
    assert_eq!(s.stat("extract").unwrap().kind, SnapshotKind::Active);
    assert!(matches!(
        s.stat("chain"),
        Err(SnapshotError::NotFound { .. })
    ));
    let during = s.mounts("during").unwrap();
    assert_ne!(mounts[0].source, during[0].source);
    // The reservation is gone: the name can be taken now.
    s.prepare("chain", None, Labels::new()).unwrap();

    // commit_remote (skiff's own pull) takes the same path.
    let handle = {
        let (s, layer) = (s.clone(), layer("pulled"));
        std::thread::spawn(move || s.commit_remote(None, &layer, Labels::new()))
    };
    bed.started.recv_timeout(Duration::from_secs(10)).unwrap();
    bed.release.send(true).unwrap();
    assert!(handle.join().unwrap().unwrap());
    assert!(
        s.commit_remote(None, &layer("pulled"), Labels::new())
            .unwrap(),
        "exists: nothing to mount"
    );
    assert_eq!(*bed.remote.mounts.lock().unwrap(), 2);
}
