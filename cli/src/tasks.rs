//! `skiff task …` (like `ctr task`) and what `skiff run` shares with it: attaching to a process's output
//! and stdin, waiting for its exit, and passing its exit code on.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;
use skiff_api::v1::{self, tasks_client::TasksClient};
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

use crate::output;
use crate::Ctx;

/// The process's exit code as the command's own (what `ctr task start` and `docker run` do).
#[derive(Debug)]
pub struct ExitCode(pub u8);

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitCode {}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Start a container's task; attached (the default) it streams the output and exits with the
    /// process's exit code, then deletes the task.
    Start {
        /// Detach: leave the task running (its output goes to the task's log files).
        #[arg(short, long)]
        detach: bool,
        /// Forward this command's stdin to the process.
        #[arg(short, long)]
        interactive: bool,
        id: String,
    },
    /// List tasks.
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the container ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Send a signal to a task (default SIGTERM).
    Kill {
        /// Signal name (SIGKILL, KILL) or number.
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        /// Signal this exec process instead of the init.
        #[arg(long)]
        exec_id: Option<String>,
        id: String,
    },
    /// Delete stopped tasks (and unmount their rootfs); prints each exit status.
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        /// Kill a running task first.
        #[arg(short, long)]
        force: bool,
        /// Delete this exited exec process instead of the task.
        #[arg(long)]
        exec_id: Option<String>,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Pause a task (freeze its processes).
    Pause { id: String },
    /// Resume a paused task.
    Resume { id: String },
    /// Run another process in a running task.
    Exec {
        /// The process's id within the task.
        #[arg(long, required = true)]
        exec_id: String,
        /// Do not wait for it; its output goes to the task's log files.
        #[arg(short, long)]
        detach: bool,
        /// Allocate a TTY.
        #[arg(short, long)]
        tty: bool,
        /// Forward this command's stdin to the process.
        #[arg(short, long)]
        interactive: bool,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE added to the container's environment; may be repeated.
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// NAME|UID[:GROUP|GID], looked up in the container.
        #[arg(short, long)]
        user: Option<String>,
        id: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Wait for a task (or exec process) to exit and print its exit code.
    Wait {
        #[arg(long)]
        exec_id: Option<String>,
        id: String,
    },
    /// Print a task's resource usage.
    Metrics { id: String },
    /// Print what a task's process (or an exec process) wrote to stdout and stderr so far.
    Logs {
        /// Keep printing until the process exits.
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        exec_id: Option<String>,
        id: String,
    },
}

