//! [`TaskRuntime`]: the process side of tasks, behind a seam so [`Tasks`](crate::tasks::Tasks) is tested
//! with a recording fake (`daemon/tests/tasks.rs`) and runs with [`ShimRuntime`] in skiffd: one
//! `skiff-shim` per container, which runs runc or crun and outlives the daemon. Only project and OCI types
//! cross the seam.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use oci_spec::runtime::Process;
use skiff_runtime::runc::Stats;
use skiff_runtime::shim::{shim_binary, Shim, ShimClient, ShimError};
use skiff_runtime::task::{ExecId, ExitStatus, ProcessState, ShimConfig, TaskDir};

/// Creates tasks and finds them again.
#[async_trait]
pub trait TaskRuntime: Send + Sync {
    /// Creates the task described by `config` in `task_dir`: its init process exists, not started yet.
    async fn create(
        &self,
        task_dir: &Path,
        config: &ShimConfig,
    ) -> Result<Arc<dyn TaskControl>, ShimError>;

    /// The task created in `task_dir` (also by an earlier daemon), or `None` if it holds none.
    fn connect(&self, task_dir: &Path) -> Result<Option<Arc<dyn TaskControl>>, ShimError>;
}

/// One task's processes: the init (`ExecId::init()`) and its exec processes.
#[async_trait]
pub trait TaskControl: Send + Sync {
    /// Starts the init process; its pid.
    async fn start(&self) -> Result<u32, ShimError>;
    /// Signals a process (`all`: every process of the container).
    async fn kill(&self, exec_id: &ExecId, signal: i32, all: bool) -> Result<(), ShimError>;
    /// Starts an exec process; its pid.
    async fn exec(
        &self,
        exec_id: &ExecId,
        process: &Process,
        terminal: bool,
        stdin: bool,
    ) -> Result<u32, ShimError>;
    async fn pause(&self) -> Result<(), ShimError>;
    async fn resume(&self) -> Result<(), ShimError>;
    async fn state(&self, exec_id: &ExecId) -> Result<ProcessState, ShimError>;
    /// Resolves once the process has exited.
    async fn wait(&self, exec_id: &ExecId) -> Result<ExitStatus, ShimError>;
    async fn resize(&self, exec_id: &ExecId, width: u16, height: u16) -> Result<(), ShimError>;
    async fn metrics(&self) -> Result<Stats, ShimError>;
    /// Deletes the task (`force` kills a running init first); the init's exit when known.
    async fn delete(&self, force: bool) -> Result<Option<ExitStatus>, ShimError>;
    /// Forgets an exited exec process; its exit.
    async fn delete_exec(&self, exec_id: &ExecId) -> Result<ExitStatus, ShimError>;
}

/// Tasks under `skiff-shim`: the configured binary, or the one next to skiffd's executable.
pub struct ShimRuntime {
    pub shim_binary: Option<PathBuf>,
}

#[async_trait]
impl TaskRuntime for ShimRuntime {
    async fn create(
        &self,
        task_dir: &Path,
        config: &ShimConfig,
    ) -> Result<Arc<dyn TaskControl>, ShimError> {
        let binary = shim_binary(self.shim_binary.as_deref())?;
        Ok(Arc::new(Shim::spawn(&binary, task_dir, config).await?))
    }

    fn connect(&self, task_dir: &Path) -> Result<Option<Arc<dyn TaskControl>>, ShimError> {
        if !TaskDir::new(task_dir).config().exists() {
            return Ok(None);
        }
        Ok(Some(Arc::new(ShimClient::connect(task_dir)?)))
    }
}

#[async_trait]
impl TaskControl for ShimClient {
    async fn start(&self) -> Result<u32, ShimError> {
        ShimClient::start(self).await
    }

    async fn kill(&self, exec_id: &ExecId, signal: i32, all: bool) -> Result<(), ShimError> {
        ShimClient::kill(self, exec_id, signal, all).await
    }

    async fn exec(
        &self,
        exec_id: &ExecId,
        process: &Process,
        terminal: bool,
        stdin: bool,
    ) -> Result<u32, ShimError> {
        ShimClient::exec(self, exec_id, process, terminal, stdin).await
    }

    async fn pause(&self) -> Result<(), ShimError> {
        ShimClient::pause(self).await
    }

    async fn resume(&self) -> Result<(), ShimError> {
        ShimClient::resume(self).await
    }

    async fn state(&self, exec_id: &ExecId) -> Result<ProcessState, ShimError> {
        ShimClient::state(self, exec_id).await
    }

    async fn wait(&self, exec_id: &ExecId) -> Result<ExitStatus, ShimError> {
        ShimClient::wait(self, exec_id).await
    }

    async fn resize(&self, exec_id: &ExecId, width: u16, height: u16) -> Result<(), ShimError> {
        ShimClient::resize(self, exec_id, width, height).await
    }

    async fn metrics(&self) -> Result<Stats, ShimError> {
        ShimClient::metrics(self).await
    }

    async fn delete(&self, force: bool) -> Result<Option<ExitStatus>, ShimError> {
        ShimClient::delete(self, force).await
    }

    async fn delete_exec(&self, exec_id: &ExecId) -> Result<ExitStatus, ShimError> {
        ShimClient::delete_exec(self, exec_id).await
    }
}
