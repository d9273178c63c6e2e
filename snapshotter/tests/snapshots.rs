//! Snapshots over real directories, metadata in the in-memory `KvStore` (and RocksDB for restarts): every
//! operation and error of the `Snapshotter`, crash leftovers cleaned at open, and (as root) the mounts really mounted with overlayfs.

use std::path::Path;

use skiff_snapshotter::meta::{Labels, MetaStore};
use skiff_snapshotter::snapshots::{
    AnyFilter, LabelChange, Mount, SnapshotError, SnapshotKind, Snapshotter,
};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

struct Bed {
    dir: tempfile::TempDir,
    snapshotter: Snapshotter,
}

impl Bed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let snapshotter =
            Snapshotter::open(&dir.path().join("snapshots"), MetaStore::in_memory()).unwrap();
        Bed { dir, snapshotter }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("snapshots")
    }

    /// The directory names under the snapshots root, sorted.
    fn dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The writable tree of an active snapshot, from its mounts (bind source or upperdir).
    fn upper(&self, key: &str) -> std::path::PathBuf {
        let mounts = self.snapshotter.mounts(key).unwrap();
        match mounts[0].fs_type.as_str() {
            "bind" => mounts[0].source.clone().into(),
            _ => mounts[0]
                .options
                .iter()
                .find_map(|o| o.strip_prefix("upperdir="))
                .unwrap()
                .into(),
        }
    }

    /// prepare + write files + commit.
    fn layer(&self, name: &str, parent: Option<&str>, files: &[(&str, &str)]) {
        let key = format!("{name}-active");
        self.snapshotter
            .prepare(&key, parent, Labels::new())
            .unwrap();
        for (path, contents) in files {
            std::fs::write(self.upper(&key).join(path), contents).unwrap();
        }
        self.snapshotter.commit(name, &key, Labels::new()).unwrap();
    }
}

fn option<'a>(mount: &'a Mount, name: &str) -> Option<&'a str> {
    mount
        .options
        .iter()
        .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
}

#[test]
fn prepare_commit_and_mounts_follow_containerds_overlayfs() {
    let bed = Bed::new();
    let s = &bed.snapshotter;
    let first = s
        .prepare("/abs/key/1", None, labels(&[("a", "1")]))
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].fs_type, "bind");
    assert_eq!(first[0].options, ["rw", "rbind"]);
    let fs = Path::new(&first[0].source);
    assert!(fs.starts_with(bed.root()) && fs.ends_with("fs"), "{fs:?}");
    assert!(fs.parent().unwrap().join("work").is_dir());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs.metadata().unwrap().permissions().mode() & 0o777, 0o755);
    std::fs::write(fs.join("hello"), "world").unwrap();

    let info = s.stat("/abs/key/1").unwrap();
    assert_eq!(info.kind, SnapshotKind::Active);
    assert_eq!(info.labels, labels(&[("a", "1")]));
    assert_eq!(info.created_at, info.updated_at);

    s.commit("base", "/abs/key/1", labels(&[("c", "2")]))
        .unwrap();
    assert!(matches!(
        s.stat("/abs/key/1"),
        Err(SnapshotError::NotFound { .. })
    ));
    let base = s.stat("base").unwrap();
    assert_eq!(base.kind, SnapshotKind::Committed);
    assert_eq!(base.labels, labels(&[("c", "2")]), "commit replaces labels");
    assert_eq!(base.parent, None);
    let base_fs = fs.to_path_buf();
    assert_eq!(
        s.mounts("base").unwrap()[0].source,
        base_fs.to_string_lossy()
    );

    // Active on one committed parent: overlay, nearest parent first.
    let mounts = s.prepare("child", Some("base"), Labels::new()).unwrap();
    assert_eq!(mounts[0].fs_type, "overlay");
    assert_eq!(mounts[0].source, "overlay");
    assert_eq!(
        option(&mounts[0], "lowerdir"),
        Some(&*base_fs.to_string_lossy())
    );
    let upper = option(&mounts[0], "upperdir").unwrap();
    let work = option(&mounts[0], "workdir").unwrap();
    assert!(Path::new(upper).is_dir() && Path::new(work).is_dir());
    assert_eq!(s.mounts("child").unwrap(), mounts, "Mounts repeats Prepare");
    assert_eq!(s.stat("child").unwrap().parent.as_deref(), Some("base"));

    // A view of one parent: read-only bind of the parent's tree.
    let view = s.view("view", Some("base"), Labels::new()).unwrap();
    assert_eq!(view[0].fs_type, "bind");
    assert_eq!(view[0].source, base_fs.to_string_lossy());
    assert_eq!(view[0].options, ["ro", "rbind"]);
    // A view of nothing: read-only bind of its own empty tree.
    let empty = s.view("empty-view", None, Labels::new()).unwrap();
    assert_eq!(empty[0].options, ["ro", "rbind"]);
    assert_ne!(empty[0].source, base_fs.to_string_lossy());

    // Two levels: lowerdir lists the nearest parent first; a view over it has no upper dir.
    std::fs::write(Path::new(upper).join("second"), "2").unwrap();
    s.commit("second", "child", Labels::new()).unwrap();
    let top = s.prepare("top", Some("second"), Labels::new()).unwrap();
    let lower = option(&top[0], "lowerdir").unwrap();
    let lowers: Vec<&str> = lower.split(':').collect();
    assert_eq!(lowers.len(), 2);
    assert_eq!(
        lowers[0], upper,
        "the committed child's tree is the nearest lower"
    );
    assert_eq!(lowers[1], base_fs.to_string_lossy());
    let deep_view = s.view("deep-view", Some("second"), Labels::new()).unwrap();
    assert_eq!(deep_view[0].fs_type, "overlay");
    assert_eq!(deep_view[0].options, [format!("lowerdir={lower}")]);
}

