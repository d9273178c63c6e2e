//! `skiff.v1.Tasks` over [`Tasks`]: a container's processes (create, start, exec, signals, wait, delete,
//! metrics), their output streamed from the task's files and their stdin relayed into its FIFO.

use std::time::SystemTime;

use skiff_api::v1;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{timestamp, ServiceStream};
use crate::tasks::{ExecRequest, TaskFailure, Tasks};
use crate::work::DaemonTasks;

fn exit_status(exit: &skiff_runtime::task::ExitStatus) -> v1::ExitStatus {
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(exit.exited_at_unix_ns);
    v1::ExitStatus {
        code: exit.code,
        exited_at: Some(timestamp(at)),
        unknown: false,
    }
}

fn unknown_exit() -> v1::ExitStatus {
    v1::ExitStatus {
        code: skiff_runtime::task::UNKNOWN_EXIT_CODE,
        exited_at: None,
        unknown: true,
    }
}

fn task(container_id: &str, state: &skiff_runtime::task::ProcessState) -> v1::Task {
    use skiff_runtime::task::TaskStatus as S;
    let status = match state.status {
        S::Created => v1::TaskStatus::Created,
        S::Running => v1::TaskStatus::Running,
        S::Pausing | S::Paused => v1::TaskStatus::Paused,
        S::Stopped => v1::TaskStatus::Stopped,
        S::Unknown => v1::TaskStatus::Unknown,
    };
    v1::Task {
        container_id: container_id.to_owned(),
        pid: state.pid.unwrap_or(0),
        status: status as i32,
        terminal: state.terminal,
        exit: state.exit.as_ref().map(exit_status),
    }
}

/// The `Tasks` service over [`Tasks`]; output streams are owned by the daemon's [`DaemonTasks`].
#[derive(Clone)]
pub struct TasksService(pub Tasks, pub DaemonTasks);

/// Bytes per message when streaming a process's output.
const OUTPUT_CHUNK: usize = 64 << 10;

