//! A real OCI registry for tests: Debian's docker-registry (distribution 2.8) storing
//! under a temporary directory, with optional basic auth and TLS.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running docker-registry, killed on drop.
pub struct RealRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// `user:password` it accepts, if it wants any.
    pub credentials: Option<(String, String)>,
}

impl RealRegistry {
    /// Starts a registry storing under `dir`; with `credentials`, htpasswd (bcrypt) basic
    /// auth is required.
    pub fn start(dir: &Path, credentials: Option<(&str, &str)>) -> Self {
        Self::start_with(dir, credentials, false)
    }

    /// Like `start`; with `tls`, it serves HTTPS with a fresh self-signed certificate.
    pub fn start_with(dir: &Path, credentials: Option<(&str, &str)>, tls: bool) -> Self {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.join("data").display()
        );
        if let Some((u, p)) = credentials {
            let o = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (package apache2-utils)");
            assert!(o.status.success());
            std::fs::write(dir.join("htpasswd"), o.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        if tls {
            let o = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=nydus-test-registry", "-keyout"])
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .output()
                .expect("openssl");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let addr = format!("  addr: {host}\n");
            let with_tls = format!(
                "{addr}  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            );
            cfg = cfg.replacen(&addr, &with_tls, 1);
        }
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry (package docker-registry; scripts/setup installs it)");
        let me = RealRegistry {
            child,
            host,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&me.host).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    fn auth(&self, req: ureq::Request) -> ureq::Request {
        match &self.credentials {
            Some((u, p)) => {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                req.set("Authorization", &format!("Basic {b}"))
            }
            None => req,
        }
    }

    /// Pushes `file` as a blob of `repo` through the distribution API; returns its id.
    pub fn push(&self, repo: &str, file: &Path) -> String {
        use sha2::Digest;
        let data = std::fs::read(file).unwrap();
        let id = hex::encode(sha2::Sha256::digest(&data));
        let start = self
            .auth(ureq::post(&format!(
                "http://{}/v2/{repo}/blobs/uploads/",
                self.host
            )))
            .call()
            .expect("start upload");
        let location = start
            .header("Location")
            .expect("upload location")
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = if location.starts_with("http") {
            location.clone()
        } else {
            format!("http://{}{location}", self.host)
        };
        let put = self
            .auth(ureq::put(&format!("{url}{sep}digest=sha256:{id}")))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(&data)
            .expect("finish upload");
        assert_eq!(put.status(), 201);
        id
    }

    /// The backend configuration for `repo` (with `auth` as given).
    pub fn config(&self, repo: &str, auth: Option<(&str, &str)>) -> serde_json::Value {
        use base64::Engine;
        let mut v = serde_json::json!({"scheme": "http", "host": self.host, "repo": repo,
            "timeout": 10, "retry_limit": 2});
        if let Some((u, p)) = auth {
            v["auth"] = base64::engine::general_purpose::STANDARD
                .encode(format!("{u}:{p}"))
                .into();
        }
        v
    }
}

impl Drop for RealRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
