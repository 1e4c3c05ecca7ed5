#!/usr/bin/env python3
"""A slow link in front of a registry, for bench/lazy.sh.

Forwards GET and HEAD requests (keep-alive, Range, any number of connections at once)
to an upstream HTTP server, after adding a fixed delay to each request, and sends the
response bodies through one bandwidth cap shared by all connections, as one link would.
Counts requests and body bytes sent:
  GET /__stats   {"requests": N, "bytes": N} (not counted, not delayed)
  GET /__reset   sets both to zero
Usage: proxy.py --upstream HOST:PORT [--listen 127.0.0.1:0] [--latency-ms 20]
                [--rate-mbps 40] [--port-file FILE]
The port it listens on is written to --port-file (and stdout) once it listens.
"""

import argparse
import http.client
import http.server
import json
import os
import sys
import threading
import time

# Headers that belong to one connection, not to the message (RFC 9110 7.6.1).
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade",
}
PIECE = 64 * 1024


class Link:
    """The shared bandwidth cap and the counters."""

    def __init__(self, rate_bytes_per_s):
        self.rate = rate_bytes_per_s
        self.lock = threading.Lock()
        self.free_at = 0.0  # when the link has sent everything queued so far
        self.requests = 0
        self.bytes = 0

    def count_request(self):
        with self.lock:
            self.requests += 1

    def send(self, n):
        """Waits until n more bytes would have crossed the link, and counts them."""
        with self.lock:
            self.bytes += n
            if self.rate <= 0:
                return
            start = max(time.monotonic(), self.free_at)
            self.free_at = start + n / self.rate
            done = self.free_at
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def stats(self):
        with self.lock:
            return {"requests": self.requests, "bytes": self.bytes}

    def reset(self):
        with self.lock:
            self.requests = 0
            self.bytes = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, fmt, *args):  # quiet
        pass

    def reply_json(self, value):
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def upstream(self, fresh=False):
        conn = getattr(self, "_upstream", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(self.server.upstream, timeout=60)
            self._upstream = conn
        return conn

    def forward(self):
        link = self.server.link
        if self.path == "/__stats":
            return self.reply_json(link.stats())
        if self.path == "/__reset":
            link.reset()
            return self.reply_json(link.stats())
        link.count_request()
        time.sleep(self.server.latency)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}
        }
        headers["Host"] = self.server.upstream
        for attempt in (0, 1):
            conn = self.upstream(fresh=attempt > 0)
            try:
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                break
            except (http.client.HTTPException, OSError):
                if attempt:
                    raise
        length = resp.getheader("Content-Length")
        body = None
        if self.command != "HEAD" and length is None:
            body = resp.read()  # chunked or until close: small replies only
            length = str(len(body))
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if self.command == "HEAD":
            resp.read()
            return
        if body is not None:
            link.send(len(body))
            self.wfile.write(body)
            return
        left = int(length)
        while left > 0:
            piece = resp.read(min(PIECE, left))
            if not piece:
                raise OSError("upstream closed the body early")
            link.send(len(piece))
            self.wfile.write(piece)
            left -= len(piece)
        if resp.will_close:
            self.upstream(fresh=True)

    do_GET = forward
    do_HEAD = forward


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many connections may open at once


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--latency-ms", type=float, default=20)
    ap.add_argument("--rate-mbps", type=float, default=40, help="MB/s (10^6 bytes); 0: no cap")
    ap.add_argument("--port-file")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    server = Server((host, int(port)), Handler)
    server.upstream = a.upstream
    server.latency = a.latency_ms / 1000
    server.link = Link(a.rate_mbps * 1e6)
    port = server.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.rename(a.port_file + ".tmp", a.port_file)
    print(port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
