"""The summary benchmark: this worker against the original recipe and DuckDB, side by side.

Starts moto in server mode, uploads deterministic datasets (bench/datasets.py), and times each
tool as a whole process (Python start-up and imports included, as in a cold start), several
times, in one run:

- recipe: awswrangler ``s3.read_parquet`` of the prefix into pandas, then ``shape``;
- duckdb count / duckdb summarize: DuckDB with its httpfs extension (from PyPI) over
  ``read_parquet('s3://bucket/prefix**/*.parquet')``: ``SELECT count(*)`` and ``SUMMARIZE``;
- worker metadata / worker full: ``python -m worker summarize s3://bucket/prefix [--mode full]``.

It prints one table: median wall time (and, for the worker, the part of it the job itself took,
from the result's timings_ms: the rest is Python start-up and imports), peak RSS (from wait4, each
run started by bench/measure.py's small launcher, so that no run inherits this process's size),
rows and columns found, and whether the answer is right; then the ratios the targets are about;
then the hostile-file table of bench/hostile_bench.py (peak RSS per hostile case and mode, with the
default settings; ``--no-hostile`` leaves it out). Each table starts with the command, the commit
and the date it came from.

    .venv/bin/python bench/summary_bench.py [--repeat 3] [--datasets large,small,wide,drift,junk] [--no-hostile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import hostile_bench  # noqa: E402
from datasets import build_all  # noqa: E402
from measure import Launcher, provenance  # noqa: E402

from worker.devstack.processes import Service, free_port  # noqa: E402

BUCKET = "bench"
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}

RECIPE = """
import sys, json, awswrangler as wr
df = wr.s3.read_parquet(path=sys.argv[1])
print(json.dumps({"rows": int(df.shape[0]), "columns": int(df.shape[1])}))
"""

DUCKDB = """
import sys, json, os, importlib.util, duckdb
ext = os.path.join(os.path.dirname(importlib.util.find_spec("duckdb_extension_httpfs").origin),
                   "extensions", "v" + duckdb.__version__, "httpfs.duckdb_extension")
con = duckdb.connect()
con.execute(f"LOAD '{ext}'")
host = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1]
con.execute(f"SET s3_endpoint='{host}'; SET s3_use_ssl=false; SET s3_url_style='path'; SET s3_region='us-east-1';"
            f"SET s3_access_key_id='{os.environ['AWS_ACCESS_KEY_ID']}';"
            f"SET s3_secret_access_key='{os.environ['AWS_SECRET_ACCESS_KEY']}'")
src = f"read_parquet('{sys.argv[1]}**/*.parquet')"
if sys.argv[2] == "count":
    rows = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
    columns = len(con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall())
    print(json.dumps({"rows": rows, "columns": columns}))
else:
    cur = con.execute(f"SUMMARIZE SELECT * FROM {src}")
    names = [d[0] for d in cur.description]
    out = [dict(zip(names, row)) for row in cur.fetchall()]
    print(json.dumps({"rows": out[0]["count"] if out else 0, "columns": len(out), "summary": out}, default=str))
