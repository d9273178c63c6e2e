//! `Containers` and `Tasks` over real stores and mounts (an image pulled from the fake registry, rootfs
//! snapshots over overlayfs, bundles on disk) with a recording fake [`TaskRuntime`] in place of
//! `skiff-shim` + runc: the container and task lifecycles, and every refusal leaving nothing behind.
//! Needs root (overlayfs and bind mounts), as the end-to-end tests do.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use common::{image, Bed, Layer};
use oci_spec::runtime::Process;
use skiff_daemon::containers::{ContainerError, Containers, CreateRequest};
use skiff_daemon::task_runtime::{TaskControl, TaskRuntime};
use skiff_daemon::tasks::{ExecRequest, TaskFailure, Tasks};
use skiff_runtime::runc::Stats;
use skiff_runtime::shim::{Failure, FailureKind, ShimError};
use skiff_runtime::task::{ExecId, ExitStatus, ProcessState, ShimConfig, TaskStatus};
use skiff_snapshotter::snapshots::AnyFilter;
use tokio::sync::watch;

const NS: &str = "default";
const IMAGE: &str = "127.0.0.1:5000/box:1";

/// One process of a fake task.
#[derive(Clone, Debug)]
struct FakeProcess {
    pid: u32,
    status: TaskStatus,
    terminal: bool,
    exit: Option<ExitStatus>,
}

/// A task as the fake runtime keeps it: its processes, and a channel that ticks on every exit.
struct FakeTask {
    processes: Mutex<BTreeMap<ExecId, FakeProcess>>,
    exits: watch::Sender<u64>,
    calls: Arc<Mutex<Vec<String>>>,
    next_pid: Arc<Mutex<u32>>,
}

fn refused(kind: FailureKind, message: &str) -> ShimError {
    ShimError::Refused(Failure::new(kind, message))
}

impl FakeTask {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn pid(&self) -> u32 {
        let mut next = self.next_pid.lock().unwrap();
        *next += 1;
        *next
    }

    fn process(&self, exec_id: &ExecId) -> Result<FakeProcess, ShimError> {
        self.processes
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| refused(FailureKind::NotFound, "no such process"))
    }

    fn exit(&self, exec_id: &ExecId, status: ExitStatus) {
        if let Some(process) = self.processes.lock().unwrap().get_mut(exec_id) {
            process.status = TaskStatus::Stopped;
            process.exit = Some(status);
        }
        self.exits.send_modify(|n| *n += 1);
    }
}

#[async_trait]
impl TaskControl for FakeTask {
    async fn start(&self) -> Result<u32, ShimError> {
        self.record("start".into());
        let mut processes = self.processes.lock().unwrap();
        let init = processes.get_mut(&ExecId::init()).unwrap();
        if init.status != TaskStatus::Created {
            return Err(refused(FailureKind::FailedPrecondition, "already started"));
        }
        init.status = TaskStatus::Running;
        Ok(init.pid)
    }

    async fn kill(&self, exec_id: &ExecId, signal: i32, all: bool) -> Result<(), ShimError> {
        self.record(format!("kill {exec_id} {signal} {all}"));
        let process = self.process(exec_id)?;
        if process.status == TaskStatus::Stopped {
            return Err(refused(FailureKind::FailedPrecondition, "not running"));
        }
        let exit = ExitStatus::signaled(signal, SystemTime::now());
        self.exit(exec_id, exit);
        if exec_id.is_init() {
            // The init's end ends the container's other processes.
            let others: Vec<ExecId> = self.processes.lock().unwrap().keys().cloned().collect();
            for other in others.iter().filter(|id| !id.is_init()) {
                self.exit(other, ExitStatus::signaled(9, SystemTime::now()));
            }
        }
        Ok(())
    }

