"""A loopback HTTP server for download tests that can misbehave on purpose.

The standard ``SimpleHTTPRequestHandler`` ignores ``Range``, so resuming
cannot be tested against it. This one serves in-memory bodies, honours
``Range: bytes=N-`` and, per path, can drop the connection mid-body, ignore
the Range, fail with 500 a few times, answer a fixed status or redirect.
Every request is logged with its Range header so tests can assert on what
the client actually sent. It binds 127.0.0.1 on a free port only.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int | None = None  # answer every request with this status (e.g. 404)
    fail_first: int = 0  # answer the first N requests with 500
    drop_after: int | None = None  # send only N body bytes, then close the connection...
    drop_times: int = 1  # ...on this many responses
    ignore_range: bool = False  # always answer 200 with the whole body
    redirect_to: str | None = None  # answer 302 with this path
    hits: int = field(default=0, init=False)


class FileServer:
    """Context manager: ``with FileServer() as srv: url = srv.add("/f", body=b"...")``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        # A short poll interval keeps shutdown (one per test) from costing 0.5 s.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def add(self, path: str, **behaviour) -> str:
        self.routes[path] = Route(**behaviour)
        return self.url(path)

    def requests_for(self, path: str) -> list[dict]:
        with self._lock:
            return [entry for entry in self.log if entry["path"] == path]

    def _record(self, path: str, range_header: str | None) -> Route | None:
        with self._lock:
            self.log.append({"path": path, "range": range_header})
            route = self.routes.get(path)
            if route is not None:
                route.hits += 1
            return route


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = server._record(self.path, self.headers.get("Range"))
            if route is None:
                return self._plain(404, b"not found")
            if route.hits <= route.fail_first:
                return self._plain(500, b"temporary failure")
            if route.status is not None:
                return self._plain(route.status, b"status %d" % route.status)
            if route.redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", route.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._body(route)

        def _body(self, route: Route) -> None:
            body, total = route.body, len(route.body)
            start = _range_start(self.headers.get("Range"))
            if start is None or route.ignore_range:
                self.send_response(200)
                start = 0
            elif start >= total:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            else:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(total - start))
            self.end_headers()
            payload = body[start:]
            if route.drop_after is not None and route.drop_times > 0:
                route.drop_times -= 1
                self.wfile.write(payload[: route.drop_after])
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(payload)

        def _plain(self, status: int, text: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args) -> None:
            pass  # keep pytest output clean

    return Handler


def _range_start(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else None
