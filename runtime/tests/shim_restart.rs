//! A task outlives whoever spawned its shim (the daemon, killed with SIGKILL): the shim is spawned by a
//! child process of this test, the child is killed, and a new `ShimClient` on the task dir still controls
//! the task and gets its exit status — also for a process that exited while nobody was connected.
//!
//! `harness = false`: this binary is also the spawner child (`SKIFF_TEST_SPAWNER=1` in its environment).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{reap, require_prerequisites, Bed, Spec};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use skiff_runtime::shim::{Shim, ShimClient};
use skiff_runtime::task::{ExecId, ShimConfig, TaskStatus};

const SPAWNER_ENV: &str = "SKIFF_TEST_SPAWNER";

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os(SPAWNER_ENV).is_some() {
        runtime.block_on(be_the_spawner());
        return;
    }
    runtime.block_on(task_survives_its_spawner());
    println!("test task_survives_its_spawner ... ok");
}

/// The spawner child: spawns a shim for the task dir and config given, starts the task, says so on
/// stdout and waits to be killed.
async fn be_the_spawner() {
    let task_dir = PathBuf::from(std::env::args().nth(1).expect("task dir"));
    let config: ShimConfig =
        serde_json::from_str(&std::env::args().nth(2).expect("config")).unwrap();
    let shim = Shim::spawn(&common::shim_binary(), &task_dir, &config)
        .await
        .unwrap();
    let pid = shim.start().await.unwrap();
    println!("started {pid}");
    std::future::pending::<()>().await;
}

async fn task_survives_its_spawner() {
    require_prerequisites();
    let bed = Bed::new(
        "restart",
        &Spec::new(&["sh", "-c", "trap 'exit 42' TERM; while :; do sleep 1; done"]),
    );
    let config = serde_json::to_string(&bed.config(false, false)).unwrap();
    let mut spawner = Command::new(std::env::current_exe().unwrap())
        .arg(bed.task_dir())
        .arg(config)
        .env(SPAWNER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(spawner.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let init_pid: u32 = line
        .strip_prefix("started ")
        .unwrap_or_else(|| panic!("the spawner said {line:?}"))
        .trim()
        .parse()
        .unwrap();

    kill(Pid::from_raw(spawner.id() as i32), Signal::SIGKILL).unwrap();
    let status = spawner.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    // The "restarted daemon": nothing but the task dir.
    let shim = ShimClient::connect(bed.task_dir()).unwrap();
    assert!(shim.is_alive().await, "the shim outlives its spawner");
    let init = ExecId::init();
    let state = shim.state(&init).await.unwrap();
    assert_eq!(
        (state.status, state.pid),
        (TaskStatus::Running, Some(init_pid))
    );

    // An exec process exits while no client is connected; its status waits in the shim and on disk.
    let exec = ExecId::new("while-away").unwrap();
    let mut process = oci_spec::runtime::Process::default();
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo bye; exit 9".into(),
    ]));
    process.set_env(Some(vec!["PATH=/bin".into()]));
    ShimClient::connect(bed.task_dir())
        .unwrap()
        .exec(&exec, &process, false, false)
        .await
        .unwrap();
    common::wait_for_text(&bed.task().exit_file(&exec), "\"code\":9");
    assert_eq!(
        ShimClient::connect(bed.task_dir())
            .unwrap()
            .wait(&exec)
            .await
            .unwrap()
            .code,
        9
    );

    shim.kill(&init, libc::SIGTERM, false).await.unwrap();
    let exit = shim.wait(&init).await.unwrap();
    assert_eq!(
        (exit.code, exit.signal),
        (42, None),
        "the init's TERM trap exits 42"
    );

    let shim_pid = shim.shim_pid().unwrap();
    assert_eq!(shim.delete(false).await.unwrap(), Some(exit));
    assert!(reap(shim_pid));
    assert_eq!(bed.runc_status(), None);
    // Reconnecting after everything is gone still reports the recorded exit.
    assert_eq!(
        ShimClient::connect(bed.task_dir())
            .unwrap()
            .wait(&init)
            .await
            .unwrap(),
        exit
    );
}
