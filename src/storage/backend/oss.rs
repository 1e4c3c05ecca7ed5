//! The `oss` backend: blobs as objects of an Alibaba Cloud OSS bucket, fetched with signed
//! GET requests carrying a Range header.
//!
//! Objects are `{object_prefix}{blob_id}` in `bucket_name`, at
//! `{scheme}://{bucket_name}.{endpoint}/{key}`. Requests are signed as OSS publishes
//! (header signature, version 1): `Authorization: OSS {access_key_id}:{signature}`,
//! signature = base64(HMAC-SHA1(access_key_secret, string-to-sign)), where the
//! string-to-sign is `VERB\nContent-MD5\nContent-Type\nDate\n` followed by the
//! canonicalized `x-oss-*` headers (lowercase, sorted, `name:value\n` each) and the
//! canonicalized resource `/{bucket}/{key}`. The Range header is not signed.

use std::time::SystemTime;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;

use super::http::{send_with_retries, HttpOptions, Refusal};
use super::{Backend, BackendError, ConfigError};

/// Upstream's OSS configuration.
#[derive(Clone, Debug, Deserialize)]
pub struct OssConfig {
    /// `https` (default) or `http`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// e.g. `oss-cn-hangzhou.aliyuncs.com`.
    pub endpoint: String,
    /// The bucket.
    pub bucket_name: String,
    /// Prepended to blob ids to name objects.
    #[serde(default)]
    pub object_prefix: String,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: String,
    /// Access key secret.
    #[serde(default)]
    pub access_key_secret: String,
    /// Timeouts, retries, proxy, TLS.
    #[serde(flatten)]
    pub http: HttpOptions,
}

fn default_scheme() -> String {
    "https".into()
}

/// The OSS header signature of a request: base64(HMAC-SHA1(secret, string-to-sign)).
/// `oss_headers` are the request's `x-oss-*` headers in any order and case.
pub fn signature(
    secret: &str,
    verb: &str,
    content_md5: &str,
    content_type: &str,
    date: &str,
    oss_headers: &[(&str, &str)],
    resource: &str,
) -> String {
    let mut headers: Vec<(String, &str)> = oss_headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    headers.sort();
    let mut text = format!("{verb}\n{content_md5}\n{content_type}\n{date}\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}:{v}\n"));
    }
    text.push_str(resource);
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) for `t`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// An OSS bucket.
#[derive(Debug)]
pub struct Oss {
    config: OssConfig,
    agent: ureq::Agent,
    sizes: super::http::SizeCache,
}

impl Oss {
    /// A client for `config`.
    pub fn new(config: OssConfig) -> Result<Self, ConfigError> {
        let bad = |what: String| ConfigError::Invalid { kind: "oss", what };
        if config.endpoint.trim().is_empty() || config.bucket_name.trim().is_empty() {
            return Err(bad("needs \"endpoint\" and \"bucket_name\"".into()));
        }
        if !matches!(config.scheme.as_str(), "http" | "https") {
            return Err(bad(format!(
                "scheme {:?}: use http or https",
                config.scheme
            )));
        }
        let agent = config.http.agent_builder("oss")?.redirects(0).build();
        Ok(Oss {
            agent,
            sizes: Default::default(),
            config,
        })
    }

    fn key(&self, blob_id: &str) -> String {
        format!("{}{blob_id}", self.config.object_prefix)
    }

