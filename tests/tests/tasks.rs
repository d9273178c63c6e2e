//! End to end: containers run by the real runc through skiffd's tasks and `skiff-shim`, driven by the
//! `skiff` CLI like ctr: the task lifecycle (create, start, ls, exec, pause, resume, kill, wait, delete),
//! `skiff run` attached with the container's exit code, `--rm`, limits and a read-only root visible inside,
//! namespaces, tasks that survive skiffd being stopped (SIGTERM) or killed (SIGKILL), a SIGTERM that ends
//! the output streams clients follow, the lifecycle with
//! `--runtime crun`, and bad input refused with nothing left behind.

use std::time::Duration;

use anyhow::{ensure, Result};
use skiff_tests::{require, wait_until, ImageSpec, LayerSpec, Registry, RegistryAuth, Skiffd};

const TOOLS: &[&str] = &[
    "root",
    "docker-registry",
    "skopeo",
    "busybox",
    "overlayfs",
    "runc",
];

/// A registry holding a busybox image, and a skiffd that pulled it.
fn bed() -> Result<(Registry, Skiffd, String)> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let image = ImageSpec::new()
        .busybox()
        .layer(LayerSpec::new().file("etc/motd", "hello from the image\n"))
        .cmd(&["/bin/sh", "-c", "cat /etc/motd"]);
    registry.push(&image.build_layout()?, "bb:1")?;
    let reference = registry.reference("bb:1");
    let skiffd = Skiffd::start()?;
    skiffd.skiff_ok(&["image", "pull", "--plain-http", &reference])?;
    Ok((registry, skiffd, reference))
}

fn status_of(skiffd: &Skiffd, namespace: &str, id: &str) -> Result<Option<(String, String)>> {
    let listing = skiffd.skiff_ok(&["-n", namespace, "task", "ls"])?;
    Ok(listing.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.first() == Some(&id)).then(|| (cols[1].to_owned(), cols[2].to_owned()))
    }))
}

