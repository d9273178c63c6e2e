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
    /// The chunk cache of lazily read layers (`ROOT/chunks`).
    pub cache: CacheSection,
    /// How lazy layers are opened and fetched.
    pub lazy: LazySection,
    pub log: LogSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            address: PathBuf::from(skiff_api::DEFAULT_ADDRESS),
            registry: RegistrySection::default(),
            cache: CacheSection::default(),
            lazy: LazySection::default(),
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

/// The verified chunk cache shared by every lazy layer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Bytes of chunks kept in memory (an LRU).
    pub memory_bytes: u64,
    /// Cap on the bytes of chunks kept on disk; 0 means unbounded.
    pub disk_bytes: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            memory_bytes: 256 << 20,
            disk_bytes: 10 << 30,
        }
    }
}

impl CacheSection {
    pub fn cache_config(&self) -> skiff_fuse::cache::CacheConfig {
        skiff_fuse::cache::CacheConfig {
            memory_bytes: self.memory_bytes,
            disk_bytes: (self.disk_bytes != 0).then_some(self.disk_bytes),
        }
    }
}

/// Lazy layers: their TOC checks and how their bytes are fetched from the registry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LazySection {
    /// Refuse (unpack instead) an eStargz layer whose manifest does not pin its TOC digest.
    pub require_toc_digest: bool,
    /// Largest single Range request when merging neighbouring chunks.
    pub max_request_bytes: u64,
    /// Unneeded bytes between two needed chunks still fetched in the same request.
    pub max_gap_bytes: u64,
    /// Range requests in flight at once for readers.
    pub parallel_requests: usize,
    /// Attempts per span when the registry fails or sends bytes that do not verify.
    pub attempts: u32,
    /// Largest readahead after sequential reads.
    pub max_readahead_bytes: u64,
    /// On a read miss, the following chunks of the blob fetched beside it (compressed bytes; 0 = off).
    pub neighbour_bytes: u64,
    /// At the second read miss in a directory, its other small files fetched beside it (compressed
    /// bytes; 0 = off).
    pub directory_bytes: u64,
    /// Fetch the prioritized files (before `.prefetch.landmark`) at mount.
    pub prefetch: bool,
    /// Range requests in flight for fetching the rest of each layer in the background; 0 turns
    /// background fetching off.
    pub background_parallel_requests: usize,
    /// Background fetching waits until readers have not waited on the registry for this long (ms).
    pub background_quiet_ms: u64,
    /// Largest background Range request.
    pub background_request_bytes: u64,
}

impl Default for LazySection {
    fn default() -> Self {
        LazySection {
            require_toc_digest: true,
            max_request_bytes: 4 << 20,
            max_gap_bytes: 256 << 10,
            parallel_requests: 8,
            attempts: 3,
            max_readahead_bytes: 8 << 20,
            neighbour_bytes: 128 << 10,
            directory_bytes: 2 << 20,
            prefetch: true,
            background_parallel_requests: 2,
            background_quiet_ms: 1000,
            background_request_bytes: 512 << 10,
        }
    }
}

impl LazySection {
    pub fn layer_config(&self) -> skiff_fuse::lazyfs::LayerConfig {
        use skiff_fuse::fetch::{BackgroundConfig, FetchConfig};
        skiff_fuse::lazyfs::LayerConfig {
            require_toc_digest: self.require_toc_digest,
            fetch: FetchConfig {
                max_request_bytes: self.max_request_bytes,
                max_gap_bytes: self.max_gap_bytes,
                parallel_requests: self.parallel_requests,
                attempts: self.attempts,
                max_readahead_bytes: self.max_readahead_bytes,
                neighbour_bytes: self.neighbour_bytes,
                directory_bytes: self.directory_bytes,
                prefetch: self.prefetch,
                background: (self.background_parallel_requests != 0).then_some(BackgroundConfig {
                    parallel_requests: self.background_parallel_requests,
                    quiet_ms: self.background_quiet_ms,
                    max_request_bytes: self.background_request_bytes,
                }),
            },
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
        assert_eq!(config.cache.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(config.cache.disk_bytes, 10 * 1024 * 1024 * 1024);
        assert!(config.lazy.require_toc_digest);
        assert_eq!(config.lazy.max_request_bytes, 4 * 1024 * 1024);
        assert_eq!(config.lazy.max_gap_bytes, 256 * 1024);
        assert_eq!(config.lazy.parallel_requests, 8);
        assert_eq!(config.lazy.attempts, 3);
        assert_eq!(config.lazy.max_readahead_bytes, 8 * 1024 * 1024);
        assert!(config.lazy.prefetch);
        assert_eq!(config.lazy.background_parallel_requests, 2);
        assert_eq!(config.chunks_dir(), PathBuf::from("/var/lib/skiff/chunks"));
    }

    #[test]
    fn lazy_defaults_match_the_fuse_crate() {
        let config = Config::default();
        let layer = config.lazy.layer_config();
        let fuse = skiff_fuse::lazyfs::LayerConfig::default();
        assert_eq!(layer.require_toc_digest, fuse.require_toc_digest);
        assert_eq!(layer.fetch, fuse.fetch);
        let cache = config.cache.cache_config();
        let fuse = skiff_fuse::cache::CacheConfig::default();
        assert_eq!(
            (cache.memory_bytes, cache.disk_bytes),
            (fuse.memory_bytes, fuse.disk_bytes)
        );
        let unbounded = CacheSection {
            disk_bytes: 0,
            ..CacheSection::default()
        };
        assert_eq!(unbounded.cache_config().disk_bytes, None);
        let no_background = LazySection {
            background_parallel_requests: 0,
            ..LazySection::default()
        };
        assert!(no_background.layer_config().fetch.background.is_none());
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
