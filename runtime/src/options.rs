//! Typed values for the container flags a user types (`--memory 128m`, `--cpus 0.5`, `--env K=V`,
//! `--user app:staff`, `--mount type=bind,src=..,dst=..,options=rbind:ro`, `--hook poststop=/bin/x`) and
//! their parsers. Each parser takes the flag's string and returns a value or an [`OptionError`] that names
//! the input, so the CLI can hand them to clap as value parsers. Pure: no IO.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A flag value that does not parse. The message names the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("invalid memory size {input:?}: {reason}")]
    Memory { input: String, reason: &'static str },
    #[error("invalid cpu count {input:?}: {reason}")]
    Cpus { input: String, reason: &'static str },
    #[error("invalid environment variable {input:?}: {reason}")]
    Env { input: String, reason: &'static str },
    #[error("invalid user {input:?}: {reason}")]
    User { input: String, reason: &'static str },
    #[error("invalid mount {input:?}: {reason}")]
    Mount { input: String, reason: String },
    #[error("invalid hook {input:?}: {reason}")]
    Hook { input: String, reason: String },
}

/// The CFS period every cpu limit uses, in microseconds (what docker and nerdctl use).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// `--memory`: a byte count with an optional unit suffix `b`, `k`, `m` or `g` (case-insensitive,
/// powers of 1024; `kb`, `mb`, `gb` are accepted too). `128m` is 134217728 bytes; a bare number is bytes.
pub fn parse_memory(input: &str) -> Result<u64, OptionError> {
    let err = |reason| OptionError::Memory {
        input: input.to_owned(),
        reason,
    };
    let lower = input.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    if number.is_empty() {
        return Err(err(
            "expected a number followed by an optional unit b, k, m or g",
        ));
    }
    let multiplier: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(err("unknown unit, expected b, k, m or g")),
    };
    let value: u64 = number.parse().map_err(|_| err("number too large"))?;
    let bytes = value
        .checked_mul(multiplier)
        .filter(|b| *b <= i64::MAX as u64)
        .ok_or_else(|| err("size too large"))?;
    if bytes == 0 {
        return Err(err("must be greater than zero"));
    }
    Ok(bytes)
}

/// A CPU limit as a CFS bandwidth pair: `quota` microseconds of CPU time per `period` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuLimit {
    pub quota: i64,
    pub period: u64,
}

impl FromStr for CpuLimit {
    type Err = OptionError;
    fn from_str(s: &str) -> Result<Self, OptionError> {
        parse_cpus(s)
    }
}

/// `--cpus`: a decimal number of CPUs, turned into a quota over a 100 ms period as docker does:
/// `0.5` → quota 50000 / period 100000, `2` → 200000 / 100000. At most 5 decimals (the period's
/// resolution); the quota must reach the kernel's 1 ms minimum (`0.01`).
pub fn parse_cpus(input: &str) -> Result<CpuLimit, OptionError> {
    let err = |reason| OptionError::Cpus {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return Err(err("expected a positive decimal number such as 0.5 or 2"));
    }
    if fraction.len() > 5 {
        return Err(err("at most 5 decimal places"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| err("number too large"))?
    };
    let fraction_us: u64 = if fraction.is_empty() {
        0
    } else {
        // "5" → 50000, "25" → 25000: pad to the period's 5 digits.
        format!("{fraction:0<5}")
            .parse()
            .map_err(|_| err("number too large"))?
    };
    let quota = whole
        .checked_mul(CPU_PERIOD_US)
        .and_then(|q| q.checked_add(fraction_us))
        .filter(|q| *q <= i64::MAX as u64)
        .ok_or_else(|| err("number too large"))?;
    if quota == 0 {
        return Err(err("must be greater than zero"));
    }
    if quota < MIN_CPU_QUOTA_US {
        return Err(err("below the minimum of 0.01"));
    }
    Ok(CpuLimit {
        quota: quota as i64,
        period: CPU_PERIOD_US,
    })
}

/// One environment variable, `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

impl fmt::Display for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl FromStr for EnvVar {
    type Err = OptionError;
    fn from_str(s: &str) -> Result<Self, OptionError> {
        parse_env(s)
    }
}

/// `--env KEY=VALUE`. The value may be empty and may contain `=`; the key must be non-empty and hold
/// no whitespace or NUL. A bare `KEY` is refused (skiff does not copy the caller's environment).
pub fn parse_env(input: &str) -> Result<EnvVar, OptionError> {
    let err = |reason| OptionError::Env {
        input: input.to_owned(),
        reason,
    };
    let (key, value) = input
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE"))?;
    if key.is_empty() {
        return Err(err("empty name"));
    }
    if key.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(err("name contains whitespace or NUL"));
    }
    if value.contains('\0') {
        return Err(err("value contains NUL"));
    }
    Ok(EnvVar {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// A user or group as written: a number or a name to look up in the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRef {
    Id(u32),
    Name(String),
}

impl fmt::Display for IdRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdRef::Id(id) => write!(f, "{id}"),
            IdRef::Name(name) => f.write_str(name),
        }
    }
}