#[test]
fn the_ctr_lifecycle_and_skiff_run() -> Result<()> {
    let (_registry, skiffd, reference) = bed()?;

    // run, attached: the image's command, its output, exit code 0; --rm leaves nothing.
    let out = skiffd.skiff_ok(&["run", "--rm", &reference, "r1"])?;
    ensure!(out.contains("hello from the image"), "{out:?}");
    ensure!(skiffd
        .skiff_ok(&["container", "ls", "-q"])?
        .trim()
        .is_empty());
    ensure!(skiffd.skiff_ok(&["task", "ls", "-q"])?.trim().is_empty());
    // The exit code is passed on, stderr too.
    let failed = skiffd.skiff(&[
        "run",
        "--rm",
        &reference,
        "r2",
        "sh",
        "-c",
        "echo oops >&2; exit 7",
    ])?;
    ensure!(failed.status.code() == Some(7), "{failed:?}");
    ensure!(String::from_utf8_lossy(&failed.stderr).contains("oops"));
    // stdin reaches the container with -i.
    let echoed = std::process::Command::new(skiff_tests::cargo_bin("skiff")?)
        .args(["--address"])
        .arg(skiffd.socket())
        .args(["run", "--rm", "-i", &reference, "r3", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"piped in\n")?;
            child.wait_with_output()
        })?;
    ensure!(
        String::from_utf8_lossy(&echoed.stdout).contains("piped in"),
        "{echoed:?}"
    );

    // The ctr lifecycle: create (no process), start -d, ls RUNNING, exec, pause, resume, kill, wait, rm.
    skiffd.skiff_ok(&[
        "container",
        "create",
        &reference,
        "life",
        "sh",
        "-c",
        "trap 'exit 3' TERM; while true; do sleep 0.1; done",
    ])?;
    ensure!(status_of(&skiffd, "default", "life")?.is_none());
    skiffd.skiff_ok(&["task", "start", "-d", "life"])?;
    let (pid, status) = status_of(&skiffd, "default", "life")?.expect("a task");
    ensure!(
        status == "RUNNING" && pid.parse::<u32>()? > 0,
        "{pid} {status}"
    );
    let exec = skiffd.skiff(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "life",
        "sh",
        "-c",
        "echo from exec; exit 4",
    ])?;
    ensure!(exec.status.code() == Some(4), "{exec:?}");
    ensure!(String::from_utf8_lossy(&exec.stdout).contains("from exec"));
    skiffd.skiff_ok(&["task", "pause", "life"])?;
    ensure!(status_of(&skiffd, "default", "life")?.map(|s| s.1) == Some("PAUSED".into()));
    skiffd.skiff_ok(&["task", "resume", "life"])?;
    ensure!(status_of(&skiffd, "default", "life")?.map(|s| s.1) == Some("RUNNING".into()));
    let metrics = skiffd.skiff_ok(&["task", "metrics", "life"])?;
    ensure!(metrics.lines().count() == 2, "{metrics}");
    // A container with a task is not removed.
    ensure!(!skiffd.skiff(&["container", "rm", "life"])?.status.success());
    skiffd.skiff_ok(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "e2",
        "life",
        "sh",
        "-c",
        "echo to-the-log >&2",
    ])?;
    wait_until("the detached exec's log", Duration::from_secs(10), || {
        let log = skiffd.skiff(&["task", "logs", "--exec-id", "e2", "life"])?;
        Ok(String::from_utf8_lossy(&log.stderr).contains("to-the-log"))
    })?;
    ensure!(
        skiffd
            .skiff_ok(&["task", "wait", "--exec-id", "e2", "life"])?
            .trim()
            == "0"
    );
    skiffd.skiff_ok(&["task", "rm", "--exec-id", "e2", "life"])?;
    let labels = skiffd.skiff_ok(&["container", "label", "life", "tier=web", "x=1"])?;
    ensure!(labels.trim() == "tier=web,x=1", "{labels:?}");
    skiffd.skiff_ok(&["task", "kill", "-s", "TERM", "life"])?;
    let waited = skiffd.skiff_ok(&["task", "wait", "life"])?;
    ensure!(waited.trim() == "3", "exit status {waited:?}");
    ensure!(status_of(&skiffd, "default", "life")?.map(|s| s.1) == Some("STOPPED".into()));
    skiffd.skiff_ok(&["task", "rm", "life"])?;
    skiffd.skiff_ok(&["container", "rm", "life"])?;

    // Namespaces isolate tasks.
    skiffd.skiff_ok(&["-n", "ns1", "image", "pull", "--plain-http", &reference])?;
    skiffd.skiff_ok(&["-n", "ns1", "run", "-d", &reference, "iso", "sleep", "60"])?;
    ensure!(status_of(&skiffd, "ns1", "iso")?.is_some());
    ensure!(status_of(&skiffd, "default", "iso")?.is_none());
    skiffd.skiff_ok(&["-n", "ns1", "task", "rm", "-f", "iso"])?;
    skiffd.skiff_ok(&["-n", "ns1", "container", "rm", "iso"])?;
    Ok(())
}

#[test]
fn limits_and_a_read_only_root_are_visible_inside() -> Result<()> {
    let (_registry, skiffd, reference) = bed()?;
    let out = skiffd.skiff_ok(&[
        "run", "--rm", "--memory", "128m", "--cpus", "0.5", "--pids-limit", "100", "--read-only",
        "--hostname", "box", &reference, "lim", "sh", "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
         /sys/fs/cgroup/pids/pids.max; hostname; touch /x 2>/dev/null && echo writable || echo read-only",
    ])?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines == ["134217728", "50000", "100", "box", "read-only"],
        "inside the container: {lines:?}"
    );
    Ok(())
}