pub async fn run(ctx: &Ctx, command: TaskCommand) -> anyhow::Result<()> {
    let mut client = TasksClient::new(ctx.channel.clone());
    let namespace = ctx.namespace.clone();
    match command {
        TaskCommand::Start {
            detach,
            interactive,
            id,
        } => start(ctx, &id, detach, interactive).await,
        TaskCommand::Ls { quiet } => {
            let tasks = client
                .list(v1::ListTasksRequest { namespace })
                .await
                .map_err(output::status)
                .context("list tasks")?
                .into_inner()
                .tasks;
            output::listing(
                &tasks,
                quiet,
                |t| &t.container_id,
                &["TASK", "PID", "STATUS"],
                |t| {
                    vec![
                        t.container_id.clone(),
                        t.pid.to_string(),
                        status_name(t.status).to_owned(),
                    ]
                },
            )
        }
        TaskCommand::Kill {
            signal,
            all,
            exec_id,
            id,
        } => {
            let signal = parse_signal(&signal)?;
            client
                .kill(v1::KillTaskRequest {
                    namespace,
                    container_id: id.clone(),
                    exec_id: exec_id.unwrap_or_default(),
                    signal,
                    all,
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("kill task {id}"))?;
            Ok(())
        }
        TaskCommand::Rm {
            force,
            exec_id,
            ids,
        } => {
            for id in ids {
                let exit = client
                    .delete(v1::DeleteTaskRequest {
                        namespace: namespace.clone(),
                        container_id: id.clone(),
                        exec_id: exec_id.clone().unwrap_or_default(),
                        force,
                    })
                    .await
                    .map_err(output::status)
                    .with_context(|| format!("delete task {id}"))?
                    .into_inner();
                println!("{id}\t{}", describe_exit(&exit));
            }
            Ok(())
        }
        TaskCommand::Pause { id } => {
            client
                .pause(v1::GetTaskRequest {
                    namespace,
                    container_id: id.clone(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("pause task {id}"))?;
            Ok(())
        }
        TaskCommand::Resume { id } => {
            client
                .resume(v1::GetTaskRequest {
                    namespace,
                    container_id: id.clone(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("resume task {id}"))?;
            Ok(())
        }
        TaskCommand::Exec {
            exec_id,
            detach,
            tty,
            interactive,
            cwd,
            env,
            user,
            id,
            args,
        } => {
            let stdin = interactive || tty;
            client
                .exec(v1::ExecProcessRequest {
                    namespace: namespace.clone(),
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    args,
                    env,
                    cwd: cwd.unwrap_or_default(),
                    user: user.unwrap_or_default(),
                    terminal: tty,
                    stdin,
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("exec in task {id}"))?;
            if detach {
                return Ok(());
            }
            let exit = attach_terminal(ctx, &id, &exec_id, stdin, tty).await?;
            let _ = client
                .delete(v1::DeleteTaskRequest {
                    namespace,
                    container_id: id,
                    exec_id,
                    force: false,
                })
                .await;
            exit_with(exit)
        }
        TaskCommand::Wait { exec_id, id } => {
            let exit = client
                .wait(v1::WaitRequest {
                    namespace,
                    container_id: id.clone(),
                    exec_id: exec_id.unwrap_or_default(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("wait for task {id}"))?
                .into_inner();
            println!("{}", describe_exit(&exit));
            Ok(())
        }
        TaskCommand::Logs {
            follow,
            exec_id,
            id,
        } => print_output(ctx, &id, &exec_id.unwrap_or_default(), follow).await,
        TaskCommand::Metrics { id } => {
            let m = client
                .metrics(v1::GetTaskRequest {
                    namespace,
                    container_id: id.clone(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("metrics of task {id}"))?
                .into_inner();
            let limit = |v: u64| {
                if v == 0 {
                    "-".to_owned()
                } else {
                    v.to_string()
                }
            };
            output::table(
                &[
                    "ID",
                    "CPU_NS",
                    "MEMORY_USAGE",
                    "MEMORY_LIMIT",
                    "PIDS",
                    "PIDS_LIMIT",
                ],
                vec![vec![
                    id,
                    m.cpu_usage_ns.to_string(),
                    m.memory_usage_bytes.to_string(),
                    limit(m.memory_limit_bytes),
                    m.pids_current.to_string(),
                    limit(m.pids_limit),
                ]],
            )
        }
    }
}

/// Creates and starts the task of container `id`; attached, streams its output until it exits, deletes
/// the task and fails with [`ExitCode`] when the process did not exit 0.
pub async fn start(ctx: &Ctx, id: &str, detach: bool, interactive: bool) -> anyhow::Result<()> {
    let mut client = TasksClient::new(ctx.channel.clone());
    let stdin = interactive && !detach;
    let created = client
        .create(v1::CreateTaskRequest {
            namespace: ctx.namespace.clone(),
            container_id: id.to_owned(),
            stdin,
        })
        .await
        .map_err(output::status)
        .with_context(|| format!("create task {id}"))?
        .into_inner();
    let started = client
        .start(v1::StartTaskRequest {
            namespace: ctx.namespace.clone(),
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
        .map_err(output::status)
        .with_context(|| format!("start task {id}"))?
        .into_inner();
    if detach {
        println!("{id}\t{}", started.pid);
        return Ok(());
    }
    let exit = attach_terminal(ctx, id, "", stdin || created.terminal, created.terminal).await?;
    client
        .delete(v1::DeleteTaskRequest {
            namespace: ctx.namespace.clone(),
            container_id: id.to_owned(),
            exec_id: String::new(),
            force: false,
        })
        .await
        .map_err(output::status)
        .with_context(|| format!("delete task {id}"))?;
    exit_with(exit)
}

/// Our terminal in raw mode (keys go to the container's pty as typed) until dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// `None` when stdin is not a terminal.
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

nix::ioctl_read_bad!(get_window_size, nix::libc::TIOCGWINSZ, nix::libc::winsize);

/// Our terminal's size (columns, rows), when stdout or stdin is one.
fn window_size() -> Option<(u32, u32)> {
    use std::os::fd::AsRawFd;
    for fd in [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()] {
        let mut size = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into `size`, which lives across the call.
        if unsafe { get_window_size(fd, &mut size) }.is_ok() && size.ws_col > 0 {
            return Some((u32::from(size.ws_col), u32::from(size.ws_row)));
        }
    }
    None
}

/// Keeps the process's pty the size of our terminal: now, and on every SIGWINCH.
fn follow_window_size(ctx: &Ctx, id: &str, exec_id: &str) {
    let mut client = TasksClient::new(ctx.channel.clone());
    let (namespace, id, exec_id) = (ctx.namespace.clone(), id.to_owned(), exec_id.to_owned());
    tokio::spawn(async move {
        let resize = |(width, height)| v1::ResizeRequest {
            namespace: namespace.clone(),
            container_id: id.clone(),
            exec_id: exec_id.clone(),
            width,
            height,
        };
        if let Some(size) = window_size() {
            let _ = client.resize(resize(size)).await;
        }
        let Ok(mut changes) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while changes.recv().await.is_some() {
            if let Some(size) = window_size() {
                let _ = client.resize(resize(size)).await;
            }
        }
    });
}

/// Streams a process's output to ours (and our stdin to it) until it exits; returns its exit status.
/// With `terminal` and a terminal of our own, ours goes raw and the process's pty follows its size.
pub async fn attach_terminal(
    ctx: &Ctx,
    id: &str,
    exec_id: &str,
    forward_stdin: bool,
    terminal: bool,
) -> anyhow::Result<v1::ExitStatus> {
    let _raw = if terminal {
        follow_window_size(ctx, id, exec_id);
        RawTerminal::enter()
    } else {
        None
    };
    attach(ctx, id, exec_id, forward_stdin).await
}

/// Streams a process's output to ours (and our stdin to it) until it exits; returns its exit status.
pub async fn attach(
    ctx: &Ctx,
    id: &str,
    exec_id: &str,
    forward_stdin: bool,
) -> anyhow::Result<v1::ExitStatus> {
    let mut client = TasksClient::new(ctx.channel.clone());
    let mut output = client
        .output(v1::OutputRequest {
            namespace: ctx.namespace.clone(),
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            follow: true,
        })
        .await
        .map_err(output::status)
        .with_context(|| format!("attach to {id}"))?
        .into_inner();
    if forward_stdin {
        let mut input_client = TasksClient::new(ctx.channel.clone());
        let (namespace, id, exec_id) = (ctx.namespace.clone(), id.to_owned(), exec_id.to_owned());
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let first = v1::InputChunk {
                namespace,
                container_id: id,
                exec_id,
                data: Vec::new(),
            };
            let _ = tx.send(first).await;
            tokio::spawn(async move {
                let mut stdin = tokio::io::stdin();
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    match stdin.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = v1::InputChunk {
                                data: buf[..n].to_vec(),
                                ..Default::default()
                            };
                            if tx.send(chunk).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            let _ = input_client
                .input(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
        });
    }
    copy_output(&mut output).await?;
    let exit = client
        .wait(v1::WaitRequest {
            namespace: ctx.namespace.clone(),
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        })
        .await
        .map_err(output::status)
        .with_context(|| format!("wait for {id}"))?
        .into_inner();
    Ok(exit)
}

/// Writes a stream of output chunks to our stdout and stderr.
async fn copy_output(output: &mut tonic::Streaming<v1::OutputChunk>) -> anyhow::Result<()> {
    while let Some(chunk) = output.next().await {
        let chunk = chunk.map_err(output::status).context("output")?;
        if chunk.stream == v1::output_chunk::Stream::Stderr as i32 {
            let mut err = std::io::stderr().lock();
            err.write_all(&chunk.data)?;
            err.flush()?;
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&chunk.data)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `skiff task logs`: the output so far (or until the process exits, with `follow`).
async fn print_output(ctx: &Ctx, id: &str, exec_id: &str, follow: bool) -> anyhow::Result<()> {
    let mut output = TasksClient::new(ctx.channel.clone())
        .output(v1::OutputRequest {
            namespace: ctx.namespace.clone(),
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            follow,
        })
        .await
        .map_err(output::status)
        .with_context(|| format!("logs of {id}"))?
        .into_inner();
    copy_output(&mut output).await
}

/// `Ok` for exit code 0, else the [`ExitCode`] error that makes `skiff` exit with it.
pub fn exit_with(exit: v1::ExitStatus) -> anyhow::Result<()> {
    if exit.unknown {
        bail!("the process's exit status is unknown (its shim died)");
    }
    match exit.code {
        0 => Ok(()),
        code => Err(ExitCode(u8::try_from(code).unwrap_or(255)).into()),
    }
}

fn describe_exit(exit: &v1::ExitStatus) -> String {
    if exit.unknown {
        "unknown".to_owned()
    } else {
        exit.code.to_string()
    }
}

fn status_name(status: i32) -> &'static str {
    match v1::TaskStatus::try_from(status) {
        Ok(v1::TaskStatus::Created) => "CREATED",
        Ok(v1::TaskStatus::Running) => "RUNNING",
        Ok(v1::TaskStatus::Stopped) => "STOPPED",
        Ok(v1::TaskStatus::Paused) => "PAUSED",
        _ => "UNKNOWN",
    }
}

/// `SIGKILL`, `KILL` or `9`.
fn parse_signal(text: &str) -> anyhow::Result<u32> {
    if let Ok(number) = text.parse::<u32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
        bail!("signal {number} is out of range 1..64");
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let signal: nix::sys::signal::Signal = name
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown signal {text:?}"))?;
    Ok(signal as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("term").unwrap(), 15);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("SIGNOPE")
            .unwrap_err()
            .to_string()
            .contains("SIGNOPE"));
    }

    #[test]
    fn exit_codes_pass_through() {
        let exit = |code, unknown| v1::ExitStatus {
            code,
            exited_at: None,
            unknown,
        };
        assert!(exit_with(exit(0, false)).is_ok());
        let err = exit_with(exit(7, false)).unwrap_err();
        assert_eq!(err.downcast_ref::<ExitCode>().map(|e| e.0), Some(7));
        assert!(exit_with(exit(255, true))
            .unwrap_err()
            .to_string()
            .contains("unknown"));
    }
}
