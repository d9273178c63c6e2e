//! containerd `hosts.toml` (certs.d layout) handling: which hosts serve a registry, in which order, with
//! which capabilities, TLS settings, extra headers and path layout. Pure parsing; no network IO.

use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use url::Url;

use super::reference::{DOCKER_HUB, DOCKER_HUB_ENDPOINT};
use super::RegistryError;

/// What a host may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            pull: true,
            resolve: true,
            push: true,
        }
    }
}

/// TLS settings; each distinct value gets its own HTTP client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsSettings {
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
}

/// One host to talk to for a registry: a mirror or the origin server.
#[derive(Clone, Debug)]
pub(crate) struct HostSpec {
    /// `scheme://host[:port]/path-prefix` where `path-prefix` already ends in `/v2` unless
    /// `override_path` was set; request paths are appended as `/{repo}/manifests/…`.
    pub api_base: Url,
    pub capabilities: Capabilities,
    pub tls: TlsSettings,
    pub headers: HeaderMap,
    /// True for `[host."…"]` mirrors, false for the origin `server`.
    pub mirror: bool,
}

#[derive(Deserialize, Default)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    server_settings: HostSettings,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Deserialize, Default)]
struct HostSettings {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<StringOrList>,
    #[serde(default)]
    header: toml::Table,
    override_path: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

/// The origin a registry is served from when `hosts.toml` names no `server`.
pub(crate) fn default_server(registry: &str, plain_http: bool) -> String {
    let host = if registry == DOCKER_HUB {
        DOCKER_HUB_ENDPOINT
    } else {
        registry
    };
    let scheme = if plain_http { "http" } else { "https" };
    format!("{scheme}://{host}")
}

/// The `hosts.toml` for `registry` under `hosts_dir`: `<dir>/<host[:port]>/hosts.toml`, else
/// `<dir>/_default/hosts.toml`.
pub(crate) fn find_hosts_file(hosts_dir: &Path, registry: &str) -> Option<PathBuf> {
    [registry, "_default"]
        .iter()
        .map(|d| hosts_dir.join(d).join("hosts.toml"))
        .find(|p| p.is_file())
}

/// The hosts to try for `registry`, mirrors first (in file order), the server last.
pub(crate) fn load_hosts(
    hosts_dir: Option<&Path>,
    registry: &str,
    plain_http: bool,
) -> Result<Vec<HostSpec>, RegistryError> {
    let file = hosts_dir.and_then(|dir| find_hosts_file(dir, registry));
    let Some(path) = file else {
        return parse_hosts("", Path::new("."), registry, plain_http);
    };
    let err = |reason: String| RegistryError::HostsConfig {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    parse_hosts(&text, base_dir, registry, plain_http).map_err(|e| match e {
        RegistryError::HostsConfig { reason, .. } => err(reason),
        other => other,
    })
}

/// Parses a `hosts.toml`; relative `ca` paths are resolved against `base_dir`.
pub(crate) fn parse_hosts(
    text: &str,
    base_dir: &Path,
    registry: &str,
    plain_http: bool,
) -> Result<Vec<HostSpec>, RegistryError> {
    let err = |reason: String| RegistryError::HostsConfig {
        path: base_dir.join("hosts.toml").display().to_string(),
        reason,
    };
    let file: HostsFile = toml::from_str(text).map_err(|e| err(e.message().to_string()))?;
    let mut hosts = Vec::new();
    for (key, value) in file.host {
        let settings: HostSettings = value
            .try_into()
            .map_err(|e: toml::de::Error| err(format!("host {key:?}: {}", e.message())))?;
        hosts.push(
            host_spec(&key, settings, true, base_dir)
                .map_err(|r| err(format!("host {key:?}: {r}")))?,
        );
    }
    let server = file
        .server
        .unwrap_or_else(|| default_server(registry, plain_http));
    hosts.push(
        host_spec(&server, file.server_settings, false, base_dir)
            .map_err(|r| err(format!("server {server:?}: {r}")))?,
    );
    Ok(hosts)
}

fn host_spec(
    url: &str,
    settings: HostSettings,
    mirror: bool,
    base_dir: &Path,
) -> Result<HostSpec, String> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let mut api_base = Url::parse(&with_scheme).map_err(|e| e.to_string())?;
    if !matches!(api_base.scheme(), "http" | "https") || api_base.host_str().is_none() {
        return Err("must be an http or https URL with a host".into());
    }
    api_base.set_query(None);
    api_base.set_fragment(None);
    let path = api_base.path().trim_end_matches('/').to_string();
    let path = if settings.override_path.unwrap_or(false) || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    api_base.set_path(&path);

    let capabilities = match settings.capabilities {
        None => Capabilities::default(),
        Some(list) => {
            let mut caps = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for c in list {
                match c.as_str() {
                    "pull" => caps.pull = true,
                    "resolve" => caps.resolve = true,
                    "push" => caps.push = true,
                    other => return Err(format!("unknown capability {other:?}")),
                }
            }
            caps
        }
    };

    let ca = settings
        .ca
        .map(StringOrList::into_vec)
        .unwrap_or_default()
        .into_iter()
        .map(|p| base_dir.join(p))
        .collect();

    let mut headers = HeaderMap::new();
    for (name, value) in settings.header {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let values = match value {
            toml::Value::String(s) => vec![s],
            toml::Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    _ => Err(format!("header {name} values must be strings")),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(format!(
                    "header {name} must be a string or a list of strings"
                ))
            }
        };
        for v in values {
            let v = HeaderValue::from_str(&v)
                .map_err(|_| format!("invalid value for header {name}"))?;
            headers.append(name.clone(), v);
        }
    }

