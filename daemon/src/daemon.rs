//! The skiffd daemon: takes the root lock, opens the stores, mounts the remote (lazy) snapshots again,
//! and serves the gRPC services on a 0600 unix socket until SIGTERM or SIGINT.
//!
//! Shutdown runs in a known order:
//!
//! 1. the socket stops accepting connections, and the daemon's own work is told to stop
//!    ([`DaemonTasks::cancel`]): task output and content streams end at once, pulls stop at their next
//!    step and remove what they made;
//! 2. requests in flight finish (the gRPC server's graceful shutdown);
//! 3. the daemon's spawned work is waited for ([`DaemonTasks::drain`], up to [`GRACE`]);
//! 4. the socket file is removed;
//! 5. the lazy mounts are left to the keeper, which holds their connections until the next skiffd takes
//!    them over (the restart and upgrade path: containers keep reading, requests wait in the kernel, and
//!    reads in flight are answered by the next skiffd);
//! 6. or, with `--unmount-on-exit` or without a keeper: the lazy layers' work stops (background fetching
//!    and readahead are cancelled, span fetches in flight give up, read replies finish; up to
//!    [`GRACE`]), and every remote snapshot is unmounted (a mount still in use is detached and lives
//!    while its users do);
//! 7. the root lock is released.
//!
//! Startup takes the mounts back: for each remote snapshot, the connection the keeper holds for it is
//! served again; a mount whose connection is gone (keeper killed too, say) is aborted and detached and
//! the layer mounted afresh.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use skiff_api::v1;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use skiff_snapshotter::content::{ContentError, ContentStore};
use skiff_snapshotter::meta::{MetaError, MetaStore};
use skiff_snapshotter::snapshots::{SnapshotError, Snapshotter};

use crate::config::Config;
use crate::containers::Containers;
use crate::grpc::{
    ContainersService, ContentService, ImagesService, NamespacesService, SnapshotsService,
    TasksService, VersionService,
};
use crate::images::{Images, RegistrySources};
use crate::lazy_layers::{FuseRemoteLayers, LazyLayersError, RemoteSnapshots};
use crate::task_runtime::ShimRuntime;
use crate::tasks::Tasks;
use crate::work::DaemonTasks;