/// Sends what was appended to `path` since `offset`; returns the new offset.
async fn send_appended(
    path: &std::path::Path,
    mut offset: u64,
    stream: v1::output_chunk::Stream,
    out: &mpsc::Sender<Result<v1::OutputChunk, Status>>,
) -> u64 {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return offset;
    };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return offset;
    }
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => return offset,
            Ok(n) => {
                offset += n as u64;
                let chunk = v1::OutputChunk {
                    stream: stream as i32,
                    data: buf[..n].to_vec(),
                };
                if out.send(Ok(chunk)).await.is_err() {
                    return offset;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl v1::tasks_server::Tasks for TasksService {
    type OutputStream = ServiceStream<v1::OutputChunk>;

    async fn create(
        &self,
        request: Request<v1::CreateTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let r = request.into_inner();
        let state = self
            .0
            .create(&r.namespace, &r.container_id, r.stdin)
            .await?;
        Ok(Response::new(task(&r.container_id, &state)))
    }

    async fn start(
        &self,
        request: Request<v1::StartTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let r = request.into_inner();
        if !r.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "exec processes start when they are created (Exec)",
            ));
        }
        let state = self.0.start(&r.namespace, &r.container_id).await?;
        Ok(Response::new(task(&r.container_id, &state)))
    }

    async fn get(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let r = request.into_inner();
        let state = self.0.state(&r.namespace, &r.container_id).await?;
        Ok(Response::new(task(&r.container_id, &state)))
    }

    async fn list(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let tasks = self.0.list(&request.into_inner().namespace).await?;
        Ok(Response::new(v1::ListTasksResponse {
            tasks: tasks.iter().map(|(id, state)| task(id, state)).collect(),
        }))
    }

    async fn kill(
        &self,
        request: Request<v1::KillTaskRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.0
            .kill(&r.namespace, &r.container_id, &r.exec_id, r.signal, r.all)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn pause(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.0.pause(&r.namespace, &r.container_id).await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn resume(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.0.resume(&r.namespace, &r.container_id).await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn exec(
        &self,
        request: Request<v1::ExecProcessRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        let exec = ExecRequest {
            exec_id: r.exec_id,
            args: r.args,
            env: r.env,
            cwd: r.cwd,
            user: r.user,
            terminal: r.terminal,
            stdin: r.stdin,
        };
        self.0.exec(&r.namespace, &r.container_id, exec).await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn wait(
        &self,
        request: Request<v1::WaitRequest>,
    ) -> Result<Response<v1::ExitStatus>, Status> {
        let r = request.into_inner();
        match self.0.wait(&r.namespace, &r.container_id, &r.exec_id).await {
            Ok(exit) => Ok(Response::new(exit_status(&exit))),
            Err(TaskFailure::Shim(skiff_runtime::shim::ShimError::Lost { .. })) => {
                Ok(Response::new(unknown_exit()))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteTaskRequest>,
    ) -> Result<Response<v1::ExitStatus>, Status> {
        let r = request.into_inner();
        let exit = self
            .0
            .delete(&r.namespace, &r.container_id, &r.exec_id, r.force)
            .await?;
        Ok(Response::new(
            exit.as_ref().map(exit_status).unwrap_or_else(unknown_exit),
        ))
    }

    async fn metrics(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::TaskMetrics>, Status> {
        let r = request.into_inner();
        let stats = self.0.metrics(&r.namespace, &r.container_id).await?;
        Ok(Response::new(v1::TaskMetrics {
            cpu_usage_ns: stats.cpu.usage_ns,
            memory_usage_bytes: stats.memory.usage_bytes,
            memory_limit_bytes: stats.memory.limit_bytes.unwrap_or(0),
            pids_current: stats.pids.current,
            pids_limit: stats.pids.limit.unwrap_or(0),
        }))
    }

    async fn output(
        &self,
        request: Request<v1::OutputRequest>,
    ) -> Result<Response<Self::OutputStream>, Status> {
        let r = request.into_inner();
        let (stdout, stderr, _) = self.0.stdio(&r.namespace, &r.container_id, &r.exec_id)?;
        let (tx, rx) = mpsc::channel(16);
        let tasks = self.0.clone();
        let shutdown = self.1.token().clone();
        self.1.spawn(async move {
            let mut offsets = (0, 0);
            // One wait for the process's exit (a held connection to its shim), not a question per poll.
            let waited = async {
                if r.follow {
                    // Lost or gone: there is nothing more to wait for either.
                    let _ = tasks.wait(&r.namespace, &r.container_id, &r.exec_id).await;
                }
            };
            tokio::pin!(waited);
            let mut exited = false;
            loop {
                if !exited {
                    tokio::select! {
                        () = &mut waited => exited = true,
                        () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                        // The daemon stops: what is on disk goes out, then the stream ends.
                        () = shutdown.cancelled() => exited = true,
                    }
                }
                // Read after the exit is known: a process's output is on disk before its exit is.
                offsets.0 =
                    send_appended(&stdout, offsets.0, v1::output_chunk::Stream::Stdout, &tx).await;
                offsets.1 =
                    send_appended(&stderr, offsets.1, v1::output_chunk::Stream::Stderr, &tx).await;
                if exited || tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn input(
        &self,
        request: Request<tonic::Streaming<v1::InputChunk>>,
    ) -> Result<Response<v1::Empty>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(v1::Empty {}));
        };
        let (_, _, fifo) = self
            .0
            .stdio(&first.namespace, &first.container_id, &first.exec_id)?;
        // Opening a FIFO for writing waits for its reader (the shim's relay).
        let opened = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new().write(true).open(&fifo)
            }),
        )
        .await
        .map_err(|_| {
            Status::failed_precondition("the process does not read stdin (created without it?)")
        })?
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(format!("open the process's stdin: {e}")))?;
        let mut writer = tokio::fs::File::from_std(opened);
        let mut chunk = Some(first);
        while let Some(message) = chunk {
            if !message.data.is_empty() {
                use tokio::io::AsyncWriteExt;
                writer.write_all(&message.data).await.map_err(|e| {
                    Status::failed_precondition(format!("write to the process's stdin: {e}"))
                })?;
                writer.flush().await.ok();
            }
            chunk = stream.message().await?;
        }
        // Dropping the writer closes the FIFO: EOF for the process.
        Ok(Response::new(v1::Empty {}))
    }

    async fn resize(
        &self,
        request: Request<v1::ResizeRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.0
            .resize(&r.namespace, &r.container_id, &r.exec_id, r.width, r.height)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}