#[test]
fn tasks_outlive_skiffd_and_report_their_exit() -> Result<()> {
    let (_registry, mut skiffd, reference) = bed()?;
    skiffd.skiff_ok(&[
        "run",
        "-d",
        &reference,
        "long",
        "sh",
        "-c",
        "sleep 3; exit 5",
    ])?;
    let (pid, _) = status_of(&skiffd, "default", "long")?.expect("a task");

    // SIGTERM: skiffd stops; the container does not.
    skiffd.restart()?;
    let (after, status) = status_of(&skiffd, "default", "long")?.expect("the task after a restart");
    ensure!(after == pid && status == "RUNNING", "{after} {status}");

    // SIGKILL: the same.
    skiffd.kill_and_restart()?;
    ensure!(status_of(&skiffd, "default", "long")?.is_some());
    wait_until("the task to exit", Duration::from_secs(30), || {
        Ok(status_of(&skiffd, "default", "long")?.map(|s| s.1) == Some("STOPPED".into()))
    })?;
    let waited = skiffd.skiff_ok(&["task", "wait", "long"])?;
    ensure!(waited.trim() == "5", "{waited:?}");
    skiffd.skiff_ok(&["task", "rm", "long"])?;
    skiffd.skiff_ok(&["container", "rm", "long"])?;
    Ok(())
}

/// SIGTERM while a client follows a task's output: the stream ends and skiffd shuts down on its own, in
/// its known order (not killed after the grace period), and the task runs on.
#[test]
fn sigterm_ends_output_streams_and_skiffd_stops_on_its_own() -> Result<()> {
    let (_registry, mut skiffd, reference) = bed()?;
    skiffd.skiff_ok(&[
        "run",
        "-d",
        &reference,
        "ticker",
        "sh",
        "-c",
        "while :; do echo tick; sleep 1; done",
    ])?;
    let (pid, _) = status_of(&skiffd, "default", "ticker")?.expect("a task");
    let log = skiffd.work_dir().join("follower.log");
    let mut follower = skiff_tests::ChildProcess::spawn(
        "skiff task logs -f",
        std::process::Command::new(skiff_tests::cargo_bin("skiff")?)
            .arg("--address")
            .arg(skiffd.socket())
            .args(["task", "logs", "-f", "ticker"]),
        &log,
    )?;
    wait_until("the follower to print", Duration::from_secs(30), || {
        Ok(std::fs::read_to_string(&log)?.contains("tick"))
    })?;

    let stopped = skiffd.stop().expect("skiffd ran");
    ensure!(
        stopped.success(),
        "skiffd did not stop on its own after SIGTERM ({stopped}):\n{}",
        skiffd.log()
    );
    ensure!(
        follower.wait_timeout(Duration::from_secs(10)).is_some(),
        "the follower's stream did not end with skiffd"
    );
    let shutdown = skiffd.log();
    ensure!(shutdown.contains("skiffd stopped"), "{shutdown}");

    skiffd.restart()?;
    let (after, status) = status_of(&skiffd, "default", "ticker")?.expect("the task");
    ensure!(after == pid && status == "RUNNING", "{after} {status}");
    skiffd.skiff_ok(&["task", "kill", "-s", "9", "ticker"])?;
    skiffd.skiff(&["task", "wait", "ticker"])?;
    skiffd.skiff_ok(&["task", "rm", "ticker"])?;
    skiffd.skiff_ok(&["container", "rm", "ticker"])?;
    Ok(())
}

