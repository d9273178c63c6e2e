//! The shim and the runc driver on the real runc with busybox-static containers: the whole lifecycle,
//! exit codes, stdio files, stdin FIFOs, terminals, metrics, a killed shim, and clear errors.

mod common;

use std::time::Duration;

use common::{reap, require_prerequisites, wait_for_text, write_stdin, Bed, Spec};
use skiff_runtime::runc::Runc;
use skiff_runtime::shim::{FailureKind, ShimClient, ShimError};
use skiff_runtime::task::{ExecId, TaskStatus};

fn exec_process(args: &[&str]) -> oci_spec::runtime::Process {
    let mut process = oci_spec::runtime::Process::default();
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    process.set_env(Some(vec!["PATH=/bin".into(), "TERM=xterm".into()]));
    process
}

fn refused_kind(error: ShimError) -> FailureKind {
    error
        .failure_kind()
        .unwrap_or_else(|| panic!("expected a refusal from the shim, got: {error}"))
}

#[tokio::test]
async fn create_start_exec_pause_resume_kill_delete() {
    require_prerequisites();
    let bed = Bed::new(
        "lifecycle",
        &Spec {
            pid_namespace: false,
            ..Spec::new(&["sleep", "1000"])
        },
    );
    let shim = bed.spawn(false, false).await;
    let init = ExecId::init();

    let created = shim.state(&init).await.unwrap();
    assert_eq!(created.status, TaskStatus::Created);
    let pid = created.pid.expect("a created container has a pid");
    assert_eq!(bed.runc_status().as_deref(), Some("created"));

    assert_eq!(shim.start().await.unwrap(), pid);
    assert_eq!(shim.state(&init).await.unwrap().status, TaskStatus::Running);

    let exec = ExecId::new("e1").unwrap();
    let exec_pid = shim
        .exec(
            &exec,
            &exec_process(&["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3"]),
            false,
            false,
        )
        .await
        .unwrap();
    assert_ne!(exec_pid, pid);
    let exec_exit = shim.wait(&exec).await.unwrap();
    assert_eq!((exec_exit.code, exec_exit.signal), (3, None));
    assert_eq!(bed.read(bed.task().stdout(&exec)), "out-42\n");
    assert_eq!(bed.read(bed.task().stderr(&exec)), "err\n");
    let exec_state = shim.state(&exec).await.unwrap();
    assert_eq!(
        (exec_state.status, exec_state.exit),
        (TaskStatus::Stopped, Some(exec_exit))
    );
    assert_eq!(shim.delete_exec(&exec).await.unwrap(), exec_exit);
    assert_eq!(
        refused_kind(shim.state(&exec).await.unwrap_err()),
        FailureKind::NotFound
    );

    // An exec given stdin that exits before anyone writes: its stdin relay ends with it.
    let quiet = ExecId::new("quiet").unwrap();
    shim.exec(&quiet, &exec_process(&["true"]), false, true)
        .await
        .unwrap();
    assert_eq!(shim.wait(&quiet).await.unwrap().code, 0);
    let shim_pid = shim.shim_pid().unwrap();
    wait_until("the quiet exec's stdin relay ends", || {
        !thread_names(shim_pid).contains(&"quiet-stdin".to_string())
    });

    shim.pause().await.unwrap();
    assert_eq!(shim.state(&init).await.unwrap().status, TaskStatus::Paused);
    assert_eq!(bed.runc_status().as_deref(), Some("paused"));
    shim.resume().await.unwrap();
    assert_eq!(shim.state(&init).await.unwrap().status, TaskStatus::Running);

    let metrics = shim.metrics().await.unwrap();
    assert!(metrics.memory.usage_bytes > 0, "{metrics:?}");
    assert!(metrics.pids.current >= 1, "{metrics:?}");
    assert!(metrics.cpu.usage_ns > 0, "{metrics:?}");

    let running = shim.delete(false).await.unwrap_err();
    assert_eq!(refused_kind(running), FailureKind::FailedPrecondition);

    // No PID namespace here, so the kernel would leave this exec running after the init: the shim ends it.
    let straggler = ExecId::new("straggler").unwrap();
    shim.exec(&straggler, &exec_process(&["sleep", "1000"]), false, false)
        .await
        .unwrap();

    shim.kill(&init, libc::SIGTERM, false).await.unwrap();
    let exit = shim.wait(&init).await.unwrap();
    let straggler_exit = tokio::time::timeout(Duration::from_secs(10), shim.wait(&straggler))
        .await
        .expect("an exec does not outlive the init")
        .unwrap();
    assert_eq!(straggler_exit.signal, Some(libc::SIGKILL));
    assert_eq!(
        (exit.code, exit.signal),
        (143, Some(libc::SIGTERM)),
        "128 + SIGTERM"
    );
    assert_eq!(bed.task().read_exit(&init).unwrap(), Some(exit));
    let stopped = shim.state(&init).await.unwrap();
    assert_eq!(
        (stopped.status, stopped.exit),
        (TaskStatus::Stopped, Some(exit))
    );
    assert_eq!(
        refused_kind(shim.kill(&init, libc::SIGKILL, false).await.unwrap_err()),
        FailureKind::NotFound
    );

    assert_eq!(shim.delete(false).await.unwrap(), Some(exit));
    assert!(reap(shim_pid), "the shim exits after delete");
    assert_eq!(bed.runc_status(), None, "runc keeps no state after delete");
    assert!(!bed.task().socket().exists());
    // The shim is gone; the task dir still answers.
    assert_eq!(shim.wait(&init).await.unwrap(), exit);
    assert_eq!(shim.state(&init).await.unwrap().status, TaskStatus::Stopped);
    assert!(matches!(
        shim.start().await.unwrap_err(),
        ShimError::Gone { .. }
    ));
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn forced_delete_kills_and_the_task_dir_is_not_reused() {
    require_prerequisites();
    let bed = Bed::new("forced", &Spec::new(&["sleep", "1000"]));
    let shim = bed.spawn(false, false).await;
    shim.start().await.unwrap();
    let shim_pid = shim.shim_pid().unwrap();
    let exit = shim
        .delete(true)
        .await
        .unwrap()
        .expect("the killed init's exit");
    assert_eq!((exit.code, exit.signal), (137, Some(libc::SIGKILL)));
    assert!(reap(shim_pid));
    assert_eq!(bed.runc_status(), None);
    let reused = bed
        .try_spawn(false, false)
        .await
        .expect_err("a task dir serves one task");
    assert!(matches!(reused, ShimError::TaskDirInUse { .. }), "{reused}");
}

#[tokio::test]
async fn exit_code_and_output_files() {
    require_prerequisites();
    let bed = Bed::new(
        "exit7",
        &Spec::new(&["sh", "-c", "echo hello; echo oops >&2; exit 7"]),
    );
    let shim = bed.spawn(false, false).await;
    shim.start().await.unwrap();
    let exit = shim.wait(&ExecId::init()).await.unwrap();
    assert_eq!((exit.code, exit.signal), (7, None));
    let init = ExecId::init();
    assert_eq!(bed.read(bed.task().stdout(&init)), "hello\n");
    assert_eq!(bed.read(bed.task().stderr(&init)), "oops\n");
    assert_eq!(shim.delete(false).await.unwrap(), Some(exit));
}

#[tokio::test]
async fn stdin_fifo_reaches_the_container() {
    require_prerequisites();
    let bed = Bed::new("stdin", &Spec::new(&["cat"]));
    let shim = bed.spawn(false, true).await;
    shim.start().await.unwrap();
    let init = ExecId::init();
    write_stdin(bed.task().stdin(&init), b"line one\nline two\n").await;
    let exit = tokio::time::timeout(Duration::from_secs(20), shim.wait(&init))
        .await
        .expect("cat exits once the FIFO's writer closes")
        .unwrap();
    assert_eq!(exit.code, 0);
    assert_eq!(bed.read(bed.task().stdout(&init)), "line one\nline two\n");
    shim.delete(false).await.unwrap();
}

#[tokio::test]
async fn terminal_is_a_pty_and_resizes() {
    require_prerequisites();
    let bed = Bed::new(
        "tty",
        &Spec {
            terminal: true,
            ..Spec::new(&["sh", "-c", "tty; read go; stty size; exit 4"])
        },
    );
    let shim = bed.spawn(true, true).await;
    shim.start().await.unwrap();
    let init = ExecId::init();
    let stdout = bed.task().stdout(&init);
    wait_for_text(&stdout, "/dev/pts/");
    assert!(shim.state(&init).await.unwrap().terminal);

    let exec = ExecId::new("tty-exec").unwrap();
    shim.exec(
        &exec,
        &exec_process(&["sh", "-c", "tty; stty size"]),
        true,
        false,
    )
    .await
    .unwrap();
    assert_eq!(shim.wait(&exec).await.unwrap().code, 0);
    let exec_output = bed.read(bed.task().stdout(&exec));
    assert!(exec_output.contains("/dev/pts/"), "{exec_output:?}");

    shim.resize(&init, 100, 30).await.unwrap();
    write_stdin(bed.task().stdin(&init), b"go\n").await;
    let exit = shim.wait(&init).await.unwrap();
    assert_eq!(exit.code, 4);
    let output = bed.read(stdout);
    assert!(
        output.contains("30 100"),
        "stty size after the resize: {output:?}"
    );
    shim.delete(false).await.unwrap();
}

#[tokio::test]
async fn killed_shim_reports_a_lost_status_never_zero() {
    require_prerequisites();
    let bed = Bed::new("lost", &Spec::new(&["sleep", "1000"]));
    let shim = bed.spawn(false, false).await;
    shim.start().await.unwrap();
    let shim_pid = shim.shim_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(reap(shim_pid));

    let again = ShimClient::connect(bed.task_dir()).unwrap();
    assert!(!again.is_alive().await);
    let init = ExecId::init();
    match again.wait(&init).await {
        Err(ShimError::Lost { exec_id, .. }) => assert_eq!(exec_id, init),
        other => panic!("a lost shim's task must not report an exit: {other:?}"),
    }
    let state = again.state(&init).await.unwrap();
    assert_eq!((state.status, state.exit), (TaskStatus::Unknown, None));
    assert!(matches!(
        again.kill(&init, 9, false).await.unwrap_err(),
        ShimError::Gone { .. }
    ));
}

#[tokio::test]
async fn runtime_errors_surface_with_their_message() {
    require_prerequisites();
    let bed = Bed::new("nobinary", &Spec::new(&["/no/such/program"]));
    let error = bed
        .try_spawn(false, false)
        .await
        .expect_err("creating a container whose program is missing fails");
    let message = error.to_string();
    assert!(matches!(error, ShimError::Start { .. }), "{message}");
    assert!(message.contains("/no/such/program"), "{message}");
    assert_eq!(
        bed.runc_status(),
        None,
        "a failed create leaves no container"
    );

    let runc = Runc::new("runc", bed.runc_root()).with_log(bed.dir.path().join("runc.log"));
    let missing = runc.state("skiff-test-never-created").unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert!(missing.to_string().contains("does not exist"), "{missing}");
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    require_prerequisites();
    let bed = Bed::new("bad", &Spec::new(&["sleep", "1000"]));
    let shim = bed.spawn(false, false).await;
    let init = ExecId::init();
    let unknown = ExecId::new("nope").unwrap();
    assert_eq!(
        refused_kind(shim.wait(&unknown).await.unwrap_err()),
        FailureKind::NotFound
    );
    assert_eq!(
        refused_kind(shim.resize(&init, 80, 24).await.unwrap_err()),
        FailureKind::FailedPrecondition
    );
    assert_eq!(
        refused_kind(shim.kill(&init, 0, false).await.unwrap_err()),
        FailureKind::InvalidArgument
    );
    assert_eq!(
        refused_kind(
            shim.exec(&init, &exec_process(&["true"]), false, false)
                .await
                .unwrap_err()
        ),
        FailureKind::AlreadyExists
    );
    assert!(matches!(
        bed.try_spawn(false, false).await,
        Err(ShimError::AlreadyRunning { .. })
    ));

    // A malformed line gets an error line back, and the shim keeps serving.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(bed.task().socket())
        .await
        .unwrap();
    stream.write_all(b"{\"op\":\"reboot\"}\n").await.unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(&mut stream)
        .read_line(&mut line)
        .await
        .unwrap();
    assert!(
        line.starts_with("{\"error\":{\"kind\":\"invalid_argument\""),
        "{line}"
    );
    assert_eq!(shim.state(&init).await.unwrap().status, TaskStatus::Created);

    // A container created but never started is deleted without force (runc kills its init).
    assert_eq!(shim.delete(false).await.unwrap().map(|e| e.code), Some(137));
    assert_eq!(bed.runc_status(), None);
}
