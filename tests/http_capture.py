"""A real HTTP server on 127.0.0.1 that records requests and answers with a
fixed status and body (Pushgateway, webhooks, an STS that says no)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Capture:
    url: str
    requests: list[Request] = field(default_factory=list)


@contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler], result: Capture) -> Iterator[None]:
    """`handler` on a free port of 127.0.0.1 in a thread; result.url says where."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    result.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def capture(status: int = 200, body: bytes = b"", content_type: str = "text/plain") -> Iterator[Capture]:
    result = Capture("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            result.requests.append(Request(self.command, self.path, dict(self.headers), data))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_GET = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    with _serving(Handler, result):
        yield result


KMS_REFUSAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>User: '
    b"arn:aws:sts::123456789012:assumed-role/dumper/pod is not authorized to perform: "
    b"kms:GenerateDataKey on resource: arn:aws:kms:us-east-1:123456789012:key/dumper-key because no "
    b"identity-based policy allows the kms:GenerateDataKey action</Message>"
    b"<RequestId>R1</RequestId></Error>"
)


@contextmanager
def kms_refusing_s3(upstream: str) -> Iterator[Capture]:
    """A real S3 endpoint in front of moto (which does not check KMS keys): every
    request is passed on, except a write that asks for SSE-KMS, which gets
    S3's answer when the role may not use the key (403, kms:GenerateDataKey)."""
    import http.client
    import urllib.parse

    result = Capture("")
    target = urllib.parse.urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            result.requests.append(Request(self.command, self.path, dict(self.headers), data))
            if self.headers.get("x-amz-server-side-encryption") == "aws:kms":
                status, headers, body = 403, [("Content-Type", "application/xml")], KMS_REFUSAL
            else:
                conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
                conn.request(self.command, self.path, data, dict(self.headers))
                reply = conn.getresponse()
                status, body = reply.status, reply.read()
                dropped = ("transfer-encoding", "connection") + (() if self.command == "HEAD" else ("content-length",))
                headers = [(k, v) for k, v in reply.getheaders() if k.lower() not in dropped]
                conn.close()
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_GET = do_DELETE = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    with _serving(Handler, result):
        yield result
