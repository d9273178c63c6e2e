//! The OCI runtime spec (`config.json`) of a container, generated from its image's configuration and the
//! options a user gave, the way containerd's `oci.WithDefaultSpec` + `oci.WithImageConfig` and docker do.
//!
//! Owns the defaults every container gets (mounts, namespaces, capabilities, masked and read-only paths,
//! rlimits, no_new_privileges) and the mapping of each option. Knows nothing of registries, FUSE or
//! snapshots: it receives an image config and the path of an already mounted rootfs, and reads only the
//! rootfs's `/etc/passwd` and `/etc/group` (see [`crate::user`]).
//!
//! Process arguments follow docker and nerdctl: the image's `Entrypoint` followed by its `Cmd`; arguments
//! given on the command line ([`SpecOptions::args`]) replace `Cmd` and keep `Entrypoint`; an explicit
//! [`SpecOptions::entrypoint`] replaces `Entrypoint` and drops the image's `Cmd`.
//!
//! The rest of the process (an option wins over the image, the image over the default):
//! - env: `PATH` ([`DEFAULT_PATH`] unless the image sets one), `TERM=xterm` with a terminal, the image's
//!   `Env`, then [`SpecOptions::env`]; a key set again keeps its first position and takes the later value;
//! - cwd: [`SpecOptions::cwd`], else the image's `WorkingDir` (made absolute), else `/`;
//! - user: [`SpecOptions::user`], else the image's `User`, else root, resolved to uid, gid and
//!   supplementary gids inside the rootfs without following a symlink out of it;
//! - hostname: [`SpecOptions::hostname`], else the container id.
//!
//! Every container gets containerd's eight default mounts (proc, a tmpfs dev, devpts, shm, mqueue, sysfs
//! and the cgroup filesystem read-only, a tmpfs run), the user's mounts after them (one on a default's
//! destination replaces it), its own [`DEFAULT_NAMESPACES`] (pid, ipc, uts, mount, network), the 14
//! [`DEFAULT_CAPABILITIES`] (bounding, permitted, effective; none inheritable or ambient),
//! [`DEFAULT_MASKED_PATHS`] and [`DEFAULT_READONLY_PATHS`], `RLIMIT_NOFILE` [`DEFAULT_NOFILE`],
//! `noNewPrivileges`, and a deny-all device rule (runc then allows the standard devices it creates).
//! Memory, cpu and pids limits, a read-only root, the cgroups path and hooks come from [`SpecOptions`].
//! `runtime/tests/spec_runc.rs` runs generated specs with the real runc.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, HookBuilder, Hooks, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::options::{
    parse_user, CpuLimit, EnvVar, HookSpec, HookStage, IdRef, MountKind, MountSpec, OptionError,
    UserSpec,
};
use crate::user::{resolve_user, UserError};

/// The runtime-spec version written into `ociVersion` (the one containerd 1.6 and runc 1.1 speak).
pub const OCI_VERSION: &str = "1.0.2-dev";

/// `PATH` for images that set none (containerd's and docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set for unprivileged containers.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (containerd's defaults).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths the container sees read-only (containerd's defaults).
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The namespaces every container gets its own of.
pub const DEFAULT_NAMESPACES: [LinuxNamespaceType; 5] = [
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Network,
];

/// The soft and hard `RLIMIT_NOFILE` of the container's process.
pub const DEFAULT_NOFILE: u64 = 1024;

