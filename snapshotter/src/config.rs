//! skiffd's configuration: one TOML file, a section per subsystem, every field optional with its default
//! here. Command-line flags override the file (see `bin/skiffd.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where skiffd keeps its state unless told otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/skiff";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the content store, the metadata database and the lock file.
    pub root: PathBuf,
    /// Unix socket the gRPC API is served on (mode 0600).
    pub address: PathBuf,
    pub registry: RegistrySection,
    pub log: LogSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            address: PathBuf::from(skiff_api::DEFAULT_ADDRESS),
            registry: RegistrySection::default(),
            log: LogSection::default(),
        }
    }
}

/// How skiffd reaches registries, the way containerd's CRI registry section does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySection {
    /// containerd certs.d layout: `config_path/HOST[:PORT]/hosts.toml` (mirrors, plain HTTP, skip_verify).
    pub config_path: Option<PathBuf>,
    /// Docker `config.json` whose `auths` provide credentials; unset means `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json` when present.
    pub docker_config: Option<PathBuf>,
    pub connect_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub max_retries: u32,
    /// Largest manifest or index accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// Layer blobs fetched at once during a full pull.
    pub max_concurrent_downloads: usize,
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection {
            config_path: None,
            docker_config: None,
            connect_timeout_secs: 10,
            request_timeout_secs: 30,
            max_retries: 3,
            max_manifest_bytes: 4 << 20,
            max_concurrent_downloads: 3,
        }
    }
}

impl RegistrySection {
    /// The registry client's settings for one pull.
    pub fn client_config(
        &self,
        plain_http: bool,
        credentials: Option<skiff_fuse::registry::Credentials>,
    ) -> skiff_fuse::registry::RegistryConfig {
        skiff_fuse::registry::RegistryConfig {
            hosts_dir: self.config_path.clone(),
            docker_config: self.docker_config.clone(),
            plain_http,
            credentials,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_retries: self.max_retries,
            max_manifest_size: self.max_manifest_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A `tracing` filter: `info`, `debug`, `skiff_fuse=trace,info`, …; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn content_dir(&self) -> PathBuf {
        self.root.join("content")
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.root.join("metadata")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("skiffd.lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let config = Config::default();
        assert_eq!(config.root, PathBuf::from("/var/lib/skiff"));
        assert_eq!(config.address, PathBuf::from("/run/skiff/skiffd.sock"));
        assert_eq!(config.registry.config_path, None);
        assert_eq!(config.registry.docker_config, None);
        assert_eq!(config.registry.connect_timeout_secs, 10);
        assert_eq!(config.registry.request_timeout_secs, 30);
        assert_eq!(config.registry.max_retries, 3);
        assert_eq!(config.registry.max_manifest_bytes, 4 * 1024 * 1024);
        assert_eq!(config.registry.max_concurrent_downloads, 3);
        assert_eq!(config.log.level, "info");
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn sections_override_their_fields_only() {
        let config = Config::parse(
            "root = \"/srv/skiff\"\n[registry]\nconfig_path = \"/etc/skiff/certs.d\"\n[log]\nlevel = \"debug\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(config.root, PathBuf::from("/srv/skiff"));
        assert_eq!(config.address, PathBuf::from(skiff_api::DEFAULT_ADDRESS));
        assert_eq!(
            config.registry.config_path,
            Some(PathBuf::from("/etc/skiff/certs.d"))
        );
        assert_eq!(config.registry.max_retries, 3);
        assert_eq!(config.log.level, "debug");
    }

    #[test]
    fn unknown_fields_are_refused_naming_the_file() {
        let err = Config::parse(
            "[registry]\nmirror = \"x\"\n",
            Path::new("/etc/skiff/skiffd.toml"),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/etc/skiff/skiffd.toml"), "{text}");
        assert!(text.contains("mirror"), "{text}");
    }
}
