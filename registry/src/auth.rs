//! Registry authentication pieces that do no network IO: credentials and their sources (explicit,
//! docker `config.json` `auths`), `WWW-Authenticate` challenge parsing, and token responses.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::reference::DOCKER_HUB;
use super::RegistryError;

/// A username and password (or token) for a registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic …` header.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Credentials from a docker `config.json`, keyed by normalized registry host.
#[derive(Clone, Debug, Default)]
pub(crate) struct DockerAuths {
    by_host: HashMap<String, Credentials>,
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
}

#[derive(Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl DockerAuths {
    /// Reads `path` if given (it must exist), else `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` if one of those exists.
    pub(crate) fn load(path: Option<&Path>) -> Result<DockerAuths, RegistryError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => match default_docker_config() {
                Some(p) if p.is_file() => p,
                _ => return Ok(DockerAuths::default()),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|e| RegistryError::DockerConfig {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        DockerAuths::parse(&text).map_err(|reason| RegistryError::DockerConfig {
            path: path.display().to_string(),
            reason,
        })
    }

    pub(crate) fn parse(text: &str) -> Result<DockerAuths, String> {
        let file: DockerConfigFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut by_host = HashMap::new();
        for (key, entry) in file.auths {
            let creds = match (&entry.auth, &entry.username, &entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| format!("auths[{key:?}].auth is not base64: {e}"))?;
                    let decoded = String::from_utf8(decoded)
                        .map_err(|_| format!("auths[{key:?}].auth is not utf-8"))?;
                    let Some((user, pass)) = decoded.split_once(':') else {
                        return Err(format!("auths[{key:?}].auth is not user:password"));
                    };
                    Credentials {
                        username: user.to_string(),
                        password: pass.to_string(),
                    }
                }
                (_, Some(user), Some(pass)) => Credentials {
                    username: user.clone(),
                    password: pass.clone(),
                },
                // Entries without secrets (e.g. only an identity token) are not usable here.
                _ => continue,
            };
            by_host.insert(normalize_auth_key(&key), creds);
        }
        Ok(DockerAuths { by_host })
    }

    /// Credentials for a registry host (`docker.io`, `host:port`, …).
    pub(crate) fn get(&self, host: &str) -> Option<&Credentials> {
        self.by_host.get(&normalize_auth_key(host))
    }
}

fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// `https://index.docker.io/v1/` → `docker.io`, `http://host:5000/` → `host:5000`.
fn normalize_auth_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.into(),
        _ => host,
    }
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value, which may hold several challenges; unknown schemes and
/// bearer challenges without a realm are skipped.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut current: Option<(String, HashMap<String, String>)> = None;
    let mut rest = header.trim();
    let finish = |c: Option<(String, HashMap<String, String>)>, out: &mut Vec<Challenge>| {
        let Some((scheme, mut params)) = c else {
            return;
        };
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => out.push(Challenge::Basic),
            "bearer" => {
                if let Some(realm) = params.remove("realm") {
                    out.push(Challenge::Bearer {
                        realm,
                        service: params.remove("service"),
                        scope: params.remove("scope"),
                    });
                }
            }
            _ => {}
        }
    };
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            break;
        }
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..token_end];
        let after = rest[token_end..].trim_start();
        if let Some(value_part) = after.strip_prefix('=') {
            // auth-param: token=value or token="quoted"
            let value_part = value_part.trim_start();
            let (value, remaining) = if let Some(quoted) = value_part.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end.min(quoted.len())..])
            } else {
                let end = value_part.find(',').unwrap_or(value_part.len());
                (value_part[..end].trim().to_string(), &value_part[end..])
            };
            if let Some((_, params)) = current.as_mut() {
                params.insert(token.to_ascii_lowercase(), value);
            }
            rest = remaining;
        } else {
            // A new challenge starts with its scheme.
            finish(current.take(), &mut out);
            current = Some((token.to_string(), HashMap::new()));
            rest = after;
        }
    }
    finish(current, &mut out);
    out
}