/// Everything about a container that does not come from its image. `Default` gives a container that runs
/// the image as it is; only [`SpecOptions::id`] must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecOptions {
    /// The container id; the hostname when [`SpecOptions::hostname`] is `None`.
    pub id: String,
    /// Arguments given after the image on the command line: they replace the image's `Cmd`.
    pub args: Vec<String>,
    /// `--entrypoint`: replaces the image's `Entrypoint` and drops its `Cmd`; `Some(vec![])` clears it.
    pub entrypoint: Option<Vec<String>>,
    /// `--env`, applied after the image's environment (a later entry wins for the same key).
    pub env: Vec<EnvVar>,
    /// `--workdir`: replaces the image's `WorkingDir`.
    pub cwd: Option<String>,
    /// `--user`: replaces the image's `User`.
    pub user: Option<UserSpec>,
    /// `--hostname`; default the container id.
    pub hostname: Option<String>,
    /// `--tty`: the process gets a terminal (and `TERM=xterm` unless set).
    pub tty: bool,
    /// `--read-only`: the rootfs is mounted read-only.
    pub read_only: bool,
    /// `--mount`, after the default mounts; one with a default mount's destination replaces it.
    pub mounts: Vec<MountSpec>,
    /// `--memory`, in bytes.
    pub memory_limit: Option<u64>,
    /// `--cpus`.
    pub cpus: Option<CpuLimit>,
    /// `--pids-limit`: the most processes the container may have (> 0).
    pub pids_limit: Option<i64>,
    /// The container's cgroup, e.g. `/skiff/NAMESPACE/ID` (a path under each cgroup hierarchy's root;
    /// runc's systemd driver takes `SLICE:PREFIX:NAME` instead).
    pub cgroups_path: Option<String>,
    /// OCI hooks; those of one stage run in the order given.
    pub hooks: Vec<HookSpec>,
}

/// Why a spec could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the container id is empty")]
    EmptyId,
    #[error("no command to run: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("invalid hostname {0:?}: 1 to 64 bytes without whitespace, '/' or NUL")]
    Hostname(String),
    #[error("invalid environment entry {entry:?} in the image config: expected KEY=VALUE")]
    ImageEnv { entry: String },
    #[error("invalid User in the image config: {0}")]
    ImageUser(#[source] OptionError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("invalid pids limit {0}: must be greater than zero")]
    PidsLimit(i64),
    #[error("the cgroups path is empty")]
    CgroupsPath,
    #[error("cannot build the runtime spec: {0}")]
    Build(#[from] oci_spec::OciSpecError),
}

/// The OCI runtime spec for a container of the image `config` whose root filesystem is mounted at `rootfs`
/// (written as `root.path`: pass an absolute path, or `rootfs` relative to both the bundle and the current
/// directory).
pub fn generate(
    config: &ImageConfiguration,
    rootfs: &Path,
    opts: &SpecOptions,
) -> Result<Spec, SpecError> {
    if opts.id.is_empty() {
        return Err(SpecError::EmptyId);
    }
    let image = config.config().as_ref();

    let args = process_args(
        image.and_then(|c| c.entrypoint().as_deref()),
        image.and_then(|c| c.cmd().as_deref()),
        opts,
    )?;
    let env = process_env(image.and_then(|c| c.env().as_deref()), opts)?;
    let cwd = absolute(
        opts.cwd
            .as_deref()
            .or(image.and_then(|c| c.working_dir().as_deref()))
            .unwrap_or("/"),
    );

    let user_spec = match (&opts.user, image.and_then(|c| c.user().as_deref())) {
        (Some(user), _) => user.clone(),
        (None, Some(user)) if !user.is_empty() => parse_user(user).map_err(SpecError::ImageUser)?,
        (None, _) => UserSpec {
            user: IdRef::Id(0),
            group: None,
        },
    };
    let user = resolve_user(rootfs, &user_spec)?;
    let mut user_builder = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        user_builder = user_builder.additional_gids(user.additional_gids);
    }

    let hostname = opts.hostname.clone().unwrap_or_else(|| opts.id.clone());
    if hostname.is_empty()
        || hostname.len() > 64
        || hostname
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '\0')
    {
        return Err(SpecError::Hostname(hostname));
    }

    // containerd fills bounding, permitted and effective; the builder's defaults would also put a few
    // capabilities into inheritable and ambient, so those are cleared.
    let capability_set: oci_spec::runtime::Capabilities =
        DEFAULT_CAPABILITIES.into_iter().collect();
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capability_set.clone())
        .permitted(capability_set.clone())
        .effective(capability_set)
        .build()?;
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    let process = ProcessBuilder::default()
        .terminal(opts.tty)
        .user(user_builder.build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(DEFAULT_NOFILE)
            .hard(DEFAULT_NOFILE)
            .build()?])
        .no_new_privileges(true)
        .build()?;

    let mut linux = LinuxBuilder::default()
        .resources(resources(opts)?)
        .namespaces(
            DEFAULT_NAMESPACES
                .into_iter()
                .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
                .collect::<Result<Vec<_>, _>>()?,
        )
        .masked_paths(DEFAULT_MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(DEFAULT_READONLY_PATHS.map(String::from).to_vec());
    if let Some(path) = &opts.cgroups_path {
        if path.is_empty() {
            return Err(SpecError::CgroupsPath);
        }
        linux = linux.cgroups_path(PathBuf::from(path));
    }

    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(opts.read_only)
                .build()?,
        )
        .process(process)
        .hostname(hostname)
        .mounts(mounts(&opts.mounts)?)
        .linux(linux.build()?);
    if !opts.hooks.is_empty() {
        spec = spec.hooks(hooks(&opts.hooks)?);
    }
    Ok(spec.build()?)
}

