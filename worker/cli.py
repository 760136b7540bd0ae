"""``python -m worker ...``: the command line.

``summarize s3://bucket/prefix`` runs the function's own code path on one prefix: it federates
as the function does when AWS_ROLE_ARN is set, and otherwise uses boto3's default credential
chain. On a terminal it prints a table (and a progress bar on stderr); otherwise exactly one
line, the result JSON the function would publish. Exit status: 0 ok, 1 a permanent error,
2 an invalid job or setting, 75 a retryable fault.

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


def _stop_on_signals() -> None:
    """SIGTERM stops like Ctrl-C, so the local stack is always torn down; and Ctrl-C works even
    when the process started with SIGINT ignored (a background job of a shell)."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.signal(signal.SIGINT, signal.default_int_handler)


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.devstack.datasets import sample_objects
    from worker.devstack.stack import LocalStack

    _stop_on_signals()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="worker-demo-"))
    _say("starting the local stack (Pub/Sub and Firestore emulators, fake-gcs-server, moto, metadata double, "
         f"function); logs in {workdir}")
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
            _demo_fan_out(stack, args.objects)
    except KeyboardInterrupt:
        _say("interrupted; the local stack is stopped")
        return 130
    _say("the local stack is stopped")
    return 0


def _demo_fan_out(stack, objects: int) -> None:
    """A job over a few thousand objects fanned out to three instances behind a balancer, with its progress."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.devstack.datasets import lake_objects
    from worker.devstack.fleet import Fleet
    from worker.fanout.coordinator import Stores, status_of

    _say(f"fan-out: uploading {objects} objects to s3://demo-data/lake/ and starting 3 instances behind a balancer")
    s3 = stack.aws_client("s3")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket="demo-data", Key=item[0], Body=item[1]),
                      lake_objects(objects).items()))
    least = min(1000, max(1, objects // 3))  # the job fans out by itself: its listing reaches this many objects
    env = {"SHARD_OBJECTS": str(max(1, min(250, objects // 8))), "FANOUT_MIN_OBJECTS": str(least),
           "FANOUT_MAX_IN_FLIGHT": "6"}
    with Fleet(stack, "demo-fleet", instances=3, concurrency=2, env=env) as fleet:
        job = {"bucket": "demo-data", "prefix": "lake/", "job_id": "demo-fan-out"}
        run_id = stack.publish_job(job, topic=fleet.jobs_topic)
        _say(f"published job demo-fan-out for s3://demo-data/lake/ ({objects} objects) as message {run_id}; "
             f"it fans out (FANOUT_MIN_OBJECTS={least}): `python -m worker status {run_id}` shows what this shows")
        assert stack.inbox is not None
        progress = _coordinator(None, Stores(runs=stack.run_store(), blobs=None, shards=None))  # type: ignore[arg-type]
        result = None
        while result is None:
            status = status_of(progress, run_id)
            if status is not None:
                line = render_run_progress(status)
                sys.stderr.write("\r" + line if sys.stderr.isatty() else line + "\n")
                sys.stderr.flush()
            try:
                result, _ = stack.inbox.wait_one("demo-fan-out", timeout=1.0 if sys.stderr.isatty() else 2.0)
            except TimeoutError:
                continue
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        _say("the fanned-out run's answer (abridged: the summary fields are as one instance gives them):")
        print(json.dumps({k: result[k] for k in ("job_id", "status", "rows", "columns", "files", "fanout")
                          if k in result}, indent=2), flush=True)


# What the command line needs to act as the stack's function does: its settings (fan-out's included, for status
# and redrive) and the local endpoints; env.sh exports them.
CLI_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ROLE_ARN", "ID_TOKEN_AUDIENCE", "GCE_METADATA_HOST",
           "GCE_METADATA_IP", "PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST",
           "GOOGLE_CLOUD_PROJECT", "REPLY_TOPIC", "ALLOWED_BUCKETS", "PARTIALS_BUCKET", "SHARD_TOPIC",
           "SHARD_DEAD_LETTER_TOPIC", "JOBS_TOPIC")


def cli_env(stack) -> dict[str, str]:
    """The variables env.sh exports for a running local stack."""
    env = stack.function_env() | {"JOBS_TOPIC": stack.jobs_topic}
    return {name: env[name] for name in CLI_ENV}


def cmd_stack(args: argparse.Namespace) -> int:
    import shlex

    from worker.devstack.datasets import sample_objects
    from worker.devstack.stack import LocalStack
    from worker.policies import trust_policy

    _stop_on_signals()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="worker-stack-"))
    try:
        with LocalStack(workdir) as stack:
            stack.put_objects("demo-data", sample_objects())
            exports = (f"export {name}={shlex.quote(value)}\n" for name, value in cli_env(stack).items())
            (workdir / "env.sh").write_text("".join(exports))
            (workdir / "trust.json").write_text(json.dumps(trust_policy(stack.metadata.unique_id, stack.audience),
                                                           indent=2))
            _say(f"the local stack is up, with s3://demo-data holding the sample dataset.\n"
                 f"  source {workdir / 'env.sh'}   # the function's settings and endpoints, for the CLI\n"
                 f"  {workdir / 'trust.json'}      # the role's trust policy, for doctor\n"
                 f"jobs topic {stack.jobs_topic}, results on {stack.reply_subscription}; Ctrl-C stops it all.")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        _say("the local stack is stopped")
        return 0


EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_RETRY = 0, 1, 2, 75


def cmd_summarize(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from worker.adapters.runtime import bound_allocator_retention
    from worker.app import build_storage
    from worker.config import Settings
    from worker.errors import InvalidJob, WorkerError
    from worker.jobs import JobRef, new_job_id, validate_job
    from worker.results import error_result
    from worker.service import Worker

    job_id = args.job_id or f"cli-{new_job_id()[:12]}"
    payload: dict = {"mode": args.mode, "job_id": job_id}
    if not args.url.startswith("s3://"):
        payload["bucket"] = None
    else:
        bucket, _, prefix = args.url[len("s3://"):].partition("/")
        payload |= {"bucket": bucket, "prefix": prefix}
    if args.columns:
        payload["columns"] = [c.strip() for c in args.columns.split(",") if c.strip()]
    try:
        if "bucket" in payload and payload["bucket"] is None:
            raise InvalidJob(f"expected s3://bucket/prefix, got {args.url!r}", JobRef(job_id=job_id))
        job = validate_job(payload, fallback_id=job_id)
        settings = Settings.from_env(require_role=False)
    except WorkerError as e:
        ref = getattr(e, "ref", None) or JobRef(job_id=job_id)
        return _emit(error_result(ref, e), EXIT_INVALID)
    # Off the function there is no 540 s limit: a job runs to the end unless JOB_DEADLINE_SECONDS says otherwise.
    if not os.environ.get("JOB_DEADLINE_SECONDS"):
        settings = dataclasses.replace(settings, job_deadline_seconds=7 * 24 * 3600)
    bound_allocator_retention()
    worker = Worker(settings, build_storage(settings))
    progress = _ProgressBar() if sys.stderr.isatty() else None
    try:
        result = worker.run(job, on_progress=progress)
    except WorkerError as e:
        result = error_result(job, e)
    finally:
        if progress is not None:
            progress.close()
    status = EXIT_OK if result["status"] == "ok" else (EXIT_RETRY if result["error"]["retryable"] else EXIT_ERROR)
    return _emit(result, status)


def cmd_publish(args: argparse.Namespace) -> int:
    import os

    from worker.config import Settings, topic_path
    from worker.errors import WorkerError
    from worker.jobs import new_job_id, validate_job

    job: dict = {"bucket": args.bucket, "job_id": args.job_id or f"cli-{new_job_id()[:12]}"}
    for field in ("prefix", "prefix_template", "mode", "correlation_id", "reply_topic", "time_zone", "reference_time"):
        if getattr(args, field) is not None:
            job[field] = getattr(args, field)
    if args.column:
        job["columns"] = args.column
    fan_out = {k: v for k, v in (("mode", args.fan_out), ("max_in_flight", args.max_in_flight),
                                 ("tolerated_failure_percent", args.tolerated_failure_percent)) if v is not None}
    if fan_out:
        job["fan_out"] = fan_out
    try:
        if args.reply_attr:
            job["reply_attributes"] = _pairs(args.reply_attr, "--reply-attr")
        attributes = _pairs(args.attr or [], "--attr")
        validate_job(job)  # the worker would answer invalid_job: say so now, before publishing
        settings = Settings.from_env(require_role=False)
    except (WorkerError, ValueError) as e:
        print(f"publish: {e}", file=sys.stderr)
        return EXIT_INVALID
    from worker.tools.pubsub import NoResultsTopic, ResultWaiter, publish_job

    project = settings.project
    jobs_topic = args.topic or os.environ.get("JOBS_TOPIC")
    if not jobs_topic:
        print("publish: no jobs topic: give --topic or set JOBS_TOPIC", file=sys.stderr)
        return EXIT_INVALID
    # Where the result may come: the job's own reply topic, or REPLY_TOPIC (also where a refused one is reported).
    wanted = [args.results_topic] if args.results_topic else [job.get("reply_topic"), settings.reply_topic]
    try:
        topic = topic_path(jobs_topic, project)
        results = [topic_path(t, project) for t in wanted if t]
    except ValueError as e:
        print(f"publish: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.wait and not results:
        print("publish: --wait needs the results topic: give --results-topic or set REPLY_TOPIC", file=sys.stderr)
        return EXIT_INVALID
    if not args.wait:
        message_id = publish_job(topic, job, attributes)
        _say(f"published job {job['job_id']} as message {message_id} on {topic}")
        print(json.dumps({"job_id": job["job_id"], "message_id": message_id, "topic": topic}), flush=True)
        return EXIT_OK
    try:
        with ResultWaiter(results, job["job_id"]) as waiter:
            for missing in waiter.missing:
                _say(f"topic {missing} does not exist: not waiting there")
            message_id = publish_job(topic, job, attributes)
            _say(f"published job {job['job_id']} as message {message_id} on {topic}; "
                 f"waiting for its result on {' or '.join(waiter.subscriptions)}")
            progress = _RunProgress(settings, message_id)
            try:
                got = waiter.wait(args.timeout, on_tick=progress)
            finally:
                progress.close()
    except NoResultsTopic as e:
        print(f"publish: {e}", file=sys.stderr)
        return EXIT_INVALID
    if got is None:
        _say(f"no result for job {job['job_id']} within {args.timeout:.0f}s "
             "(the message stays on the jobs topic and is answered when a worker takes it)")
        return EXIT_RETRY
    result, result_attributes = got
    _say(f"result attributes: {json.dumps(result_attributes, sort_keys=True)}")
    return _emit(result, EXIT_OK if result["status"] == "ok" else EXIT_ERROR)


class _RunProgress:
    """While ``publish --wait`` waits: if the job fanned out (its run is in Firestore under the message ID),
    the run's progress, live on a terminal (stderr), a JSON line per change when piped."""

    def __init__(self, settings, run_id: str, every: float = 1.0):
        self.run_id = run_id
        self.every = every
        self._next = time.monotonic() + every
        self._runs = None
        self._shown = False
        self._last = None
        if settings.fanout_enabled:
            from worker.app import build_stores

            try:
                self._runs = _coordinator(settings, build_stores(settings))
            except Exception as e:  # noqa: BLE001 - progress is a nicety: waiting goes on without it
                _say(f"(no run progress: {type(e).__name__})")

    def __call__(self) -> None:
        if self._runs is None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every
        from worker.fanout.coordinator import status_of

        try:
            status = status_of(self._runs, self.run_id)
        except Exception:  # noqa: BLE001 - as above
            return
        if status is None:
            return
        if sys.stderr.isatty():
            sys.stderr.write("\r" + render_run_progress(status))
            sys.stderr.flush()
            self._shown = True
        else:
            key = (status["shards_done"], status["shards_failed"], status["shards_total"], status["state"])
            if key != self._last:
                self._last = key
                _say(json.dumps(status))

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")


