//! End to end: containerd's own snapshotter conformance suite (containerd 1.6 `snapshots/testsuite`, built
//! from Debian's Go sources by the harness in `../shared/snapshotter-testsuite/`, or its copy in
//! `tests/snapshotter-testsuite/` when the repository is cloned elsewhere) against the real skiffd's
//! snapshots.v1 service on its main socket, in both key modes: `prefix` (parallel subtests, client-side Walk
//! filters, as containerd's metadata layer) and `raw` (server-side filters). Expected: what containerd's
//! own overlayfs snapshotter gets, 20 passed and 1 skipped (`Rename`, skipped upstream).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use skiff_tests::{mounts_under, require, Skiffd};

const TOOLS: &[&str] = &["root", "go", "overlayfs"];

/// Where Debian's golang-github-containerd-containerd-dev puts the suite's sources.
const CONTAINERD_TESTSUITE_SRC: &str =
    "/usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite";

/// The harness: `../shared/snapshotter-testsuite` beside the repository when it is there (the project's
/// shared copy, kept current by its owner), else the copy in `tests/snapshotter-testsuite` (so a clone
/// anywhere runs it).
fn suite_dir() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../shared/snapshotter-testsuite");
    let vendored = manifest.join("snapshotter-testsuite");
    let has_suite = |dir: &Path| dir.join("test.sh").is_file() && dir.join("build.sh").is_file();
    let dir = if has_suite(&shared) { shared } else { vendored };
    ensure!(
        has_suite(&dir),
        "the snapshotter conformance suite is missing: expected build.sh and test.sh in {}",
        dir.display()
    );
    ensure!(
        Path::new(CONTAINERD_TESTSUITE_SRC).is_dir(),
        "{CONTAINERD_TESTSUITE_SRC} is missing; apt-get install golang-github-containerd-containerd-dev \
         (or run tests/install-deps.sh)"
    );
    Ok(dir.canonicalize()?)
}

/// `N passed, N failed, N skipped` from test.sh's last line.
#[derive(Debug, PartialEq, Eq)]
struct SuiteResult {
    passed: u32,
    failed: u32,
    skipped: u32,
}

fn parse_result(output: &str) -> Option<SuiteResult> {
    let line = output.lines().rev().find(|l| l.contains(" passed, "))?;
    let mut numbers = line
        .split(", ")
        .map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    Some(SuiteResult {
        passed: numbers.next()??,
        failed: numbers.next()??,
        skipped: numbers.next()??,
    })
}

fn run_suite(suite: &Path, bin_dir: &Path, skiffd: &Skiffd, key_mode: &str) -> Result<SuiteResult> {
    let output = Command::new("bash")
        .arg(suite.join("test.sh"))
        .env("SNAPSHOTTER_SOCKET", skiffd.socket())
        .env("SNAPSHOTTER_KEY_MODE", key_mode)
        .env("TESTSUITE_BIN_DIR", bin_dir)
        .env("TEST_TIMEOUT", "10m")
        .current_dir("/")
        .output()
        .context("run test.sh")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let Some(result) = parse_result(&stdout) else {
        bail!(
            "no result line from test.sh ({key_mode}), exit {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nskiffd log:\n{}",
            output.status,
            skiffd.log()
        );
    };
    println!(
        "snapshotter conformance ({key_mode}): {} passed, {} failed, {} skipped",
        result.passed, result.failed, result.skipped
    );
    ensure!(
        output.status.success() && result.failed == 0,
        "conformance suite failed in {key_mode} mode ({result:?}, exit {})\n{stdout}\nstderr:\n{stderr}\nskiffd log:\n{}",
        output.status,
        skiffd.log()
    );
    Ok(result)
}

#[test]
fn containerd_snapshotter_conformance_suite_passes_against_skiffd() -> Result<()> {
    require(TOOLS)?;
    let suite = suite_dir()?;
    let bin_dir = tempfile::Builder::new()
        .prefix("skiff-snaptest-bin-")
        .tempdir()?;
    let build = Command::new("bash")
        .arg(suite.join("build.sh"))
        .arg(bin_dir.path())
        .env("SKIP_APT", "1")
        .output()
        .context("run build.sh")?;
    ensure!(
        build.status.success(),
        "building the conformance suite failed ({}):\n{}\n{}",
        build.status,
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );

    let skiffd = Skiffd::start()?;
    let expected = SuiteResult {
        passed: 20,
        failed: 0,
        skipped: 1,
    };
    for key_mode in ["prefix", "raw"] {
        let result = run_suite(&suite, bin_dir.path(), &skiffd, key_mode)?;
        assert_eq!(result, expected, "{key_mode} mode");
    }

    // The suite removed every snapshot it made and called Cleanup: nothing is mounted under skiffd's dir and
    // no snapshot directory is left.
    let mounted = mounts_under(skiffd.work_dir());
    ensure!(mounted.is_empty(), "mounts left behind: {mounted:?}");
    let snapshots = skiffd.root().join("snapshots");
    let left: Vec<_> = std::fs::read_dir(&snapshots)
        .with_context(|| format!("list {}", snapshots.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    ensure!(left.is_empty(), "snapshot dirs left behind: {left:?}");
    Ok(())
}

#[test]
fn suite_result_line_parses() {
    assert_eq!(
        parse_result("...\nPASS  Walk 0.03s\n20 passed, 0 failed, 1 skipped\n"),
        Some(SuiteResult {
            passed: 20,
            failed: 0,
            skipped: 1
        })
    );
    assert_eq!(parse_result("garbage"), None);
}
