//! HTTP transport shared by the remote backends (`registry`, `oss`): upstream's common
//! settings (timeouts, retries, proxy, TLS verification), retry backoff, ranged reads
//! and the size cache.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{BackendError, ConfigError};

/// Settings every remote backend takes, in upstream's shape.
#[derive(Clone, Debug, Deserialize)]
pub struct HttpOptions {
    /// Accept any TLS certificate.
    #[serde(default)]
    pub skip_verify: bool,
    /// Seconds per request (0: none).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Seconds to connect (0: none).
    #[serde(default = "default_timeout")]
    pub connect_timeout: u64,
    /// Retries of a failed request.
    #[serde(default)]
    pub retry_limit: u8,
    /// HTTP proxy.
    #[serde(default)]
    pub proxy: ProxyConfig,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            skip_verify: false,
            timeout: default_timeout(),
            connect_timeout: default_timeout(),
            retry_limit: 0,
            proxy: ProxyConfig::default(),
        }
    }
}

/// Proxy settings (upstream's shape; `url` empty means none).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProxyConfig {
    /// Proxy URL, e.g. `http://127.0.0.1:3128`.
    #[serde(default)]
    pub url: String,
}

fn default_timeout() -> u64 {
    5
}

impl HttpOptions {
    /// An agent builder with these settings: pooled connections, timeouts, proxy, TLS.
    pub(crate) fn agent_builder(
        &self,
        kind: &'static str,
    ) -> Result<ureq::AgentBuilder, ConfigError> {
        let mut builder = ureq::AgentBuilder::new().max_idle_connections_per_host(8);
        if self.timeout > 0 {
            builder = builder.timeout(Duration::from_secs(self.timeout));
        }
        if self.connect_timeout > 0 {
            builder = builder.timeout_connect(Duration::from_secs(self.connect_timeout));
        }
        if !self.proxy.url.is_empty() {
            let proxy = ureq::Proxy::new(&self.proxy.url).map_err(|e| ConfigError::Invalid {
                kind,
                what: format!("proxy {:?}: {e}", self.proxy.url),
            })?;
            builder = builder.proxy(proxy);
        }
        if self.skip_verify {
            builder = builder.tls_config(Arc::new(insecure_tls()));
        }
        Ok(builder)
    }
}

/// What to do about an HTTP status that is not a transient failure.
pub(crate) enum Refusal {
    /// Send again at once, not counted as a retry (after fixing authentication).
    Again,
    /// Give up with this message.
    Fail(String),
}

/// Sends a request with `send` until it succeeds: transient failures (5xx, 429, resets,
/// timeouts) are retried up to `retry_limit` times with backoff; other statuses go to
/// `refused`. `who` names the server in messages ("the registry").
pub(crate) fn send_with_retries(
    retry_limit: u8,
    who: &str,
    mut send: impl FnMut() -> Result<ureq::Response, Box<ureq::Error>>,
    mut refused: impl FnMut(u16, ureq::Response) -> Refusal,
) -> Result<ureq::Response, String> {
    let mut attempt = 0u32;
    loop {
        let transient = match send().map_err(|e| *e) {
            Ok(resp) => return Ok(resp),
            Err(ureq::Error::Status(code, resp)) if code >= 500 || code == 429 => {
                format!("HTTP {code} {}", resp.status_text())
            }
            Err(ureq::Error::Status(code, resp)) => match refused(code, resp) {
                Refusal::Again => continue,
                Refusal::Fail(what) => return Err(what),
            },
            Err(ureq::Error::Transport(t)) => t.to_string(),
        };
        if attempt >= retry_limit as u32 {
            return Err(format!(
                "{transient} (after {} attempt(s); is {who} reachable?)",
                attempt + 1
            ));
        }
        log::warn!("{who}: {transient}; retrying");
        backoff(attempt);
        attempt += 1;
    }
}

/// Waits before retry `attempt` (0-based) of a remote request: 100 ms doubling, at most 3 s.
pub(crate) fn backoff(attempt: u32) {
    let ms = (100u64 << attempt.min(5)).min(3000);
    std::thread::sleep(Duration::from_millis(ms));
}

/// Reads the answer to a ranged GET of `buf.len()` bytes at `offset` into `buf`. A server
/// that ignored the Range header (status 200) sent the whole blob: skip to `offset`.
/// A short answer means the blob is shorter than the bootstrap says.
pub(crate) fn read_ranged(resp: ureq::Response, offset: u64, buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    let whole = resp.status() == 200;
    let mut body = resp.into_reader();
    if whole && offset > 0 {
        let skipped = std::io::copy(&mut (&mut body).take(offset), &mut std::io::sink())
            .map_err(|e| format!("reading the answer: {e}"))?;
        if skipped < offset {
            return Err(format!(
                "the blob ends at 0x{skipped:x}, before 0x{offset:x}: it is shorter than the bootstrap says"
            ));
        }
    }
    let mut got = 0;
    while got < buf.len() {
        match body.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    if got < buf.len() {
        return Err(format!(
            "got {got} of {} bytes at 0x{offset:x}: the blob is shorter than the bootstrap says",
            buf.len()
        ));
    }
    Ok(())
}

/// Sizes of remote blobs, asked for once each (HEAD, `Content-Length`).
#[derive(Debug, Default)]
pub(crate) struct SizeCache(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl SizeCache {
    /// The size of `blob_id`: remembered, or read from the answer `head` gives.
    pub(crate) fn get(
        &self,
        blob_id: &str,
        head: impl FnOnce() -> Result<ureq::Response, BackendError>,
    ) -> Result<u64, BackendError> {
        if let Some(&s) = self.0.lock().expect("sizes lock").get(blob_id) {
            return Ok(s);
        }
        let resp = head()?;
        let size = resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| BackendError {
                blob_id: blob_id.to_string(),
                backend: resp.get_url().to_string(),
                what: "no Content-Length in the answer to HEAD".into(),
            })?;
        self.0
            .lock()
            .expect("sizes lock")
            .insert(blob_id.to_string(), size);
        Ok(size)
    }
}

/// TLS that accepts any certificate (`skip_verify`).
fn insecure_tls() -> rustls::ClientConfig {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AcceptAll(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAll(provider)))
        .with_no_client_auth()
}
