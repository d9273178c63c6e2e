//! Runs a command until a line of its stdout matches the workload's ready pattern, timing it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;

/// How often the wait for the ready line looks whether the harness was interrupted.
const INTERRUPT_POLL: Duration = Duration::from_millis(200);

/// A command that printed its ready line and may still be running.
pub struct Ready {
    /// From spawning the command to reading the ready line.
    pub elapsed: Duration,
    /// When the ready line was read.
    pub at: Instant,
    pub line: String,
    pub child: Child,
}

/// Spawns `command` with stdout (and stderr, kept for errors) piped and waits, at most `timeout`, for a
/// stdout line matching `ready`. The command is killed if it exits first or the time runs out; the
/// error then carries the end of what it printed.
pub fn run_until_ready(command: &mut Command, ready: &Regex, timeout: Duration) -> Result<Ready> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {command:?}"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let (lines, received) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut seen: Vec<String> = Vec::new();
    loop {
        if super::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted while waiting for {command:?} to be ready");
        }
        let left = timeout.saturating_sub(start.elapsed());
        match received.recv_timeout(left.min(INTERRUPT_POLL)) {
            Ok(line) => {
                if ready.is_match(&line) {
                    return Ok(Ready {
                        elapsed: start.elapsed(),
                        at: Instant::now(),
                        line,
                        child,
                    });
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                let stderr = errors.join().unwrap_or_default();
                bail!(
                    "{command:?} ended ({status}) without a line matching {ready}; stdout ended with:\n{}\nstderr:\n{}",
                    tail(&seen),
                    stderr.trim_end()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < timeout => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "no line matching {ready} from {command:?} within {timeout:?}; stdout ended with:\n{}",
                    tail(&seen)
                );
            }
        }
    }
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_is_found_and_failures_are_explained() {
        let ready = Regex::new("^ready$").unwrap();
        let mut found = run_until_ready(
            Command::new("sh").args(["-c", "echo starting; echo ready; sleep 5"]),
            &ready,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(found.line, "ready");
        // Still running: the caller decides.
        assert!(found.child.try_wait().unwrap().is_none());
        found.child.kill().unwrap();
        found.child.wait().unwrap();

        let ended = run_until_ready(
            Command::new("sh").args(["-c", "echo nope; echo oops >&2; exit 3"]),
            &ready,
            Duration::from_secs(30),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(ended.contains("nope") && ended.contains("oops"), "{ended}");

        let slow = run_until_ready(
            Command::new("sleep").arg("30"),
            &ready,
            Duration::from_millis(200),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(slow.contains("within"), "{slow}");
    }
}