/// The body of a token endpoint answer.
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Default token lifetime when the endpoint does not say (distribution token spec).
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Extracts the bearer token and its lifetime from a token endpoint body.
pub(crate) fn parse_token_response(body: &[u8]) -> Result<(String, Duration), String> {
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|e| format!("invalid token response: {e}"))?;
    let token = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| "token response has neither token nor access_token".to_string())?;
    let lifetime = parsed
        .expires_in
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((token, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_redacts_password() {
        let c = Credentials {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2"));
        assert_eq!(c.basic_header(), "Basic YWxpY2U6aHVudGVyMg==");
    }

    #[test]
    fn docker_config_auths() {
        let json = r#"{
          "auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "localhost:5000": {"username": "u", "password": "p:with:colons"},
            "http://reg.example.com:8080/": {"auth": "YTpiOmM="},
            "ghcr.io": {"identitytoken": "xyz"}
          },
          "credsStore": "desktop"
        }"#;
        let auths = DockerAuths::parse(json).unwrap();
        let hub = auths.get("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "secret")
        );
        assert_eq!(auths.get("registry-1.docker.io"), Some(hub));
        let local = auths.get("localhost:5000").unwrap();
        assert_eq!(local.password, "p:with:colons");
        let reg = auths.get("reg.example.com:8080").unwrap();
        assert_eq!((reg.username.as_str(), reg.password.as_str()), ("a", "b:c"));
        assert!(auths.get("ghcr.io").is_none());
        assert!(auths.get("localhost:5001").is_none());
    }

    #[test]
    fn docker_config_errors() {
        assert!(DockerAuths::parse("not json").is_err());
        assert!(DockerAuths::parse(r#"{"auths":{"h":{"auth":"!!!"}}}"#).is_err());
        // "nocolon" in base64
        assert!(DockerAuths::parse(r#"{"auths":{"h":{"auth":"bm9jb2xvbg=="}}}"#).is_err());
        assert!(DockerAuths::parse("{}").unwrap().get("docker.io").is_none());
    }

    #[test]
    fn docker_config_missing_explicit_file_is_an_error() {
        let err = DockerAuths::load(Some(Path::new("/nonexistent/skiff/config.json"))).unwrap_err();
        assert!(matches!(err, RegistryError::DockerConfig { .. }), "{err}");
    }

    #[test]
    fn www_authenticate() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenges(h),
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }]
        );
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry Realm""#),
            vec![Challenge::Basic]
        );
        assert_eq!(parse_challenges("basic"), vec![Challenge::Basic]);
        // Several challenges, unquoted values, escapes, an unknown scheme and odd spacing.
        let h = r#"Negotiate abc, bearer realm=http://127.0.0.1:1/t , service = "a\"b", Basic realm="x, y""#;
        assert_eq!(
            parse_challenges(h),
            vec![
                Challenge::Bearer {
                    realm: "http://127.0.0.1:1/t".into(),
                    service: Some("a\"b".into()),
                    scope: None,
                },
                Challenge::Basic,
            ]
        );
        // A bearer challenge without a realm is useless.
        assert_eq!(parse_challenges(r#"Bearer service="x""#), vec![]);
        assert_eq!(parse_challenges(""), vec![]);
    }

    #[test]
    fn token_responses() {
        let (t, life) = parse_token_response(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!((t.as_str(), life), ("abc", Duration::from_secs(300)));
        let (t, life) = parse_token_response(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!((t.as_str(), life), ("xyz", DEFAULT_TOKEN_LIFETIME));
        let (t, _) = parse_token_response(br#"{"token":"","access_token":"z"}"#).unwrap();
        assert_eq!(t, "z");
        assert!(parse_token_response(br#"{"expires_in":3}"#).is_err());
        assert!(parse_token_response(b"<html>").is_err());
    }
}
