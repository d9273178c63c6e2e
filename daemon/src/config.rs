//! skiffd's configuration: one TOML file, a section per subsystem, every field optional with its default
//! in the subsystem's own type (`[cache]` is the chunk cache's `CacheConfig`, `[lazy]` the lazy
//! filesystem's `LayerConfig`), unknown keys refused. An optional setting that is on by default is turned
//! off with `false`. Command-line flags override the file (see `bin/skiffd.rs`). Every key, with its
//! default, is in `docs/config.md`; `docs/skiffd.toml` is a complete example.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use skiff_fuse::cache::CacheConfig;
use skiff_fuse::lazyfs::LayerConfig;

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
    /// The chunk cache of lazily read layers (`ROOT/chunks`).
    pub cache: CacheConfig,
    /// How lazy layers are opened and fetched (`[lazy]`, `[lazy.fetch]`, `[lazy.fetch.background]`).
    pub lazy: LayerConfig,
    /// The keeper that holds the lazy mounts' FUSE connections across restarts (`[keeper]`).
    pub keeper: KeeperSection,
    pub log: LogSection,
    /// On SIGTERM, unmount lazy layers no container uses instead of leaving every mount to the keeper
    /// (`--unmount-on-exit`).
    pub unmount_on_exit: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            address: PathBuf::from(skiff_api::DEFAULT_ADDRESS),
            registry: RegistrySection::default(),
            cache: CacheConfig::default(),
            lazy: LayerConfig::default(),
            keeper: KeeperSection::default(),
            log: LogSection::default(),
            unmount_on_exit: false,
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
        credentials: Option<skiff_registry::Credentials>,
    ) -> skiff_registry::RegistryConfig {
        skiff_registry::RegistryConfig {
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

/// The keeper (`skiff-keeper`): one per root, serving `ROOT/keeper.sock`, started by skiffd when none
/// answers there.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeeperSection {
    /// `false`: no keeper; lazy mounts die with skiffd and are mounted afresh when it starts again.
    pub enabled: bool,
    /// The keeper binary; unset means `skiff-keeper` beside the running skiffd.
    pub binary: Option<PathBuf>,
}

impl Default for KeeperSection {
    fn default() -> Self {
        KeeperSection {
            enabled: true,
            binary: None,
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

    /// The chunk cache of lazy layers.
    pub fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("skiffd.lock")
    }

    /// The keeper's socket.
    pub fn keeper_socket(&self) -> PathBuf {
        self.root.join("keeper.sock")
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
        assert!(config.keeper.enabled);
        assert_eq!(config.keeper.binary, None);
        assert!(!config.unmount_on_exit);
        assert_eq!(config.cache.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(config.cache.disk_bytes, Some(10 * 1024 * 1024 * 1024));
        assert!(config.lazy.require_toc_digest);
        assert_eq!(config.lazy.toc_memory_bytes, 256 * 1024 * 1024);
        let fetch = &config.lazy.fetch;
        assert_eq!(fetch.max_request_bytes, 4 * 1024 * 1024);
        assert_eq!(fetch.max_gap_bytes, 256 * 1024);
        assert_eq!(fetch.parallel_requests, 8);
        assert_eq!(fetch.attempts, 3);
        assert_eq!(fetch.read_timeout_secs, 60);
        assert_eq!(fetch.max_readahead_bytes, 8 * 1024 * 1024);
        assert_eq!(fetch.neighbour_bytes, Some(128 * 1024));
        assert_eq!(fetch.directory_bytes, Some(2 * 1024 * 1024));
        assert!(fetch.prefetch);
        let background = fetch.background.as_ref().unwrap();
        assert_eq!(background.parallel_requests, 2);
        assert_eq!(background.quiet_ms, 1000);
        assert_eq!(background.max_request_bytes, 512 * 1024);
        assert_eq!(config.chunks_dir(), PathBuf::from("/var/lib/skiff/chunks"));
    }

    #[test]
    fn lazy_sections_are_the_fuse_crates_own_types() {
        let config = Config::parse(
            "[cache]\ndisk_bytes = false\n[lazy]\nrequire_toc_digest = false\n\
             [lazy.fetch]\nneighbour_bytes = false\nbackground = false\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(config.cache.disk_bytes, None);
        assert!(!config.lazy.require_toc_digest);
        assert_eq!(config.lazy.fetch.neighbour_bytes, None);
        assert!(config.lazy.fetch.background.is_none());
        let config = Config::parse(
            "[lazy.fetch.background]\nparallel_requests = 4\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let background = config.lazy.fetch.background.unwrap();
        assert_eq!(background.parallel_requests, 4);
        assert_eq!(background.quiet_ms, 1000);
        // The keys of the old flat `[lazy]` section are refused, naming the key.
        let err = Config::parse(
            "[lazy]\nbackground_parallel_requests = 0\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("background_parallel_requests"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_is_every_default() {
        let example = include_str!("../../docs/skiffd.toml");
        assert_eq!(
            Config::parse(example, Path::new("docs/skiffd.toml")).unwrap(),
            Config::default()
        );
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