def render_run_progress(status: dict) -> str:
    """One line: a bar of shards done, objects, bytes, rate and ETA."""
    width = 24
    finished = status["shards_done"] + status["shards_failed"]
    total = max(status["shards_total"], 1)
    filled = width * finished // total
    eta = status["eta_seconds"]
    failed = f", {status['shards_failed']} failed" if status["shards_failed"] else ""
    return (f"[{'#' * filled}{'.' * (width - filled)}] {status['run_id']} {status['state']}: "
            f"shards {finished}/{status['shards_total']}{failed} ({status['in_flight']} in flight) | "
            f"{status['objects_listed']:,} objects | {_size(status['bytes_read'])} read | "
            f"{status['objects_per_second']:,.0f} objects/s | "
            f"ETA {'-' if eta is None else f'{eta:.0f}s'}  ")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _coordinator(settings, stores):
    """A coordinator for the CLI's run commands: status, cap and redrive need only the stores."""
    from worker.fanout.coordinator import Coordinator

    class _Host:
        def __init__(self):
            self.settings = settings

    return Coordinator(_Host(), stores)  # type: ignore[arg-type]


def _run_coordinator():
    from worker.app import build_stores
    from worker.config import Settings

    settings = Settings.from_env(require_role=False)
    stores = build_stores(settings)
    if stores is None:
        raise ValueError("fan-out is not configured here: set PARTIALS_BUCKET and SHARD_TOPIC (and "
                         "FIRESTORE_DATABASE, RUNS_COLLECTION if not the defaults) as the worker has them")
    return _coordinator(settings, stores)