/// The main job: an eStargz image (converted by ctr-remote) pulled lazily by `skiff run` and started with
/// runc; `image ls` and `image info` report how little of it was fetched.
#[test]
fn a_lazy_image_runs_and_reports_what_it_fetched() -> Result<()> {
    require(&[
        "root",
        "/dev/fuse",
        "docker-registry",
        "skopeo",
        "busybox",
        "overlayfs",
        "runc",
        "containerd",
        "ctr-remote",
    ])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let image = ImageSpec::new()
        .busybox()
        .layer(
            LayerSpec::new()
                .generated_file("data/unread.bin", 16 << 20, 3)
                .file("etc/motd", "lazy hello\n"),
        )
        .cmd(&["/bin/sh", "-c", "cat /etc/motd"]);
    registry.push(&image.build_layout()?, "bb:org")?;
    {
        let converter = skiff_tests::Containerd::start()?;
        skiff_tests::convert_estargz(&converter, &registry.host(), "bb:org", "bb:esgz", None)?;
    }
    let config = tempfile::tempdir()?;
    let skiffd = Skiffd::start_with(skiff_tests::SkiffdOptions {
        config: Some(skiff_tests::write_lazy_skiffd_config(
            config.path(),
            &registry.host(),
        )?),
        ..Default::default()
    })?;
    let reference = registry.reference("bb:esgz");
    let out = skiffd.skiff_ok(&["run", "--rm", "--plain-http", &reference, "lazy"])?;
    ensure!(out.contains("lazy hello"), "{out:?}");
    let listing = skiffd.skiff_ok(&["image", "ls"])?;
    let row = listing
        .lines()
        .find(|l| l.starts_with(&reference))
        .unwrap_or_default();
    let percent: u32 = row
        .split("lazy ")
        .nth(1)
        .and_then(|rest| rest.split('%').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    ensure!(percent < 25, "FETCHED of a lazily run image: {row:?}");
    let info = skiffd.skiff_ok(&["image", "info", &reference])?;
    ensure!(info.matches("lazy:").count() == 2, "{info}");
    ensure!(info.matches("chunks:").count() == 2, "{info}");

    // The per-layer counters (issue 5), as JSON: the container read /etc/motd and busybox through
    // FUSE, nothing was fetched twice, and without background fetching most chunks (those of the
    // unread 16 MiB file) are not cached.
    let json: serde_json::Value =
        serde_json::from_str(&skiffd.skiff_ok(&["image", "info", "--json", &reference])?)?;
    let fetches: Vec<&serde_json::Value> = json["layers"]
        .as_array()
        .map(|layers| layers.iter().map(|l| &l["fetch"]).collect())
        .unwrap_or_default();
    ensure!(
        fetches.len() == 2 && fetches.iter().all(|f| f.is_object()),
        "{json}"
    );
    let sum = |name: &str| -> u64 { fetches.iter().filter_map(|f| f[name].as_u64()).sum() };
    ensure!(sum("bytes_read") >= "lazy hello\n".len() as u64, "{json}");
    ensure!(sum("duplicate_fetches") == 0, "{json}");
    let (total, cached) = (sum("chunks_total"), sum("chunks_cached"));
    ensure!(
        cached > 0 && cached < total,
        "{cached} of {total} chunks cached: {json}"
    );
    Ok(())
}

/// `skiff run -t` from a terminal: the container gets a pty of the terminal's size, keys typed reach it,
/// what it prints comes back, and its exit code is the command's.
#[test]
fn run_with_a_tty_is_interactive() -> Result<()> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    let (_registry, skiffd, reference) = bed()?;
    let size = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None)?;
    let mut child = Command::new(skiff_tests::cargo_bin("skiff")?)
        .arg("--address")
        .arg(skiffd.socket())
        .args(["run", "-t", "--rm", &reference, "tty1", "sh", "-c"])
        // Reading first: the pty is resized to our terminal right after the start.
        .arg("read x; stty size; tty; echo got:$x; exit 3")
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave))
        .spawn()?;
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone()?;
    let output = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once every slave descriptor is closed (the command exited).
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("got:") {
                // Keep reading until the end of that line.
                if seen.ends_with(b"\n") {
                    break;
                }
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(500));
    master.write_all(b"typed\r")?;
    let status = child.wait()?;
    let seen = String::from_utf8_lossy(&output.join().expect("reader")).into_owned();
    ensure!(status.code() == Some(3), "exit {status:?}; output {seen:?}");
    ensure!(seen.contains("30 100"), "stty size inside: {seen:?}");
    ensure!(seen.contains("/dev/pts/"), "tty inside: {seen:?}");
    ensure!(seen.contains("got:typed"), "typed input: {seen:?}");
    Ok(())
}

