//! A real registry (CNCF distribution 2.8, Debian's `docker-registry`) on a free 127.0.0.1 port,
//! anonymous, with htpasswd Basic auth, or with Bearer tokens from the kit's own token server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use tempfile::TempDir;

use crate::http_client::{http_get, http_request, HttpResponse};
use crate::process::{free_port, run_ok, wait_until, ChildProcess};
use crate::token_server::{TokenServer, TOKEN_ISSUER, TOKEN_SERVICE};

/// How clients must authenticate to a `Registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No authentication.
    Anonymous,
    /// HTTP Basic against an htpasswd (bcrypt) file.
    Basic { user: String, password: String },
    /// Bearer tokens from the kit's token server, which checks these credentials.
    Bearer { user: String, password: String },
}

impl RegistryAuth {
    pub fn basic(user: &str, password: &str) -> Self {
        Self::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    pub fn bearer(user: &str, password: &str) -> Self {
        Self::Bearer {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// `(user, password)` for authenticated variants.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Self::Anonymous => None,
            Self::Basic { user, password } | Self::Bearer { user, password } => {
                Some((user, password))
            }
        }
    }
}

/// A running registry; dropping it stops the process (and token server) and removes its files.
pub struct Registry {
    process: ChildProcess,
    token_server: Option<TokenServer>,
    auth: RegistryAuth,
    port: u16,
    /// The CA certificate (PEM file) that signed the registry's TLS certificate, when it serves HTTPS.
    ca_pem: Option<PathBuf>,
    storage: PathBuf,
    dir: TempDir,
}

/// A test CA and a server certificate it signed for 127.0.0.1, as PEM files in `dir`.
struct TlsFiles {
    ca: PathBuf,
    certificate: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    fn generate(dir: &Path) -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "skiff test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let server_key = KeyPair::generate()?;
        let server =
            CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&server_key, &ca)?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            certificate: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        };
        std::fs::write(&files.ca, ca.pem())?;
        std::fs::write(&files.certificate, server.pem())?;
        std::fs::write(&files.key, server_key.serialize_pem())?;
        Ok(files)
    }
}

impl Registry {
    /// Starts `docker-registry` with its own storage and config, waiting until `/v2/` answers.
    pub fn start(auth: RegistryAuth) -> Result<Self> {
        Self::start_with(auth, false)
    }

    /// Like `start`, but the registry serves HTTPS with a certificate for 127.0.0.1 signed by a CA of
    /// its own (`ca_pem()`), which no client trusts unless told to.
    pub fn start_tls(auth: RegistryAuth) -> Result<Self> {
        Self::start_with(auth, true)
    }

    /// An anonymous plain-HTTP registry serving an existing storage directory (as another registry, or
    /// `skiff-bench corpus push`, filled it); its config and logs go to a temp dir of its own.
    pub fn serve_storage(storage: &Path) -> Result<Self> {
        if !storage.is_dir() {
            anyhow::bail!("registry storage {} is not a directory", storage.display());
        }
        Self::start_in(RegistryAuth::Anonymous, false, Some(storage))
    }

    fn start_with(auth: RegistryAuth, tls: bool) -> Result<Self> {
        Self::start_in(auth, tls, None)
    }

    fn start_in(auth: RegistryAuth, tls: bool, storage: Option<&Path>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()
            .context("create registry temp dir")?;
        let storage = match storage {
            Some(storage) => storage.to_path_buf(),
            None => dir.path().join("storage"),
        };
        std::fs::create_dir_all(&storage)?;
        let (auth_config, token_server) = match &auth {
            RegistryAuth::Anonymous => (None, None),
            RegistryAuth::Basic { user, password } => {
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, user, password)?;
                let config = json!({"htpasswd": {"realm": "skiff-test", "path": htpasswd}});
                (Some(config), None)
            }
            RegistryAuth::Bearer { user, password } => {
                let server = TokenServer::start(user, password)?;
                let bundle = dir.path().join("token-cert.pem");
                std::fs::write(&bundle, server.certificate_pem())?;
                let config = json!({"token": {
                    "realm": server.realm(),
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": bundle,
                }});
                (Some(config), Some(server))
            }
        };

        let tls = if tls {
            Some(TlsFiles::generate(dir.path())?)
        } else {
            None
        };