def cmd_status(args: argparse.Namespace) -> int:
    from worker.errors import WorkerError
    from worker.fanout.coordinator import status_of
    from worker.fanout.records import ANSWERED

    try:
        coordinator = _run_coordinator()
        if args.max_in_flight is not None:
            coordinator.set_cap(args.run_id, args.max_in_flight)
            _say(f"run {args.run_id}: at most {args.max_in_flight} shards in flight from now on")
        status = status_of(coordinator, args.run_id)
    except (WorkerError, ValueError, LookupError) as e:
        print(f"status: {e}", file=sys.stderr)
        return EXIT_INVALID
    if status is None:
        print(f"status: no run {args.run_id!r}", file=sys.stderr)
        return EXIT_INVALID
    if not sys.stdout.isatty() or args.once:
        print(json.dumps(status), flush=True)
        return EXIT_OK
    try:
        while True:
            sys.stdout.write("\r" + render_run_progress(status))
            sys.stdout.flush()
            if status["state"] == ANSWERED:
                break
            time.sleep(args.every)
            status = status_of(coordinator, args.run_id) or status
    except KeyboardInterrupt:
        pass
    sys.stdout.write("\n")
    return EXIT_OK


def cmd_redrive(args: argparse.Namespace) -> int:
    from worker.errors import WorkerError

    try:
        failed = _run_coordinator().redrive(args.run_id)
    except (WorkerError, ValueError, LookupError) as e:
        print(f"redrive: {e}", file=sys.stderr)
        return EXIT_INVALID
    if not failed:
        _say(f"run {args.run_id} has no failed range: nothing to redrive")
    else:
        _say(f"run {args.run_id}: {len(failed)} failed range(s) queued again; the run answers again when they finish")
    print(json.dumps({"run_id": args.run_id, "redriven": failed}), flush=True)
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    """What the scheduled sweep does (deploy/: Cloud Scheduler publishes kind=sweep to SHARD_TOPIC), run here: find
    runs that stopped making progress and set them going, answering those that cannot."""
    from worker.app import build_worker
    from worker.config import Settings
    from worker.errors import WorkerError

    try:
        settings = Settings.from_env(require_role=False)
        worker = build_worker(settings)
        if worker.coordinator is None:
            raise ValueError("fan-out is not configured here: set PARTIALS_BUCKET and SHARD_TOPIC as the worker has "
                             "them")
        report = worker.coordinator.sweep()
    except (WorkerError, ValueError) as e:
        print(f"sweep: {e}", file=sys.stderr)
        return EXIT_RETRY if isinstance(e, WorkerError) and e.retryable else EXIT_INVALID
    print(json.dumps(report), flush=True)
    return EXIT_OK


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, not {item!r}")
        pairs[key] = value
    return pairs