/// How long each step of shutdown waits for the tasks it stops.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often skiffd checks its keeper is alive (and starts a new one, handing it every mount, if not).
pub const KEEPER_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another skiffd holds the root {root} (lock {lock})")]
    RootBusy { root: PathBuf, lock: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("content store: {0}")]
    Content(#[from] ContentError),
    #[error("metadata store: {0}")]
    Meta(#[from] MetaError),
    #[error("snapshots: {0}")]
    Snapshots(#[from] SnapshotError),
    #[error("lazy layers: {}", skiff_types::error_chain(.0))]
    LazyLayers(#[from] LazyLayersError),
    #[error("startup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Holds the root for the daemon's lifetime; a second skiffd on the same root is refused.
pub struct RootLock {
    _lock: Flock<File>,
}

impl RootLock {
    pub fn acquire(config: &Config) -> Result<RootLock, DaemonError> {
        std::fs::create_dir_all(&config.root).map_err(io_error("create root", &config.root))?;
        let path = config.lock_file();
        let file = File::create(&path).map_err(io_error("open lock file", &path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(RootLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(DaemonError::RootBusy {
                root: config.root.clone(),
                lock: path,
            }),
            Err((_, errno)) => Err(DaemonError::Io {
                action: "lock",
                path,
                source: errno.into(),
            }),
        }
    }
}

/// The stores under the root.
struct Stores {
    content: ContentStore,
    meta: MetaStore,
}

fn open_stores(config: &Config) -> Result<Stores, DaemonError> {
    Ok(Stores {
        content: ContentStore::open(&config.content_dir())?,
        meta: MetaStore::open_rocks(&config.metadata_dir())?,
    })
}

/// Binds the socket with mode 0600; a stale socket left by a dead daemon is replaced (the root lock
/// proves no live daemon of this root owns it).
fn bind(address: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(io_error("create socket dir", dir))?;
    }
    match std::fs::remove_file(address) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error("remove stale socket", address)(err)),
    }
    let listener = UnixListener::bind(address).map_err(io_error("bind", address))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error("chmod", address))?;
    Ok(listener)
}

/// Runs until SIGTERM or SIGINT, then drains in-flight requests and removes the socket.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let _lock = RootLock::acquire(&config)?;
    let stores = open_stores(&config)?;
    let lazy = Arc::new(FuseRemoteLayers::open(
        &config,
        tokio::runtime::Handle::current(),
    )?);
    // Before the socket opens: directories a crash left without a record are deleted here, and every
    // remote snapshot is mounted again.
    let snapshotter = Snapshotter::open(&config.snapshots_dir(), stores.meta.clone())?
        .with_remote_mounts(Arc::clone(&lazy) as Arc<_>);
    let remote = RemoteSnapshots::new(snapshotter.clone(), Arc::clone(&lazy) as Arc<_>);
    remote.remount_all().await?;
    lazy.finish_startup();
    let images = Images::new(
        stores.content.clone(),
        stores.meta.clone(),
        Arc::new(RegistrySources(config.registry.clone())),
        config.registry.max_concurrent_downloads,
    )
    .with_snapshotter(snapshotter.clone(), Some(remote.clone()));
    let containers = Containers::new(
        stores.meta.clone(),
        stores.content.clone(),
        images.clone(),
        snapshotter.clone(),
        config.root.join("scratch"),
    );
    // Tasks live in task dirs under the root, each held by its own shim: a restarted skiffd finds them.
    let tasks = Tasks::new(
        containers.clone(),
        snapshotter.clone(),
        config.root.join("tasks"),
        config.root.join("runc"),
        Arc::new(ShimRuntime { shim_binary: None }),
    );
    let work = DaemonTasks::default();
    work.every(KEEPER_CHECK, {
        let lazy = Arc::clone(&lazy);
        move || lazy.check_keeper()
    });
    work.every(crate::malloc::TRIM_EVERY, crate::malloc::trim);
    let listener = match bind(&config.address) {
        Ok(listener) => listener,
        Err(err) => {
            lazy.unmount_all();
            return Err(err);
        }
    };
    let mut terminate = signal(SignalKind::terminate())
        .map_err(io_error("install SIGTERM handler", &config.address))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(io_error("install SIGINT handler", &config.address))?;
    let shutdown = {
        let work = work.clone();
        async move {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM received, shutting down"),
                _ = interrupt.recv() => info!("SIGINT received, shutting down"),
            }
            work.cancel();
        }
    };
    info!(root = %config.root.display(), address = %config.address.display(), "skiffd serving");
    let served = tonic::transport::Server::builder()
        .add_service(v1::version_server::VersionServer::new(VersionService))
        .add_service(v1::namespaces_server::NamespacesServer::new(
            NamespacesService {
                meta: stores.meta.clone(),
            },
        ))
        .add_service(v1::images_server::ImagesServer::new(ImagesService {
            images,
            work: work.clone(),
        }))
        .add_service(v1::content_server::ContentServer::new(ContentService {
            content: stores.content,
            meta: stores.meta,
            work: work.clone(),
        }))
        .add_service(v1::containers_server::ContainersServer::new(
            ContainersService(containers, tasks.clone()),
        ))
        .add_service(v1::tasks_server::TasksServer::new(TasksService(
            tasks,
            work.clone(),
        )))
        .add_service(
            SnapshotsService::new(snapshotter.clone())
                .with_remote(remote)
                .into_server(),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let left = work.drain(GRACE).await;
    if left > 0 {
        warn!(left, "daemon tasks still running after the grace period");
    }
    let _ = std::fs::remove_file(&config.address);
    if lazy.keeps_mounts() && !config.unmount_on_exit {
        // Reads in flight are neither cancelled nor answered with an error: the kernel sends a request
        // this skiffd read but did not answer to the next one (see `skiffd`'s main: the runtime's tasks
        // are never dropped).
        lazy.hand_over();
    } else {
        lazy.stop_work(GRACE).await;
        let unmounted = tokio::task::spawn_blocking(move || snapshotter.unmount_remote()).await;
        // Whatever is still mounted (a failed remove, say) goes too.
        lazy.unmount_all();
        unmounted??;
    }
    served?;
    info!("skiffd stopped");
    Ok(())
}
