"""``python -m worker ...``: the command line.

``demo`` runs the main job on the local stack: it starts Google's Pub/Sub emulator, moto,
the metadata double and the function, publishes jobs for the sample dataset, prints their
result messages and stops everything again (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.devstack.datasets import sample_objects
    from worker.devstack.stack import LocalStack

    # SIGTERM ends the demo like Ctrl-C does, so the stack is always torn down.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="worker-demo-"))
    _say(f"starting the local stack (Pub/Sub emulator, moto, metadata double, function); logs in {workdir}")
    started = time.monotonic()
    try:
        with LocalStack(workdir) as stack:
            _say(f"stack ready in {time.monotonic() - started:.1f}s; uploading the sample dataset to s3://demo-data")
            stack.put_objects("demo-data", sample_objects())
            jobs = [
                {"bucket": "demo-data", "prefix": "recipe/", "job_id": "demo-recipe"},
                {"bucket": "demo-data", "prefix": "events/", "job_id": "demo-events"},
            ]
            for job in jobs:
                message_id = stack.publish_job(job)
                _say(f"published job {job['job_id']} for s3://{job['bucket']}/{job['prefix']} "
                     f"as message {message_id} on {stack.jobs_topic}")
            assert stack.inbox is not None
            for job in jobs:
                result, attributes = stack.inbox.wait_one(job["job_id"], timeout=120)
                _say(f"result on {stack.reply_topic} (attributes {json.dumps(attributes, sort_keys=True)}):")
                print(json.dumps(result, indent=2), flush=True)
            status, body = stack.post_job(jobs[0])
            _say(f"the same recipe job over HTTP: {status} rows={body.get('rows')} columns={body.get('columns')}")
    except KeyboardInterrupt:
        _say("interrupted; the local stack is stopped")
        return 130
    _say("the local stack is stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job end to end on the local stack")
    demo.add_argument("--workdir", help="where the stack keeps its logs (default: a new temporary folder)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
