//! The OSS backend end to end, against a local server that stores objects and checks every
//! request's OSS signature the way OSS documents it (computed here independently with
//! HMAC-SHA1), rejecting wrongly signed requests. The client reaches the virtual-hosted
//! bucket name through its HTTP proxy setting, so the server sees absolute URLs.
//! The published signature examples are checked in `src/storage/oss.rs`.

mod common {
    pub mod attrs;
    pub mod commands;
    pub mod files;
    pub mod http;
    pub mod ours;
    pub mod output;
    pub mod privileged;
    pub mod sample;
    pub mod scratch;
}

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use common::http::*;
use common::{commands::*, output::*, sample::*, scratch::*};
use hmac::Mac;

const KEY_ID: &str = "test-key-id";
const SECRET: &str = "test-key-secret";

/// An OSS bucket `bucket` at endpoint `oss.test`, objects by key; counts rejections.
fn start_oss(objects: HashMap<String, Vec<u8>>, rejected: Arc<AtomicUsize>) -> ScriptedServer {
    ScriptedServer::start(move |req| {
        let Some(rest) = req.path.strip_prefix("http://bucket.oss.test/") else {
            return (
                400,
                vec![],
                b"<Error><Code>InvalidURI</Code></Error>".to_vec(),
            );
        };
        let date = req.headers.get("date").cloned().unwrap_or_default();
        let text = format!("{}\n\n\n{date}\n/bucket/{rest}", req.method);
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(text.as_bytes());
        let want = format!(
            "OSS {KEY_ID}:{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        if date.is_empty() || req.headers.get("authorization") != Some(&want) {
            rejected.fetch_add(1, Ordering::SeqCst);
            return (
                403,
                vec![],
                b"<Error><Code>SignatureDoesNotMatch</Code><Message>bad signature</Message></Error>"
                    .to_vec(),
            );
        }
        match objects.get(rest) {
            Some(bytes) => ranged(req, bytes),
            None => (
                404,
                vec![],
                b"<Error><Code>NoSuchKey</Code></Error>".to_vec(),
            ),
        }
    })
}

#[test]
fn oss_serves_verify_mount_and_compaction_and_refuses_bad_keys() {
    let scratch = Scratch::new();
    let root = scratch.path();
    let src = root.join("src");
    make_tree(
        &src,
        &TreeSpec {
            sparse_size: 2_000_000,
            big_dir_entries: 300,
            ..TreeSpec::default()
        },
    );
    let blobs = root.join("blobs");
    fs::create_dir(&blobs).unwrap();
    let boot = root.join("boot");
    let o = build(&src, &boot, &blobs, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let objects: HashMap<String, Vec<u8>> = blobs_of(&blobs)
        .into_iter()
        .map(|(id, p)| (format!("layers/{id}"), fs::read(p).unwrap()))
        .collect();
    let rejected = Arc::new(AtomicUsize::new(0));
    let server = start_oss(objects, rejected.clone());
    let cfg = |secret: &str, prefix: &str| {
        serde_json::json!({"scheme": "http", "endpoint": "oss.test", "bucket_name": "bucket",
            "object_prefix": prefix, "access_key_id": KEY_ID, "access_key_secret": secret,
            "proxy": {"url": format!("http://127.0.0.1:{}", server.port)}, "retry_limit": 1})
    };
    let good = root.join("oss.json");
    fs::write(&good, cfg(SECRET, "layers/").to_string()).unwrap();

    for via in ["fuse", "library"] {
        let o = run(&[
            "verify",
            "--via",
            via,
            "-B",
            s(&boot),
            "--backend-type",
            "oss",
            "--backend-config-file",
            s(&good),
            s(&src),
        ]);
        assert_eq!(o.status.code(), Some(0), "verify via {via}: {}", text(&o));
    }
    assert_eq!(rejected.load(Ordering::SeqCst), 0);

    // Compaction reads through OSS (min_used_ratio 99 rebuilds nothing here: every chunk
    // is used; the single blob is small, but there is nothing to merge it with).
    let new = root.join("new");
    fs::create_dir(&new).unwrap();
    let out = root.join("c.boot");
    let o = run(&[
        "compact",
        "-B",
        s(&boot),
        "-D",
        s(&new),
        "--min-used-ratio",
        "99",
        "-O",
        s(&out),
        "--backend-type",
        "oss",
        "--backend-config-file",
        s(&good),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // A wrong secret is refused by the server and reported as an auth failure; a wrong
    // prefix names the missing object.
    for (name, c, expect) in [
        (
            "secret",
            cfg("wrong", "layers/"),
            "authentication failed (HTTP 403",
        ),
        ("prefix", cfg(SECRET, "other/"), "no object other/"),
    ] {
        let path = root.join(format!("{name}.json"));
        fs::write(&path, c.to_string()).unwrap();
        let o = run(&[
            "verify",
            "--via",
            "library",
            "-B",
            s(&boot),
            "--backend-type",
            "oss",
            "--backend-config-file",
            s(&path),
            s(&src),
        ]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(expect),
            "{name}: {}",
            text(&o)
        );
    }
    assert!(
        rejected.load(Ordering::SeqCst) > 0,
        "the server never saw a bad signature"
    );
}
