//! The `containerd.services.snapshots.v1` gRPC service over a real `Snapshotter` (directories on disk,
//! in-memory metadata): the codes containerd relies on, for every refusal of the snapshotter.

use std::collections::HashMap;

use skiff_api::containerd::snapshots::v1 as api;
use skiff_api::containerd::snapshots::v1::snapshots_server::Snapshots as _;
use skiff_daemon::grpc::status::ToStatus;
use skiff_daemon::grpc::SnapshotsService;
use skiff_snapshotter::meta::{Labels, MetaStore};
use skiff_snapshotter::snapshots::{AnyFilter, Snapshotter};
use tonic::{Code, Request};

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

    /// The directory names under the snapshots root, sorted.
    fn dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// An empty committed layer.
    fn layer(&self, name: &str, parent: Option<&str>) {
        let key = format!("{name}-active");
        self.snapshotter
            .prepare(&key, parent, Labels::new())
            .unwrap();
        self.snapshotter.commit(name, &key, Labels::new()).unwrap();
    }
}

#[tokio::test]
async fn grpc_service_answers_with_containerds_codes() {
    let dir = tempfile::tempdir().unwrap();
    let snapshotter =
        Snapshotter::open(&dir.path().join("snapshots"), MetaStore::in_memory()).unwrap();
    let service = SnapshotsService::new(snapshotter);
    let prepared = service
        .prepare(Request::new(api::PrepareSnapshotRequest {
            snapshotter: "skiff".into(),
            key: "k".into(),
            parent: String::new(),
            labels: HashMap::from([("a".to_owned(), "1".to_owned())]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prepared.mounts[0].r#type, "bind");
    assert_eq!(prepared.mounts[0].options, ["rw", "rbind"]);

    let again = service
        .prepare(Request::new(api::PrepareSnapshotRequest {
            key: "k".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    let view_commit = service
        .view(Request::new(api::ViewSnapshotRequest {
            key: "v".into(),
            ..Default::default()
        }))
        .await
        .and(
            service
                .commit(Request::new(api::CommitSnapshotRequest {
                    name: "c".into(),
                    key: "v".into(),
                    ..Default::default()
                }))
                .await,
        )
        .unwrap_err();
    assert_eq!(view_commit.code(), Code::FailedPrecondition);

    let stat = service
        .stat(Request::new(api::StatSnapshotRequest {
            key: "k".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(stat.kind, api::Kind::Active as i32);
    assert_eq!(stat.created_at, stat.updated_at);

    let update = service
        .update(Request::new(api::UpdateSnapshotRequest {
            info: Some(api::Info {
                name: "k".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["parent".into()],
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::InvalidArgument);

    let bad_filter = service
        .list(Request::new(api::ListSnapshotsRequest {
            filters: vec!["kind==".into()],
            ..Default::default()
        }))
        .await
        .err()
        .unwrap();
    assert_eq!(bad_filter.code(), Code::InvalidArgument);

    use futures::StreamExt;
    let listed: Vec<String> = service
        .list(Request::new(api::ListSnapshotsRequest {
            filters: vec!["kind==view".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().info)
        .concat()
        .await
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, ["v"]);

    let usage = service
        .usage(Request::new(api::UsageRequest {
            key: "k".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.inodes, 1);

    let missing = service
        .remove(Request::new(api::RemoveSnapshotRequest {
            key: "missing".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    service
        .cleanup(Request::new(api::CleanupRequest::default()))
        .await
        .unwrap();
}

#[test]
fn errors_carry_containerds_meaning_and_change_nothing() {
    let bed = Bed::new();
    let s = &bed.snapshotter;
    bed.layer("base", None);
    s.prepare("active", Some("base"), Labels::new()).unwrap();
    s.view("view", Some("base"), Labels::new()).unwrap();
    let dirs_before = bed.dirs();
    let listed_before = s.list(&AnyFilter::default()).unwrap();

    let refused = [
        s.prepare("active", None, Labels::new()).unwrap_err(),
        s.view("base", None, Labels::new()).unwrap_err(),
        s.prepare("new", Some("missing"), Labels::new())
            .unwrap_err(),
        s.prepare("new", Some("active"), Labels::new()).unwrap_err(),
        s.view("new", Some("view"), Labels::new()).unwrap_err(),
        s.commit("base", "active", Labels::new()).unwrap_err(),
        s.commit("new", "missing", Labels::new()).unwrap_err(),
        s.commit("new", "view", Labels::new()).unwrap_err(),
        s.commit("new", "base", Labels::new()).unwrap_err(),
        s.remove("missing").unwrap_err(),
        s.remove("base").unwrap_err(),
        s.mounts("missing").unwrap_err(),
        s.stat("missing").unwrap_err(),
        s.usage("missing").unwrap_err(),
        s.update("missing", vec![]).unwrap_err(),
        s.prepare("", None, Labels::new()).unwrap_err(),
        s.prepare("nul\0key", None, Labels::new()).unwrap_err(),
        s.prepare("new", None, labels(&[("", "v")])).unwrap_err(),
        s.prepare("new", None, labels(&[("k", &"v".repeat(4096))]))
            .unwrap_err(),
        s.commit("new", "active", labels(&[("", "v")])).unwrap_err(),
    ];
    let codes: Vec<Code> = refused.into_iter().map(|e| e.to_status().code()).collect();
    use Code::*;
    assert_eq!(
        codes,
        [
            AlreadyExists,
            AlreadyExists,
            NotFound,
            InvalidArgument,
            InvalidArgument,
            AlreadyExists,
            NotFound,
            FailedPrecondition,
            FailedPrecondition,
            NotFound,
            FailedPrecondition,
            NotFound,
            NotFound,
            NotFound,
            NotFound,
            InvalidArgument,
            InvalidArgument,
            InvalidArgument,
            InvalidArgument,
            InvalidArgument,
        ]
    );
    assert_eq!(bed.dirs(), dirs_before, "no directory made or removed");
    assert_eq!(s.list(&AnyFilter::default()).unwrap(), listed_before);

    let message = s.remove("base").unwrap_err().to_string();
    assert!(message.contains("has a child"), "{message}");
    let message = s
        .commit("new", "view", Labels::new())
        .unwrap_err()
        .to_string();
    assert_eq!(message, "snapshot \"view\" is view, not active");
}