/// `--user` (or the image's `User`): `USER[:GROUP]`, each a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user: IdRef,
    pub group: Option<IdRef>,
}

impl FromStr for UserSpec {
    type Err = OptionError;
    fn from_str(s: &str) -> Result<Self, OptionError> {
        parse_user(s)
    }
}

/// `--user USER[:GROUP]`: `1000`, `1000:1000`, `app`, `app:staff`, `app:50`.
pub fn parse_user(input: &str) -> Result<UserSpec, OptionError> {
    let err = |reason| OptionError::User {
        input: input.to_owned(),
        reason,
    };
    let (user, group) = match input.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (input, None),
    };
    let id_ref = |part: &str, what_empty| -> Result<IdRef, OptionError> {
        if part.is_empty() {
            return Err(err(what_empty));
        }
        if part.bytes().all(|b| b.is_ascii_digit()) {
            return part
                .parse()
                .map(IdRef::Id)
                .map_err(|_| err("id out of range"));
        }
        if part
            .chars()
            .any(|c| c == ':' || c == '\n' || c == '\0' || c.is_whitespace())
        {
            return Err(err("name contains ':', whitespace or NUL"));
        }
        Ok(IdRef::Name(part.to_owned()))
    };
    Ok(UserSpec {
        user: id_ref(user, "empty user")?,
        group: group.map(|g| id_ref(g, "empty group")).transpose()?,
    })
}

/// The kind of a `--mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Tmpfs,
}

/// `--mount`: a bind mount of a host path or a fresh tmpfs inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountKind,
    /// The host path of a bind mount; `None` for tmpfs.
    pub source: Option<PathBuf>,
    /// Where it appears inside the container (absolute).
    pub destination: PathBuf,
    /// mount(8) options, e.g. `rbind`, `ro`, `size=64m`.
    pub options: Vec<String>,
}

impl FromStr for MountSpec {
    type Err = OptionError;
    fn from_str(s: &str) -> Result<Self, OptionError> {
        parse_mount(s)
    }
}