def _emit(result: dict, status: int) -> int:
    if sys.stdout.isatty():
        print(render_table(result))
    else:
        from worker.results import to_json

        print(to_json(result).decode("utf-8"), flush=True)  # strict JSON, as a published result
    return status


class _ProgressBar:
    """A one-line progress bar on stderr, shown only for jobs that take a while."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self._started < 0.5 and not self._shown:
            return
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} objects")
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def render_table(result: dict) -> str:
    """A result as text for a person at a terminal."""
    where = f"s3://{result['bucket']}/{result['prefix']}"
    if result["status"] != "ok":
        error = result["error"]
        lines = [f"{where}: {error['code']}: {error['message']}"]
        lines += [f"  - {p}" for p in error.get("problems", [])]
        return "\n".join(lines)
    lines = [f"{where}: {_count(result['rows'], 'row')} x {_count(result['columns'], 'column')} in "
             f"{_count(result['files'], 'file')} ({_count(result['bytes'], 'byte')}, "
             f"{_count(result['row_groups'], 'row group')}) in {result['timings_ms']['total'] / 1000:.2f}s"]
    profile = result.get("profile") or {}
    header = ["column", "type", "nulls", "min", "max"]
    if profile:
        header += ["distinct~", "mean", "stddev", "q25~", "q50~", "q75~"]
    rows = [header]
    for column in result["schema"]:
        name = column["name"]
        stats = result["statistics"].get(name, {})
        p = profile.get(name, {})
        row = [name, column["type"] or "CONFLICT: " + "|".join(column.get("types", [])),
               _cell(p.get("null_count", stats.get("null_count"))), _cell(p.get("min", stats.get("min"))),
               _cell(p.get("max", stats.get("max")))]
        if profile:
            quartiles = p.get("quartiles_approx") or [None] * 3
            row += [_cell(p.get("distinct_approx")), _cell(p.get("mean")), _cell(p.get("stddev")),
                    *(_cell(q) for q in quartiles)]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if result["partition_columns"]:
        lines.append(f"partition columns: {', '.join(result['partition_columns'])}")
    if result.get("missing_columns"):
        lines.append(f"columns not found: {', '.join(result['missing_columns'])}")
    if result["skipped_count"]:
        lines.append(f"skipped {result['skipped_count']} objects, for example:")
        lines += [f"  {s['key']}: {s['reason']}" for s in result["skipped"][:5]]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def cmd_trust_policy(args: argparse.Namespace) -> int:
    from worker.policies import permissions_policy, trust_policy

    out: dict = {"trust_policy": trust_policy(args.unique_id, args.audience)}
    if args.bucket:
        out["permissions_policy"] = permissions_policy(args.bucket, args.prefix or [""])
    print(json.dumps(out, indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from worker.doctor import Doctor

    job = policy = None
    try:
        if args.job:
            job = json.loads(args.job)
        if args.trust_policy:
            with open(args.trust_policy, encoding="utf-8") as f:
                policy = json.load(f)
    except (OSError, ValueError) as e:
        print(f"FAIL  arguments: {e}", flush=True)
        return EXIT_INVALID
    return Doctor(lambda line: print(line, flush=True), job=job, trust_policy=policy).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job end to end on the local stack")
    demo.add_argument("--workdir", help="where the stack keeps its logs (default: a new temporary folder)")
    demo.add_argument("--objects", type=int, default=3000, help="objects of the fanned-out job (default 3000)")
    demo.set_defaults(func=cmd_demo)
    stack = sub.add_parser("stack", help="start the local stack and keep it up until Ctrl-C, to try the CLI on")
    stack.add_argument("--workdir", help="where the stack keeps its logs, env.sh and trust.json")
    stack.set_defaults(func=cmd_stack)
    summarize = sub.add_parser("summarize", help="summarize the Parquet objects under s3://bucket/prefix")
    summarize.add_argument("url", help="s3://bucket/prefix (the prefix is literal, not a glob)")
    summarize.add_argument("--mode", choices=["metadata", "full"], default="metadata")
    summarize.add_argument("--columns", help="comma-separated top-level columns to summarize")
    summarize.add_argument("--job-id", help="the job ID (default: cli-<random>)")
    summarize.set_defaults(func=cmd_summarize)
    publish = sub.add_parser("publish", help="publish a job to the jobs topic (and, with --wait, print its result)")
    publish.add_argument("--bucket", required=True)
    where = publish.add_mutually_exclusive_group(required=True)
    where.add_argument("--prefix", help="a literal key prefix")
    where.add_argument("--prefix-template", help="a prefix with date placeholders, such as 'events/dt={date-1d}/'")
    publish.add_argument("--job-id", help="the job ID (default: cli-<random>)")
    publish.add_argument("--mode", choices=["metadata", "full"])
    publish.add_argument("--column", action="append", help="a column to summarize (repeatable)")
    publish.add_argument("--correlation-id", help="the pipeline run this job belongs to")
    publish.add_argument("--reply-topic", help="the job's own reply topic (in the worker's ALLOWED_REPLY_TOPICS)")
    publish.add_argument("--reply-attr", action="append", metavar="KEY=VALUE",
                         help="an attribute for the result message (repeatable)")
    publish.add_argument("--attr", action="append", metavar="KEY=VALUE",
                         help="an attribute of the job message (repeatable); passed through to the result")
    publish.add_argument("--time-zone", help="the time zone of --prefix-template (default: the worker's)")
    publish.add_argument("--reference-time", help="resolve --prefix-template at this RFC 3339 time (a backfill)")
    publish.add_argument("--topic", help="the jobs topic (default: $JOBS_TOPIC); short names use $GOOGLE_CLOUD_PROJECT")
    publish.add_argument("--fan-out", choices=["auto", "always", "never"],
                         help="split the job across instances (default auto: when it is large)")
    publish.add_argument("--max-in-flight", type=int, help="a fanned-out run's cap on shards at once")
    publish.add_argument("--tolerated-failure-percent", type=float,
                         help="the share of key ranges that may fail while the run still answers ok (default 0)")
    publish.add_argument("--wait", action="store_true",
                         help="wait for the result and print it (with a fanned-out run's progress on stderr)")
    publish.add_argument("--results-topic", help="where to wait (default: the job's reply topic, else $REPLY_TOPIC)")
    publish.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    publish.set_defaults(func=cmd_publish)
    trust = sub.add_parser("trust-policy", help="print the IAM role's trust policy (and least-privilege S3 policy)")
    trust.add_argument("--unique-id", required=True, help="the service account's numeric unique ID")
    trust.add_argument("--audience", required=True, help="ID_TOKEN_AUDIENCE")
    trust.add_argument("--bucket", help="the bucket the role may read")
    trust.add_argument("--prefix", action="append", help="a prefix it may read (repeatable; default: all)")
    trust.set_defaults(func=cmd_trust_policy)
    doctor = sub.add_parser("doctor", help="check the federation chain step by step")
    doctor.add_argument("--job", help='a job to try: \'{"bucket": "b", "prefix": "p/"}\'')
    doctor.add_argument("--trust-policy", help="a JSON file with the role's trust policy to check the token against")
    doctor.set_defaults(func=cmd_doctor)

    status = sub.add_parser("status", help="a fanned-out run's progress (live on a terminal, a JSON line when piped)")
    status.add_argument("run_id", help="the run's ID: the job message's ID (the answer's fanout.run_id)")
    status.add_argument("--max-in-flight", type=int, help="change the run's cap on shards in flight (1-1000)")
    status.add_argument("--once", action="store_true", help="print one JSON line, even on a terminal")
    status.add_argument("--every", type=float, default=1.0, help="seconds between refreshes (default 1)")
    status.set_defaults(func=cmd_status)

    redrive = sub.add_parser("redrive", help="read a run's failed key ranges again; the run answers again")
    redrive.add_argument("run_id", help="the run's ID (the answer's fanout.run_id)")
    redrive.set_defaults(func=cmd_redrive)

    sweep = sub.add_parser("sweep", help="set stalled fanned-out runs going again (what the scheduled sweep does)")
    sweep.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
