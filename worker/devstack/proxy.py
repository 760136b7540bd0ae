"""A reverse proxy in front of an HTTP endpoint (moto) that records every request and can inject
faults: the tests see what reached "AWS" (methods, paths, user agents) and make S3 throttle for real.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate"}
_SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
              b"<Message>Please reduce your request rate. (injected by the test proxy)</Message></Error>")


@dataclass(frozen=True)
class Seen:
    """One request as it reached the proxy."""

    method: str
    path: str
    user_agent: str
    status: int
    injected: bool


class RecordingProxy:
    """Forwards to ``upstream`` (``http://host:port``); ``fail_rate`` of the requests that
    ``should_fail`` selects are answered 503 SlowDown instead, as S3 does when throttling."""

    def __init__(self, upstream: str | list[str], *, fail_rate: float = 0.0, seed: int = 0,
                 should_fail: Callable[[str, str], bool] | None = None,
                 answer: Callable[[str, str, bytes], tuple[int, bytes] | None] | None = None, port: int = 0):
        # Several upstreams are taken in turn: a load balancer in front of function instances.
        self.upstreams = [(p.hostname or "127.0.0.1", p.port or 80)
                          for p in map(urlsplit, [upstream] if isinstance(upstream, str) else upstream)]
        self._turn = itertools.cycle(self.upstreams)
        self.fail_rate = fail_rate
        self.should_fail = should_fail or (lambda method, path: method == "GET")
        # answer(method, path, body) -> (status, XML body) answers a request itself instead of forwarding it
        self.answer = answer
        self.seen: list[Seen] = []
        self._random = random.Random(seed)  # noqa: S311 (a reproducible fault pattern, not a secret)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        # ``port``: come back where a stopped proxy was, as a restarted endpoint does.
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RecordingProxy:
        threading.Thread(target=self._server.serve_forever, name="recording-proxy", daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        """Go away: stop listening and cut the open (keep-alive) connections, as a dead endpoint does."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = set(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _inject(self, method: str, path: str) -> bool:
        with self._lock:
            return self.fail_rate > 0 and self.should_fail(method, path) and self._random.random() < self.fail_rate

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


def _handler_for(proxy: RecordingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            self._upstream: http.client.HTTPConnection | None = None
            with proxy._lock:
                proxy._connections.add(self.connection)

        def finish(self) -> None:
            with proxy._lock:
                proxy._connections.discard(self.connection)
            if self._upstream is not None:
                self._upstream.close()
            with contextlib.suppress(OSError):
                super().finish()

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            agent = self.headers.get("User-Agent", "")
            own = proxy.answer(self.command, self.path, body or b"") if proxy.answer else None
            if own is not None:
                status, data = own
                proxy._record(Seen(self.command, self.path, agent, status, True))
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if proxy._inject(self.command, self.path):
                proxy._record(Seen(self.command, self.path, agent, 503, True))
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                self.end_headers()
                self.wfile.write(_SLOW_DOWN)
                return
            # The Host header is passed on unchanged: the client signed it.
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            # One upstream connection per client connection, kept alive across its requests; a kept one
            # the upstream has closed meanwhile (gunicorn keeps idle connections 2 s) is made anew, once.
            for fresh in (self._upstream is None, True):
                if fresh:
                    if self._upstream is not None:
                        self._upstream.close()
                    with proxy._lock:
                        self._upstream = http.client.HTTPConnection(*next(proxy._turn), timeout=600)
                try:
                    self._upstream.request(self.command, self.path, body=body, headers=headers)
                    response = self._upstream.getresponse()
                    data = response.read()
                    break
                except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                    if fresh:
                        self._upstream.close()
                        self._upstream = None
                        raise
            proxy._record(Seen(self.command, self.path, agent, response.status, False))
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

    return Handler