/// `--mount type=bind,src=/host,dst=/in,options=rbind:ro` or `type=tmpfs,dst=/scratch,options=size=8m`,
/// the syntax of `ctr run --mount`. Keys: `type` (`bind` or `tmpfs`), `src`/`source`,
/// `dst`/`destination`/`target`, `options` (colon-separated). A bind mount without `bind` or `rbind` in its
/// options gets `rbind`, as docker does.
pub fn parse_mount(input: &str) -> Result<MountSpec, OptionError> {
    let err = |reason: String| OptionError::Mount {
        input: input.to_owned(),
        reason,
    };
    let (mut kind, mut source, mut destination, mut options) = (None, None, None, None);
    for field in input.split(',') {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| err(format!("expected KEY=VALUE, got {field:?}")))?;
        let slot = match key {
            "type" => &mut kind,
            "src" | "source" => &mut source,
            "dst" | "destination" | "target" => &mut destination,
            "options" => &mut options,
            _ => return Err(err(format!("unknown key {key:?}"))),
        };
        if slot.replace(value).is_some() {
            return Err(err(format!("{key:?} given twice")));
        }
    }
    let kind = match kind {
        Some("bind") => MountKind::Bind,
        Some("tmpfs") => MountKind::Tmpfs,
        Some(other) => {
            return Err(err(format!(
                "unsupported type {other:?}, expected bind or tmpfs"
            )))
        }
        None => return Err(err("missing type=bind or type=tmpfs".into())),
    };
    let destination = match destination {
        Some(d) if d.starts_with('/') => PathBuf::from(d),
        Some(_) => return Err(err("destination must be an absolute path".into())),
        None => return Err(err("missing dst".into())),
    };
    let mut options: Vec<String> = match options {
        None => Vec::new(),
        Some(list) => list.split(':').map(str::to_owned).collect(),
    };
    if options.iter().any(String::is_empty) {
        return Err(err("empty mount option".into()));
    }
    let source = match (kind, source) {
        (MountKind::Bind, Some(s)) if s.starts_with('/') => Some(PathBuf::from(s)),
        (MountKind::Bind, Some(_)) => return Err(err("source must be an absolute path".into())),
        (MountKind::Bind, None) => return Err(err("a bind mount needs src".into())),
        (MountKind::Tmpfs, Some(_)) => return Err(err("a tmpfs mount takes no src".into())),
        (MountKind::Tmpfs, None) => None,
    };
    if kind == MountKind::Bind && !options.iter().any(|o| o == "bind" || o == "rbind") {
        options.insert(0, "rbind".into());
    }
    Ok(MountSpec {
        kind,
        source,
        destination,
        options,
    })
}

/// When an OCI hook runs (the runtime spec's lifecycle points).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookStage {
    /// Deprecated by the spec in favour of `createRuntime`; runc still runs it, right after
    /// `createRuntime`, in the runtime namespace.
    Prestart,
    /// After the container's namespaces exist, before pivot_root; in the runtime namespace.
    CreateRuntime,
    /// Like `createRuntime`, but in the container's namespaces.
    CreateContainer,
    /// After `start`, before the user process is executed; in the container.
    StartContainer,
    /// After the user process started; in the runtime namespace.
    Poststart,
    /// After the container is deleted; in the runtime namespace.
    Poststop,
}

impl HookStage {
    pub const ALL: [HookStage; 6] = [
        HookStage::Prestart,
        HookStage::CreateRuntime,
        HookStage::CreateContainer,
        HookStage::StartContainer,
        HookStage::Poststart,
        HookStage::Poststop,
    ];

    /// The stage's name in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookStage::Prestart => "prestart",
            HookStage::CreateRuntime => "createRuntime",
            HookStage::CreateContainer => "createContainer",
            HookStage::StartContainer => "startContainer",
            HookStage::Poststart => "poststart",
            HookStage::Poststop => "poststop",
        }
    }
}

impl fmt::Display for HookStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One OCI hook: a program the runtime runs at `stage` with the container's state JSON on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub stage: HookStage,
    /// Absolute path of the program (resolved in the runtime's mount namespace, or the container's for
    /// `createContainer`/`startContainer`).
    pub path: PathBuf,
    /// argv including `argv[0]`; empty means `[path]`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries; the hook gets only these.
    pub env: Vec<String>,
    /// Seconds after which the runtime kills the hook and fails the operation.
    pub timeout: Option<i64>,
}

impl FromStr for HookSpec {
    type Err = OptionError;
    fn from_str(s: &str) -> Result<Self, OptionError> {
        parse_hook(s)
    }
}

