//! Specs from `spec::generate` run by the real runc: a busybox-static rootfs in a temp dir, a bundle
//! (`config.json` + `rootfs`), `runc run` without a terminal, and checks made from inside the container.
//!
//! Needs root, runc and busybox-static (`tests/install-deps.sh`); fails naming whichever is missing.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oci_spec::image::ImageConfiguration;
use skiff_runtime::options::{parse_cpus, parse_env, parse_memory, parse_mount, parse_user};
use skiff_runtime::options::{HookSpec, HookStage};
use skiff_runtime::spec::{generate, SpecOptions};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "hostname", "id", "pwd", "touch", "ls", "mkdir", "test", "[",
    "true",
];
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The parent of every test container's cgroup; emptied parents are removed by the guard.
const CGROUP_PARENT: &str = "skiff-spec-test";

/// Fails the test (never skips) when a component is missing.
fn require_components() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "spec_runc runs containers with runc and must run as root"
    );
    let runc = Command::new("runc").arg("--version").output();
    assert!(
        matches!(&runc, Ok(out) if out.status.success()),
        "runc is missing or broken (Debian package runc, see tests/install-deps.sh): {runc:?}"
    );
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install the Debian package busybox-static (tests/install-deps.sh)"
    );
}

/// A bundle dir with a busybox rootfs, its own runc state root, and a container id unique to this run.
/// Dropping it force-deletes the container and removes the directories.
struct Bundle {
    dir: tempfile::TempDir,
    id: String,
}

impl Bundle {
    fn new(name: &str) -> Bundle {
        require_components();
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "skiff-spec-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("skiff-spec-bundle-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in [
            "bin", "etc", "tmp", "work", "data", "scratch", "hooklog", "proc", "sys", "dev",
        ] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/work:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\nwheel:x:10:app\nstaff:x:50:app\napp:x:1000:\n",
        )
        .unwrap();
        fs::create_dir(dir.path().join("state")).unwrap();
        Bundle { dir, id }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn cgroups_path(&self) -> String {
        format!("/{CGROUP_PARENT}/{}", self.id)
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(self.dir.path().join("state"));
        cmd
    }

    /// Writes `config.json` for `spec` options and runs the container to completion, returning its
    /// stdout/stderr and exit status (runc passes the container's through).
    fn run(&self, image: &ImageConfiguration, opts: &SpecOptions) -> Output {
        let spec = generate(image, &self.rootfs(), opts).expect("generate spec");
        spec.save(self.dir.path().join("config.json"))
            .expect("write config.json");
        let mut child = self
            .runc()
            .arg("run")
            .arg("--bundle")
            .arg(self.dir.path())
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runc");
        let deadline = Instant::now() + RUN_TIMEOUT;
        while child.try_wait().expect("wait for runc").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "runc run {} did not finish in {RUN_TIMEOUT:?}; stderr: {}",
                    self.id,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("collect runc output")
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // `runc run` deletes the container when it exits; this covers panics and timeouts.
        let _ = self
            .runc()
            .args(["delete", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // runc removes the container's cgroup, not its parent; remove that once no test uses it.
        if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = fs::remove_dir(h.path().join(CGROUP_PARENT));
            }
        }
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(CGROUP_PARENT));
    }
}

fn image(config: serde_json::Value) -> ImageConfiguration {
    serde_json::from_value(serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": config,
    }))
    .expect("image config")
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "container failed ({}): stdout: {} stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value after `key=` on a line of `out`.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line in container output:\n{out}"))
}

fn script(lines: &[&str]) -> Vec<String> {
    vec!["-c".into(), lines.join("\n")]
}

