"""The README's first command: the demo runs the main job and leaves nothing running, also on Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def open_files_under(folder: Path) -> list[str]:
    """Processes that still hold a file under ``folder`` open (the stack's children hold their logs)."""
    holders = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(folder)):
                    holders.append(pid)
                    break
        except OSError:
            continue
    return holders


# Enough for the demo's run to fan out into several shards (the demo sizes its shards by the objects: 8 or more).
FAN_OUT_OBJECTS = 240


def test_demo_prints_results_and_stops_everything(tmp_path):
    run = subprocess.run([sys.executable, "-m", "worker", "demo", "--workdir", str(tmp_path), "--objects",
                          str(FAN_OUT_OBJECTS)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"rows": 3' in run.stdout and '"columns": 4' in run.stdout
    assert '"rows": 30000' in run.stdout and '"partition_columns": [\n    "dt"\n  ]' in run.stdout
    assert "over HTTP: 200 rows=3 columns=4" in run.stderr
    # the fanned-out run: its progress lines (stderr is not a terminal: one per poll), then its answer
    answer = json.loads(run.stdout[run.stdout.rindex('{\n  "job_id": "demo-fan-out"'):])
    assert answer["status"] == "ok" and answer["files"] == FAN_OUT_OBJECTS and answer["rows"] == FAN_OUT_OBJECTS * 50
    assert answer["fanout"]["shards"] > 3 and answer["fanout"]["failed"] == 0
    assert f"] {answer['fanout']['run_id']} " in run.stderr and "objects/s" in run.stderr
    assert open_files_under(tmp_path) == []


def start_demo(folder: Path, *, until_log: str) -> subprocess.Popen:
    """The demo, once the stack has started the service that writes ``until_log`` under ``folder``
    (while the stack is still starting: the emulator takes seconds)."""
    demo_err = folder.parent / f"{folder.name}-demo.err"
    with open(demo_err, "wb") as err:
        demo = subprocess.Popen([sys.executable, "-m", "worker", "demo", "--workdir", str(folder)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while not (folder / until_log).exists() and demo.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not (folder / until_log).exists():
        demo.kill()
        logs = "\n".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-1500:]}" for log in folder.glob("*.log"))
        raise AssertionError(f"the stack did not start {until_log} (demo exit {demo.poll()}):\n"
                             f"{demo_err.read_text(errors='replace')[-1500:]}\n{logs}")
    return demo


def test_ctrl_c_stops_the_whole_stack(tmp_path):
    demo = start_demo(tmp_path, until_log="moto.log")
    try:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 130
    finally:
        demo.kill()
    assert open_files_under(tmp_path) == []


def test_a_second_ctrl_c_during_teardown_still_stops_everything(tmp_path):
    demo = start_demo(tmp_path, until_log="function-http.log")
    try:
        demo.send_signal(signal.SIGINT)
        for _ in range(20):  # an impatient user, while the teardown runs
            time.sleep(0.05)
            if demo.poll() is not None:
                break
            demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
    finally:
        demo.kill()
    assert open_files_under(tmp_path) == []
