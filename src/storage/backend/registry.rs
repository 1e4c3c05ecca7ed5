//! The `registry` backend: blobs of an OCI distribution registry, fetched by digest with
//! HTTP Range requests (`GET /v2/REPO/blobs/sha256:ID`).
//!
//! Authentication follows the registry's challenge: anonymous first; on 401 with
//! `WWW-Authenticate: Basic` the configured credentials are sent; with `Bearer realm=...,
//! service=..., scope=...` a token is fetched from the realm (with the credentials, if
//! any) and sent as `Authorization: Bearer`. The accepted header is reused. Connections
//! are pooled; transient failures (5xx, resets, timeouts) are retried with exponential
//! backoff up to `retry_limit` times. Redirects (blob storage behind the registry) are
//! followed without the registry's credentials.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use serde::Deserialize;

use super::http::{send_with_retries, HttpOptions, Refusal};
use super::{Backend, BackendError, ConfigError};

/// Upstream's registry configuration (fields this backend does not use are accepted).
#[derive(Clone, Debug, Deserialize)]
pub struct RegistryConfig {
    /// `https` (default) or `http`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Registry host, with port if any.
    pub host: String,
    /// Repository, e.g. `library/ubuntu`.
    pub repo: String,
    /// base64 of `user:password`.
    #[serde(default)]
    pub auth: Option<String>,
    /// A bearer token to start with.
    #[serde(default)]
    pub registry_token: Option<String>,
    /// Timeouts, retries, proxy, TLS.
    #[serde(flatten)]
    pub http: HttpOptions,
}

fn default_scheme() -> String {
    "https".into()
}

/// An OCI registry.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    agent: ureq::Agent,
    credentials: Option<(String, String)>,
    /// The Authorization header the registry last accepted.
    authorization: Mutex<Option<String>>,
    sizes: super::http::SizeCache,
}