/// OCI hooks given with `--hook` run in lifecycle order, each with the container's state JSON on stdin.
#[test]
fn hooks_run_in_order_with_the_state_on_stdin() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let (_registry, skiffd, reference) = bed()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("hooks.log");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# $1: the stage; the state JSON arrives on stdin\nstate=$(cat)\necho \"$1 $state\" >> {}\n",
            log.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let hook = |stage: &str| format!("{stage}={},hook.sh,{stage}", script.display());
    let (prestart, runtime, poststart, poststop) = (
        hook("prestart"),
        hook("createRuntime"),
        hook("poststart"),
        hook("poststop"),
    );
    skiffd.skiff_ok(&[
        "run", "--rm", "--hook", &prestart, "--hook", &runtime, "--hook", &poststart, "--hook",
        &poststop, &reference, "hk", "true",
    ])?;
    let text = std::fs::read_to_string(&log)?;
    let stages: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let position = |stage: &str| stages.iter().position(|s| *s == stage);
    for stage in ["prestart", "createRuntime", "poststart", "poststop"] {
        ensure!(position(stage).is_some(), "{stage} did not run: {text}");
    }
    ensure!(
        position("prestart") < position("createRuntime")
            && position("createRuntime") < position("poststop")
            && position("poststart") < position("poststop"),
        "hook order: {stages:?}"
    );
    for line in text.lines() {
        let state: serde_json::Value =
            serde_json::from_str(line.split_once(' ').map_or("", |(_, s)| s))?;
        ensure!(state["id"] == "default--hk", "state on stdin: {line}");
        ensure!(
            state["status"].is_string() && state["bundle"].is_string(),
            "{line}"
        );
    }
    Ok(())
}

/// `--runtime crun` selects crun for the whole lifecycle: attached run with its exit code, a detached
/// task with exec, pause/resume, kill and wait, and the limits in the container's cgroup.
#[test]
fn crun_is_selectable_for_the_whole_lifecycle() -> Result<()> {
    require(&["crun"])?;
    let (_registry, skiffd, reference) = bed()?;
    let crun = ["--runtime", "crun"];
    let out = skiffd.skiff(
        &[
            &["run", "--rm"][..],
            &crun,
            &[&reference, "c1", "sh", "-c", "cat /etc/motd; exit 6"],
        ]
        .concat(),
    )?;
    ensure!(out.status.code() == Some(6), "{out:?}");
    ensure!(String::from_utf8_lossy(&out.stdout).contains("hello from the image"));

    let limits = skiffd.skiff_ok(
        &[
            &[
                "run",
                "--rm",
                "--memory",
                "128m",
                "--pids-limit",
                "100",
                "--read-only",
            ][..],
            &crun,
            &[
                &reference,
                "c2",
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; \
                 touch /x 2>/dev/null && echo writable || echo read-only",
            ],
        ]
        .concat(),
    )?;
    let lines: Vec<&str> = limits.lines().collect();
    ensure!(
        lines == ["134217728", "100", "read-only"],
        "inside the crun container: {lines:?}"
    );

    skiffd.skiff_ok(
        &[
            &["run", "-d"][..],
            &crun,
            &[
                &reference,
                "c3",
                "sh",
                "-c",
                "trap 'exit 3' TERM; while true; do sleep 0.1; done",
            ],
        ]
        .concat(),
    )?;
    let info = skiffd.skiff_ok(&["container", "info", "c3"])?;
    ensure!(info.contains("\"crun\""), "{info}");
    let (_, status) = status_of(&skiffd, "default", "c3")?.expect("a crun task");
    ensure!(status == "RUNNING", "{status}");
    let exec = skiffd.skiff(&["task", "exec", "--exec-id", "e", "c3", "sh", "-c", "exit 4"])?;
    ensure!(exec.status.code() == Some(4), "{exec:?}");
    skiffd.skiff_ok(&["task", "pause", "c3"])?;
    ensure!(status_of(&skiffd, "default", "c3")?.map(|s| s.1) == Some("PAUSED".into()));
    skiffd.skiff_ok(&["task", "resume", "c3"])?;
    skiffd.skiff_ok(&["task", "kill", "c3"])?;
    ensure!(skiffd.skiff_ok(&["task", "wait", "c3"])?.trim() == "3");
    skiffd.skiff_ok(&["task", "rm", "c3"])?;
    skiffd.skiff_ok(&["container", "rm", "c3"])?;
    Ok(())
}

