"""A real S3 HTTP server on loopback for the tests: moto's server, with a proxy in front of it.

The proxy forwards every request to moto unchanged, except that it can
- deny buckets to an access key (403 AccessDenied, as an IAM policy would), and
- answer a share of media requests with 500 / 503 SlowDown or drop the connection (transient faults),
counting what it injected so tests can check the job's retry accounting.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error. Please try again.</Message></Error>")
_CREDENTIAL = re.compile(r"Credential=([^/]+)/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyS3Proxy:
    def __init__(self, upstream_port: int, seed: int = 0):
        self.upstream_port = upstream_port
        self.denied: set[tuple[str, str]] = set()  # (access key id, bucket)
        self.deny_anonymous = False  # refuse unsigned requests, as AWS does for private buckets
        self.fault_rate = 0.0
        self.fault_path = re.compile(r"$^")  # which paths may fail (a regex on "/bucket/key")
        self.faults = 0
        self.fault_kinds: dict[str, int] = {}
        self.requests: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                bucket = self.path.split("?")[0].lstrip("/").split("/")[0]
                key = _CREDENTIAL.search(self.headers.get("Authorization", ""))
                with proxy._lock:
                    proxy.requests.append(f"{self.command} {self.path}")
                    denied = (key and (key.group(1), bucket) in proxy.denied) or (not key and proxy.deny_anonymous)
                    fault = (not denied and proxy.fault_path.search(self.path.split("?")[0])
                             and proxy._rng.random() < proxy.fault_rate)
                    kind = proxy._rng.choice(["503", "500", "drop"]) if fault else None
                    if fault:
                        proxy.faults += 1
                        proxy.fault_kinds[kind] = proxy.fault_kinds.get(kind, 0) + 1
                if denied:
                    return self._reply(403, ACCESS_DENIED)
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if kind:
                    return self._reply(int(kind), SLOW_DOWN if kind == "503" else INTERNAL)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"127.0.0.1:{proxy.upstream_port}"
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                head = self.command == "HEAD"  # HEAD keeps the object's length; it has no body
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection") and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class S3Server:
    """moto's S3 server on a free loopback port, and the proxy the job talks to."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self.moto.start()
        self.proxy = FaultyS3Proxy(self.moto_port)

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    def client(self, key: str = "testing", secret: str = "testing"):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.moto_port}", aws_access_key_id=key,
                            aws_secret_access_key=secret, region_name="us-east-1")

    def stop(self):
        self.proxy.stop()
        self.moto.stop()
