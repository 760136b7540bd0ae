"""How the benchmarks measure a run, and the provenance every table they print starts with.

Each run is a whole process started by a small launcher process (``Launcher``) that the benchmark
starts first, while it is still small: on Linux a child's ru_maxrss starts from its parent's RSS at
fork/exec (measured: ``python -c pass`` reported 575 MiB from a parent that had grown by 500 MB), so
runs started by a benchmark that has imported pyarrow or built a 150 MB object would report that
process's memory, not their own.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The short commit, with "+uncommitted changes (paths)" when the work tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip() or os.environ.get("BENCH_COMMIT", "unknown (not a git checkout)")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.splitlines()
    if not status:
        return head
    paths = [line[3:] for line in status]
    shown = ", ".join(paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
    return f"{head}+uncommitted changes ({shown})"


def command() -> str:
    """The command line as typed from the repository root: the interpreter as invoked, then sys.argv."""
    python = Path(sys.executable)
    if python.is_relative_to(ROOT):  # .venv/bin/python, not the bare name: which interpreter ran it
        python = python.relative_to(ROOT)
    return shlex.join([str(python), *sys.argv])


def provenance(note: str = "") -> list[str]:
    """The lines a printed table starts with: the command, the commit and the date it came from, and how
    busy the machine was when it started (figures from a shared machine are only comparable side by side).

    Call it before the run starts, so that the commit is the one measured even if the tree changes meanwhile.
    """
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"command: {command()}",
             f"commit: {commit()}",
             f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
             f"machine: {os.cpu_count()} cores, load average {load} (1, 5, 15 min) at the start"]
    return lines + ([note] if note else [])


def _serve() -> None:
    """The launcher's loop: run ``{"argv", "env", "out", "err"}`` lines from stdin, output to the files
    named, and answer one JSON line each: (seconds, peak RSS MiB, exit status). It imports nothing beyond
    the standard library and never holds a run's output, so its own size stays a floor of a few MiB."""
    for line in sys.stdin:
        job = json.loads(line)
        started = time.perf_counter()
        with open(job["out"], "wb") as out, open(job["err"], "wb") as err:
            process = subprocess.Popen(job["argv"], env=job["env"], stdout=out, stderr=err, cwd=ROOT)
            _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        print(json.dumps([elapsed, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)]), flush=True)


class Launcher:
    """The small process that starts and measures the runs; make it before anything large is loaded."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=ROOT)
        self.folder = Path(tempfile.mkdtemp(prefix="bench-runs-"))

    def run(self, argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str, str]:
        """(seconds, peak RSS MiB, exit status, stdout, stderr) of one whole process."""
        assert self.process.stdin is not None and self.process.stdout is not None
        out, err = self.folder / "out", self.folder / "err"
        self.process.stdin.write(json.dumps({"argv": argv, "env": env, "out": str(out), "err": str(err)}) + "\n")
        self.process.stdin.flush()
        elapsed, peak, status = json.loads(self.process.stdout.readline())
        return elapsed, peak, status, out.read_text(errors="replace"), err.read_text(errors="replace")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    _serve()