/// Entrypoint + Cmd with the overrides described in the module docs.
fn process_args(
    image_entrypoint: Option<&[String]>,
    image_cmd: Option<&[String]>,
    opts: &SpecOptions,
) -> Result<Vec<String>, SpecError> {
    let entrypoint = opts
        .entrypoint
        .as_deref()
        .or(image_entrypoint)
        .unwrap_or_default();
    let cmd = if !opts.args.is_empty() {
        &opts.args[..]
    } else if opts.entrypoint.is_some() {
        &[]
    } else {
        image_cmd.unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// `PATH` (unless the image sets one), `TERM=xterm` with a tty, the image's env, then `opts.env`; a key
/// set again keeps its first position and takes the later value.
fn process_env(image_env: Option<&[String]>, opts: &SpecOptions) -> Result<Vec<String>, SpecError> {
    let mut env = EnvList::default();
    env.set("PATH", DEFAULT_PATH);
    if opts.tty {
        env.set("TERM", "xterm");
    }
    for entry in image_env.unwrap_or_default() {
        let (key, value) = entry
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| SpecError::ImageEnv {
                entry: entry.clone(),
            })?;
        env.set(key, value);
    }
    for var in &opts.env {
        env.set(&var.key, &var.value);
    }
    Ok(env.into_entries())
}

/// An ordered `KEY=VALUE` list where setting a key again replaces its value in place.
#[derive(Default)]
struct EnvList {
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl EnvList {
    fn set(&mut self, key: &str, value: &str) {
        match self.index.get(key) {
            Some(&i) => self.entries[i].1 = value.to_owned(),
            None => {
                self.index.insert(key.to_owned(), self.entries.len());
                self.entries.push((key.to_owned(), value.to_owned()));
            }
        }
    }

    fn into_entries(self) -> Vec<String> {
        self.entries
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

/// A working directory made absolute the way docker does (`app` → `/app`).
fn absolute(dir: &str) -> PathBuf {
    if dir.is_empty() {
        PathBuf::from("/")
    } else if dir.starts_with('/') {
        PathBuf::from(dir)
    } else {
        PathBuf::from(format!("/{dir}"))
    }
}

/// containerd's default mounts, with the user's mounts after them (a user mount on a default mount's
/// destination replaces that default).
fn mounts(user: &[MountSpec]) -> Result<Vec<Mount>, SpecError> {
    let mount = |dst: &str, typ: &str, src: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dst)
            .typ(typ)
            .source(src)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
    };
    let defaults = [
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
    ];
    let mut all: Vec<Mount> = defaults
        .into_iter()
        .filter(|d| !user.iter().any(|u| u.destination == *d.destination()))
        .collect();
    for m in user {
        let (typ, source) = match m.kind {
            MountKind::Bind => ("bind", m.source.clone().unwrap_or_default()),
            MountKind::Tmpfs => ("tmpfs", PathBuf::from("tmpfs")),
        };
        all.push(
            MountBuilder::default()
                .destination(m.destination.clone())
                .typ(typ)
                .source(source)
                .options(m.options.clone())
                .build()?,
        );
    }
    Ok(all)
}

/// Memory, cpu and pids limits, and containerd's device rule: deny every device (runc then allows the
/// standard ones it creates: null, zero, full, random, urandom, tty, ptmx).
fn resources(opts: &SpecOptions) -> Result<LinuxResources, SpecError> {
    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?]);
    if let Some(limit) = opts.memory_limit {
        // parse_memory keeps values within i64; saturate anything larger handed in directly.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    if let Some(cpu) = opts.cpus {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(cpu.quota)
                .period(cpu.period)
                .build()?,
        );
    }
    if let Some(limit) = opts.pids_limit {
        if limit <= 0 {
            return Err(SpecError::PidsLimit(limit));
        }
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    Ok(resources.build()?)
}

