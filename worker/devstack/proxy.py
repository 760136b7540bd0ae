"""A reverse proxy in front of an HTTP endpoint (moto) that records every request and can inject
faults: the tests see what reached "AWS" (methods, paths, user agents) and make S3 throttle for real.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate"}
_SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
              b"<Message>Please reduce your request rate. (injected by the test proxy)</Message></Error>")

# The region in a SigV4 Authorization header's credential scope: Credential=KEY/DATE/REGION/SERVICE/aws4_request
_SCOPE_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/")


def wrong_region_answer(bucket: str, region: str, signed_for: str, *, style: str) -> tuple[int, bytes]:
    """What S3 answers a request for ``bucket`` (in ``region``) signed for, or sent to, ``signed_for``.

    ``style`` "redirect": 301 PermanentRedirect, as from a regional endpoint that is not the bucket's;
    "malformed": 400 AuthorizationHeaderMalformed, as from the right endpoint with the wrong credential scope.
    Both name the region in the body; the caller adds the ``x-amz-bucket-region`` header.
    """
    if style == "redirect":
        return 301, (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PermanentRedirect</Code><Message>The '
                     "bucket you are attempting to access must be addressed using the specified endpoint. Please "
                     f"send all future requests to this endpoint.</Message><Endpoint>{bucket}.s3.{region}."
                     f"amazonaws.com</Endpoint><Bucket>{bucket}</Bucket><Region>{region}</Region>"
                     "<RequestId>0</RequestId></Error>").encode()
    return 400, (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AuthorizationHeaderMalformed</Code>'
                 f"<Message>The authorization header is malformed; the region '{signed_for}' is wrong; "
                 f"expecting '{region}'</Message><Region>{region}</Region><RequestId>0</RequestId></Error>").encode()


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
                 answer: Callable[[str, str, bytes], tuple[int, bytes] | None] | None = None, port: int = 0,
                 bucket_regions: dict[str, str] | None = None, wrong_region: str = "redirect",
                 delay_s: float = 0.0, replay: Callable[[str, str], bool] | None = None):
        # Several upstreams are taken in turn: a load balancer in front of function instances.
        self.upstreams = [(p.hostname or "127.0.0.1", p.port or 80)
                          for p in map(urlsplit, [upstream] if isinstance(upstream, str) else upstream)]
        self._turn = itertools.cycle(self.upstreams)
        self.fail_rate = fail_rate
        self.should_fail = should_fail or (lambda method, path: method == "GET")
        # answer(method, path, body) -> (status, XML body) answers a request itself instead of forwarding it
        self.answer = answer
        # bucket -> its region: a path-style request for such a bucket whose SigV4 credential scope names
        # another region is refused as S3 refuses it (``wrong_region``: "redirect" or "malformed"), with the
        # bucket's region in an x-amz-bucket-region header and in the body. moto itself ignores regions.
        self.bucket_regions = dict(bucket_regions or {})
        self.wrong_region = wrong_region
        # Added to every forwarded request: the round trip from Google Cloud to AWS that moto on localhost lacks.
        self.delay_s = delay_s
        # replay(method, path): the requests it selects are forwarded once per path and Range; a later one is
        # answered (after ``delay_s``) with the remembered 2xx answer, status, headers and body. For reads of
        # objects that do not change, in a benchmark where the upstream's CPU (moto's, ~4 ms a request) would
        # compete with the clients measured for the same cores; the real S3 spends none of theirs.
        self.replay = replay
        self._replies: dict[tuple[str, str, str], tuple[int, list[tuple[str, str]], bytes]] = {}
        self.seen: list[Seen] = []
        self._random = random.Random(seed)  # noqa: S311 (a reproducible fault pattern, not a secret)
        self._lock = threading.Lock()
        self._handlers: set[BaseHTTPRequestHandler] = set()  # one per open client connection
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

    def sockets(self) -> list[tuple[socket.socket, socket.socket | None]]:
        """Each open client connection's socket and the socket it forwards on (None before its first forward)."""
        with self._lock:
            handlers = list(self._handlers)
        return [(h.connection, h._upstream.sock if h._upstream is not None else None) for h in handlers]

    def stop(self) -> None:
        """Go away: stop listening and cut the open (keep-alive) connections, as a dead endpoint does."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            handlers, self._handlers = set(self._handlers), set()
        for handler in handlers:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)

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
        # TCP_NODELAY: a response goes out as two writes (headers, then body); with Nagle's algorithm the body
        # waits for the client's delayed ACK of the headers, about 40 ms per response (a "30 ms" S3 was 70 ms).
        # The upstream side needs nothing: http.client sets TCP_NODELAY on the connections it opens.
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            self._upstream: http.client.HTTPConnection | None = None
            with proxy._lock:
                proxy._handlers.add(self)

        def finish(self) -> None:
            with proxy._lock:
                proxy._handlers.discard(self)
            if self._upstream is not None:
                self._upstream.close()
            with contextlib.suppress(OSError):
                super().finish()

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            agent = self.headers.get("User-Agent", "")
            own, extra = self._wrong_region(), {}
            if own is not None:
                extra = {"x-amz-bucket-region": proxy.bucket_regions[self._bucket()]}
            elif proxy.answer:
                own = proxy.answer(self.command, self.path, body or b"")
            if own is not None:
                status, data = own
                proxy._record(Seen(self.command, self.path, agent, status, True))
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
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
            if proxy.delay_s:
                time.sleep(proxy.delay_s)
            asked = (self.command, self.path, self.headers.get("Range", ""))
            replays = proxy.replay is not None and proxy.replay(self.command, self.path)
            with proxy._lock:
                replayed = proxy._replies.get(asked) if replays else None
            if replayed is None:
                status, answer_headers, data = self._from_upstream(body)
                if replays and 200 <= status < 300:
                    with proxy._lock:
                        proxy._replies[asked] = (status, answer_headers, data)
            else:
                status, answer_headers, data = replayed
            proxy._record(Seen(self.command, self.path, agent, status, False))
            self.send_response(status)
            for key, value in answer_headers:
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _from_upstream(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
            """The upstream's answer to this request: status, headers, body."""
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
            return response.status, response.getheaders(), data

        def _bucket(self) -> str:
            return unquote(urlsplit(self.path).path.split("/")[1])

        def _wrong_region(self) -> tuple[int, bytes] | None:
            region = proxy.bucket_regions.get(self._bucket())
            scope = _SCOPE_REGION.search(self.headers.get("Authorization", ""))
            if region is None or scope is None or scope.group(1) == region:
                return None
            status, data = wrong_region_answer(self._bucket(), region, scope.group(1), style=proxy.wrong_region)
            return status, (b"" if self.command == "HEAD" else data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

    return Handler