impl Registry {
    /// A registry client for `config`.
    pub fn new(config: RegistryConfig) -> Result<Self, ConfigError> {
        let bad = |what: &str| ConfigError::Invalid {
            kind: "registry",
            what: what.to_string(),
        };
        if config.host.trim().is_empty() || config.repo.trim().is_empty() {
            return Err(bad("needs \"host\" and \"repo\""));
        }
        if !matches!(config.scheme.as_str(), "http" | "https") {
            return Err(bad(&format!(
                "scheme {:?}: use http or https",
                config.scheme
            )));
        }
        let credentials = match config.auth.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a)
                    .map_err(|_| bad("\"auth\" is not base64 of user:password"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| bad("\"auth\" is not UTF-8 user:password"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| bad("\"auth\" must encode user:password"))?;
                Some((u.to_string(), p.to_string()))
            }
        };
        let builder = config
            .http
            .agent_builder("registry")?
            .redirects(5)
            .redirect_auth_headers(ureq::RedirectAuthHeaders::Never);
        let authorization = config
            .registry_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}"));
        Ok(Registry {
            agent: builder.build(),
            credentials,
            authorization: Mutex::new(authorization),
            sizes: Default::default(),
            config,
        })
    }

    fn url(&self, blob_id: &str) -> String {
        format!(
            "{}://{}/v2/{}/blobs/sha256:{blob_id}",
            self.config.scheme, self.config.host, self.config.repo
        )
    }

    /// Sends `method` for the blob, authenticating on demand and retrying transient
    /// failures; returns the successful response.
    fn send(
        &self,
        method: &str,
        blob_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<ureq::Response, BackendError> {
        if blob_id.len() != 64 || !blob_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error(
                blob_id,
                "a registry blob id must be a sha256 digest (64 hex digits)".into(),
            ));
        }
        let url = self.url(blob_id);
        let mut authenticated = false;
        let send = || {
            let mut req = self.agent.request(method, &url);
            if let Some(a) = self.authorization.lock().expect("auth lock").clone() {
                req = req.set("Authorization", &a);
            }
            if let Some((start, end)) = range {
                req = req.set("Range", &format!("bytes={start}-{end}"));
            }
            req.call().map_err(Box::new)
        };
        let refused = |code: u16, resp: ureq::Response| match code {
            401 if !authenticated => {
                authenticated = true;
                let challenge = resp.header("WWW-Authenticate").unwrap_or("").to_string();
                match self.answer(blob_id, &challenge) {
                    Ok(header) => {
                        *self.authorization.lock().expect("auth lock") = Some(header);
                        Refusal::Again
                    }
                    Err(e) => Refusal::Fail(e.what),
                }
            }
            401 | 403 => Refusal::Fail(format!(
                "authentication failed (HTTP {code}){}",
                if self.credentials.is_none() {
                    ": the registry wants credentials (\"auth\")"
                } else {
                    ": check the credentials in \"auth\""
                }
            )),
            404 => Refusal::Fail(format!("not found in the registry ({url})")),
            _ => Refusal::Fail(format!("HTTP {code} {} from {url}", resp.status_text())),
        };
        send_with_retries(self.config.http.retry_limit, "the registry", send, refused)
            .map_err(|what| self.error(blob_id, what))
    }

    /// The Authorization header answering a 401 challenge.
    fn answer(&self, blob_id: &str, challenge: &str) -> Result<String, BackendError> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let params = parse_challenge(params);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let (u, p) = self.credentials.as_ref().ok_or_else(|| {
                    self.error(
                        blob_id,
                        "authentication failed (HTTP 401): the registry wants credentials (\"auth\")"
                            .into(),
                    )
                })?;
                Ok(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    self.error(
                        blob_id,
                        format!("bearer challenge without a realm: {challenge:?}"),
                    )
                })?;
                let mut req = self.agent.get(realm);
                for key in ["service", "scope"] {
                    if let Some(v) = params.get(key) {
                        req = req.query(key, v);
                    }
                }
                if let Some((u, p)) = &self.credentials {
                    req = req.set(
                        "Authorization",
                        &format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                        ),
                    );
                }
                let resp = req.call().map_err(|e| match e {
                    ureq::Error::Status(code, _) => self.error(
                        blob_id,
                        format!(
                            "authentication failed: token service {realm} answered HTTP {code}"
                        ),
                    ),
                    ureq::Error::Transport(t) => {
                        self.error(blob_id, format!("token service {realm}: {t}"))
                    }
                })?;
                let body: serde_json::Value = resp.into_json().map_err(|e| {
                    self.error(blob_id, format!("token service {realm}: not JSON: {e}"))
                })?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        self.error(
                            blob_id,
                            format!("token service {realm}: no token in its answer"),
                        )
                    })?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(self.error(
                blob_id,
                format!("authentication failed: unknown challenge {challenge:?}"),
            )),
        }
    }
}

/// `realm="https://auth",service="registry",scope="repository:x:pull"` as a map.
fn parse_challenge(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

impl Backend for Registry {
    fn describe(&self) -> String {
        format!(
            "registry {}://{}/{}",
            self.config.scheme, self.config.host, self.config.repo
        )
    }

    fn size(&self, blob_id: &str) -> Result<u64, BackendError> {
        self.sizes.get(blob_id, || self.send("HEAD", blob_id, None))
    }

    fn read_at(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64 - 1;
        let resp = self.send("GET", blob_id, Some((offset, end)))?;
        super::http::read_ranged(resp, offset, buf).map_err(|what| self.error(blob_id, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let p = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let p = parse_challenge(r#"realm="x", error="insufficient_scope""#);
        assert_eq!(p["realm"], "x");
        assert_eq!(p["error"], "insufficient_scope");
    }

    #[test]
    fn auth_must_be_base64_user_password() {
        let cfg = |auth: &str| RegistryConfig {
            scheme: "http".into(),
            host: "h".into(),
            repo: "r".into(),
            auth: Some(auth.into()),
            registry_token: None,
            http: HttpOptions::default(),
        };
        assert!(Registry::new(cfg("dXNlcjpwYXNz")).is_ok()); // user:pass
        assert!(Registry::new(cfg("not base64!")).is_err());
        assert!(Registry::new(cfg("dXNlcg==")).is_err()); // "user", no colon
    }
}
