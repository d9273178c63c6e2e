//! Image references (`host[:port]/repo[:tag][@sha256:…]`): parsing and validation per the distribution
//! reference grammar, Docker Hub normalization, and the normalized string form. The digest is skiff's
//! [`Digest`], so a reference pins only what skiff can verify.
//!
//! oci-spec's `distribution::Reference` was weighed and not taken: it refuses bracketed IPv6 hosts
//! (`[::1]:5000/app`), accepts ports above 65535 and digests of any algorithm, and keeps the digest as a
//! string; this parser follows docker's grammar on all three and is tested against it below.

use std::fmt;
use std::str::FromStr;

use super::{Digest, RegistryError};

/// The registry name Docker Hub references are normalized to.
pub const DOCKER_HUB: &str = "docker.io";
/// The API endpoint that serves Docker Hub.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A parsed, normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Registry host (with port if any); Docker Hub is `docker.io`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Tag, if any; `latest` when the reference named neither a tag nor a digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository pinned to `digest` (the tag, if any, is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The host the registry API is served from (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.registry
        }
    }

    /// The digest if pinned, otherwise the tag: what goes after `/manifests/`.
    pub(crate) fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| RegistryError::InvalidReference {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(invalid("empty reference"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace"));
        }

        let (name_and_tag, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest).map_err(|r| invalid(&r))?)),
            None => (input, None),
        };

        // A ':' after the last '/' separates the tag; one before it belongs to a host's port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (&name_and_tag[..split], Some(&name_and_tag[split + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| invalid(&r))?;
        }
        if name.is_empty() {
            return Err(invalid("empty repository name"));
        }

        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                validate_host(first).map_err(|r| invalid(&r))?;
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository).map_err(|r| invalid(&r))?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid("name longer than 255 characters"));
        }

        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Parses a `sha256:<64 lowercase hex>` digest; other algorithms are refused.
fn parse_digest(s: &str) -> Result<Digest, String> {
    Digest::from_str(s).map_err(|e| e.to_string())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.first() {
        None => Err("empty tag".to_string()),
        Some(_) if bytes.len() > 128 => Err("tag longer than 128 characters".to_string()),
        Some(&first) if !word(first) => Err(format!(
            "tag {tag:?} must start with a letter, digit or underscore"
        )),
        Some(_) if !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') => Err(format!(
            "tag {tag:?} may only contain letters, digits, '_', '.' and '-'"
        )),
        Some(_) => Ok(()),
    }
}

fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // Bracketed IPv6 literal, optionally with a port.
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(format!("host {host:?} has an unterminated IPv6 literal"));
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(format!("host {host:?} has an invalid IPv6 literal"));
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Err(format!("host {host:?} is malformed")),
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err(format!("host {host:?} has an invalid port"));
        }
    }
    if host.starts_with('[') {
        return Ok(());
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!("host {host:?} is not a valid host name"));
    }
    Ok(())
}

/// Path components: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, joined by `/`.
fn validate_repository(repo: &str) -> Result<(), String> {
    for component in repo.split('/') {
        if component.is_empty() {
            return Err(format!("repository {repo:?} has an empty path component"));
        }
        if !component_ok(component) {
            return Err(format!(
                "repository path component {component:?} must be lowercase letters and digits \
                 separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return false;
        }
        // A separator: '.', '_', '__', or a run of '-'.
        let sep_len = match b {
            b'.' => 1,
            b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[i..].iter().take_while(|&&x| x == b'-').count(),
            _ => return false,
        };
        i += sep_len;
        expect_alnum = true;
    }
    !expect_alnum
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_and_normalizes() {
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                false,
            ),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            ("user/app:v1", "docker.io", "user/app", Some("v1"), false),
            ("localhost/app", "localhost", "app", Some("latest"), false),
            (
                "localhost:5000/a/b/c:t",
                "localhost:5000",
                "a/b/c",
                Some("t"),
                false,
            ),
            ("127.0.0.1:5000/app@@", "", "", None, false),
            (
                "ghcr.io/o/r_x__y.z-w---q:T_1.0-rc",
                "ghcr.io",
                "o/r_x__y.z-w---q",
                Some("T_1.0-rc"),
                false,
            ),
            ("quay.io/x/y@DIGEST", "quay.io", "x/y", None, true),
            (
                "quay.io/x/y:tag@DIGEST",
                "quay.io",
                "x/y",
                Some("tag"),
                true,
            ),
            ("[::1]:5000/app:1", "[::1]:5000", "app", Some("1"), false),
        ];
        for &(input, registry, repo, tag, has_digest) in cases {
            let input = input.replace("DIGEST", D);
            if registry.is_empty() {
                assert!(input.parse::<Reference>().is_err(), "{input} should fail");
                continue;
            }
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repo, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest().is_some(), has_digest, "{input}");
            // Display is the full normalized form and round-trips.
            let again: Reference = r.to_string().parse().unwrap();
            assert_eq!(again, r, "{input}");
        }
    }

    #[test]
    fn display_is_normalized() {
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let pinned = r.with_digest(D.parse().unwrap());
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/busybox:latest@{D}")
        );
        assert_eq!(pinned.manifest_ref(), D);
        let r: Reference = format!("localhost:5000/x@{D}").parse().unwrap();
        assert_eq!(r.to_string(), format!("localhost:5000/x@{D}"));
        assert_eq!(r.api_host(), "localhost:5000");
    }

    #[test]
    fn rejects_invalid() {
        let long_tag = format!("x:{}", "a".repeat(129));
        let cases = [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "a//b",
            "/a",
            "a/",
            "a:",
            "a:-tag",
            "a:t@g",
            long_tag.as_str(),
            "a@sha256:abc",
            "a@sha512:0123",
            "a@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "a b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "host.io:99999/a",
            "host.io:/a",
            "-bad.io/a",
            "exa_mple.com/a",
        ];
        for input in cases {
            match input.parse::<Reference>() {
                Err(RegistryError::InvalidReference { reference, reason }) => {
                    assert_eq!(reference, input);
                    assert!(!reason.is_empty());
                }
                other => panic!("{input:?} should be invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn valid_lengths() {
        assert!(format!("x:{}", "a".repeat(128))
            .parse::<Reference>()
            .is_ok());
        let long = format!("h.io/{}", "a".repeat(251));
        assert!(long.parse::<Reference>().is_err());
    }
}
