//! Tasks: the running side of containers, each held by its own `skiff-shim` (skiff-runtime, through the
//! [`TaskRuntime`] seam) so it outlives skiffd. Everything a task is lives in its task dir, `ROOT/tasks/NAMESPACE/ID`: the shim's files and the
//! bundle (`bundle/config.json`, the container's spec, and `bundle/rootfs`, where the container's snapshot
//! is mounted while the task exists). A restarted skiffd finds its tasks there and reconnects.
//!
//! The runtime's container id is `NAMESPACE--ID`: neither a namespace nor a container id may hold two
//! separators in a row, so it names one task of one namespace.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::{Process, Spec};
use skiff_runtime::options::{parse_env, parse_user};
use skiff_runtime::runc::Stats;
use skiff_runtime::shim::ShimError;
use skiff_runtime::task::{ExecId, ExitStatus, ProcessState, ShimConfig, TaskDir, TaskError};
use skiff_runtime::user::resolve_user;
use tracing::{debug, warn};

use crate::containers::{ContainerError, Containers};
use crate::task_runtime::{TaskControl, TaskRuntime};
use skiff_snapshotter::meta::{validate_container_id, validate_namespace, MetaError};
use skiff_snapshotter::snapshots::{unmount_and_remove, Snapshotter};

/// Failures of task operations; [`crate::grpc::status`] maps them to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum TaskFailure {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("container {id} has no task in namespace {namespace}")]
    NotFound { namespace: String, id: String },
    #[error("container {id} already has a task in namespace {namespace}")]
    AlreadyExists { namespace: String, id: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {}", path.display())]
    Mount {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TaskFailure {
    let path = path.to_path_buf();
    move |source| TaskFailure::Io {
        action,
        path,
        source,
    }
}

/// What an exec asks for.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub exec_id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub terminal: bool,
    pub stdin: bool,
}

/// The tasks of every namespace.
#[derive(Clone)]
pub struct Tasks {
    containers: Containers,
    snapshotter: Snapshotter,
    dir: PathBuf,
    runtime_root: PathBuf,
    runtime: Arc<dyn TaskRuntime>,
}

impl Tasks {
    /// Tasks under `dir` (`ROOT/tasks`), run by OCI runtimes with `--root runtime_root`, through
    /// `runtime` (skiffd: [`ShimRuntime`](crate::task_runtime::ShimRuntime)).
    pub fn new(
        containers: Containers,
        snapshotter: Snapshotter,
        dir: PathBuf,
        runtime_root: PathBuf,
        runtime: Arc<dyn TaskRuntime>,
    ) -> Self {
        Tasks {
            containers,
            snapshotter,
            dir,
            runtime_root,
            runtime,
        }
    }

    fn task_dir(&self, namespace: &str, id: &str) -> Result<PathBuf, TaskFailure> {
        validate_namespace(namespace)?;
        validate_container_id(id)?;
        Ok(self.dir.join(namespace).join(id))
    }

    /// Whether the container has a task (its task dir exists).
    pub fn exists(&self, namespace: &str, id: &str) -> Result<bool, TaskFailure> {
        Ok(self.task_dir(namespace, id)?.exists())
    }

    fn client(&self, namespace: &str, id: &str) -> Result<Arc<dyn TaskControl>, TaskFailure> {
        let dir = self.task_dir(namespace, id)?;
        self.runtime
            .connect(&dir)?
            .ok_or_else(|| TaskFailure::NotFound {
                namespace: namespace.to_owned(),
                id: id.to_owned(),
            })
    }

    /// Mounts the container's rootfs in a new bundle and has a shim create its init process.
    pub async fn create(
        &self,
        namespace: &str,
        id: &str,
        stdin: bool,
    ) -> Result<ProcessState, TaskFailure> {
        let record = self.containers.get(namespace, id)?;
        let dir = self.task_dir(namespace, id)?;
        if dir.exists() {
            return Err(TaskFailure::AlreadyExists {
                namespace: namespace.to_owned(),
                id: id.to_owned(),
            });
        }
        let spec: Spec =
            serde_json::from_value(record.spec.clone()).map_err(|e| TaskFailure::Invalid {
                field: "stored spec",
                reason: e.to_string(),
            })?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io("create", &rootfs))?;
        let prepared = self
            .prepare_bundle(&record.snapshot_key, &bundle, &rootfs, &spec)
            .await;
        if let Err(err) = prepared {
            self.remove_task_dir(&dir);
            return Err(err);
        }
        let config = ShimConfig {
            id: runtime_id(namespace, id),
            bundle: bundle.clone(),
            runtime: PathBuf::from(&record.runtime),
            runtime_root: self.runtime_root.clone(),
            terminal,
            stdin,
            no_pivot_root: false,
        };
        match self.runtime.create(&dir, &config).await {
            Ok(client) => {
                debug!(namespace, id, "task created");
                Ok(client.state(&ExecId::init()).await?)
            }
            Err(err) => {
                self.remove_task_dir(&dir);
                Err(err.into())
            }
        }
    }

    async fn prepare_bundle(
        &self,
        snapshot_key: &str,
        bundle: &Path,
        rootfs: &Path,
        spec: &Spec,
    ) -> Result<(), TaskFailure> {
        let snapshotter = self.snapshotter.clone();
        let key = snapshot_key.to_owned();
        let mounts = tokio::task::spawn_blocking(move || snapshotter.mounts(&key))
            .await?
            .map_err(ContainerError::from)?;
        let [mount] = mounts.as_slice() else {
            return Err(TaskFailure::Invalid {
                field: "snapshot mounts",
                reason: format!("expected one mount, got {}", mounts.len()),
            });
        };
        mount
            .mount_at(rootfs)
            .map_err(|source| TaskFailure::Mount {
                action: "mount the rootfs at",
                path: rootfs.to_path_buf(),
                source,
            })?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| TaskFailure::Invalid {
                field: "spec",
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// Unmounts the bundle's rootfs and removes the task dir; the rootfs is only ever removed once
    /// unmounted and empty, so nothing of the container's snapshot can be deleted here.
    fn remove_task_dir(&self, dir: &Path) {
        let rootfs = dir.join("bundle").join("rootfs");
        if rootfs.exists() {
            if let Err(err) = unmount_and_remove(&rootfs) {
                warn!(path = %rootfs.display(), error = %err, "cannot unmount and remove a task's rootfs; its dir stays");
                return;
            }
        }
        if let Err(err) = std::fs::remove_dir_all(dir) {
            warn!(path = %dir.display(), error = %err, "cannot remove a task dir");
        }
    }

    pub async fn start(&self, namespace: &str, id: &str) -> Result<ProcessState, TaskFailure> {
        let client = self.client(namespace, id)?;
        client.start().await?;
        Ok(client.state(&ExecId::init()).await?)
    }

    pub async fn state(&self, namespace: &str, id: &str) -> Result<ProcessState, TaskFailure> {
        Ok(self.client(namespace, id)?.state(&ExecId::init()).await?)
    }

    /// The tasks of a namespace (container id, state), sorted by id.
    pub async fn list(&self, namespace: &str) -> Result<Vec<(String, ProcessState)>, TaskFailure> {
        validate_namespace(namespace)?;
        let dir = self.dir.join(namespace);
        let mut ids = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io("read", &dir))?;
                    if let Some(id) = entry.file_name().to_str() {
                        ids.push(id.to_owned());
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io("read", &dir)(err)),
        }
        ids.sort();
        let mut tasks = Vec::new();
        for id in ids {
            match self.state(namespace, &id).await {
                Ok(state) => tasks.push((id, state)),
                Err(err) => {
                    warn!(namespace, id, error = %skiff_types::error_chain(&err), "cannot read a task's state")
                }
            }
        }
        Ok(tasks)
    }

    pub async fn kill(
        &self,
        namespace: &str,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), TaskFailure> {
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| TaskFailure::Invalid {
                field: "signal",
                reason: format!("{signal} is not a signal number"),
            })?;
        let exec = exec_id_of(exec_id)?;
        Ok(self.client(namespace, id)?.kill(&exec, signal, all).await?)
    }

    pub async fn pause(&self, namespace: &str, id: &str) -> Result<(), TaskFailure> {
        Ok(self.client(namespace, id)?.pause().await?)
    }

    pub async fn resume(&self, namespace: &str, id: &str) -> Result<(), TaskFailure> {
        Ok(self.client(namespace, id)?.resume().await?)
    }

    /// Starts another process in the running container: the container's process settings with the
    /// request's args, extra env, cwd and user.
    pub async fn exec(
        &self,
        namespace: &str,
        id: &str,
        request: ExecRequest,
    ) -> Result<u32, TaskFailure> {
        let exec = exec_id_of(&request.exec_id)?;
        if exec.is_init() {
            return Err(TaskFailure::Invalid {
                field: "exec id",
                reason: "an exec process needs an id of its own".to_owned(),
            });
        }
        if request.args.is_empty() {
            return Err(TaskFailure::Invalid {
                field: "args",
                reason: "no command to run".to_owned(),
            });
        }
        let client = self.client(namespace, id)?;
        let record = self.containers.get(namespace, id)?;
        let spec: Spec = serde_json::from_value(record.spec).map_err(|e| TaskFailure::Invalid {
            field: "stored spec",
            reason: e.to_string(),
        })?;
        let mut process: Process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(request.args.clone()));
        process.set_terminal(Some(request.terminal));
        let mut env = process.env().clone().unwrap_or_default();
        for entry in &request.env {
            let var = parse_env(entry).map_err(|e| TaskFailure::Invalid {
                field: "env",
                reason: e.to_string(),
            })?;
            env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(var.key.as_str()));
            env.push(var.to_string());
        }
        process.set_env(Some(env));
        if !request.cwd.is_empty() {
            process.set_cwd(PathBuf::from(&request.cwd));
        }
        if !request.user.is_empty() {
            let spec = parse_user(&request.user).map_err(|e| TaskFailure::Invalid {
                field: "user",
                reason: e.to_string(),
            })?;
            let rootfs = self.task_dir(namespace, id)?.join("bundle").join("rootfs");
            let resolved = resolve_user(&rootfs, &spec).map_err(|e| TaskFailure::Invalid {
                field: "user",
                reason: e.to_string(),
            })?;
            let mut user = process.user().clone();
            user.set_uid(resolved.uid);
            user.set_gid(resolved.gid);
            user.set_additional_gids(Some(resolved.additional_gids));
            process.set_user(user);
        }
        Ok(client
            .exec(&exec, &process, request.terminal, request.stdin)
            .await?)
    }

    pub async fn wait(
        &self,
        namespace: &str,
        id: &str,
        exec_id: &str,
    ) -> Result<ExitStatus, TaskFailure> {
        let exec = exec_id_of(exec_id)?;
        Ok(self.client(namespace, id)?.wait(&exec).await?)
    }

    /// Deletes an exited exec process, or the task (killing it first with `force`), unmounting its rootfs.
    pub async fn delete(
        &self,
        namespace: &str,
        id: &str,
        exec_id: &str,
        force: bool,
    ) -> Result<Option<ExitStatus>, TaskFailure> {
        let exec = exec_id_of(exec_id)?;
        let client = self.client(namespace, id)?;
        if !exec.is_init() {
            return Ok(Some(client.delete_exec(&exec).await?));
        }
        let exit = match client.delete(force).await {
            Ok(exit) => exit,
            // The shim died: what it recorded is all there is; the runtime's state goes too.
            Err(ShimError::Gone { .. }) | Err(ShimError::Lost { .. }) => client
                .state(&ExecId::init())
                .await
                .ok()
                .and_then(|s| s.exit),
            Err(err) => return Err(err.into()),
        };
        self.remove_task_dir(&self.task_dir(namespace, id)?);
        debug!(namespace, id, "task deleted");
        Ok(exit)
    }

    pub async fn metrics(&self, namespace: &str, id: &str) -> Result<Stats, TaskFailure> {
        Ok(self.client(namespace, id)?.metrics().await?)
    }

    pub async fn resize(
        &self,
        namespace: &str,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), TaskFailure> {
        let exec = exec_id_of(exec_id)?;
        let size = |v: u32, field| {
            u16::try_from(v).map_err(|_| TaskFailure::Invalid {
                field,
                reason: format!("{v} is too large"),
            })
        };
        Ok(self
            .client(namespace, id)?
            .resize(&exec, size(width, "width")?, size(height, "height")?)
            .await?)
    }

    /// The stdout and stderr files and stdin FIFO of a process of the task.
    pub fn stdio(
        &self,
        namespace: &str,
        id: &str,
        exec_id: &str,
    ) -> Result<(PathBuf, PathBuf, PathBuf), TaskFailure> {
        let exec = exec_id_of(exec_id)?;
        self.client(namespace, id)?;
        let dir = TaskDir::new(self.task_dir(namespace, id)?);
        Ok((dir.stdout(&exec), dir.stderr(&exec), dir.stdin(&exec)))
    }
}

/// `NAMESPACE--ID`, unique per task (see the module docs).
pub fn runtime_id(namespace: &str, id: &str) -> String {
    format!("{namespace}--{id}")
}

fn exec_id_of(exec_id: &str) -> Result<ExecId, TaskFailure> {
    if exec_id.is_empty() {
        return Ok(ExecId::init());
    }
    Ok(ExecId::new(exec_id)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ids_are_unambiguous() {
        // Neither part may contain "--", so the split is unique.
        assert_eq!(runtime_id("default", "web-1"), "default--web-1");
        assert_ne!(runtime_id("a-b", "c"), runtime_id("a", "b-c"));
        assert!(skiff_runtime::runc::check_container_id(&runtime_id("k8s.io", "x_1")).is_ok());
    }
}