    async fn exec(
        &self,
        exec_id: &ExecId,
        process: &Process,
        terminal: bool,
        _stdin: bool,
    ) -> Result<u32, ShimError> {
        self.record(format!("exec {exec_id} {:?}", process.args()));
        if self.process(&ExecId::init())?.status != TaskStatus::Running {
            return Err(refused(
                FailureKind::FailedPrecondition,
                "the task is not running",
            ));
        }
        let mut processes = self.processes.lock().unwrap();
        if processes.contains_key(exec_id) {
            return Err(refused(FailureKind::AlreadyExists, "exec id in use"));
        }
        let pid = self.pid();
        processes.insert(
            exec_id.clone(),
            FakeProcess {
                pid,
                status: TaskStatus::Running,
                terminal,
                exit: None,
            },
        );
        Ok(pid)
    }

    async fn pause(&self) -> Result<(), ShimError> {
        self.record("pause".into());
        let mut processes = self.processes.lock().unwrap();
        let init = processes.get_mut(&ExecId::init()).unwrap();
        if init.status != TaskStatus::Running {
            return Err(refused(FailureKind::FailedPrecondition, "not running"));
        }
        init.status = TaskStatus::Paused;
        Ok(())
    }

    async fn resume(&self) -> Result<(), ShimError> {
        self.record("resume".into());
        let mut processes = self.processes.lock().unwrap();
        let init = processes.get_mut(&ExecId::init()).unwrap();
        if init.status != TaskStatus::Paused {
            return Err(refused(FailureKind::FailedPrecondition, "not paused"));
        }
        init.status = TaskStatus::Running;
        Ok(())
    }

    async fn state(&self, exec_id: &ExecId) -> Result<ProcessState, ShimError> {
        let process = self.process(exec_id)?;
        Ok(ProcessState {
            exec_id: exec_id.clone(),
            pid: Some(process.pid),
            status: process.status,
            terminal: process.terminal,
            exit: process.exit,
        })
    }

    async fn wait(&self, exec_id: &ExecId) -> Result<ExitStatus, ShimError> {
        let mut exits = self.exits.subscribe();
        loop {
            if let Some(exit) = self.process(exec_id)?.exit {
                return Ok(exit);
            }
            exits
                .changed()
                .await
                .map_err(|_| refused(FailureKind::Internal, "gone"))?;
        }
    }

    async fn resize(&self, exec_id: &ExecId, width: u16, height: u16) -> Result<(), ShimError> {
        self.record(format!("resize {exec_id} {width}x{height}"));
        if !self.process(exec_id)?.terminal {
            return Err(refused(FailureKind::FailedPrecondition, "no terminal"));
        }
        Ok(())
    }

    async fn metrics(&self) -> Result<Stats, ShimError> {
        self.record("metrics".into());
        Ok(Stats::default())
    }

    async fn delete(&self, force: bool) -> Result<Option<ExitStatus>, ShimError> {
        self.record(format!("delete {force}"));
        let init = self.process(&ExecId::init())?;
        if init.status == TaskStatus::Running {
            if !force {
                return Err(refused(FailureKind::FailedPrecondition, "the task runs"));
            }
            self.exit(&ExecId::init(), ExitStatus::signaled(9, SystemTime::now()));
        }
        Ok(self.process(&ExecId::init())?.exit)
    }

    async fn delete_exec(&self, exec_id: &ExecId) -> Result<ExitStatus, ShimError> {
        self.record(format!("delete-exec {exec_id}"));
        let process = self.process(exec_id)?;
        let exit = process
            .exit
            .ok_or_else(|| refused(FailureKind::FailedPrecondition, "still running"))?;
        self.processes.lock().unwrap().remove(exec_id);
        Ok(exit)
    }
}

/// Tasks in memory, by task dir; records every call.
#[derive(Default)]
struct FakeRuntime {
    tasks: Mutex<HashMap<PathBuf, Arc<FakeTask>>>,
    calls: Arc<Mutex<Vec<String>>>,
    next_pid: Arc<Mutex<u32>>,
}

