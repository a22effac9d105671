"""Real servers on 127.0.0.1 for the remote-storage tests, counting what they send.

`S3Server` is moto's S3 API (its WSGI app, the one `ThreadedMotoServer` serves) behind a counting
middleware; `RangeHTTPServer` serves a folder with HEAD, `Range` and HTML folder listings. Both
count requests and body bytes on the server side, so a test asserts what went over the wire,
and both can inject faults: 503s, or a connection dropped part-way through a body.
"""

from __future__ import annotations

import html
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Faults:
    """Faults to inject, consumed as requests arrive (thread-safe through `lock`)."""

    status_503: int = 0  # the next N data requests answer 503
    drop_after: int | None = None  # the next `drops` data responses stop after this many body bytes
    drops: int = 0
    only: str = ""  # faults hit only paths containing this (one file of a checkpoint)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, path: str = "") -> tuple[bool, int | None]:
        with self.lock:
            if self.only and self.only not in path:
                return False, None
            if self.status_503 > 0:
                self.status_503 -= 1
                return True, None
            if self.drops > 0 and self.drop_after is not None:
                self.drops -= 1
                return False, self.drop_after
            return False, None


@dataclass
class Counter:
    requests: int = 0
    body_bytes: int = 0
    writes: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, query) of every PUT/POST/DELETE, in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, nbytes: int, request: bool = False) -> None:
        with self.lock:
            self.body_bytes += nbytes
            self.requests += int(request)

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.body_bytes = 0
            self.writes.clear()


# ----- S3 (moto) --------------------------------------------------------------------------------------
class _CountingApp:
    """WSGI middleware: counts requests and response bytes, injects faults on object reads."""

    def __init__(self, app: Any, counter: Counter, faults: Faults) -> None:
        self.app, self.counter, self.faults = app, counter, faults

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.counter.add(0, request=True)
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with self.counter.lock:
                self.counter.writes.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
        is_read = environ.get("REQUEST_METHOD") == "GET" and "HTTP_RANGE" in environ
        fail, drop = self.faults.take(environ.get("PATH_INFO", "")) if is_read else (False, None)
        if fail:
            start_response("503 Service Unavailable", [("Content-Type", "application/xml"), ("Content-Length", "0")])
            return [b""]
        body = self.app(environ, start_response)
        return self._count(body, drop)

    def _count(self, body: Any, drop: int | None) -> Any:
        sent = 0
        try:
            for chunk in body:
                if drop is not None and sent + len(chunk) > drop:
                    chunk = chunk[: max(0, drop - sent)]
                    self.counter.add(len(chunk))
                    yield chunk
                    raise ConnectionAbortedError("fault injection: connection dropped mid-object")
                sent += len(chunk)
                self.counter.add(len(chunk))
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


class S3Server:
    """moto's S3 on 127.0.0.1 (a free port), with counting and faults."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log(self, *args: Any) -> None:
                pass

        self.counter = Counter()
        self.faults = Faults()
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, _CountingApp(app, self.counter, self.faults), threaded=True,
                                   request_handler=Quiet)
        self.port = self._server.server_port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> S3Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(10)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def upload_tree(self, bucket: str, local: Path, prefix: str) -> None:
        client = self.client()
        for path in sorted(local.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


# ----- HTTP with Range ----------------------------------------------------------------------------
class _RangeHandler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _target(self) -> Path | None:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        target = (self.server.root / rel).resolve()
        if target != self.server.root and self.server.root not in target.parents:
            return None
        return target if target.exists() else None

    def _send(self, status: int, headers: dict[str, str], body: bytes, drop: int | None = None) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        if drop is not None and drop < len(body):
            self.wfile.write(body[:drop])
            self.server.counter.add(drop)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)
        self.server.counter.add(len(body))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.counter.add(0, request=True)
        target = self._target()
        if target is None:
            self._send(404, {"Content-Length": "0"}, b"")
            return
        if target.is_dir():
            if not self.path.split("?")[0].endswith("/"):
                self._send(301, {"Location": self.path.split("?")[0] + "/", "Content-Length": "0"}, b"")
                return
            links = "".join(f'<a href="{html.escape(urllib.parse.quote(c.name))}{"/" if c.is_dir() else ""}">{html.escape(c.name)}</a>\n'
                            for c in sorted(target.iterdir()))
            body = f"<html><body>\n{links}</body></html>\n".encode()
            self._send(200, {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(len(body))}, body)
            return
        size = target.stat().st_size
        rng = self.headers.get("Range")
        fail, drop = self.server.faults.take(self.path) if (rng and self.command == "GET") else (False, None)
        if fail:
            self._send(503, {"Content-Length": "0"}, b"")
            return
        base = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if rng and rng.startswith("bytes="):
            lo_text, _, hi_text = rng[6:].partition("-")
            lo = int(lo_text) if lo_text else max(0, size - int(hi_text))
            hi = min(size - 1, int(hi_text)) if (hi_text and lo_text) else size - 1
            if lo >= size or hi < lo:
                self._send(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"}, b"")
                return
            with open(target, "rb") as fh:
                fh.seek(lo)
                body = fh.read(hi - lo + 1) if self.command == "GET" else b""
            self._send(206, {**base, "Content-Range": f"bytes {lo}-{hi}/{size}", "Content-Length": str(hi - lo + 1)}, body, drop)
            return
        body = target.read_bytes() if self.command == "GET" else b""
        self._send(200, {**base, "Content-Length": str(size)}, body, drop)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    counter: Counter
    faults: Faults


class RangeHTTPServer:
    """Serves `root` read-only on 127.0.0.1 (a free port)."""

    def __init__(self, root: Path) -> None:
        self._server = _HTTPServer(("127.0.0.1", 0), _RangeHandler)
        self._server.root = Path(os.path.realpath(root))
        self.counter = self._server.counter = Counter()
        self.faults = self._server.faults = Faults()
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> RangeHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
