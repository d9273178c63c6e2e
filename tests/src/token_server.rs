//! A Docker registry token server (the "Bearer" realm of distribution's `auth.token`): checks
//! Basic credentials (GET) or an OAuth2 password / refresh-token grant (POST) and issues ES256
//! JWTs that distribution 2.8 verifies against the certificate bundle the kit writes for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::server::{respond, BackgroundServer, HandlerFuture, HandlerResult};

/// The `service` (JWT audience) the kit's registries are configured with.
pub const TOKEN_SERVICE: &str = "skiff-test-registry";
/// The JWT issuer the kit's registries trust.
pub const TOKEN_ISSUER: &str = "skiff-test-token-issuer";
/// Lifetime of issued tokens (`expires_in`).
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// One request the token server answered, for assertions on caching and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// "GET" (Basic credentials) or "POST" (OAuth2 form).
    pub method: String,
    /// The authenticated user, `None` for anonymous requests.
    pub user: Option<String>,
    /// Requested scopes, e.g. `repository:app:pull,push`.
    pub scopes: Vec<String>,
    /// HTTP status answered (200, or 401 for bad credentials).
    pub status: u16,
}

struct TokenIssuer {
    user: String,
    password: String,
    key: EcdsaKeyPair,
    key_id: String,
    rng: SystemRandom,
    requests: AtomicUsize,
    log: Mutex<Vec<TokenRequest>>,
    refresh_token: String,
}

/// The running token server. Dropping it stops it.
pub struct TokenServer {
    server: BackgroundServer,
    issuer: Arc<TokenIssuer>,
    cert_pem: String,
}

impl TokenServer {
    /// Starts a token server accepting `user` / `password` on a free 127.0.0.1 port.
    pub fn start(user: &str, password: &str) -> Result<Self> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generate ES256 key")?;
        let mut params = rcgen::CertificateParams::new(vec![TOKEN_ISSUER.to_string()])
            .context("certificate parameters")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, TOKEN_ISSUER);
        let cert = params
            .self_signed(&key_pair)
            .context("self-sign token certificate")?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("load ES256 key into ring: {e}"))?;
        let issuer = Arc::new(TokenIssuer {
            user: user.to_string(),
            password: password.to_string(),
            key,
            key_id: libtrust_key_id(&rcgen::PublicKeyData::subject_public_key_info(&key_pair)),
            rng,
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            refresh_token: format!("skiff-refresh-{}", hex::encode(random_bytes(16))),
        });
        let handler_issuer = issuer.clone();
        let server = BackgroundServer::start(
            "skiff-token-server",
            Arc::new(move |req| -> HandlerFuture {
                let issuer = handler_issuer.clone();
                Box::pin(async move { issuer.handle(req).await })
            }),
        )?;
        Ok(Self {
            server,
            issuer,
            cert_pem: cert.pem(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The realm URL registries send clients to: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr())
    }

    /// PEM of the self-signed certificate whose key signs the tokens (`rootcertbundle`).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The libtrust key id put in the JWT `kid` header.
    pub fn key_id(&self) -> &str {
        &self.issuer.key_id
    }

    /// How many token requests were answered (any outcome), to check client-side caching.
    pub fn requests(&self) -> usize {
        self.issuer.requests.load(Ordering::SeqCst)
    }

    /// Every token request answered so far, oldest first.
    pub fn request_log(&self) -> Vec<TokenRequest> {
        self.issuer.log.lock().expect("token log lock").clone()
    }

    /// Mints a token directly (no request counted), granting `access` = [(repository, actions)].
    pub fn issue_token(&self, subject: &str, access: &[(&str, &[&str])]) -> String {
        let access = access
            .iter()
            .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
            .collect();
        self.issuer.sign(subject, access)
    }

    /// Fetches a token for `scopes` like a client (GET with Basic credentials when given).
    pub fn fetch_token(&self, scopes: &[&str], creds: Option<(&str, &str)>) -> Result<String> {
        let mut url = format!("{}?service={TOKEN_SERVICE}", self.realm());
        for scope in scopes {
            url.push_str("&scope=");
            url.push_str(
                &url::form_urlencoded::byte_serialize(scope.as_bytes()).collect::<String>(),
            );
        }
        let basic;
        let mut headers = Vec::new();
        if let Some((user, password)) = creds {
            basic = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
            headers.push(("Authorization", basic.as_str()));
        }
        let response = crate::http_client::http_get(&url, &headers)?;
        anyhow::ensure!(
            response.status == 200,
            "token server answered {}: {}",
            response.status,
            response.body_text()
        );
        let body: serde_json::Value =
            serde_json::from_slice(&response.body).context("token response is not JSON")?;
        body["token"]
            .as_str()
            .map(str::to_string)
            .context("token response has no `token`")
    }
}