impl FakeRuntime {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl TaskRuntime for FakeRuntime {
    async fn create(
        &self,
        task_dir: &Path,
        config: &ShimConfig,
    ) -> Result<Arc<dyn TaskControl>, ShimError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("create {}", config.id));
        // What runc needs is there: the spec and the mounted rootfs.
        assert!(config.bundle.join("config.json").is_file());
        assert!(config.bundle.join("rootfs/etc/hostname").is_file());
        let mut tasks = self.tasks.lock().unwrap();
        if tasks.contains_key(task_dir) {
            return Err(ShimError::TaskDirInUse {
                task_dir: task_dir.to_path_buf(),
            });
        }
        let pid = {
            let mut next = self.next_pid.lock().unwrap();
            *next += 1;
            *next
        };
        let task = Arc::new(FakeTask {
            processes: Mutex::new(BTreeMap::from([(
                ExecId::init(),
                FakeProcess {
                    pid,
                    status: TaskStatus::Created,
                    terminal: config.terminal,
                    exit: None,
                },
            )])),
            exits: watch::channel(0).0,
            calls: Arc::clone(&self.calls),
            next_pid: Arc::clone(&self.next_pid),
        });
        tasks.insert(task_dir.to_path_buf(), Arc::clone(&task));
        Ok(task)
    }

    fn connect(&self, task_dir: &Path) -> Result<Option<Arc<dyn TaskControl>>, ShimError> {
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .get(task_dir)
            .map(|task| Arc::clone(task) as Arc<dyn TaskControl>))
    }
}

struct World {
    bed: Bed,
    containers: Containers,
    tasks: Tasks,
    runtime: Arc<FakeRuntime>,
}

async fn world() -> World {
    let bed = Bed::new();
    bed.source.add(image(
        IMAGE,
        &[Layer {
            files: vec![("etc/hostname", b"box\n"), ("bin/sh", b"#!\n")],
            lazy: false,
        }],
    ));
    bed.pull(NS, IMAGE).await.unwrap();
    let containers = Containers::new(
        bed.meta.clone(),
        bed.content.clone(),
        bed.images.clone(),
        bed.snapshotter.clone(),
        bed.dir.path().join("scratch"),
    );
    let runtime = Arc::new(FakeRuntime::default());
    let tasks = Tasks::new(
        containers.clone(),
        bed.snapshotter.clone(),
        bed.dir.path().join("tasks"),
        bed.dir.path().join("runc"),
        Arc::clone(&runtime) as Arc<dyn TaskRuntime>,
    );
    World {
        bed,
        containers,
        tasks,
        runtime,
    }
}

fn create(id: &str) -> CreateRequest {
    CreateRequest {
        id: id.into(),
        image: IMAGE.into(),
        args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
        env: vec!["A=1".into()],
        memory: "64m".into(),
        ..CreateRequest::default()
    }
}

fn snapshot_count(world: &World) -> usize {
    world
        .bed
        .snapshotter
        .list(&AnyFilter::default())
        .unwrap()
        .len()
}