        // The port is picked before the registry binds it; retry if someone took it meanwhile.
        let mut last_error = None;
        for attempt in 0..5 {
            let port = free_port()?;
            let config_path = dir.path().join("config.yml");
            // JSON is YAML: serde_json does the quoting.
            let mut config = json!({
                "version": "0.1",
                "log": {"level": "warn", "accesslog": {"disabled": true}},
                "storage": {
                    "filesystem": {"rootdirectory": storage},
                    "delete": {"enabled": true},
                    "maintenance": {"uploadpurging": {"enabled": false}},
                },
                "http": {
                    "addr": format!("127.0.0.1:{port}"),
                    "secret": format!("skiff-test-secret-{port}"),
                },
                "health": {"storagedriver": {"enabled": false}},
            });
            if let Some(auth_config) = &auth_config {
                config["auth"] = auth_config.clone();
            }
            if let Some(tls) = &tls {
                config["http"]["tls"] = json!({"certificate": tls.certificate, "key": tls.key});
            }
            std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
            let log_path = dir.path().join(format!("registry-{attempt}.log"));
            let mut process = ChildProcess::spawn(
                "docker-registry",
                Command::new("docker-registry")
                    .arg("serve")
                    .arg(&config_path),
                &log_path,
            )?;
            process.set_grace(Duration::from_secs(5));
            let url = format!("http://127.0.0.1:{port}/v2/");
            let ready = wait_until(
                "docker-registry to answer /v2/",
                Duration::from_secs(20),
                || {
                    process.ensure_running()?;
                    if tls.is_some() {
                        // The kit's HTTP client speaks no TLS: a listening port is the sign of life.
                        return Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
                    }
                    Ok(http_get(&url, &[]).is_ok_and(|r| r.status == 200 || r.status == 401))
                },
            );
            match ready {
                Ok(()) => {
                    return Ok(Self {
                        process,
                        token_server,
                        auth,
                        port,
                        ca_pem: tls.map(|t| t.ca),
                        storage,
                        dir,
                    })
                }
                Err(e) => {
                    process.stop();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one attempt")).context("start docker-registry")
    }

    /// The filesystem storage root (`docker/registry/v2/...` lives below it).
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, or `https://` for a registry started with `start_tls`.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host())
    }

    /// The PEM file of the CA that signed the registry's certificate (`start_tls` only).
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca_pem.as_deref()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT/` + `repo_and_tag`, e.g. `reference("app:v1")`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host())
    }

    /// The directory holding config, logs and storage; removed on drop.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    /// `(user, password)` unless anonymous.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.credentials()
    }

    /// The token server of a Bearer registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// Token requests answered so far (0 unless Bearer).
    pub fn token_requests(&self) -> usize {
        self.token_server.as_ref().map_or(0, TokenServer::requests)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The registry's log (stdout + stderr).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `GET url()+path` with extra headers (blocking, usable from async tests); plain HTTP registries only.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
        http_get(&format!("{}{path}", self.url()), headers)
    }

    /// Pushes an OCI layout to `repo_and_tag` with this registry's credentials; returns the
    /// pushed manifest (or index) digest.
    pub fn push(&self, layout: &crate::image::OciLayout, repo_and_tag: &str) -> Result<String> {
        crate::skopeo::push_layout(layout, &self.host(), repo_and_tag, self.credentials())
    }

    /// Stores `manifest` (raw JSON of `media_type`) under `repo:tag`, as a client's push would; an
    /// anonymous plain-HTTP registry only. Returns the manifest's digest as the registry reports it.
    pub fn put_manifest(
        &self,
        repo_and_tag: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> Result<String> {
        let (repo, tag) = repo_and_tag
            .rsplit_once(':')
            .with_context(|| format!("{repo_and_tag} is not repo:tag"))?;
        let url = format!("{}/v2/{repo}/manifests/{tag}", self.url());
        let response = http_request("PUT", &url, &[("Content-Type", media_type)], manifest)?;
        anyhow::ensure!(
            response.status == 201,
            "PUT {url}: {} {}",
            response.status,
            response.body_text()
        );
        response
            .header("docker-content-digest")
            .map(str::to_owned)
            .with_context(|| format!("PUT {url}: no Docker-Content-Digest"))
    }

    /// The raw manifest (or index) stored under `repo_and_tag` / `repo@digest`, via skopeo.
    pub fn raw_manifest(&self, reference: &str) -> Result<Vec<u8>> {
        crate::skopeo::inspect_raw(&format!("{}/{reference}", self.host()), self.credentials())
    }
}

/// Writes an htpasswd file with one bcrypt entry (docker-registry accepts bcrypt only).
fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<()> {
    let line = run_ok(Command::new("htpasswd").args(["-nbB", user, password]))
        .context("htpasswd (apache2-utils) to make a bcrypt entry")?;
    std::fs::write(path, line.trim_end().to_string() + "\n")
        .with_context(|| format!("write {}", path.display()))
}