impl TokenIssuer {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HandlerResult {
        if req.uri().path() != "/token" {
            return respond(404, "text/plain", "not found");
        }
        let method = req.method().as_str().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = req.into_body().collect().await?.to_bytes();

        let mut scopes = Vec::new();
        let mut form = HashMap::new();
        let (user, authenticated, refresh) = if method == "POST" {
            for (k, v) in url::form_urlencoded::parse(&body) {
                if k == "scope" {
                    scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string));
                } else {
                    form.insert(k.into_owned(), v.into_owned());
                }
            }
            match form.get("grant_type").map(String::as_str) {
                Some("password") => {
                    let user = form.get("username").cloned();
                    let ok = user.as_deref() == Some(self.user.as_str())
                        && form.get("password") == Some(&self.password);
                    (user, Some(ok), true)
                }
                Some("refresh_token") => {
                    let ok = form.get("refresh_token") == Some(&self.refresh_token);
                    (Some(self.user.clone()), Some(ok), true)
                }
                _ => (None, Some(false), false),
            }
        } else {
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                if k == "scope" {
                    scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string));
                } else {
                    form.insert(k.into_owned(), v.into_owned());
                }
            }
            match authorization.as_deref().and_then(parse_basic) {
                Some((user, password)) => {
                    let ok = user == self.user && password == self.password;
                    (Some(user), Some(ok), form.contains_key("offline_token"))
                }
                None => (None, None, false),
            }
        };

        self.requests.fetch_add(1, Ordering::SeqCst);
        let status = if authenticated == Some(false) {
            401
        } else {
            200
        };
        self.log.lock().expect("token log lock").push(TokenRequest {
            method,
            user: user.clone(),
            scopes: scopes.clone(),
            status,
        });
        if status == 401 {
            return respond(
                401,
                "application/json",
                json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]})
                    .to_string(),
            );
        }
        // Authenticated users get what they asked for; anonymous requests get no access.
        let access = if authenticated == Some(true) {
            scopes.iter().filter_map(|s| granted_access(s)).collect()
        } else {
            Vec::new()
        };
        let subject = user.unwrap_or_default();
        let token = self.sign(&subject, access);
        let mut body = json!({
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_LIFETIME_SECS,
            "issued_at": rfc3339_now(),
        });
        if refresh && authenticated == Some(true) {
            body["refresh_token"] = json!(self.refresh_token);
        }
        respond(200, "application/json", body.to_string())
    }

    fn sign(&self, subject: &str, access: Vec<serde_json::Value>) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let header = json!({"typ": "JWT", "alg": "ES256", "kid": self.key_id});
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + TOKEN_LIFETIME_SECS,
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": hex::encode(random_bytes(12)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ES256 signing");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// `repository:NAME:a,b` → the access entry granting the known actions asked for.
fn granted_access(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| matches!(*a, "pull" | "push" | "delete" | "*"))
        .collect();
    Some(json!({"type": kind, "name": name, "actions": actions}))
}

fn parse_basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// libtrust's key id: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32 (std
/// alphabet, no padding), in groups of 4 joined by ':'.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = Sha256::digest(spki_der);
    let encoded = base32_no_pad(&hash[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ascii"))
        .collect::<Vec<_>>()
        .join(":")
}

fn base32_no_pad(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    bytes
}

fn rfc3339_now() -> String {
    // Seconds precision is enough; clients only use it with expires_in.
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32_no_pad(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_no_pad(b"fo"), "MZXQ");
    }

    #[test]
    fn key_id_has_twelve_groups_of_four() {
        let id = libtrust_key_id(b"any key");
        assert_eq!(id.len(), 48 + 11);
        assert!(id.split(':').all(|g| g.len() == 4));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn grants_known_actions_only() {
        let v = granted_access("repository:a/b:pull,push,bogus").unwrap();
        assert_eq!(v["name"], "a/b");
        assert_eq!(v["actions"], json!(["pull", "push"]));
    }
}
