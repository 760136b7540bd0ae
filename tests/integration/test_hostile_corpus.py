"""The hostile corpus (worker/devstack/hostile.py) through the real local stack.

Every case is one object under its own prefix, and gets one job in metadata mode and one in
full mode, published through the Pub/Sub emulator to a function instance of its own (so a case
that kills the process cannot take the session's shared function with it), whose results go to
a topic of their own, pulled with a gRPC channel that accepts messages larger than 4 MiB (the
emulator's client default; production clients have no such limit).

Each job must be answered exactly once, with a result that is strict JSON, valid Unicode, valid
against schemas/result.schema.json, within Pub/Sub's limits, and, where the right answer is
known, agreeing with pyarrow reading the same bytes (the oracle). All jobs are published first
and collected together, so the whole file takes about as long as the slowest case.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import grpc
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from google.cloud import pubsub_v1
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
from jsonschema import Draft202012Validator

from worker.devstack.hostile import Case, corpus, oracle
from worker.jobs import load_schema

from .conftest import ALLOWED, _names

CASES = [c for c in corpus() if not c.bench_only]
MODES = ("metadata", "full")
# Cases that can kill the function's process (the 7,000-level schema segfaults pyarrow today):
# published after every other job is answered, so that a crash costs only their own answers.
LAST = {"deep-schema"}
PUBSUB_DATA_MAX = 10_000_000  # Pub/Sub: 10 MB of message data ...
PUBSUB_ATTRIBUTE_MAX = 1024  # ... and attribute values of at most 1,024 bytes
WAIT_FIRST_S, WAIT_LAST_S, WAIT_DUPLICATES_S = 60.0, 20.0, 3.0
RESULT_SCHEMA = Draft202012Validator(load_schema("result"))


def job_id(case: Case, mode: str) -> str:
    return f"hostile-{mode}-{case.name}"


@dataclass
class Answers:
    """What came back: the raw result messages per job ID, and what was published."""

    bucket: str
    objects: dict[str, bytes]
    by_job: dict[str, list[tuple[bytes, dict[str, str]]]] = field(default_factory=dict)
    published: set[str] = field(default_factory=set)
    seconds: float = 0.0


class BigPuller:
    """Pulls from the emulator with no 4 MiB cap on a message, keeping the raw bytes."""

    def __init__(self, emulator: str, subscription: str):
        channel = grpc.insecure_channel(emulator, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self.client = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
        self.subscription = subscription

    def drain(self, into: dict[str, list], wait_s: float = 0.5) -> int:
        try:
            response = self.client.pull(request={"subscription": self.subscription, "max_messages": 20},
                                        timeout=wait_s, retry=None)
        except Exception:  # noqa: BLE001 (the emulator answers DeadlineExceeded when nothing is waiting)
            return 0
        messages = list(response.received_messages)
        if messages:
            self.client.acknowledge(request={"subscription": self.subscription,
                                             "ack_ids": [m.ack_id for m in messages]})
        for m in messages:
            attributes = dict(m.message.attributes)
            into.setdefault(attributes.get("job_id", "?"), []).append((bytes(m.message.data), attributes))
        return len(messages)

    def collect(self, into: dict[str, list], wanted: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not wanted <= set(into) and time.monotonic() < deadline:
            self.drain(into)


@pytest.fixture(scope="module")
def answers(stack):
    started = time.monotonic()
    bucket = ALLOWED[:-1][next(_names)]
    objects = {c.key: c.build() for c in CASES}
    stack.put_objects(bucket, objects)
    s3 = stack.aws_client("s3")
    stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
              for o in page.get("Contents", [])}
    assert stored == set(objects), f"moto stored other keys than were put: {sorted(stored ^ set(objects))}"
    reply = f"projects/{stack.project}/topics/hostile-results"
    subscription = f"projects/{stack.project}/subscriptions/hostile-results-pull"
    stack.publisher.create_topic(name=reply)
    stack.subscriber.create_subscription(request={"name": subscription, "topic": reply, "ack_deadline_seconds": 60})
    fn = stack.start_function("function-hostile", REPLY_TOPIC=reply)
    topic = stack.add_push_subscription("hostile-jobs", fn)
    puller = BigPuller(stack.emulator.address, subscription)
    got = Answers(bucket, objects)
    try:
        for wave, wait in (([c for c in CASES if c.name not in LAST], WAIT_FIRST_S),
                           ([c for c in CASES if c.name in LAST], WAIT_LAST_S)):
            ids = set()
            for case in wave:
                for mode in MODES:
                    job = {"bucket": bucket, "prefix": case.prefix, "mode": mode, "job_id": job_id(case, mode),
                           **case.job}
                    stack.publish_job(job, topic=topic)
                    ids.add(job["job_id"])
            got.published |= ids
            puller.collect(got.by_job, ids, wait)
        time.sleep(WAIT_DUPLICATES_S)  # a redelivered job answered twice shows up now
        while puller.drain(got.by_job, wait_s=0.5):
            pass
        got.seconds = time.monotonic() - started
        _dump(got)
        yield got
    finally:
        stack.subscriber.delete_subscription(subscription=f"projects/{stack.project}/subscriptions/hostile-jobs-push")
        fn.stop()


def _dump(got: Answers) -> None:
    """With HOSTILE_RESULTS_DIR set, write each raw result there (to look at by hand)."""
    folder = os.environ.get("HOSTILE_RESULTS_DIR")
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    for job, messages in got.by_job.items():
        for n, (raw, _) in enumerate(messages):
            with open(os.path.join(folder, f"{job}.{n}.json"), "wb") as f:
                f.write(raw)


def _strict(constant: str):
    raise ValueError(f"not strict JSON: {constant}")


def _leaf_paths(schema: pa.Schema) -> list[tuple[str, str]]:
    """(top-level column, leaf path) per leaf column, the path as the result contract writes it:
    components joined with ".", a "." or "\\" inside a component escaped with "\\"."""

    def walk(name: str, typ: pa.DataType) -> list[list[str]]:
        if pa.types.is_struct(typ):
            return [[name, *rest] for i in range(typ.num_fields) for rest in walk(typ.field(i).name, typ.field(i).type)]
        if pa.types.is_list(typ) or pa.types.is_large_list(typ):
            return [[name, "list", *rest] for rest in walk("element", typ.value_type)]
        return [[name]]

    def escape(component: str) -> str:
        return component.replace("\\", "\\\\").replace(".", "\\.")

    return [(f.name, ".".join(escape(c) for c in path)) for f in schema for path in walk(f.name, f.type)]


def _render_float(value: float | None):
    """A float as the contract renders it: non-finite as "NaN", "Infinity", "-Infinity"."""
    if value is None:
        return None
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float(value)


def _check_read(case: Case, mode: str, result: dict, data: bytes) -> None:
    truth = oracle(data)
    assert (result["files"], result["skipped_count"]) == (1, 0), result.get("skipped")
    assert result["rows"] == truth["rows"]
    assert result["columns"] == truth["columns"]
    selected = set(case.job.get("columns", [])) or None
    table = pq.read_table(pa.BufferReader(data))
    if mode == "metadata":
        leaves = _leaf_paths(table.schema)
        paths = [path for _, path in leaves]
        stats = result["statistics"]
        md = pq.read_metadata(pa.BufferReader(data))
        assert len(paths) == md.num_columns
        for top, path in leaves:
            if selected is not None and top not in selected:
                assert path not in stats, f"{path} is not a selected column"
            else:
                assert path in stats, f"no statistics entry {path!r} (got {sorted(stats)[:10]})"
        for path, (low, high) in _int_stats(md, paths).items():
            if path in stats:
                assert (stats[path]["min"], stats[path]["max"]) == (low, high), path
        return
    profile = result["profile"]
    names = [n for n in table.column_names if selected is None or n in selected]
    complete = case.name != "wide-20k"  # a result over the size limit may leave columns out (and say so)
    if complete:
        assert set(profile) == set(names)
    for name in names:
        if name not in profile:
            continue
        column, entry = table.column(name), profile[name]
        assert (entry["count"], entry["null_count"]) == (len(column) - column.null_count, column.null_count), name
        typ = column.type
        if pa.types.is_integer(typ) or pa.types.is_duration(typ):
            values = column.cast(pa.int64()) if pa.types.is_duration(typ) else column
            mm = pc.min_max(values).as_py()
            assert (entry["min"], entry["max"]) == (mm["min"], mm["max"]), name
        elif pa.types.is_floating(typ) and not pa.types.is_float16(typ):
            # NaN takes no part in min/max (docs/jobs-and-results.md, Values): the oracle is pyarrow over the rest.
            mm = pc.min_max(pc.filter(column, pc.invert(pc.is_nan(column)))).as_py()
            assert (entry["min"], entry["max"]) == (_render_float(mm["min"]), _render_float(mm["max"])), name


def _int_stats(md: pq.FileMetaData, paths: list[str]) -> dict[str, tuple[int, int]]:
    """Exact footer min/max of plain integer leaf columns (no temporal logical type), over all row groups."""
    out: dict[str, tuple[int, int]] = {}
    for c, path in enumerate(paths):
        column = md.schema.column(c)
        logical = str(column.logical_type)
        if column.physical_type not in ("INT32", "INT64") or not (logical == "None" or logical.startswith("Int")):
            continue
        pairs = []
        for rg in range(md.num_row_groups):
            stats = md.row_group(rg).column(c).statistics
            if stats is None or not stats.has_min_max:
                break
            pairs.append((stats.min, stats.max))
        else:
            if pairs:
                out[path] = (min(p[0] for p in pairs), max(p[1] for p in pairs))
    return out


def _check_special(case: Case, mode: str, result: dict) -> None:
    """What the contract says about particular cases, beyond agreeing with the oracle."""
    if case.name == "dotted-column" and mode == "metadata":
        assert {"a\\.b", "a.b"} <= set(result["statistics"])
        assert result["statistics"]["a\\.b"]["max"] == 3 and result["statistics"]["a.b"]["max"] == 300
    if case.name == "dotted-column-select":
        assert result["missing_columns"] == []
        if mode == "metadata":
            assert set(result["statistics"]) == {"a\\.b"}
        else:
            assert set(result["profile"]) == {"a.b"}
    if case.name == "invalid-utf8" and mode == "metadata":
        entry = result["statistics"]["s"]
        assert entry["min"] == "ok" and entry["max"] is None and "max" in entry.get("unrendered", {})
    if case.name == "null-column" and mode == "full":
        entry = result["profile"]["nothing"]
        assert (entry["kind"], entry["count"], entry["null_count"]) == ("null", 0, 5)
    if case.name == "big-statistics" and mode == "metadata" and result["files"] == 1:
        entry = result["statistics"]["s"]
        assert entry["min"] is not None and len(entry["min"].encode()) <= 128 and "min" in entry["truncated"]
        assert entry["max"] is None or len(entry["max"].encode()) <= 128


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_answered_once_and_right(answers, case, mode):
    messages = answers.by_job.get(job_id(case, mode), [])
    assert messages, f"{case.name} ({mode}) was never answered"
    assert len(messages) == 1, f"{case.name} ({mode}) was answered {len(messages)} times"
    raw, attributes = messages[0]
    assert len(raw) <= PUBSUB_DATA_MAX, f"result of {len(raw):,} bytes is over Pub/Sub's 10 MB"
    assert all(len(v.encode()) <= PUBSUB_ATTRIBUTE_MAX for v in attributes.values())
    result = json.loads(raw, parse_constant=_strict)
    json.dumps(result, ensure_ascii=False).encode("utf-8")  # a lone surrogate raises here
    errors = sorted(RESULT_SCHEMA.iter_errors(result), key=str)
    assert not errors, [e.message for e in errors][:5]
    assert result["status"] == "ok", result.get("error")
    data = answers.objects[case.key]
    read = result["files"] == 1
    if case.outcome == "skip" or (case.outcome == "read-or-skip" and not read):
        assert (result["files"], result["rows"], result["skipped_count"]) == (0, 0, 1)
        assert result["skipped"][0]["key"] == case.key and result["skipped"][0]["reason"]
    else:
        _check_read(case, mode, result, data)
    _check_special(case, mode, result)


def test_nothing_unasked_was_answered(answers):
    """No answer for a job that was not published (e.g. a result keyed by the wrong job ID)."""
    assert set(answers.by_job) <= answers.published
