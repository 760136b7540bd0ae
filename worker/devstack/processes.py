"""Starting and stopping the local stand-ins as child processes, each in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A port the OS considers free now, so two stacks on one machine do not collide. Never the same port twice
    in one process: the OS may offer a port again as soon as the probe socket closes, before the service that
    was given it has bound it (seen: moto and the Pub/Sub emulator of one stack on one port)."""
    with _handed_out_lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port


@contextlib.contextmanager
def signals_held():
    """Defer SIGINT and SIGTERM until the block is done (main thread only; elsewhere, a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])  # delivered now, to the handlers that were in place


def stop_all(services: Sequence[Service]) -> None:
    """Stop ``services`` side by side: each stop mostly waits for its process to exit."""
    if len(services) < 2:
        for service in services:
            service.stop()
        return
    threads = [threading.Thread(target=service.stop, name=f"stop-{service.name}") for service in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class Service:
    """One child process with its log file; stopping it ends its whole process group."""

    def __init__(self, name: str, argv: Sequence[str], *, port: int, log_dir: Path,
                 env: Mapping[str, str] | None = None, ready_path: str | None = "/", cwd: Path | None = None,
                 stop_signal: int = signal.SIGTERM, stop_group: bool = True):
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.env = dict(env if env is not None else os.environ)
        self.ready_path = ready_path
        self.cwd = cwd
        # What stop() sends first, to the whole process group, or with ``stop_group=False`` to the leader alone
        # (which passes it on to its children); SIGKILL to the group follows if it is not enough.
        self.stop_signal = stop_signal
        self.stop_group = stop_group
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Service:
        # A Ctrl-C in the middle would leave a child that stop() does not know of: hold it until the
        # child is recorded (the deferring handler is a Python one, so the child starts with the default).
        with signals_held(), open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                            start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60.0) -> Service:
        """Poll until the service answers HTTP (any status) or raise with the tail of its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"http://{self.address}{self.ready_path or '/'}", timeout=2).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answered
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready on {self.address} after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait_s in ((self.stop_signal, grace), (signal.SIGKILL, 5.0)):
            try:
                if sig == signal.SIGKILL or self.stop_group:
                    os.killpg(self.process.pid, sig)
                else:
                    os.kill(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group may hold children (the emulator's JVM) that outlive the leader.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