/// Bad input to the task verbs: a clear error naming the problem, exit code 1 (2 for flags clap
/// refuses), and no container, task or snapshot left behind.
#[test]
fn bad_task_input_is_refused_and_leaves_nothing() -> Result<()> {
    let (_registry, skiffd, reference) = bed()?;
    let snapshots_before = skiffd.skiff_ok(&["snapshot", "ls"])?;
    let refused = |args: &[&str], code: i32, expected: &str| -> Result<()> {
        let out = skiffd.skiff(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(code) && stderr.contains(expected),
            "skiff {args:?}: expected exit {code} naming {expected:?}, got {} with stderr {stderr:?}",
            out.status
        );
        Ok(())
    };

    // An image no registry has; a registry that does not answer.
    let missing = _registry.reference("nothing:here");
    refused(
        &["run", "--rm", "--plain-http", &missing, "x1"],
        1,
        "nothing",
    )?;
    refused(
        &["run", "--rm", "127.0.0.1:1/none:1", "x2"],
        1,
        "127.0.0.1:1",
    )?;
    // Flags: unknown, malformed values, a runtime binary that does not exist.
    refused(
        &["run", "--no-such-flag", &reference, "x3"],
        2,
        "--no-such-flag",
    )?;
    refused(&["run", "--cpus", "many", &reference, "x4"], 1, "--cpus")?;
    refused(&["task", "kill", "-s", "NOSUCHSIG", "x5"], 1, "NOSUCHSIG")?;
    refused(
        &[
            "run",
            "--rm",
            "--runtime",
            "no-such-runtime",
            &reference,
            "x6",
            "true",
        ],
        1,
        "no-such-runtime",
    )?;
    // A duplicate id; exec in a stopped task; kill, start and rm of what does not exist.
    skiffd.skiff_ok(&["run", "-d", &reference, "dup", "true"])?;
    refused(
        &["run", "--rm", &reference, "dup", "true"],
        1,
        "already exists",
    )?;
    wait_until("the task to stop", Duration::from_secs(10), || {
        Ok(status_of(&skiffd, "default", "dup")?.map(|s| s.1) == Some("STOPPED".into()))
    })?;
    refused(
        &["task", "exec", "--exec-id", "e", "dup", "true"],
        1,
        "not running",
    )?;
    refused(&["task", "kill", "ghost"], 1, "ghost has no task")?;
    refused(&["task", "start", "ghost"], 1, "not found")?;
    refused(&["task", "rm", "ghost"], 1, "ghost has no task")?;
    refused(&["task", "wait", "ghost"], 1, "ghost has no task")?;
    skiffd.skiff_ok(&["task", "rm", "dup"])?;
    skiffd.skiff_ok(&["container", "rm", "dup"])?;

    ensure!(skiffd
        .skiff_ok(&["container", "ls", "-q"])?
        .trim()
        .is_empty());
    ensure!(skiffd.skiff_ok(&["task", "ls", "-q"])?.trim().is_empty());
    let snapshots_after = skiffd.skiff_ok(&["snapshot", "ls"])?;
    ensure!(
        snapshots_after == snapshots_before,
        "snapshots left: {snapshots_after:?}, before {snapshots_before:?}"
    );
    Ok(())
}