"""


def tools(url: str) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "recipe (awswrangler)": [py, "-c", RECIPE, url],
        "duckdb count(*)": [py, "-c", DUCKDB, url, "count"],
        "duckdb SUMMARIZE": [py, "-c", DUCKDB, url, "summarize"],
        "worker metadata": [py, "-m", "worker", "summarize", url],
        "worker full": [py, "-m", "worker", "summarize", url, "--mode", "full"],
    }


def truth(folder: Path) -> tuple[int, int]:
    """Rows and distinct column names over the readable .parquet files, read locally with pyarrow."""
    import pyarrow.parquet as pq

    rows, names = 0, set()
    for path in sorted(folder.glob("*.parquet")):
        try:
            md = pq.read_metadata(path)
        except Exception:  # noqa: BLE001, S112 (junk files are the point of some datasets)
            continue
        rows += md.num_rows
        names |= set(md.schema.to_arrow_schema().names)
    return rows, len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--datasets", default="large,small,wide,drift,junk")
    parser.add_argument("--tools", default="", help="comma-separated substrings of tool names to run (default all)")
    parser.add_argument("--no-hostile", action="store_true", help="leave out the hostile-file table")
    args = parser.parse_args()
    runner = Launcher()  # first, while this process is small
    header = provenance()  # the commit and date the figures come from: taken before anything runs
    wanted = args.datasets.split(",")
    print("building datasets (cached in bench/data/)...", file=sys.stderr, flush=True)
    sets = {name: folder for name, folder in build_all().items() if name in wanted}
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    port = free_port()
    moto = Service("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port=port,
                   log_dir=workdir, ready_path="/moto-api/")
    moto.start().wait_ready()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "GCE_"))}
    env |= CREDS | {"AWS_ENDPOINT_URL": f"http://{moto.address}"}
    rows_out = []
    try:
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")  # noqa: S106 (moto)
        s3.create_bucket(Bucket=BUCKET)
        for name, folder in sets.items():
            print(f"uploading {name}...", file=sys.stderr, flush=True)
            for path in sorted(folder.iterdir()):
                s3.upload_file(str(path), BUCKET, f"{name}/{path.name}")
        for name, folder in sets.items():
            expected = truth(folder)
            url = f"s3://{BUCKET}/{name}/"
            for tool, argv in tools(url).items():
                if args.tools and not any(t in tool for t in args.tools.split(",")):
                    continue
                times, rss, inside, answer, note = [], [], [], None, ""
                for _ in range(args.repeat):
                    elapsed, peak, status, out, err = runner.run(argv, env)
                    times.append(elapsed)
                    rss.append(peak)
                    if status != 0 and not out.strip().startswith("{"):
                        errors = [line for line in err.splitlines() if "Error" in line] or err.splitlines() or [""]
                        note = (errors[-1].strip() or f"exit {status}")[:90]
                        break
                    answer = json.loads(out.strip().splitlines()[-1])
                    if "timings_ms" in answer:  # the worker says how long the job took inside the process
                        inside.append(answer["timings_ms"]["total"] / 1000)
                    if answer.get("status") == "error":
                        note = answer["error"]["message"][:90]
                        break
                print(f"{name:6} {tool:22} {statistics.median(times):7.2f}s {max(rss):7.0f} MiB {note}",
                      file=sys.stderr, flush=True)
                found = (answer.get("rows"), answer.get("columns")) if answer and not note else (None, None)
                rows_out.append({"dataset": name, "tool": tool, "seconds": statistics.median(times),
                                 "inside": statistics.median(inside) if inside else None,
                                 "rss": max(rss), "rows": found[0], "columns": found[1],
                                 "right": found == expected, "note": note, "expected": expected})
        hostile = None if args.no_hostile else hostile_bench.measure(runner, env["AWS_ENDPOINT_URL"])
    finally:
        runner.close()
        moto.stop()
    print_table(header, rows_out, args.repeat)
    if hostile is not None:
        print()
        hostile_bench.print_table([*header, "hostile files, the worker's defaults, each run one whole process"],
                                  hostile)


def print_table(header: list[str], rows: list[dict], repeat: int) -> None:
    for line in header:
        print(line)
    print()
    print(f"median of {repeat} runs per tool, each a whole process; peak RSS is the largest seen")
    print("dataset | tool | median s | of which the job | peak RSS MiB | rows | columns | right answer | note")
    print("--- | --- | --- | --- | --- | --- | --- | --- | ---")
    for r in rows:
        rows_cell = "-" if r["rows"] is None else f"{r['rows']:,}"
        cols_cell = "-" if r["columns"] is None else str(r["columns"])
        right = "yes" if r["right"] else f"no (expected {r['expected'][0]:,} x {r['expected'][1]})"
        inside = "-" if r["inside"] is None else f"{r['inside']:.2f}"
        print(f"{r['dataset']} | {r['tool']} | {r['seconds']:.2f} | {inside} | {r['rss']:.0f} | {rows_cell} | "
              f"{cols_cell} | {right} | {r['note']}".rstrip())  # no trailing blank when there is no note
    by = {(r["dataset"], r["tool"]): r for r in rows}
    print()
    print("ratios (time; lower is better for the worker) | value")
    print("--- | ---")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        pairs = [("worker metadata", "duckdb count(*)"), ("worker metadata", "recipe (awswrangler)"),
                 ("worker full", "duckdb SUMMARIZE")]
        for ours, theirs in pairs:
            a, b = by.get((dataset, ours)), by.get((dataset, theirs))
            if a and b and not a["note"] and not b["note"]:
                print(f"{dataset}: {ours} / {theirs} | {a['seconds'] / b['seconds']:.2f}")


if __name__ == "__main__":
    main()
