//! A small scripted HTTP server for what a real registry or object store cannot be asked
//! to do (bearer token challenges, transient failures, signature checks), and blob
//! directory helpers for serving images.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// What a scripted server answers: status, headers, body.
pub type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// A minimal HTTP/1.1 server on 127.0.0.1 answering with `handler`; keeps connections
/// alive and counts requests and connections.
pub struct ScriptedServer {
    /// The port it listens on.
    pub port: u16,
    /// Every request received, in order.
    // Read by tests/registry.rs only (connection reuse).
    #[allow(dead_code)]
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Connections accepted.
    #[allow(dead_code)]
    pub connections: Arc<AtomicUsize>,
}

impl ScriptedServer {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (reqs, conns) = (requests.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                let (handler, reqs) = (handler.clone(), reqs.clone());
                std::thread::spawn(move || serve(stream, &*handler, &reqs));
            }
        });
        ScriptedServer {
            port,
            requests,
            connections,
        }
    }
}

fn serve(stream: TcpStream, handler: &dyn Fn(&Request) -> Reply, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if let Some(len) = headers
            .get("content-length")
            .and_then(|l| l.parse::<usize>().ok())
        {
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let req = Request {
            method: method.to_string(),
            path: path.to_string(),
            headers,
        };
        log.lock().unwrap().push(req.clone());
        let (status, extra, body) = handler(&req);
        if status == 0 {
            return; // drop the connection: a reset
        }
        let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if req.method != "HEAD" && out.write_all(&body).is_err() {
            return;
        }
    }
}

/// Serves `bytes` for a GET with an optional `Range: bytes=A-B` header.
pub fn ranged(req: &Request, bytes: &[u8]) -> Reply {
    match req
        .headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
    {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = b
                .parse::<usize>()
                .unwrap()
                .min(bytes.len().saturating_sub(1));
            if a >= bytes.len() {
                return (416, vec![], vec![]);
            }
            (206, vec![], bytes[a..=b].to_vec())
        }
        None => (200, vec![], bytes.to_vec()),
    }
}

/// A blob directory's files as (id, bytes).
pub fn blobs_of(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_str().unwrap().to_string(), p))
        .collect();
    out.sort();
    out
}