/// The hooks grouped by stage, each stage in the order given.
fn hooks(specs: &[HookSpec]) -> Result<Hooks, SpecError> {
    let mut hooks = Hooks::default();
    for spec in specs {
        let mut hook = HookBuilder::default().path(spec.path.clone());
        if !spec.args.is_empty() {
            hook = hook.args(spec.args.clone());
        }
        if !spec.env.is_empty() {
            hook = hook.env(spec.env.clone());
        }
        if let Some(timeout) = spec.timeout {
            hook = hook.timeout(timeout);
        }
        // The spec deprecates prestart for createRuntime, yet runc runs both and users still ask for it.
        #[allow(deprecated)]
        let stage = match spec.stage {
            HookStage::Prestart => hooks.prestart_mut(),
            HookStage::CreateRuntime => hooks.create_runtime_mut(),
            HookStage::CreateContainer => hooks.create_container_mut(),
            HookStage::StartContainer => hooks.start_container_mut(),
            HookStage::Poststart => hooks.poststart_mut(),
            HookStage::Poststop => hooks.poststop_mut(),
        };
        stage.get_or_insert_with(Vec::new).push(hook.build()?);
    }
    Ok(hooks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{parse_cpus, parse_env, parse_hook, parse_memory, parse_mount};
    use std::fs;

    fn image(config: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": config,
        }))
        .unwrap()
    }

    fn opts() -> SpecOptions {
        SpecOptions {
            id: "c1".into(),
            ..SpecOptions::default()
        }
    }

    /// A rootfs with `app` (uid 1000) in `app` (1000) and in `staff` (50) and `wheel` (10).
    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:app\nstaff:x:50:app\napp:x:1000:\n",
        )
        .unwrap();
        dir
    }

    fn gen(config: serde_json::Value, opts: &SpecOptions) -> Result<Spec, SpecError> {
        let root = rootfs();
        generate(&image(config), root.path(), opts)
    }

    fn process(spec: &Spec) -> &oci_spec::runtime::Process {
        spec.process().as_ref().unwrap()
    }

    fn args(spec: &Spec) -> Vec<String> {
        process(spec).args().clone().unwrap()
    }

    fn env(spec: &Spec) -> Vec<String> {
        process(spec).env().clone().unwrap()
    }

    fn linux(spec: &Spec) -> &oci_spec::runtime::Linux {
        spec.linux().as_ref().unwrap()
    }

    fn resources(spec: &Spec) -> &LinuxResources {
        linux(spec).resources().as_ref().unwrap()
    }

    #[test]
    fn args_are_entrypoint_then_cmd() {
        let config =
            serde_json::json!({"Entrypoint": ["/bin/app", "--serve"], "Cmd": ["--port", "80"]});
        let spec = gen(config.clone(), &opts()).unwrap();
        assert_eq!(args(&spec), ["/bin/app", "--serve", "--port", "80"]);

        let cli = SpecOptions {
            args: vec!["--port".into(), "8080".into()],
            ..opts()
        };
        let spec = gen(config.clone(), &cli).unwrap();
        assert_eq!(
            args(&spec),
            ["/bin/app", "--serve", "--port", "8080"],
            "command-line args replace Cmd and keep Entrypoint"
        );

        let entry = SpecOptions {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..opts()
        };
        assert_eq!(
            args(&gen(config.clone(), &entry).unwrap()),
            ["/bin/sh"],
            "an explicit entrypoint drops the image's Cmd"
        );
        let entry_and_args = SpecOptions {
            entrypoint: Some(vec![]),
            args: vec!["/bin/true".into()],
            ..opts()
        };
        assert_eq!(args(&gen(config, &entry_and_args).unwrap()), ["/bin/true"]);

        let cmd_only = gen(serde_json::json!({"Cmd": ["sh"]}), &opts()).unwrap();
        assert_eq!(args(&cmd_only), ["sh"]);
    }

    #[test]
    fn no_command_is_an_error() {
        let e = gen(serde_json::json!({}), &opts()).unwrap_err();
        assert!(matches!(e, SpecError::NoCommand), "{e}");
        let root = rootfs();
        let bare: ImageConfiguration = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let e = generate(&bare, root.path(), &opts()).unwrap_err();
        assert!(e.to_string().contains("no command to run"), "{e}");
    }

    #[test]
    fn env_defaults_image_then_options() {
        let spec = gen(serde_json::json!({"Cmd": ["sh"]}), &opts()).unwrap();
        assert_eq!(env(&spec), [format!("PATH={DEFAULT_PATH}")]);

        let config = serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/opt/bin", "A=1", "B=2"]});
        let o = SpecOptions {
            env: vec![parse_env("A=override").unwrap(), parse_env("C=3").unwrap()],
            tty: true,
            ..opts()
        };
        let spec = gen(config, &o).unwrap();
        assert_eq!(
            env(&spec),
            ["PATH=/opt/bin", "TERM=xterm", "A=override", "B=2", "C=3"]
        );
        assert_eq!(process(&spec).terminal(), Some(true));

        let e = gen(
            serde_json::json!({"Cmd": ["sh"], "Env": ["JUSTKEY"]}),
            &opts(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"JUSTKEY\""), "{e}");
        let e = gen(serde_json::json!({"Cmd": ["sh"], "Env": ["=v"]}), &opts()).unwrap_err();
        assert!(matches!(e, SpecError::ImageEnv { .. }), "{e}");
    }

    #[test]
    fn cwd_from_image_or_options() {
        let cwd = |config, o: &SpecOptions| process(&gen(config, o).unwrap()).cwd().clone();
        assert_eq!(
            cwd(serde_json::json!({"Cmd": ["sh"]}), &opts()),
            PathBuf::from("/")
        );
        assert_eq!(
            cwd(
                serde_json::json!({"Cmd": ["sh"], "WorkingDir": "/srv"}),
                &opts()
            ),
            PathBuf::from("/srv")
        );
        assert_eq!(
            cwd(
                serde_json::json!({"Cmd": ["sh"], "WorkingDir": "app"}),
                &opts()
            ),
            PathBuf::from("/app")
        );
        let o = SpecOptions {
            cwd: Some("/tmp".into()),
            ..opts()
        };
        assert_eq!(
            cwd(serde_json::json!({"Cmd": ["sh"], "WorkingDir": "/srv"}), &o),
            PathBuf::from("/tmp")
        );
    }

    #[test]
    fn user_from_image_or_options() {
        let user = |config, o: &SpecOptions| process(&gen(config, o).unwrap()).user().clone();
        let root = user(serde_json::json!({"Cmd": ["sh"]}), &opts());
        assert_eq!((root.uid(), root.gid()), (0, 0));
        assert_eq!(root.additional_gids(), &None);

        let app = user(serde_json::json!({"Cmd": ["sh"], "User": "app"}), &opts());
        assert_eq!((app.uid(), app.gid()), (1000, 1000));
        assert_eq!(app.additional_gids(), &Some(vec![10, 50]));

        let o = SpecOptions {
            user: Some(parse_user("app:staff").unwrap()),
            ..opts()
        };
        let u = user(serde_json::json!({"Cmd": ["sh"], "User": "root"}), &o);
        assert_eq!((u.uid(), u.gid()), (1000, 50));
        assert_eq!(u.additional_gids(), &Some(vec![10]));

        let numeric = user(
            serde_json::json!({"Cmd": ["sh"], "User": "4242:7"}),
            &opts(),
        );
        assert_eq!((numeric.uid(), numeric.gid()), (4242, 7));

        let e = gen(serde_json::json!({"Cmd": ["sh"], "User": "ghost"}), &opts()).unwrap_err();
        assert!(e.to_string().contains("user \"ghost\" not found"), "{e}");
        let e = gen(serde_json::json!({"Cmd": ["sh"], "User": "a:b:c"}), &opts()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid User in the image config: invalid user \"a:b:c\""),
            "{e}"
        );
    }

    #[test]
    fn hostname_defaults_to_the_id() {
        let config = serde_json::json!({"Cmd": ["sh"]});
        let spec = gen(config.clone(), &opts()).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("c1"));
        let o = SpecOptions {
            hostname: Some("web".into()),
            ..opts()
        };
        assert_eq!(
            gen(config.clone(), &o).unwrap().hostname().as_deref(),
            Some("web")
        );
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            let o = SpecOptions {
                hostname: Some(bad.to_owned()),
                ..opts()
            };
            let e = gen(config.clone(), &o).unwrap_err();
            assert!(matches!(e, SpecError::Hostname(_)), "{bad:?}: {e}");
        }
        let e = gen(config, &SpecOptions::default()).unwrap_err();
        assert!(matches!(e, SpecError::EmptyId), "{e}");
    }

    #[test]
    fn containerd_defaults() {
        let root = rootfs();
        let spec = generate(
            &image(serde_json::json!({"Cmd": ["sh"]})),
            root.path(),
            &opts(),
        )
        .unwrap();
        assert_eq!(spec.version(), OCI_VERSION);
        let r = spec.root().as_ref().unwrap();
        assert_eq!(r.path(), root.path());
        assert_eq!(r.readonly(), Some(false));

        let p = process(&spec);
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(p.no_new_privileges(), Some(true));
        let rlimits = p.rlimits().as_ref().unwrap();
        assert_eq!(rlimits.len(), 1);
        assert_eq!(rlimits[0].typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((rlimits[0].soft(), rlimits[0].hard()), (1024, 1024));
        let caps = p.capabilities().as_ref().unwrap();
        let expected: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(caps.bounding().as_ref(), Some(&expected));
        assert_eq!(caps.permitted().as_ref(), Some(&expected));
        assert_eq!(caps.effective().as_ref(), Some(&expected));
        assert!(!expected.contains(&Capability::SysAdmin));
        assert_eq!(caps.inheritable(), &None);
        assert_eq!(caps.ambient(), &None);

        let l = linux(&spec);
        let ns: Vec<_> = l
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(ns, DEFAULT_NAMESPACES);
        assert!(l
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        assert_eq!(
            l.masked_paths().as_ref().unwrap().len(),
            DEFAULT_MASKED_PATHS.len()
        );
        assert_eq!(
            l.readonly_paths().as_ref().unwrap(),
            &DEFAULT_READONLY_PATHS.map(String::from).to_vec()
        );
        assert_eq!(l.cgroups_path(), &None);
        let devices = resources(&spec).devices().as_ref().unwrap();
        assert_eq!(devices.len(), 1);
        assert!(!devices[0].allow());
        assert_eq!(devices[0].access().as_deref(), Some("rwm"));
        assert_eq!(resources(&spec).memory(), &None);
        assert_eq!(spec.hooks(), &None);

        let mounts = spec.mounts().as_ref().unwrap();
        let find = |dst: &str| {
            mounts
                .iter()
                .find(|m| m.destination() == Path::new(dst))
                .unwrap_or_else(|| panic!("no default mount at {dst}"))
        };
        let dsts: Vec<_> = mounts
            .iter()
            .map(|m| m.destination().to_str().unwrap())
            .collect();
        assert_eq!(
            dsts,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/run"
            ]
        );
        assert_eq!(find("/proc").typ().as_deref(), Some("proc"));
        assert_eq!(
            find("/dev/pts").options().as_ref().unwrap(),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5"
            ]
        );
        let shm = find("/dev/shm");
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
        assert!(shm
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=65536k".to_string()));
        assert_eq!(find("/dev/mqueue").typ().as_deref(), Some("mqueue"));
        assert!(find("/sys")
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));
        let cgroup = find("/sys/fs/cgroup");
        assert_eq!(cgroup.typ().as_deref(), Some("cgroup"));
        assert!(cgroup
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));
    }

    #[test]
    fn read_only_root_and_user_mounts() {
        let o = SpecOptions {
            read_only: true,
            mounts: vec![
                parse_mount("type=bind,src=/srv/data,dst=/data,options=rbind:ro").unwrap(),
                parse_mount("type=tmpfs,dst=/dev/shm,options=size=1m").unwrap(),
            ],
            ..opts()
        };
        let spec = gen(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let mounts = spec.mounts().as_ref().unwrap();
        let shm: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(shm.len(), 1, "the user's /dev/shm replaces the default");
        assert_eq!(shm[0].options().as_ref().unwrap(), &["size=1m"]);
        assert_eq!(shm[0].source().as_deref(), Some(Path::new("tmpfs")));
        let data = &mounts[mounts.len() - 2];
        assert_eq!(
            mounts.last().unwrap().destination(),
            Path::new("/dev/shm"),
            "user mounts come last"
        );
        assert_eq!(data.destination(), Path::new("/data"));
        assert_eq!(data.typ().as_deref(), Some("bind"));
        assert_eq!(data.source().as_deref(), Some(Path::new("/srv/data")));
        assert_eq!(data.options().as_ref().unwrap(), &["rbind", "ro"]);
    }

    #[test]
    fn resource_limits_and_cgroups_path() {
        let o = SpecOptions {
            memory_limit: Some(parse_memory("128m").unwrap()),
            cpus: Some(parse_cpus("0.5").unwrap()),
            pids_limit: Some(64),
            cgroups_path: Some("/skiff/default/c1".into()),
            ..opts()
        };
        let spec = gen(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
        let r = resources(&spec);
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(134_217_728));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 64);
        assert_eq!(
            linux(&spec).cgroups_path().as_deref(),
            Some(Path::new("/skiff/default/c1"))
        );

        for bad in [0, -1] {
            let o = SpecOptions {
                pids_limit: Some(bad),
                ..opts()
            };
            let e = gen(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap_err();
            assert!(e.to_string().contains("pids limit"), "{e}");
        }
        let o = SpecOptions {
            cgroups_path: Some(String::new()),
            ..opts()
        };
        assert!(matches!(
            gen(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap_err(),
            SpecError::CgroupsPath
        ));
    }

    #[test]
    fn hooks_by_stage_in_order() {
        let mut env_hook = parse_hook("poststart=/bin/notify").unwrap();
        env_hook.env = vec!["X=1".into()];
        env_hook.timeout = Some(5);
        let o = SpecOptions {
            hooks: vec![
                parse_hook("poststop=/bin/b,b,2").unwrap(),
                parse_hook("createRuntime=/bin/net").unwrap(),
                parse_hook("poststop=/bin/a").unwrap(),
                parse_hook("prestart=/bin/old").unwrap(),
                env_hook,
            ],
            ..opts()
        };
        let spec = gen(serde_json::json!({"Cmd": ["sh"]}), &o).unwrap();
        let hooks = spec.hooks().as_ref().unwrap();
        let paths = |h: &Option<Vec<oci_spec::runtime::Hook>>| -> Vec<PathBuf> {
            h.iter().flatten().map(|h| h.path().clone()).collect()
        };
        assert_eq!(
            paths(hooks.poststop()),
            [PathBuf::from("/bin/b"), PathBuf::from("/bin/a")]
        );
        assert_eq!(
            hooks.poststop().as_ref().unwrap()[0]
                .args()
                .as_ref()
                .unwrap(),
            &["b", "2"]
        );
        assert_eq!(paths(hooks.create_runtime()), [PathBuf::from("/bin/net")]);
        #[allow(deprecated)]
        let prestart = paths(hooks.prestart());
        assert_eq!(prestart, [PathBuf::from("/bin/old")]);
        assert_eq!(hooks.create_container(), &None);
        let notify = &hooks.poststart().as_ref().unwrap()[0];
        assert_eq!(notify.env().as_ref().unwrap(), &["X=1"]);
        assert_eq!(notify.timeout(), Some(5));

        // The JSON names are the spec's.
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json["hooks"]["createRuntime"].is_array(), "{json}");
        assert_eq!(json["hooks"]["poststop"][1]["path"], "/bin/a");
        assert_eq!(json["ociVersion"], OCI_VERSION);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
    }
}