#[test]
fn remove_deletes_record_and_directory_leaves_first() {
    let bed = Bed::new();
    let s = &bed.snapshotter;
    bed.layer("base", None, &[("f", "x")]);
    s.prepare("a", Some("base"), Labels::new()).unwrap();
    s.view("v", Some("base"), Labels::new()).unwrap();
    assert_eq!(bed.dirs().len(), 3);
    s.remove("a").unwrap();
    assert!(matches!(
        s.remove("base"),
        Err(SnapshotError::HasChildren { .. })
    ));
    s.remove("v").unwrap();
    s.remove("base").unwrap();
    assert!(bed.dirs().is_empty(), "{:?}", bed.dirs());
    assert!(s.list(&AnyFilter::default()).unwrap().is_empty());
    // A key can be reused once removed.
    s.prepare("base", None, Labels::new()).unwrap();
}

#[test]
fn update_changes_only_labels() {
    let bed = Bed::new();
    let s = &bed.snapshotter;
    s.prepare("a", None, labels(&[("keep", "1"), ("drop", "2")]))
        .unwrap();
    let before = s.stat("a").unwrap();
    let request = labels(&[("new", "3")]);
    let changes =
        LabelChange::from_field_paths("a", &["labels.new", "labels.drop"], &request).unwrap();
    let after = s.update("a", changes).unwrap();
    assert_eq!(after.labels, labels(&[("keep", "1"), ("new", "3")]));
    assert_eq!(after.created_at, before.created_at);
    assert!(after.updated_at > before.updated_at);
    assert_eq!(s.stat("a").unwrap(), after);
    let replaced = s
        .update(
            "a",
            LabelChange::from_field_paths::<&str>("a", &[], &request).unwrap(),
        )
        .unwrap();
    assert_eq!(replaced.labels, request);
    let err = LabelChange::from_field_paths("a", &["parent"], &request).unwrap_err();
    // InvalidArgument at the gRPC edge (daemon/tests/snapshots_grpc.rs).
    assert!(matches!(err, SnapshotError::ImmutableField { .. }), "{err}");
}

#[test]
fn usage_is_measured_while_active_and_stored_at_commit() {
    let bed = Bed::new();
    let s = &bed.snapshotter;
    s.prepare("a", None, Labels::new()).unwrap();
    let empty = s.usage("a").unwrap();
    assert_eq!(empty.inodes, 1, "the fs dir itself");
    std::fs::write(bed.upper("a").join("big"), vec![1u8; 256 << 10]).unwrap();
    std::fs::create_dir(bed.upper("a").join("d")).unwrap();
    let grown = s.usage("a").unwrap();
    assert_eq!(grown.inodes, 3);
    assert!(grown.size >= empty.size + (256 << 10), "{grown:?}");
    s.commit("c", "a", Labels::new()).unwrap();
    assert_eq!(s.usage("c").unwrap(), grown);
}

