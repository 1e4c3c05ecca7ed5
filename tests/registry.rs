//! The registry backend against a real OCI registry (Debian's docker-registry, started on
//! 127.0.0.1 with its storage in a temporary directory; blobs pushed through the
//! distribution API), and against a scripted server for bearer tokens and transient
//! failures: mount, verify and compaction read blobs from it.

mod common {
    pub mod commands;
    pub mod files;
    pub mod http;
    pub mod ours;
    pub mod output;
    pub mod registry_server;
    pub mod scratch;
}

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::http::*;
use common::registry_server::*;
use common::{commands::*, files::*, output::*, scratch::*};

/// Two layers, the lower one mostly deleted by the upper: (layers, bootstrap, blob dir).
fn two_layers(root: &Path) -> (Vec<PathBuf>, PathBuf, PathBuf) {
    let blobs = root.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let (l1, l2) = (root.join("l1"), root.join("l2"));
    fs::create_dir_all(l1.join("d")).unwrap();
    fs::create_dir_all(l2.join("d")).unwrap();
    for i in 0..12 {
        write_file(
            &l1.join(format!("d/f{i}")),
            &data(150_000 + i * 1000, i as u64),
        );
    }
    write_file(&l1.join("big"), &data(3_000_000, 99));
    for i in 0..9 {
        write_file(&l2.join(format!("d/.wh.f{i}")), b"");
    }
    write_file(&l2.join("upper"), &data(40_000, 5));
    let b1 = root.join("b1");
    let b2 = root.join("b2");
    let o = build(&l1, &b1, &blobs, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = build(&l2, &b2, &blobs, &["--parent-bootstrap", s(&b1)]);
    assert!(o.status.success(), "{}", text(&o));
    (vec![l1, l2], b2, blobs)
}

/// `verify` of `boot` against `layers`, reading blobs from the registry described in `cfg`.
fn verify_from(boot: &Path, cfg: &Path, via: &str, layers: &[&PathBuf]) -> std::process::Output {
    let mut args = vec![
        "verify",
        "--via",
        via,
        "-B",
        s(boot),
        "--backend-type",
        "registry",
        "--backend-config-file",
        s(cfg),
    ];
    args.extend(layers.iter().map(|l| s(l)));
    run(&args)
}

fn write_cfg(path: &Path, v: &serde_json::Value) -> PathBuf {
    fs::write(path, v.to_string()).unwrap();
    path.to_path_buf()
}

#[test]
fn real_registry_with_basic_auth_serves_mount_verify_and_compaction() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let (layers, boot, blobs) = two_layers(root);
    let registry = RealRegistry::start(&root.join("registry"), Some(("alice", "s3cret")));
    for (id, path) in blobs_of(&blobs) {
        assert_eq!(registry.push("test/image", &path), id);
    }
    let cfg = write_cfg(
        &root.join("registry.json"),
        &registry.config("test/image", Some(("alice", "s3cret"))),
    );
    let backend = [
        "--backend-type",
        "registry",
        "--backend-config-file",
        s(&cfg),
    ];

    // Through FUSE (what a user sees) and through the library.
    for via in ["fuse", "library"] {
        let o = verify_from(&boot, &cfg, via, &[&layers[0], &layers[1]]);
        assert_eq!(o.status.code(), Some(0), "verify via {via}: {}", text(&o));
    }
    // A mount daemon serving from the registry.
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut args = vec!["mount", "--daemon", "-B", s(&boot)];
    args.extend(backend);
    args.push(s(&mnt));
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let read = fs::read(mnt.join("big"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(read.unwrap(), data(3_000_000, 99));

    // Compaction reads from the registry and writes new blobs locally.
    let new = root.join("new");
    fs::create_dir(&new).unwrap();
    let out = root.join("compacted.boot");
    let mut args = vec![
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&new),
        "--min-used-ratio",
        "60",
        "-O",
        s(&out),
    ];
    args.extend(backend);
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    // Kept blobs are still in the registry; fetch them next to the new ones to verify.
    for (id, path) in blobs_of(&blobs) {
        if !new.join(&id).exists() {
            fs::copy(path, new.join(&id)).unwrap();
        }
    }
    let mut args = vec!["verify", "--via", "library", "-B", s(&out), "-D", s(&new)];
    args.extend(layers.iter().map(|l| s(l)));
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Wrong password, no credentials, a repository without the blobs, a closed port.
    let cases = [
        (
            "wrong",
            registry.config("test/image", Some(("alice", "nope"))),
            "authentication failed",
        ),
        (
            "anonymous",
            registry.config("test/image", None),
            "wants credentials",
        ),
        (
            "missing",
            registry.config("other/repo", Some(("alice", "s3cret"))),
            "not found in the registry",
        ),
        (
            "down",
            {
                let mut c = registry.config("test/image", None);
                c["host"] = format!("127.0.0.1:{}", free_port()).into();
                c["retry_limit"] = 1.into();
                c
            },
            "is the registry reachable",
        ),
    ];
    for (name, c, expect) in cases {
        let cfg = write_cfg(&root.join(format!("{name}.json")), &c);
        let o = verify_from(&boot, &cfg, "library", &[&layers[0]]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(expect),
            "{name}: {}",
            text(&o)
        );
        // Compaction fails the same way, writing nothing.
        let out = root.join(format!("{name}.boot"));
        let before = blobs_of(&new).len();
        let o = run(&[
            "compact",
            "-B",
            s(&boot),
            "-D",
            s(&new),
            "--min-used-ratio",
            "60",
            "-O",
            s(&out),
            "--backend-type",
            "registry",
            "--backend-config-file",
            s(&cfg),
        ]);
        assert!(!o.status.success(), "{name}: compaction succeeded");
        assert!(!out.exists(), "{name}");
        assert_eq!(blobs_of(&new).len(), before, "{name}: blobs written");
    }
}

#[test]
fn anonymous_registry() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let (layers, boot, blobs) = two_layers(root);
    let registry = RealRegistry::start(&root.join("registry"), None);
    for (_, path) in blobs_of(&blobs) {
        registry.push("open/image", &path);
    }
    let cfg = write_cfg(&root.join("r.json"), &registry.config("open/image", None));
    let o = verify_from(&boot, &cfg, "library", &[&layers[0], &layers[1]]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn bearer_tokens_retries_and_connection_reuse() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let (layers, boot, blobs) = two_layers(root);
    let files: Vec<(String, Vec<u8>)> = blobs_of(&blobs)
        .into_iter()
        .map(|(id, p)| (id, fs::read(p).unwrap()))
        .collect();
    let token_calls = Arc::new(AtomicUsize::new(0));
    let failures_left = Arc::new(AtomicUsize::new(3));
    let server = start_token_registry(files, token_calls.clone(), failures_left.clone());
    let cfg = write_cfg(
        &root.join("bearer.json"),
        &serde_json::json!({"scheme": "http", "host": format!("127.0.0.1:{}", server.port),
            "repo": "proj/img", "auth": "Ym9iOnB3", "retry_limit": 4, "timeout": 10}),
    );
    let o = verify_from(&boot, &cfg, "library", &[&layers[0], &layers[1]]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        1,
        "the token is fetched once and reused"
    );
    let requests = server.requests.lock().unwrap().len();
    let connections = server.connections.load(Ordering::SeqCst);
    assert!(
        connections * 3 < requests,
        "{connections} connections for {requests} requests: connections are not reused"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("retrying"),
        "{}",
        text(&o)
    );
}

/// A registry that wants bearer tokens from its own `/token`, failing transiently first.
fn start_token_registry(
    files: Vec<(String, Vec<u8>)>,
    token_calls: Arc<AtomicUsize>,
    failures_left: Arc<AtomicUsize>,
) -> ScriptedServer {
    let port_cell = Arc::new(std::sync::OnceLock::<u16>::new());
    let pc = port_cell.clone();
    let server = ScriptedServer::start(move |req| {
        use base64::Engine;
        if req.path.starts_with("/token?") {
            token_calls.fetch_add(1, Ordering::SeqCst);
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("bob:pw")
            );
            if req.headers.get("authorization") != Some(&want)
                || !req.path.contains("scope=repository%3Aproj%2Fimg%3Apull")
            {
                return (401, vec![], b"bad credentials".to_vec());
            }
            return (
                200,
                vec![],
                br#"{"token":"tok-123","expires_in":300}"#.to_vec(),
            );
        }
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer tok-123") {
            let port = pc.get().copied().unwrap_or(0);
            return (
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    format!(
                        "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\",scope=\"repository:proj/img:pull\""
                    ),
                )],
                vec![],
            );
        }
        match failures_left.load(Ordering::SeqCst) {
            3 | 2 => {
                failures_left.fetch_sub(1, Ordering::SeqCst);
                return (503, vec![], vec![]);
            }
            1 => {
                failures_left.fetch_sub(1, Ordering::SeqCst);
                return (0, vec![], vec![]);
            }
            _ => {}
        }
        for (id, bytes) in &files {
            if req.path == format!("/v2/proj/img/blobs/sha256:{id}") {
                return ranged(req, bytes);
            }
        }
        (404, vec![], vec![])
    });
    port_cell.set(server.port).unwrap();
    server
}

#[test]
fn https_registry_with_a_self_signed_certificate_needs_skip_verify() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let (layers, boot, blobs) = two_layers(root);
    let store = root.join("registry");
    // Push over plain HTTP, then serve the same storage over HTTPS.
    let plain = RealRegistry::start(&store, None);
    for (_, path) in blobs_of(&blobs) {
        plain.push("tls/image", &path);
    }
    drop(plain);
    let registry = RealRegistry::start_with(&store, None, true);
    let mut c = registry.config("tls/image", None);
    c["scheme"] = "https".into();
    c["retry_limit"] = 0.into();
    let strict = write_cfg(&root.join("strict.json"), &c);
    c["skip_verify"] = true.into();
    let lax = write_cfg(&root.join("lax.json"), &c);

    let o = verify_from(&boot, &lax, "library", &[&layers[0], &layers[1]]);
    assert_eq!(o.status.code(), Some(0), "skip_verify: {}", text(&o));
    let o = verify_from(&boot, &strict, "library", &[&layers[0], &layers[1]]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{}", text(&o));
}