    fn send(
        &self,
        verb: &str,
        blob_id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<ureq::Response, BackendError> {
        if blob_id.is_empty() || blob_id.contains('/') {
            return Err(self.error(blob_id, "not a usable blob id".into()));
        }
        let key = self.key(blob_id);
        let url = format!(
            "{}://{}.{}/{key}",
            self.config.scheme, self.config.bucket_name, self.config.endpoint
        );
        let resource = format!("/{}/{key}", self.config.bucket_name);
        // Each attempt is signed afresh: the signature covers the Date header.
        let send = || {
            let date = http_date(SystemTime::now());
            let sig = signature(
                &self.config.access_key_secret,
                verb,
                "",
                "",
                &date,
                &[],
                &resource,
            );
            let mut req = self.agent.request(verb, &url).set("Date", &date).set(
                "Authorization",
                &format!("OSS {}:{sig}", self.config.access_key_id),
            );
            if let Some((a, b)) = range {
                req = req.set("Range", &format!("bytes={a}-{b}"));
            }
            req.call().map_err(Box::new)
        };
        let refused = |code: u16, resp: ureq::Response| {
            let body = resp.into_string().unwrap_or_default();
            Refusal::Fail(match code {
                401 | 403 => format!(
                    "authentication failed (HTTP {code}{}): check access_key_id and access_key_secret",
                    xml_field(&body, "Code").map(|c| format!(" {c}")).unwrap_or_default()
                ),
                404 => format!("no object {key} in the bucket"),
                _ => format!(
                    "HTTP {code} {} from {url}",
                    xml_field(&body, "Message").unwrap_or_default()
                ),
            })
        };
        send_with_retries(self.config.http.retry_limit, "the endpoint", send, refused)
            .map_err(|what| self.error(blob_id, what))
    }
}

/// The text of `<name>...</name>` in an OSS error document.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))?;
    Some(body[start..start + end].to_string())
}

impl Backend for Oss {
    fn describe(&self) -> String {
        format!(
            "oss {}://{}.{}/{}",
            self.config.scheme,
            self.config.bucket_name,
            self.config.endpoint,
            self.config.object_prefix
        )
    }

    fn size(&self, blob_id: &str) -> Result<u64, BackendError> {
        self.sizes.get(blob_id, || self.send("HEAD", blob_id, None))
    }

    fn read_at(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        if buf.is_empty() {
            return Ok(());
        }
        let resp = self.send(
            "GET",
            blob_id,
            Some((offset, offset + buf.len() as u64 - 1)),
        )?;
        super::http::read_ranged(resp, offset, buf).map_err(|what| self.error(blob_id, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Alibaba Cloud's published examples (OSS API reference, "signature in the header" and
    // "signature in the URL"), with their example keys.
    const ID: &str = "44CF9590006BF252F707";
    const SECRET: &str = "OtxrzxIsfpFjA7SwPzILwy8Bw21TLhquhboDYROV";

    #[test]
    fn published_signature_examples() {
        let date = "Thu, 17 Nov 2005 18:49:58 GMT";
        assert_eq!(
            signature(
                SECRET,
                "PUT",
                "ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=",
                "text/html",
                date,
                // Given out of order and in mixed case: canonicalization sorts and lowers.
                &[
                    ("X-OSS-Meta-Author", "foo@bar.com"),
                    ("X-OSS-Magic", "abracadabra")
                ],
                "/oss-example/nelson",
            ),
            "26NBxoKdsyly4EDv6inkoDft/yA="
        );
        assert_eq!(
            signature(SECRET, "PUT", "", "", date, &[], "/"),
            "PPaaX3Rt4ntpD31O9aqkyCf2pd4="
        );
        assert_eq!(
            signature(
                SECRET,
                "PUT",
                "",
                "application/x-www-form-urlencoded",
                date,
                &[],
                "/"
            ),
            "HPW2mvmSOvwZ3J7wuyO751PIUkc="
        );
        // URL signatures put Expires where the date goes.
        assert_eq!(
            signature(
                SECRET,
                "GET",
                "",
                "",
                "1141889120",
                &[],
                "/oss-example/oss-api.pdf"
            ),
            "EwaNTn1erJGkimiJ9WmXgwnANLc="
        );
        let _ = ID;
    }

    #[test]
    fn http_dates() {
        let at = |s: u64| http_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(1_132_253_398), "Thu, 17 Nov 2005 18:49:58 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
