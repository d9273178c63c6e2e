//! Platforms (`os/architecture[/variant]`): the host's own, parsing, and choosing the best manifest for
//! a platform from an image index the way containerd's default matcher does.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Descriptor;

use super::RegistryError;

/// A target platform, with GOOS/GOARCH names (`linux`, `amd64`, `arm64`, …).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on: linux plus the GOARCH name of the CPU.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            "mips" if cfg!(target_endian = "little") => ("mipsle", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// How well a candidate (from an index entry) serves this platform: `None` if it cannot run here,
    /// higher is better.
    pub(crate) fn score(&self, os: &str, architecture: &str, variant: Option<&str>) -> Option<u32> {
        if !os.eq_ignore_ascii_case(&self.os) {
            return None;
        }
        let (want_arch, want_variant) = normalize(&self.architecture, self.variant.as_deref());
        let (arch, variant) = normalize(architecture, variant);
        if want_arch != arch {
            return None;
        }
        match (want_variant, variant) {
            (None, _) => Some(100),
            (Some(w), Some(v)) if w == v => Some(100),
            // 32-bit arm runs older variants: v7 runs v6 and v5, preferring the newest.
            (Some(w), Some(v)) if arch == "arm" => {
                let (w, v) = (arm_level(&w)?, arm_level(&v)?);
                (v < w).then(|| 100 - (w - v))
            }
            // An index entry without a variant is a fallback for any variant of the architecture.
            (Some(_), None) => Some(50),
            _ => None,
        }
    }

    /// Picks the best manifest descriptor for this platform; ties go to the first in index order.
    pub(crate) fn select<'a>(&self, manifests: &'a [Descriptor]) -> Option<&'a Descriptor> {
        let mut best: Option<(u32, &Descriptor)> = None;
        for descriptor in manifests {
            let Some(p) = descriptor.platform() else {
                continue;
            };
            let score = self.score(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            );
            if let Some(score) = score {
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, descriptor));
                }
            }
        }
        best.map(|(_, d)| d)
    }
}

fn arm_level(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

/// containerd's normalization: arm64 has implicit variant v8, amd64 implicit v1, aliases folded.
fn normalize(architecture: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = architecture.to_ascii_lowercase();
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(str::to_ascii_lowercase);
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), variant.filter(|v| v != "v1")),
        "i386" | "386" => ("386".into(), None),
        "aarch64" | "arm64" => (
            "arm64".into(),
            Some(variant.filter(|v| v != "8").unwrap_or_else(|| "v8".into())),
        ),
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => (
            "arm".into(),
            Some(match variant.as_deref() {
                None | Some("7") => "v7".into(),
                Some("5") => "v5".into(),
                Some("6") => "v6".into(),
                Some("8") => "v8".into(),
                Some(v) => v.to_string(),
            }),
        ),
        _ => (arch, variant),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = RegistryError;

    /// `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| RegistryError::InvalidPlatform {
            platform: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid("empty component"));
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: Some(variant.to_ascii_lowercase()),
            }),
            _ => Err(invalid("expected os/architecture[/variant]")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn host_platform_is_linux() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.architecture, "amd64");
            assert_eq!(host.variant, None);
        }
        assert!(host
            .score("linux", &host.architecture, host.variant.as_deref())
            .is_some());
    }

    #[test]
    fn matching() {
        let amd64 = p("linux/amd64");
        assert!(amd64.score("linux", "amd64", None).is_some());
        assert!(amd64.score("linux", "amd64", Some("v3")).is_some());
        assert!(amd64.score("windows", "amd64", None).is_none());
        assert!(amd64.score("linux", "arm64", None).is_none());

        let arm64 = p("linux/arm64/v8");
        assert!(arm64.score("linux", "arm64", None).is_some());
        assert!(arm64.score("linux", "aarch64", Some("v8")).is_some());
        assert_eq!(
            arm64.score("linux", "arm64", Some("v8")),
            arm64.score("linux", "arm64", None)
        );
        assert!(p("linux/arm64")
            .score("linux", "arm64", Some("v8"))
            .is_some());

        let armv7 = p("linux/arm/v7");
        assert!(armv7.score("linux", "arm", Some("v7")) > armv7.score("linux", "arm", Some("v6")));
        assert!(armv7.score("linux", "arm", Some("v6")) > armv7.score("linux", "arm", Some("v5")));
        assert!(armv7.score("linux", "arm", Some("v8")).is_none());
        assert!(p("linux/arm/v6")
            .score("linux", "arm", Some("v7"))
            .is_none());
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/amd64").variant, None);
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn selects_best_in_index_order() {
        let json = r#"[
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
           "digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",
           "platform":{"os":"linux","architecture":"arm","variant":"v6"}},
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
           "digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222",
           "platform":{"os":"linux","architecture":"arm","variant":"v7"}},
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
           "digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333",
           "platform":{"os":"linux","architecture":"amd64"}},
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
           "digest":"sha256:4444444444444444444444444444444444444444444444444444444444444444",
           "platform":{"os":"linux","architecture":"amd64"}},
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
           "digest":"sha256:5555555555555555555555555555555555555555555555555555555555555555",
           "platform":{"os":"linux","architecture":"arm64","variant":"v8"}}
        ]"#;
        let manifests: Vec<Descriptor> = serde_json::from_str(json).unwrap();
        let pick = |s: &str| {
            p(s).select(&manifests)
                .map(|d| d.digest().digest()[..1].to_string())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("3"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("2"));
        assert_eq!(pick("linux/arm/v6").as_deref(), Some("1"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("5"));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("windows/amd64"), None);
    }
}