    Ok(HostSpec {
        api_base,
        capabilities,
        tls: TlsSettings {
            skip_verify: settings.skip_verify.unwrap_or(false),
            ca,
        },
        headers,
        mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_origin_only() {
        let hosts = parse_hosts("", Path::new("/x"), "docker.io", false).unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            hosts[0].api_base.as_str(),
            "https://registry-1.docker.io/v2"
        );
        assert!(!hosts[0].mirror);
        assert_eq!(hosts[0].capabilities, Capabilities::default());
        let hosts = parse_hosts("", Path::new("/x"), "localhost:5000", true).unwrap();
        assert_eq!(hosts[0].api_base.as_str(), "http://localhost:5000/v2");
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let text = r#"
            server = "https://registry.example.com"
            skip_verify = false

            [host."https://zzz-mirror.example.com"]
              capabilities = ["pull"]
              skip_verify = true
              ca = ["certs/a.pem", "/abs/b.pem"]

            [host."http://aaa-mirror:5000/prefix"]
              capabilities = ["pull", "resolve"]
              override_path = true
              [host."http://aaa-mirror:5000/prefix".header]
                x-custom = "1"
                x-multi = ["a", "b"]

            [host."mmm.example.com/"]
              ca = "one.pem"
        "#;
        let hosts = parse_hosts(
            text,
            Path::new("/etc/certs.d/r"),
            "registry.example.com",
            false,
        )
        .unwrap();
        let bases: Vec<&str> = hosts.iter().map(|h| h.api_base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "https://zzz-mirror.example.com/v2",
                "http://aaa-mirror:5000/prefix",
                "https://mmm.example.com/v2",
                "https://registry.example.com/v2",
            ]
        );
        assert_eq!(
            hosts.iter().map(|h| h.mirror).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert!(hosts[0].capabilities.pull && !hosts[0].capabilities.resolve);
        assert!(hosts[1].capabilities.resolve && !hosts[1].capabilities.push);
        assert!(hosts[0].tls.skip_verify);
        assert_eq!(
            hosts[0].tls.ca,
            [
                PathBuf::from("/etc/certs.d/r/certs/a.pem"),
                PathBuf::from("/abs/b.pem")
            ]
        );
        assert_eq!(hosts[2].tls.ca, [PathBuf::from("/etc/certs.d/r/one.pem")]);
        assert_eq!(hosts[1].headers.get("x-custom").unwrap(), "1");
        assert_eq!(hosts[1].headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(hosts[3].capabilities, Capabilities::default());
    }

    #[test]
    fn default_server_when_missing() {
        let text = r#"
            [host."http://mirror:5000"]
        "#;
        let hosts = parse_hosts(text, Path::new("/x"), "docker.io", false).unwrap();
        assert_eq!(hosts[0].api_base.as_str(), "http://mirror:5000/v2");
        assert_eq!(
            hosts[1].api_base.as_str(),
            "https://registry-1.docker.io/v2"
        );
        let hosts = parse_hosts(
            r#"server = "https://r.io/v2""#,
            Path::new("/x"),
            "r.io",
            false,
        )
        .unwrap();
        assert_eq!(hosts[0].api_base.as_str(), "https://r.io/v2");
    }

    #[test]
    fn rejects_bad_files() {
        for text in [
            "server = 3",
            "[host.\"ftp://x\"]",
            "[host.\"https://x\"]\ncapabilities = [\"fly\"]",
            "[host.\"https://x\"]\nheader = { \"bad name\" = \"v\" }",
            "not toml [",
        ] {
            let err = parse_hosts(text, Path::new("/x"), "r.io", false).unwrap_err();
            assert!(
                matches!(err, RegistryError::HostsConfig { .. }),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn finds_host_dir_then_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://default-mirror\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("r.io:5000")).unwrap();
        std::fs::write(
            dir.path().join("r.io:5000/hosts.toml"),
            "server = \"http://r.io:5000\"\n",
        )
        .unwrap();

        let hosts = load_hosts(Some(dir.path()), "r.io:5000", false).unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].api_base.as_str(), "http://r.io:5000/v2");

        let hosts = load_hosts(Some(dir.path()), "other.io", false).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].api_base.as_str(), "http://default-mirror/v2");
        assert_eq!(hosts[1].api_base.as_str(), "https://other.io/v2");

        let hosts = load_hosts(None, "other.io", true).unwrap();
        assert_eq!(hosts[0].api_base.as_str(), "http://other.io/v2");
    }
}