/// `--hook STAGE=PATH[,ARG...]`: `poststop=/usr/local/bin/cleanup,cleanup,--all`. STAGE is one of
/// `prestart`, `createRuntime`, `createContainer`, `startContainer`, `poststart`, `poststop`; ARGs are
/// argv from `argv[0]` on (default: PATH alone).
pub fn parse_hook(input: &str) -> Result<HookSpec, OptionError> {
    let err = |reason: String| OptionError::Hook {
        input: input.to_owned(),
        reason,
    };
    let (stage, rest) = input
        .split_once('=')
        .ok_or_else(|| err("expected STAGE=PATH[,ARG...]".into()))?;
    let stage = HookStage::ALL
        .into_iter()
        .find(|s| s.as_str() == stage)
        .ok_or_else(|| {
            let names: Vec<_> = HookStage::ALL.iter().map(|s| s.as_str()).collect();
            err(format!(
                "unknown stage {stage:?}, expected one of {}",
                names.join(", ")
            ))
        })?;
    let mut parts = rest.split(',');
    let path = parts.next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(err("the hook path must be absolute".into()));
    }
    Ok(HookSpec {
        stage,
        path: PathBuf::from(path),
        args: parts.map(str::to_owned).collect(),
        env: Vec::new(),
        timeout: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert_eq!(parse_memory("100b").unwrap(), 100);
        assert_eq!(parse_memory("64k").unwrap(), 64 << 10);
        assert_eq!(parse_memory("128m").unwrap(), 128 << 20);
        assert_eq!(parse_memory("128M").unwrap(), 128 << 20);
        assert_eq!(parse_memory("128mb").unwrap(), 128 << 20);
        assert_eq!(parse_memory("2g").unwrap(), 2 << 30);
        assert_eq!(parse_memory("2GB").unwrap(), 2 << 30);
    }

    #[test]
    fn memory_rejects_bad_input() {
        for bad in [
            "",
            "m",
            "-1m",
            "1.5g",
            "12x",
            "12 m",
            "0",
            "0m",
            "99999999999g",
            "1t",
        ] {
            let e = parse_memory(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid memory size {bad:?}")),
                "{bad:?}: {e}"
            );
        }
        assert!(parse_memory("12x")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_memory("0")
            .unwrap_err()
            .to_string()
            .contains("greater than zero"));
    }

    #[test]
    fn cpus_to_quota_and_period() {
        let q = |s| parse_cpus(s).unwrap();
        assert_eq!(
            q("0.5"),
            CpuLimit {
                quota: 50_000,
                period: 100_000
            }
        );
        assert_eq!(q("2").quota, 200_000);
        assert_eq!(q("1.25").quota, 125_000);
        assert_eq!(q(".5").quota, 50_000);
        assert_eq!(q("3.").quota, 300_000);
        assert_eq!(q("0.01").quota, 1_000);
    }

    #[test]
    fn cpus_rejects_bad_input() {
        for (bad, why) in [
            ("", "decimal number"),
            (".", "decimal number"),
            ("-1", "decimal number"),
            ("1e3", "decimal number"),
            ("half", "decimal number"),
            ("0", "greater than zero"),
            ("0.0", "greater than zero"),
            ("0.001", "minimum"),
            ("0.123456", "5 decimal"),
            ("99999999999999999999", "too large"),
        ] {
            let e = parse_cpus(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid cpu count {bad:?}")), "{e}");
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn env_pairs() {
        let v = parse_env("A=b=c").unwrap();
        assert_eq!((v.key.as_str(), v.value.as_str()), ("A", "b=c"));
        assert_eq!(v.to_string(), "A=b=c");
        assert_eq!(parse_env("EMPTY=").unwrap().value, "");
        for (bad, why) in [
            ("NOVALUE", "KEY=VALUE"),
            ("=x", "empty name"),
            ("A B=1", "whitespace"),
            ("A=\0", "NUL"),
        ] {
            let e = parse_env(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn users() {
        assert_eq!(
            parse_user("1000").unwrap(),
            UserSpec {
                user: IdRef::Id(1000),
                group: None
            }
        );
        assert_eq!(
            parse_user("app:staff").unwrap(),
            UserSpec {
                user: IdRef::Name("app".into()),
                group: Some(IdRef::Name("staff".into()))
            }
        );
        assert_eq!(parse_user("app:50").unwrap().group, Some(IdRef::Id(50)));
        for (bad, why) in [
            ("", "empty user"),
            (":1", "empty user"),
            ("1:", "empty group"),
            ("a:b:c", "':'"),
            ("a b", "whitespace"),
            ("99999999999", "out of range"),
        ] {
            let e = parse_user(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid user"), "{e}");
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bind_and_tmpfs_mounts() {
        let m = parse_mount("type=bind,src=/srv/data,dst=/data,options=rbind:ro").unwrap();
        assert_eq!(m.kind, MountKind::Bind);
        assert_eq!(m.source.as_deref(), Some(std::path::Path::new("/srv/data")));
        assert_eq!(m.destination, PathBuf::from("/data"));
        assert_eq!(m.options, ["rbind", "ro"]);

        let m = parse_mount("type=bind,source=/a,target=/b").unwrap();
        assert_eq!(
            m.options,
            ["rbind"],
            "rbind added to a bind without bind/rbind"
        );
        let m = parse_mount("type=bind,src=/a,destination=/b,options=ro:bind").unwrap();
        assert_eq!(m.options, ["ro", "bind"]);

        let t = parse_mount("type=tmpfs,dst=/scratch,options=size=8m:mode=1777").unwrap();
        assert_eq!(t.kind, MountKind::Tmpfs);
        assert_eq!(t.source, None);
        assert_eq!(t.options, ["size=8m", "mode=1777"]);
    }

    #[test]
    fn mounts_reject_bad_input() {
        for (bad, why) in [
            ("", "KEY=VALUE"),
            ("type=bind", "missing dst"),
            ("src=/a,dst=/b", "missing type"),
            ("type=volume,dst=/b", "unsupported type"),
            ("type=bind,dst=/b", "needs src"),
            ("type=bind,src=rel,dst=/b", "source must be an absolute"),
            (
                "type=bind,src=/a,dst=rel",
                "destination must be an absolute",
            ),
            ("type=tmpfs,src=/a,dst=/b", "takes no src"),
            ("type=bind,src=/a,dst=/b,dst=/c", "given twice"),
            ("type=bind,src=/a,dst=/b,mode=1", "unknown key"),
            (
                "type=bind,src=/a,dst=/b,options=ro::x",
                "empty mount option",
            ),
            ("type=bind,src=/a,dst=/b,ro", "KEY=VALUE"),
        ] {
            let e = parse_mount(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid mount {bad:?}")), "{e}");
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn hooks() {
        let h = parse_hook("poststop=/usr/bin/cleanup,cleanup,--all").unwrap();
        assert_eq!(h.stage, HookStage::Poststop);
        assert_eq!(h.path, PathBuf::from("/usr/bin/cleanup"));
        assert_eq!(h.args, ["cleanup", "--all"]);
        let h = parse_hook("createRuntime=/bin/true").unwrap();
        assert_eq!(h.stage, HookStage::CreateRuntime);
        assert!(h.args.is_empty());
        for stage in HookStage::ALL {
            assert_eq!(parse_hook(&format!("{stage}=/x")).unwrap().stage, stage);
        }
        for (bad, why) in [
            ("/bin/true", "STAGE=PATH"),
            ("prestop=/bin/true", "unknown stage \"prestop\""),
            ("poststop=bin/true", "absolute"),
            ("poststop=", "absolute"),
        ] {
            let e = parse_hook(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
