//! The shim's control protocol: one JSON object per line over `TASK_DIR/shim.sock`. A client writes a
//! [`Request`] line and reads one [`Response`] line; a connection may carry several requests in turn, and
//! `wait` holds its connection until the process exits. The first line the shim writes on its stdout is a
//! [`ReadyMessage`], after which its stdout is `/dev/null`.
//!
//! ```text
//! {"op":"start"}                                   -> {"ok":{"type":"started","pid":4242}}
//! {"op":"kill","signal":15,"all":false,"exec_id":"init"}  -> {"ok":{"type":"done"}}
//! {"op":"exec","exec_id":"e1","process":{...OCI process...},"terminal":false,"stdin":false}
//!                                                  -> {"ok":{"type":"started","pid":4243}}
//! {"op":"pause"} / {"op":"resume"}                 -> {"ok":{"type":"done"}}
//! {"op":"state","exec_id":"init"}                  -> {"ok":{"type":"state","exec_id":"init","pid":4242,
//!                                                        "status":"running","terminal":false,"exit":null}}
//! {"op":"wait","exec_id":"e1"}                     -> {"ok":{"type":"exit","code":143,"signal":15,
//!                                                        "exited_at_unix_ns":...}}
//! {"op":"resize","exec_id":"init","width":120,"height":40}  -> {"ok":{"type":"done"}}
//! {"op":"metrics"}                                 -> {"ok":{"type":"metrics","cpu":{...},"memory":{...},"pids":{...}}}
//! {"op":"delete","exec_id":"init","force":false}   -> {"ok":{"type":"exit",...}} and the shim exits
//! any failure                                      -> {"error":{"kind":"not_found","message":"..."}}
//! ```
//!
//! `exec_id` defaults to `init` wherever it may be left out.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::runc::Stats;
use crate::task::{ExecId, ExitStatus, ProcessState};

/// The longest request or response line accepted (an exec's process spec is the largest).
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `runc start`: runs the init process created at spawn.
    Start,
    /// Sends `signal` to a process: the init through the runtime (`all` = every process of the
    /// container), an exec process directly.
    Kill {
        signal: i32,
        #[serde(default)]
        all: bool,
        #[serde(default)]
        exec_id: ExecId,
    },
    /// Starts another process in the running container (`runc exec --detach`).
    Exec {
        exec_id: ExecId,
        process: Box<oci_spec::runtime::Process>,
        #[serde(default)]
        terminal: bool,
        #[serde(default)]
        stdin: bool,
    },
    Pause,
    Resume,
    State {
        #[serde(default)]
        exec_id: ExecId,
    },
    /// Answers once the process has exited, with its exit status.
    Wait {
        #[serde(default)]
        exec_id: ExecId,
    },
    /// Sets the size of a process's terminal.
    Resize {
        #[serde(default)]
        exec_id: ExecId,
        width: u16,
        height: u16,
    },
    Metrics,
    /// For an exec process: forgets it (it must have exited). For the init: `runc delete` (`force` also
    /// kills a running container), then the shim exits.
    Delete {
        #[serde(default)]
        exec_id: ExecId,
        #[serde(default)]
        force: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(Failure),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Started { pid: u32 },
    State(ProcessState),
    Exit(ExitStatus),
    Metrics(Stats),
}

/// What went wrong, in words a gRPC edge maps to codes (not_found → NotFound, already_exists →
/// AlreadyExists, failed_precondition → FailedPrecondition, invalid_argument → InvalidArgument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    /// The OCI runtime refused; the message is its own.
    Runtime,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// The shim's first and only line on its stdout: the init process was created, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyMessage {
    Ready { pid: u32 },
    Failed { message: String },
}

/// Reads one line of JSON; `Ok(None)` at end of stream.
pub async fn read_message<T, R>(reader: &mut R) -> std::io::Result<Option<T>>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "message cut off before its end of line",
            ));
        }
        let (taken, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if line.len() > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("message longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        if done {
            return serde_json::from_slice(&line)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
    }
}

/// Writes `message` as one line of JSON and flushes.
pub async fn write_message<T, W>(writer: &mut W, message: &T) -> std::io::Result<()>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        let kill: Request = serde_json::from_str(r#"{"op":"kill","signal":9}"#).unwrap();
        assert_eq!(
            kill,
            Request::Kill {
                signal: 9,
                all: false,
                exec_id: ExecId::init()
            }
        );
        let exec: Request = serde_json::from_str(
            r#"{"op":"exec","exec_id":"e1","process":{"user":{"uid":0,"gid":0},"args":["true"],"cwd":"/"}}"#,
        )
        .unwrap();
        let Request::Exec {
            exec_id,
            process,
            terminal,
            stdin,
        } = &exec
        else {
            panic!("not an exec: {exec:?}")
        };
        assert_eq!((exec_id.as_str(), *terminal, *stdin), ("e1", false, false));
        assert_eq!(process.args().as_deref(), Some(&["true".to_string()][..]));
        assert!(serde_json::from_str::<Request>(r#"{"op":"wait","exec_id":"../x"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::Resize {
                exec_id: ExecId::init(),
                width: 80,
                height: 24
            })
            .unwrap(),
            r#"{"op":"resize","exec_id":"init","width":80,"height":24}"#
        );
    }

    #[test]
    fn responses_on_the_wire() {
        let started = serde_json::to_string(&Response::Ok(Reply::Started { pid: 7 })).unwrap();
        assert_eq!(started, r#"{"ok":{"type":"started","pid":7}}"#);
        let failure = Response::Error(Failure::new(FailureKind::NotFound, "no exec e9"));
        assert_eq!(
            serde_json::to_string(&failure).unwrap(),
            r#"{"error":{"kind":"not_found","message":"no exec e9"}}"#
        );
        let exit = Response::Ok(Reply::Exit(ExitStatus {
            code: 143,
            signal: Some(15),
            exited_at_unix_ns: 1,
        }));
        let text = serde_json::to_string(&exit).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), exit);
    }

    #[tokio::test]
    async fn lines_are_bounded_and_complete() {
        let mut input: &[u8] = b"{\"op\":\"start\"}\n{\"op\":\"pause\"}\n{\"op\":";
        let first: Option<Request> = read_message(&mut input).await.unwrap();
        assert_eq!(first, Some(Request::Start));
        let second: Option<Request> = read_message(&mut input).await.unwrap();
        assert_eq!(second, Some(Request::Pause));
        let cut = read_message::<Request, _>(&mut input).await.unwrap_err();
        assert_eq!(cut.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut empty: &[u8] = b"";
        assert_eq!(read_message::<Request, _>(&mut empty).await.unwrap(), None);
        let huge = vec![b' '; MAX_LINE_BYTES + 10];
        let mut reader = tokio::io::BufReader::new(&huge[..]);
        let error = read_message::<Request, _>(&mut reader).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        let mut out = Vec::new();
        write_message(&mut out, &Request::Metrics).await.unwrap();
        assert_eq!(out, b"{\"op\":\"metrics\"}\n");
    }
}
