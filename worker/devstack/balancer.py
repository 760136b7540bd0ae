"""A balancer in front of function instances that admits requests as Cloud Run does.

Cloud Run sends each instance at most its "maximum concurrent requests per instance" at once
(https://cloud.google.com/run/docs/about-concurrency). When every instance allowed by max instances
is busy, a new request waits in a pending queue; if no instance frees up within the pending time
(documented as the longer of 10 s and 3.5x the instance start-up time in "about instance autoscaling",
30 s on some versions of "about maximum instances"), it fails with 429 "no available instance".
Pub/Sub counts that 429 as a failed delivery attempt, which is what a burst test has to reproduce.

The instances are already running (``LocalStack.start_function``): this models a service scaled
out to max instances, not the cold starts on the way there.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from worker.devstack.proxy import _HOP_BY_HOP

_NO_INSTANCE = b"Rate exceeded. The request was aborted because there was no available instance.\n"


@dataclass(frozen=True)
class Delivery:
    """One request as the balancer answered it."""

    message_id: str  # the Pub/Sub push's message ID ("" for a request that is not a push)
    status: int
    queued_s: float  # time spent in the pending queue before an instance took it (or before the 429)
    instance: int  # index of the instance that served it, -1 for a 429
    at: float  # time.monotonic() when it was answered


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096  # a burst opens hundreds of connections at once: do not refuse them in listen()

    def handle_error(self, request, client_address) -> None:
        pass  # a pusher that hangs up (timeout, keep-alive closed) is not the balancer's error


class CloudRunBalancer:
    """Forwards to ``upstreams`` (``http://host:port``, one per instance) with at most ``concurrency``
    requests in flight per instance; a request that finds no free slot waits up to ``pending_timeout_s``
    for one, then is answered 429. ``deliveries`` records every request (its message ID, status, wait)."""

    def __init__(self, upstreams: list[str], *, concurrency: int = 1, pending_timeout_s: float = 10.0,
                 request_timeout_s: float = 600.0):
        if concurrency < 1 or not upstreams:
            raise ValueError("need at least one upstream and a concurrency of at least 1")
        self.upstreams = [(p.hostname or "127.0.0.1", p.port or 80) for p in map(urlsplit, upstreams)]
        self.concurrency = concurrency
        self.pending_timeout_s = pending_timeout_s
        self.request_timeout_s = request_timeout_s
        self.deliveries: list[Delivery] = []
        self.max_pending = 0
        self.max_in_flight = 0
        self._busy = [0] * len(self.upstreams)
        self._pending = 0
        self._slots = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def address(self) -> str:
        """host:port, as ``Service.address`` (a push subscription can point at the balancer)."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def capacity(self) -> int:
        """Requests served at once: max instances x concurrency."""
        return len(self.upstreams) * self.concurrency

    def start(self) -> CloudRunBalancer:
        threading.Thread(target=self._server.serve_forever, name="cloud-run-balancer", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CloudRunBalancer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def counts(self) -> collections.Counter:
        """Requests answered, by status."""
        return collections.Counter(d.status for d in self.deliveries)

    def _acquire(self) -> int | None:
        """The least busy instance with a free slot, waiting up to the pending timeout; None: 429."""
        deadline = time.monotonic() + self.pending_timeout_s
        with self._slots:
            self._pending += 1
            self.max_pending = max(self.max_pending, self._pending)
            try:
                while True:
                    free = min(range(len(self._busy)), key=self._busy.__getitem__)
                    if self._busy[free] < self.concurrency:
                        self._busy[free] += 1
                        self.max_in_flight = max(self.max_in_flight, sum(self._busy))
                        return free
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._slots.wait(left)
            finally:
                self._pending -= 1

    def _release(self, instance: int) -> None:
        with self._slots:
            self._busy[instance] -= 1
            self._slots.notify()

    def _record(self, delivery: Delivery) -> None:
        with self._slots:
            self.deliveries.append(delivery)


def message_id_of(body: bytes) -> str:
    """The message ID of a Pub/Sub push body, or "" when the body is not one."""
    try:
        message = json.loads(body).get("message", {})
        return str(message.get("messageId") or message.get("message_id") or "")
    except (ValueError, AttributeError):
        return ""


def _handler_for(balancer: CloudRunBalancer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: see the same line in proxy.py

        def log_message(self, *args) -> None:
            pass

        def _reply(self, status: int, data: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the pusher gave up waiting
                self.wfile.write(data)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            message_id = message_id_of(body)
            arrived = time.monotonic()
            instance = balancer._acquire()
            queued = time.monotonic() - arrived
            if instance is None:
                balancer._record(Delivery(message_id, 429, queued, -1, time.monotonic()))
                self._reply(429, _NO_INSTANCE, [("Content-Type", "text/plain")])
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            # One connection per request: the instance's slot is what is limited, not connections.
            upstream = http.client.HTTPConnection(*balancer.upstreams[instance], timeout=balancer.request_timeout_s)
            try:
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                status, data, answer_headers = response.status, response.read(), response.getheaders()
            except OSError:
                status, data, answer_headers = 502, b"instance did not answer\n", []
            finally:
                upstream.close()
                balancer._release(instance)
            balancer._record(Delivery(message_id, status, queued, instance, time.monotonic()))
            self._reply(status, data, answer_headers)

        do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815

    return Handler
