//! Pushing OCI layouts to a registry and reading manifests back, with skopeo.

use std::process::Command;

use anyhow::{Context, Result};

use crate::image::{sha256_digest, OciLayout};
use crate::process::run_ok;

/// Pushes `layout` to `docker://REGISTRY_HOST/DEST` (`dest` = `repo:tag`) over plain HTTP and
/// returns the pushed manifest digest (the index digest for multi-platform layouts, pushed
/// with all platforms). Blobs and manifests are pushed unchanged (`--preserve-digests`), so
/// uncompressed layers stay uncompressed.
pub fn push_layout(
    layout: &OciLayout,
    registry_host: &str,
    dest: &str,
    creds: Option<(&str, &str)>,
) -> Result<String> {
    let digest_file = tempfile::NamedTempFile::new().context("create digest file")?;
    let mut command = skopeo();
    command
        .args(["copy", "--dest-tls-verify=false", "--preserve-digests"])
        .arg("--digestfile")
        .arg(digest_file.path());
    if layout.is_index() {
        command.args(["--multi-arch", "all"]);
    }
    let creds_arg;
    if let Some((user, password)) = creds {
        creds_arg = format!("{user}:{password}");
        command.args(["--dest-creds", &creds_arg]);
    }
    command
        .arg(layout.skopeo_reference())
        .arg(format!("docker://{registry_host}/{dest}"));
    run_ok(&mut command).with_context(|| {
        format!(
            "push {} to {registry_host}/{dest}",
            layout.skopeo_reference()
        )
    })?;
    let digest = std::fs::read_to_string(digest_file.path())
        .context("read skopeo --digestfile")?
        .trim()
        .to_string();
    anyhow::ensure!(
        digest == layout.digest(),
        "skopeo pushed {digest} but the layout's digest is {}",
        layout.digest()
    );
    Ok(digest)
}

/// The raw manifest or index at `reference` (`HOST/repo:tag` or `HOST/repo@sha256:…`).
pub fn inspect_raw(reference: &str, creds: Option<(&str, &str)>) -> Result<Vec<u8>> {
    let mut command = skopeo();
    command.args(["inspect", "--raw", "--tls-verify=false"]);
    let creds_arg;
    if let Some((user, password)) = creds {
        creds_arg = format!("{user}:{password}");
        command.args(["--creds", &creds_arg]);
    }
    command.arg(format!("docker://{reference}"));
    let output = crate::process::run(&mut command)?;
    crate::process::check_output(&format!("skopeo inspect --raw {reference}"), &output)?;
    Ok(output.stdout)
}

/// `skopeo inspect` (the host platform's image config summary) as JSON.
pub fn inspect(reference: &str, creds: Option<(&str, &str)>) -> Result<serde_json::Value> {
    let mut command = skopeo();
    command.args(["inspect", "--tls-verify=false"]);
    let creds_arg;
    if let Some((user, password)) = creds {
        creds_arg = format!("{user}:{password}");
        command.args(["--creds", &creds_arg]);
    }
    command.arg(format!("docker://{reference}"));
    let stdout = run_ok(&mut command)?;
    serde_json::from_str(&stdout).context("parse skopeo inspect output")
}

/// `sha256:…` of the raw manifest at `reference`.
pub fn manifest_digest(reference: &str, creds: Option<(&str, &str)>) -> Result<String> {
    Ok(sha256_digest(&inspect_raw(reference, creds)?))
}

/// skopeo with an explicit policy (accept anything) so no host policy.json is needed.
fn skopeo() -> Command {
    let mut command = Command::new("skopeo");
    command.arg("--insecure-policy");
    command
}