#[test]
fn list_filters_like_containerd() {
    let bed = Bed::new();
    let s = &bed.snapshotter;
    let gc = ("containerd.io/gc.root", "check-walk");
    s.prepare("p-a", None, labels(&[gc])).unwrap();
    s.commit("p", "p-a", labels(&[gc])).unwrap();
    s.prepare("a-wl", Some("p"), labels(&[gc, ("l", "2")]))
        .unwrap();
    s.view("v-wl", Some("p"), labels(&[gc])).unwrap();
    s.prepare("a-np-wl", None, Labels::new()).unwrap();
    let names = |filters: &[&str]| -> Vec<String> {
        s.list(&AnyFilter::parse(filters).unwrap())
            .unwrap()
            .into_iter()
            .map(|i| i.key)
            .collect()
    };
    assert_eq!(names(&[]), ["a-np-wl", "a-wl", "p", "v-wl"]);
    assert_eq!(names(&["parent==p"]), ["a-wl", "v-wl"]);
    assert_eq!(names(&["kind==view"]), ["v-wl"]);
    assert_eq!(names(&["kind==committed"]), ["p"]);
    assert_eq!(names(&["name==p", "name==a-np-wl"]), ["a-np-wl", "p"]);
    assert_eq!(names(&["labels.l==2"]), ["a-wl"]);
    assert_eq!(
        names(&[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#]),
        ["a-wl"]
    );
    assert_eq!(
        names(&[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#]),
        ["a-wl", "v-wl"]
    );
    assert!(AnyFilter::parse(&["kind=="]).is_err());
}

#[test]
fn cleanup_and_open_remove_directories_without_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snapshots");
    let db = dir.path().join("meta");
    {
        let s = Snapshotter::open(&root, MetaStore::open_rocks(&db).unwrap()).unwrap();
        s.prepare("kept", None, Labels::new()).unwrap();
        s.commit("layer", "kept", Labels::new()).unwrap();
        s.prepare("top", Some("layer"), Labels::new()).unwrap();
        // What crashes leave: a half-made dir, a dir renamed into place whose record was never written
        // (its id is the next one), and a removal that did not finish.
        std::fs::create_dir_all(root.join("new-9/fs")).unwrap();
        std::fs::create_dir_all(root.join("3/fs/x")).unwrap();
        std::fs::create_dir_all(root.join("rm-7/fs")).unwrap();
        assert_eq!(s.cleanup().unwrap(), 3);
        std::fs::create_dir_all(root.join("3/fs/x")).unwrap();
    }
    // Restart on the same RocksDB: records intact, the orphan gone before anything is served.
    let s = Snapshotter::open(&root, MetaStore::open_rocks(&db).unwrap()).unwrap();
    assert_eq!(s.stat("layer").unwrap().kind, SnapshotKind::Committed);
    assert_eq!(s.stat("top").unwrap().parent.as_deref(), Some("layer"));
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["1", "2"]);
    // The id the orphan had is handed out again, cleanly.
    let mounts = s.prepare("next", None, Labels::new()).unwrap();
    assert!(mounts[0].source.ends_with("/3/fs"), "{mounts:?}");
    assert_eq!(std::fs::read_dir(&mounts[0].source).unwrap().count(), 0);
}

/// As root: the returned mounts really mount, overlay layers stack, views are read-only.
#[test]
fn mounts_mount_with_overlayfs_as_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("mounts_mount_with_overlayfs_as_root: not root, mount checks not run");
        return;
    }
    let bed = Bed::new();
    let s = &bed.snapshotter;
    bed.layer("l1", None, &[("a", "1"), ("b", "1")]);
    bed.layer("l2", Some("l1"), &[("b", "2")]);
    let target = bed.dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let mount = |m: &Mount| {
        use nix::mount::MsFlags;
        let (fstype, flags, data) = match m.fs_type.as_str() {
            "bind" => {
                let ro = m.options.iter().any(|o| o == "ro");
                (None, MsFlags::MS_BIND | MsFlags::MS_REC, (ro, None))
            }
            _ => (
                Some(m.fs_type.as_str()),
                MsFlags::empty(),
                (false, Some(m.options.join(","))),
            ),
        };
        nix::mount::mount(
            Some(m.source.as_str()),
            &target,
            fstype,
            flags,
            data.1.as_deref(),
        )
        .unwrap();
        if data.0 {
            nix::mount::mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .unwrap();
        }
    };
    /// Unmounts on drop, so a failed assertion leaves no mount behind.
    struct Mounted<'a>(&'a Path);
    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
    }

    let active = s.prepare("top", Some("l2"), Labels::new()).unwrap();
    {
        mount(&active[0]);
        let _mounted = Mounted(&target);
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(target.join("b")).unwrap(), "2");
        std::fs::write(target.join("c"), "3").unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(bed.upper("top").join("c")).unwrap(),
        "3"
    );

    let view = s.view("v", Some("l2"), Labels::new()).unwrap();
    let (write, b) = {
        mount(&view[0]);
        let _mounted = Mounted(&target);
        (
            std::fs::write(target.join("x"), "no"),
            std::fs::read_to_string(target.join("b")),
        )
    };
    assert!(write.is_err(), "a view is read-only");
    assert_eq!(b.unwrap(), "2");
}
