//! Client-side registry configuration files: Docker `config.json` credentials and containerd
//! `hosts.toml` (certs.d layout) mirrors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

/// Writes `DIR/config.json` with `auths` entries `{HOST: {"auth": base64(user:password)}}`;
/// returns its path (point `DOCKER_CONFIG` at `DIR`).
pub fn write_docker_config(dir: &Path, auths: &[(&str, &str, &str)]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let entries: serde_json::Map<String, serde_json::Value> = auths
        .iter()
        .map(|(host, user, password)| {
            (
                host.to_string(),
                json!({"auth": STANDARD.encode(format!("{user}:{password}"))}),
            )
        })
        .collect();
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({"auths": entries}))?,
    )
    .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// One `[host."URL"]` section of a hosts.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// e.g. `http://127.0.0.1:5001`.
    pub url: String,
    /// e.g. `["pull", "resolve"]`.
    pub capabilities: Vec<String>,
    pub skip_verify: bool,
    /// When true the URL's path is used as-is instead of appending `/v2`.
    pub override_path: bool,
}

impl HostEntry {
    /// A mirror for pull + resolve.
    pub fn mirror(url: &str) -> Self {
        Self {
            url: url.to_string(),
            capabilities: vec!["pull".into(), "resolve".into()],
            skip_verify: false,
            override_path: false,
        }
    }

    pub fn with_capabilities(mut self, capabilities: &[&str]) -> Self {
        self.capabilities = capabilities.iter().map(|c| c.to_string()).collect();
        self
    }

    pub fn with_skip_verify(mut self) -> Self {
        self.skip_verify = true;
        self
    }
}

/// Writes `CERTS_D/HOST/hosts.toml` (`HOST` like `127.0.0.1:5000`) with an optional `server`
/// and `[host."URL"]` entries tried in order; returns its path.
pub fn write_hosts_toml(
    certs_d: &Path,
    host: &str,
    server: Option<&str>,
    hosts: &[HostEntry],
) -> Result<PathBuf> {
    let quote = |s: &str| serde_json::to_string(s).expect("string serializes");
    let dir = certs_d.join(host);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut toml = String::new();
    if let Some(server) = server {
        toml.push_str(&format!("server = {}\n", quote(server)));
    }
    for entry in hosts {
        toml.push_str(&format!("\n[host.{}]\n", quote(&entry.url)));
        let capabilities: Vec<String> = entry.capabilities.iter().map(|c| quote(c)).collect();
        toml.push_str(&format!("  capabilities = [{}]\n", capabilities.join(", ")));
        if entry.skip_verify {
            toml.push_str("  skip_verify = true\n");
        }
        if entry.override_path {
            toml.push_str("  override_path = true\n");
        }
    }
    let path = dir.join("hosts.toml");
    std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_toml_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_hosts_toml(
            dir.path(),
            "127.0.0.1:5000",
            Some("http://127.0.0.1:5000"),
            &[HostEntry::mirror("http://127.0.0.1:5001")],
        )
        .unwrap();
        assert_eq!(path, dir.path().join("127.0.0.1:5000/hosts.toml"));
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            text,
            "server = \"http://127.0.0.1:5000\"\n\n[host.\"http://127.0.0.1:5001\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
    }

    #[test]
    fn docker_config_auth_is_base64() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_docker_config(dir.path(), &[("127.0.0.1:5000", "u", "p")]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(v["auths"]["127.0.0.1:5000"]["auth"], "dTpw");
    }
}
