//! skiffd's gRPC edge: one module per service, each a thin translation between protobuf messages and the
//! daemon's typed calls, and [`status`], the one place errors become `tonic::Status`.
//!
//! | service | module | over |
//! | --- | --- | --- |
//! | `skiff.v1.Version` | [`version`] | the build |
//! | `skiff.v1.Namespaces` | [`namespaces`] | the metadata store |
//! | `skiff.v1.Images` | [`images`] | [`crate::images::Images`] |
//! | `skiff.v1.Content` | [`content`] | the content store |
//! | `skiff.v1.Containers` | [`containers`] | [`crate::containers::Containers`] |
//! | `skiff.v1.Tasks` | [`tasks`] | [`crate::tasks::Tasks`] |
//! | `containerd.services.snapshots.v1.Snapshots` | [`snapshots`] | the snapshotter (and lazy layers) |

pub mod containers;
pub mod content;
pub mod images;
pub mod namespaces;
pub mod snapshots;
pub mod status;
pub mod tasks;
pub mod version;

use std::pin::Pin;
use std::time::SystemTime;

use futures::Stream;
use tonic::Status;

pub use containers::ContainersService;
pub use content::ContentService;
pub use images::ImagesService;
pub use namespaces::NamespacesService;
pub use snapshots::SnapshotsService;
pub use tasks::TasksService;
pub use version::VersionService;

type ServiceStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}