#[tokio::test]
async fn containers_are_records_with_a_rootfs_snapshot_and_a_spec() {
    let world = world().await;
    let before = snapshot_count(&world);
    let record = world.containers.create(NS, create("c1")).await.unwrap();
    assert_eq!(record.snapshot_key, "skiff.ns/default/c1");
    assert_eq!(record.runtime, "runc");
    assert_eq!(snapshot_count(&world), before + 1);
    let process = &record.spec["process"];
    assert_eq!(process["args"][2], "true");
    assert!(process["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "A=1"));
    assert_eq!(
        record.spec["linux"]["resources"]["memory"]["limit"],
        64 << 20
    );
    assert_eq!(world.containers.list(NS).unwrap().len(), 1);

    // Refusals change nothing.
    let duplicate = world.containers.create(NS, create("c1")).await.unwrap_err();
    assert!(matches!(duplicate, ContainerError::Meta(_)), "{duplicate}");
    let bad_flag = CreateRequest {
        memory: "lots".into(),
        ..create("c2")
    };
    assert!(matches!(
        world.containers.create(NS, bad_flag).await.unwrap_err(),
        ContainerError::InvalidOption {
            flag: "--memory",
            ..
        }
    ));
    let unknown = CreateRequest {
        image: "127.0.0.1:5000/missing:1".into(),
        ..create("c3")
    };
    assert!(world.containers.create(NS, unknown).await.is_err());
    assert_eq!(snapshot_count(&world), before + 1);

    world.containers.delete(NS, "c1").await.unwrap();
    assert_eq!(snapshot_count(&world), before);
    assert!(world.containers.list(NS).unwrap().is_empty());
}

#[tokio::test]
async fn a_task_goes_through_its_lifecycle_on_the_runtime() {
    let world = world().await;
    world.containers.create(NS, create("web")).await.unwrap();
    let tasks = &world.tasks;

    let created = tasks.create(NS, "web", false).await.unwrap();
    assert_eq!(created.status, TaskStatus::Created);
    assert!(tasks.exists(NS, "web").unwrap());
    assert!(matches!(
        tasks.create(NS, "web", false).await.unwrap_err(),
        TaskFailure::AlreadyExists { .. }
    ));
    let started = tasks.start(NS, "web").await.unwrap();
    assert_eq!(started.status, TaskStatus::Running);
    tasks.pause(NS, "web").await.unwrap();
    assert_eq!(
        tasks.state(NS, "web").await.unwrap().status,
        TaskStatus::Paused
    );
    tasks.resume(NS, "web").await.unwrap();

    // An exec gets the container's process with its own args and env.
    tasks
        .exec(
            NS,
            "web",
            ExecRequest {
                exec_id: "probe".into(),
                args: vec!["cat".into(), "/etc/hostname".into()],
                env: vec!["B=2".into()],
                ..ExecRequest::default()
            },
        )
        .await
        .unwrap();
    let refusals = [
        tasks
            .exec(
                NS,
                "web",
                ExecRequest {
                    exec_id: "".into(),
                    args: vec!["x".into()],
                    ..ExecRequest::default()
                },
            )
            .await
            .unwrap_err(),
        tasks
            .exec(
                NS,
                "web",
                ExecRequest {
                    exec_id: "noargs".into(),
                    ..ExecRequest::default()
                },
            )
            .await
            .unwrap_err(),
        tasks.kill(NS, "web", "", 0, false).await.unwrap_err(),
        tasks.start(NS, "nothing").await.unwrap_err(),
    ];
    assert!(matches!(
        refusals[0],
        TaskFailure::Invalid {
            field: "exec id",
            ..
        }
    ));
    assert!(matches!(
        refusals[1],
        TaskFailure::Invalid { field: "args", .. }
    ));
    assert!(matches!(
        refusals[2],
        TaskFailure::Invalid {
            field: "signal",
            ..
        }
    ));
    assert!(matches!(refusals[3], TaskFailure::NotFound { .. }));

    let listed = tasks.list(NS).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "web");

    // A running task is not deleted without force; a kill ends it with 128 + the signal.
    assert!(tasks.delete(NS, "web", "", false).await.is_err());
    let waiter = {
        let tasks = tasks.clone();
        tokio::spawn(async move { tasks.wait(NS, "web", "").await })
    };
    tasks.kill(NS, "web", "", 15, false).await.unwrap();
    let exit = waiter.await.unwrap().unwrap();
    assert_eq!((exit.code, exit.signal), (143, Some(15)));
    assert_eq!(
        tasks
            .delete(NS, "web", "probe", false)
            .await
            .unwrap()
            .unwrap()
            .code,
        137
    );
    let deleted = tasks.delete(NS, "web", "", false).await.unwrap();
    assert_eq!(deleted.unwrap().code, 143);
    assert!(!tasks.exists(NS, "web").unwrap(), "task dir removed");
    assert!(tasks.list(NS).await.unwrap().is_empty());

    let calls = world.runtime.calls();
    assert_eq!(calls[0], "create default--web");
    assert!(calls
        .iter()
        .any(|c| c.starts_with("exec probe") && c.contains("/etc/hostname")));
    assert!(calls.contains(&"kill init 15 false".to_string()));
    // With the task gone the container can go, and its snapshot with it.
    world.containers.delete(NS, "web").await.unwrap();
}
