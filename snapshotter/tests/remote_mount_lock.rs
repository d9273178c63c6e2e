//! A remote layer is mounted (network IO) without the snapshotter's lock, under a reservation: other
//! snapshot operations go on meanwhile, while the target name, its parent and its directory stay
//! reserved: a concurrent reservation of the same target waits and finds the snapshot committed (one
//! mount in all), `Cleanup` leaves the directory alone, removing the parent is refused, and an abandoned
//! reservation (a layer that is not lazy) leaves nothing behind and frees the name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_snapshotter::meta::{Labels, MetaStore};
use skiff_snapshotter::snapshots::{
    RemoteError, RemoteLayer, RemoteMounts, RemoteSnapshot, SnapshotError, SnapshotKind,
    Snapshotter,
};

const LAYER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// "Mounts" by writing a file; records unmounts.
#[derive(Default)]
struct FileMounts {
    unmounted: Mutex<Vec<PathBuf>>,
}

impl FileMounts {
    fn mount(&self, mountpoint: &Path) {
        std::fs::write(mountpoint.join("layer.txt"), "lazy").unwrap();
    }
}

impl RemoteMounts for FileMounts {
    fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteError> {
        self.unmounted
            .lock()
            .unwrap()
            .push(mountpoint.to_path_buf());
        match std::fs::remove_file(mountpoint.join("layer.txt")) {
            Ok(()) => Ok(()),
            Err(_) => Err(RemoteError::NotMounted {
                mountpoint: mountpoint.to_path_buf(),
            }),
        }
    }
}

fn layer(target: &str) -> RemoteSnapshot {
    RemoteSnapshot {
        layer: RemoteLayer {
            target: target.into(),
            image_ref: "127.0.0.1:5000/app:1".into(),
            layer_digest: LAYER.parse().unwrap(),
            manifest_digest: None,
            image_layers: Vec::new(),
            annotations: Labels::new(),
            plain_http: false,
        },
        descriptor: None,
    }
}

struct Bed {
    _dir: tempfile::TempDir,
    snapshotter: Snapshotter,
    mounts: Arc<FileMounts>,
}

fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let mounts = Arc::new(FileMounts::default());
    let snapshotter = Snapshotter::open(&dir.path().join("snapshots"), MetaStore::in_memory())
        .unwrap()
        .with_remote_mounts(Arc::clone(&mounts) as Arc<dyn RemoteMounts>);
    Bed {
        _dir: dir,
        snapshotter,
        mounts,
    }
}

#[test]
fn other_work_goes_on_while_a_layer_mounts_and_the_target_is_reserved() {
    let bed = bed();
    let s = &bed.snapshotter;
    // A committed parent, made through an ordinary prepare + commit.
    s.prepare("p-active", None, Labels::new()).unwrap();
    s.commit("parent", "p-active", Labels::new()).unwrap();

    let first = s
        .reserve_remote("chain", Some("parent"), Some("extract-1"), &Labels::new())
        .unwrap()
        .expect("a reservation");

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
    // A second reservation of the same target waits for the first.
    let second = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.reserve_remote("chain", Some("parent"), Some("extract-2"), &Labels::new())
                .map(|reservation| reservation.is_some())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !second.is_finished(),
        "the second reservation waits for the mount in flight"
    );

    bed.mounts.mount(&first.mountpoint());
    first.commit(layer("chain")).unwrap();
    assert!(
        !second.join().unwrap().unwrap(),
        "committed meanwhile: nothing to mount a second time"
    );
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
    assert!(bed.mounts.unmounted.lock().unwrap().is_empty());
}

#[test]
fn an_abandoned_reservation_leaves_nothing_and_the_fallback_follows() {
    let bed = bed();
    let s = &bed.snapshotter;
    let reservation = s
        .reserve_remote("chain", None, Some("extract"), &Labels::new())
        .unwrap()
        .unwrap();
    let mountpoint = reservation.mountpoint();
    // Ids handed out during the mount never collide with the reserved one.
    s.prepare("during", None, Labels::new()).unwrap();
    // Not lazy: the reservation is dropped (anything mounted there is unmounted), then the ordinary
    // prepare containerd unpacks into.
    bed.mounts.mount(&mountpoint);
    drop(reservation);
    assert_eq!(
        *bed.mounts.unmounted.lock().unwrap(),
        std::slice::from_ref(&mountpoint)
    );
    assert!(!mountpoint.parent().unwrap().exists());
    let mounts = s.prepare("extract", None, Labels::new()).unwrap();
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

    // skiff's own pull checks the target itself, and a committed target needs no mount.
    let pulled = s
        .reserve_remote("pulled", None, None, &Labels::new())
        .unwrap()
        .unwrap();
    bed.mounts.mount(&pulled.mountpoint());
    pulled.commit(layer("pulled")).unwrap();
    assert!(
        s.reserve_remote("pulled", None, None, &Labels::new())
            .unwrap()
            .is_none(),
        "exists: nothing to mount"
    );
    assert_eq!(s.remote_snapshots().unwrap().len(), 1);
}