#[test]
fn process_args_env_cwd_hostname_and_user() {
    let bundle = Bundle::new("process");
    // The image's entrypoint is a shell; its Cmd is replaced by the script given "on the command line".
    let config = image(serde_json::json!({
        "Entrypoint": ["/bin/sh"],
        "Cmd": ["-c", "echo image-cmd-ran"],
        "Env": ["FROM_IMAGE=yes", "OVERRIDDEN=image"],
        "WorkingDir": "/work",
        "User": "root",
    }));
    let opts = SpecOptions {
        id: bundle.id.clone(),
        args: {
            let mut a = script(&[
                "echo \"args=$0 $1 $2\"",
                "echo \"from_image=$FROM_IMAGE\"",
                "echo \"overridden=$OVERRIDDEN\"",
                "echo \"path=$PATH\"",
                "echo \"cwd=$(pwd)\"",
                "echo \"hostname=$(hostname)\"",
                "echo \"uid=$(id -u)\"",
                "echo \"gid=$(id -g)\"",
                "echo \"groups=$(id -G)\"",
            ]);
            a.extend(["argv0".into(), "first".into(), "second".into()]);
            a
        },
        env: vec![parse_env("OVERRIDDEN=cli").unwrap()],
        user: Some(parse_user("app").unwrap()),
        hostname: Some("skiffbox".into()),
        ..SpecOptions::default()
    };
    let out = stdout_of(&bundle.run(&config, &opts));
    assert!(
        !out.contains("image-cmd-ran"),
        "the image Cmd must be replaced:\n{out}"
    );
    assert_eq!(field(&out, "args"), "argv0 first second", "{out}");
    assert_eq!(field(&out, "from_image"), "yes");
    assert_eq!(field(&out, "overridden"), "cli");
    assert_eq!(
        field(&out, "path"),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(field(&out, "cwd"), "/work");
    assert_eq!(field(&out, "hostname"), "skiffbox");
    assert_eq!(field(&out, "uid"), "1000");
    assert_eq!(field(&out, "gid"), "1000");
    let mut groups: Vec<u32> = field(&out, "groups")
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort_unstable();
    assert_eq!(
        groups,
        [10, 50, 1000],
        "primary + supplementary groups:\n{out}"
    );
}

#[test]
fn image_defaults_run_as_is() {
    let bundle = Bundle::new("defaults");
    let config = image(serde_json::json!({
        "Cmd": ["/bin/sh", "-c", "echo \"hostname=$(hostname)\"; echo \"uid=$(id -u)\"; echo \"cwd=$(pwd)\"; echo \"nofile=$(ulimit -n)\""],
        "User": "1000:50",
    }));
    let opts = SpecOptions {
        id: bundle.id.clone(),
        ..SpecOptions::default()
    };
    let out = stdout_of(&bundle.run(&config, &opts));
    assert_eq!(
        field(&out, "hostname"),
        bundle.id,
        "hostname defaults to the id"
    );
    assert_eq!(field(&out, "uid"), "1000");
    assert_eq!(field(&out, "cwd"), "/");
    assert_eq!(field(&out, "nofile"), "1024");
}

#[test]
fn read_only_root_with_bind_and_tmpfs_mounts() {
    let bundle = Bundle::new("mounts");
    let host_ro = tempfile::tempdir().unwrap();
    fs::write(host_ro.path().join("hello"), "from the host\n").unwrap();
    let host_rw = tempfile::tempdir().unwrap();
    let config = image(serde_json::json!({"Entrypoint": ["/bin/sh"]}));
    let opts = SpecOptions {
        id: bundle.id.clone(),
        args: script(&[
            "touch /rootfile 2>/dev/null && echo root=writable || echo root=readonly",
            "echo \"hello=$(cat /data/hello)\"",
            "touch /data/new 2>/dev/null && echo data=writable || echo data=readonly",
            "touch /scratch/new && echo scratch=writable",
            "echo written > /hooklog/out && echo rw=writable",
        ]),
        read_only: true,
        mounts: vec![
            parse_mount(&format!(
                "type=bind,src={},dst=/data,options=rbind:ro",
                host_ro.path().display()
            ))
            .unwrap(),
            parse_mount("type=tmpfs,dst=/scratch,options=size=1m").unwrap(),
            parse_mount(&format!(
                "type=bind,src={},dst=/hooklog",
                host_rw.path().display()
            ))
            .unwrap(),
        ],
        ..SpecOptions::default()
    };
    let out = stdout_of(&bundle.run(&config, &opts));
    assert_eq!(field(&out, "root"), "readonly", "{out}");
    assert_eq!(field(&out, "hello"), "from the host");
    assert_eq!(field(&out, "data"), "readonly");
    assert_eq!(field(&out, "scratch"), "writable");
    assert_eq!(field(&out, "rw"), "writable");
    assert_eq!(
        fs::read_to_string(host_rw.path().join("out")).unwrap(),
        "written\n"
    );
    assert!(!host_ro.path().join("new").exists());
    assert!(!bundle.rootfs().join("rootfile").exists());
}

#[test]
fn writable_root_by_default() {
    let bundle = Bundle::new("rw");
    let config = image(serde_json::json!({"Cmd": ["/bin/touch", "/rootfile"]}));
    let opts = SpecOptions {
        id: bundle.id.clone(),
        ..SpecOptions::default()
    };
    stdout_of(&bundle.run(&config, &opts));
    assert!(bundle.rootfs().join("rootfile").exists());
}

#[test]
fn resource_limits_reach_the_cgroup() {
    let bundle = Bundle::new("cgroup");
    let config = image(serde_json::json!({"Entrypoint": ["/bin/sh"]}));
    // cgroup v2 (a unified /sys/fs/cgroup) or v1 controllers, whichever runc set up on this host.
    let opts = SpecOptions {
        id: bundle.id.clone(),
        args: script(&[
            "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then",
            "  echo mode=v2",
            "  echo \"memory=$(cat /sys/fs/cgroup/memory.max)\"",
            "  echo \"cpu=$(cat /sys/fs/cgroup/cpu.max)\"",
            "  echo \"pids=$(cat /sys/fs/cgroup/pids.max)\"",
            "else",
            "  echo mode=v1",
            "  echo \"memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)\"",
            "  echo \"cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)\"",
            "  echo \"pids=$(cat /sys/fs/cgroup/pids/pids.max)\"",
            "fi",
            "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then pids=/sys/fs/cgroup/pids.max; else pids=/sys/fs/cgroup/pids/pids.max; fi",
            "(echo 1000 > $pids) 2>/dev/null && echo cgroupfs=writable || echo cgroupfs=readonly",
        ]),
        memory_limit: Some(parse_memory("128m").unwrap()),
        cpus: Some(parse_cpus("0.5").unwrap()),
        pids_limit: Some(64),
        cgroups_path: Some(bundle.cgroups_path()),
        ..SpecOptions::default()
    };
    let out = stdout_of(&bundle.run(&config, &opts));
    eprintln!("runc set up cgroup {}", field(&out, "mode"));
    assert_eq!(field(&out, "memory"), "134217728", "{out}");
    assert_eq!(field(&out, "cpu"), "50000 100000", "{out}");
    assert_eq!(field(&out, "pids"), "64", "{out}");
    assert_eq!(field(&out, "cgroupfs"), "readonly", "{out}");
    // On a v1 host, the limits were set in the cgroup named by cgroupsPath (runc removed it on exit).
    if field(&out, "mode") == "v1" {
        let leaf = Path::new("/sys/fs/cgroup/memory")
            .join(CGROUP_PARENT)
            .join(&bundle.id);
        assert!(
            !leaf.exists(),
            "runc should remove {} on exit",
            leaf.display()
        );
    }
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let bundle = Bundle::new("hooks");
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("hooks.log");
    // Hook script: append "STAGE <state json>" to the log named by $2.
    let hook_body = "#!/bin/sh\nstate=$(cat)\necho \"$1 $state\" >> \"$2\"\n";
    let host_hook = logdir.path().join("hook.sh");
    fs::write(&host_hook, hook_body).unwrap();
    fs::set_permissions(&host_hook, fs::Permissions::from_mode(0o755)).unwrap();
    // startContainer runs after pivot_root, inside the container: its program and log are in there.
    fs::write(bundle.rootfs().join("bin/hook.sh"), hook_body).unwrap();
    fs::set_permissions(
        bundle.rootfs().join("bin/hook.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let hook = |stage: HookStage, path: &Path, log: &Path| HookSpec {
        stage,
        path: path.to_owned(),
        args: vec![
            "hook.sh".into(),
            stage.as_str().into(),
            log.display().to_string(),
        ],
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        timeout: Some(30),
    };
    let in_container_log = Path::new("/hooklog/hooks.log");
    // Given out of order on purpose: generate groups them by stage, runc runs the stages in order.
    let hooks = vec![
        hook(HookStage::Poststop, &host_hook, &log),
        hook(
            HookStage::StartContainer,
            Path::new("/bin/hook.sh"),
            in_container_log,
        ),
        hook(HookStage::Poststart, &host_hook, &log),
        hook(HookStage::CreateContainer, &host_hook, &log),
        hook(HookStage::CreateRuntime, &host_hook, &log),
        hook(HookStage::Prestart, &host_hook, &log),
    ];
    // The container's process reads the log: startContainer must have run before it was executed.
    let config = image(serde_json::json!({"Cmd": ["/bin/cat", "/hooklog/hooks.log"]}));
    let opts = SpecOptions {
        id: bundle.id.clone(),
        mounts: vec![parse_mount(&format!(
            "type=bind,src={},dst=/hooklog",
            logdir.path().display()
        ))
        .unwrap()],
        hooks,
        ..SpecOptions::default()
    };
    let out = stdout_of(&bundle.run(&config, &opts));
    assert!(
        out.lines().any(|l| l.starts_with("startContainer {")),
        "startContainer had not run when the process started; it saw:\n{out}"
    );

    let text = fs::read_to_string(&log).expect("the hooks wrote no log");
    let entries: Vec<(&str, serde_json::Value)> = text
        .lines()
        .map(|line| {
            let (stage, json) = line.split_once(' ').expect("STAGE JSON");
            let state: serde_json::Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("{stage} got no state JSON on stdin ({e}): {json:?}"));
            (stage, state)
        })
        .collect();
    let stages: Vec<&str> = entries.iter().map(|(s, _)| *s).collect();
    // runc runs poststart (in runc) and startContainer (in the container's init) concurrently once the
    // container is started, so only their place between createContainer and poststop is fixed.
    assert_eq!(
        stages[..3],
        ["prestart", "createRuntime", "createContainer"],
        "hook log:\n{text}"
    );
    let mut started = stages[3..5].to_vec();
    started.sort_unstable();
    assert_eq!(
        started,
        ["poststart", "startContainer"],
        "hook log:\n{text}"
    );
    assert_eq!(stages[5..], ["poststop"], "hook log:\n{text}");
    let bundle_path = bundle.dir.path().canonicalize().unwrap();
    for (stage, state) in &entries {
        assert_eq!(state["id"], bundle.id.as_str(), "{stage}: {state}");
        assert!(state["ociVersion"].is_string(), "{stage}: {state}");
        assert_eq!(
            Path::new(state["bundle"].as_str().unwrap_or_default()),
            bundle_path,
            "{stage}: {state}"
        );
    }
    assert_eq!(
        entries[5].1["status"], "stopped",
        "poststop: {}",
        entries[5].1
    );
}
