"""The hostile-file benchmark: peak memory and time of the worker on each case of the hostile corpus.

Starts moto in server mode, uploads the corpus of worker/devstack/hostile.py (with its large,
benchmark-only cases: a 150 MB object claiming a 150 MB footer, a valid ~50 MB footer), and runs
``python -m worker summarize s3://bucket/hostile/<case>/ [--mode full]`` for each case and mode
as a whole process with the default settings, as summary_bench.py does (its ``run``): peak RSS
comes from wait4, each run is capped by ``timeout -s KILL`` and a kill is reported as such.

The runs are started by bench/measure.py's launcher, a small process started first: on Linux a
child's ru_maxrss starts from its parent's RSS at fork/exec. summary_bench.py prints this table too,
after its own.

It prints one table (case, mode, answer, rows, skipped, whether the answer is the right one,
wall time, peak RSS) and the worst case per mode against the 400 MiB target.

    .venv/bin/python bench/hostile_bench.py [--timeout 180] [--cases name,name] [--no-large]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from measure import Launcher, provenance  # noqa: E402

if TYPE_CHECKING:
    from worker.devstack.hostile import Case

BUCKET = "hostile-bench"
TARGET_MIB = 400
MODES = ("metadata", "full")


def expected_rows(case: Case, data: bytes) -> int | None:
    """Rows pyarrow finds in a case that should be read; None where the case should be skipped or
    pyarrow must not be pointed at it."""
    if case.outcome == "skip" or not case.oracle_safe:
        return None
    from worker.devstack.hostile import oracle

    try:
        return oracle(data, read_data=False)["rows"]
    except Exception:  # noqa: BLE001 (then nothing is known: the answer is not judged)
        return None


def judge(case: Case, answer: dict | None, rows: int | None) -> str:
    """Whether the answer is the right one: "yes", "no (why)", or "-" where it cannot be told."""
    if answer is None or answer.get("status") != "ok":
        return "no (no ok answer)"
    files, skipped = answer.get("files"), answer.get("skipped_count")
    read = files == 1
    if case.outcome == "skip" or (case.outcome == "read-or-skip" and not read):
        return "yes" if (files, skipped) == (0, 1) else f"no (expected skipped; files={files})"
    if not read:
        reason = (answer.get("skipped") or [{}])[0].get("reason", "")
        return f"no (skipped: {reason[:60]})"
    if rows is None:
        return "-"
    return "yes" if answer.get("rows") == rows else f"no (rows {answer.get('rows')} != {rows})"


def summarize_outcome(status: int, out: str, err: str, timeout: float) -> tuple[dict | None, str]:
    """(result JSON or None, a short answer summary) of one worker run."""
    if status == -signal.SIGKILL or status == 128 + signal.SIGKILL:
        return None, f"KILLED at the {timeout:.0f}s timeout"
    if status < 0:
        return None, f"CRASHED ({signal.Signals(-status).name})"
    lines = out.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        errors = [line for line in err.splitlines() if "Error" in line] or err.splitlines() or [""]
        return None, f"exit {status}, no result: {errors[-1].strip()[:70]}"
    try:
        answer = json.loads(lines[-1])
    except ValueError as e:
        return None, f"exit {status}, result not JSON: {e}"[:90]
    if answer.get("status") == "ok":
        return answer, "ok"
    return answer, f"error {answer['error']['code']}: {answer['error']['message'][:60]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=180, help="seconds before a run is killed (default 180)")
    parser.add_argument("--cases", default="", help="comma-separated case names (default all)")
    parser.add_argument("--no-large", action="store_true", help="leave out the benchmark-only large cases")
    args = parser.parse_args()
    header = provenance(f"settings: the worker's defaults; each run one whole process, capped at {args.timeout:.0f}s")
    with Launcher() as runner:  # first, while this process is small
        from worker.devstack.processes import Service, free_port

        workdir = Path(tempfile.mkdtemp(prefix="hostile-bench-"))
        port = free_port()
        moto = Service("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port=port,
                       log_dir=workdir, ready_path="/moto-api/")
        moto.start().wait_ready()
        try:
            rows = measure(runner, f"http://{moto.address}", timeout=args.timeout, large=not args.no_large,
                           names=args.cases.split(",") if args.cases else None)
        finally:
            moto.stop()
    print_table(header, rows)


def measure(runner: Launcher, endpoint: str, *, timeout: float = 180, large: bool = True,
            names: list[str] | None = None) -> list[dict]:
    """Upload the corpus to the S3 at ``endpoint`` and run each case in both modes; one row per run."""
    import boto3
    from summary_bench import CREDS

    from worker.devstack.hostile import corpus

    cases = [c for c in corpus(large=large) if names is None or c.name in names]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "GCE_"))}
    env |= CREDS | {"AWS_ENDPOINT_URL": endpoint}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")  # noqa: S106 (moto)
    s3.create_bucket(Bucket=BUCKET)
    expected: dict[str, int | None] = {}
    sizes: dict[str, int] = {}
    for case in cases:
        print(f"building and uploading {case.name}...", file=sys.stderr, flush=True)
        data = case.build()
        sizes[case.name] = len(data)
        expected[case.name] = expected_rows(case, data)
        s3.put_object(Bucket=BUCKET, Key=case.key, Body=data)
        del data
    rows_out = []
    py = sys.executable
    for case in cases:
        for mode in MODES:
            url = f"s3://{BUCKET}/{case.prefix}"
            argv = ["timeout", "-s", "KILL", str(timeout), py, "-m", "worker", "summarize", url]
            argv += ["--mode", mode] if mode == "full" else []
            if case.job.get("columns"):
                argv += ["--columns", ",".join(case.job["columns"])]
            elapsed, peak, status, out, err = runner.run(argv, env)
            answer, summary = summarize_outcome(status, out, err, timeout)
            rows_out.append({"case": case.name, "mode": mode, "size": sizes[case.name], "answer": summary,
                             "rows": answer.get("rows") if answer else None,
                             "skipped": answer.get("skipped_count") if answer else None,
                             "right": judge(case, answer, expected[case.name]), "seconds": elapsed, "rss": peak,
                             "result_bytes": len(out.strip().splitlines()[-1].encode()) if out.strip() else 0})
            print(f"{case.name:22} {mode:8} {elapsed:7.2f}s {peak:7.0f} MiB {summary}", file=sys.stderr, flush=True)
    return rows_out


def print_table(header: list[str], rows: list[dict]) -> None:
    for line in header:
        print(line)
    print()
    print("case | object bytes | mode | answer | rows | skipped | right answer | result bytes | wall s | peak RSS MiB")
    print("--- | --- | --- | --- | --- | --- | --- | --- | --- | ---")
    for r in rows:
        rows_cell = "-" if r["rows"] is None else f"{r['rows']:,}"
        skipped = "-" if r["skipped"] is None else str(r["skipped"])
        print(f"{r['case']} | {r['size']:,} | {r['mode']} | {r['answer']} | {rows_cell} | {skipped} | {r['right']} | "
              f"{r['result_bytes']:,} | {r['seconds']:.2f} | {r['rss']:.0f}")
    print()
    print(f"worst peak RSS per mode (target: under {TARGET_MIB} MiB)")
    for mode in MODES:
        of_mode = [r for r in rows if r["mode"] == mode]
        if of_mode:
            worst = max(of_mode, key=lambda r: r["rss"])
            verdict = "within target" if worst["rss"] < TARGET_MIB else "OVER target"
            print(f"{mode}: {worst['rss']:.0f} MiB ({worst['case']}: {worst['answer']}) {verdict}")


if __name__ == "__main__":
    main()
