"""Regressions from an adversarial review of issue 10: each input once broke a promise (one answer, exact
figures, a result that fits); the figures are checked against pyarrow reading the same bytes."""

import base64
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from worker.config import Settings
from worker.errors import Retryable, Unavailable
from worker.results import to_message
from worker.service import Worker, summarize_listing

from .support import MemoryStore
from .test_answers_always_fit import VALIDATOR


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


class _Store:
    def __init__(self, objects):
        self.store = MemoryStore(objects)

    def ensure_credentials(self):
        pass

    def objects(self, bucket, job_id):
        return self.store


class _Publisher:
    """Publishes as ResultPublisher does up to the wire: to_message, then Pub/Sub's own limits are checked."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.sent = max_bytes, []

    def publish(self, result, topic=None):
        data, attributes = to_message(result)
        assert len(data) <= self.max_bytes
        VALIDATOR.validate(json.loads(data.decode("utf-8", errors="strict")))
        self.sent.append((json.loads(data), attributes))
        return str(len(self.sent))


def _push(worker, job: dict, attributes=None, message_id="m-1"):
    data = {"message": {"data": base64.b64encode(json.dumps(job).encode()).decode(), "messageId": message_id,
                        "attributes": attributes or {}}}
    return worker.handle_pubsub(data, message_id)


@pytest.mark.parametrize(("max_bytes", "attributes", "job", "message_id"), [
    (10_000, {f"k{i:03d}" + "x" * 200: "v" * 1000 for i in range(90)}, {}, "m-1"),
    (10_000, {}, {"reply_attributes": {f"r{i}": "v" * 1000 for i in range(20)}}, "m-1"),
    (9_000_000, {}, {}, "m" * 9_100_000),
])
def test_a_result_whose_identity_is_huge_is_still_answered_once(max_bytes, attributes, job, message_id):
    objects = {"p/x.parquet": _parquet(pa.table({"a": [1, 2, 3]}))}
    settings = Settings(role_arn="", audience="", reply_topic="projects/p/topics/results",
                        result_max_bytes=max_bytes)
    publisher = _Publisher(max_bytes)
    _push(Worker(settings, _Store(objects), publisher), {"bucket": "bkt", "prefix": "p/", **job}, attributes,
          message_id)
    assert len(publisher.sent) == 1
    result, _ = publisher.sent[0]
    assert result["status"] == "ok" and result["rows"] == 3 and "omitted" in result


def test_sections_a_result_could_not_cut_before_are_cut_now():
    objects = {f"p/{'n' * 900}{i:05d}=1/f.parquet": _parquet(pa.table({"a": [i]})) for i in range(30)}
    settings = Settings(role_arn="", audience="", reply_topic="projects/p/topics/results", result_max_bytes=10_000)
    publisher = _Publisher(10_000)
    _push(Worker(settings, _Store(objects), publisher), {"bucket": "bkt", "prefix": "p/"})
    (result, _), = publisher.sent
    assert result["status"] == "ok" and result["files"] == 30
    assert result["omitted"]["partition_columns"] + len(result["partition_columns"]) == 30


def test_a_file_naming_a_column_twice_is_skipped_not_merged_into_one():
    table = pa.Table.from_arrays([pa.array([1, 2]), pa.array(["x", "y"])], names=["a", "a"])
    store = MemoryStore({"d/x.parquet": _parquet(table)})
    for mode in ("metadata", "full"):
        out = summarize_listing(store, store.list("d/"), concurrency=1, mode=mode).to_dict()
        assert out["files"] == 0 and out["columns"] == 0
        assert "'a' is named twice" in out["skipped"][0]["reason"]


def test_both_modes_merge_types_that_compare_and_agree_with_pyarrow():
    first = pa.table({"i": pa.array([-7, 3], pa.int32()), "t": pa.array([5, 2], pa.timestamp("ms", tz="UTC"))})
    second = pa.table({"i": pa.array([1 << 40, 0], pa.int64()), "t": pa.array([3, 9], pa.timestamp("us", tz="UTC"))})
    store = MemoryStore({"d/1.parquet": _parquet(first), "d/2.parquet": _parquet(second)})
    whole_i = pa.chunked_array([first["i"].cast(pa.int64()), second["i"]])
    whole_t = pa.chunked_array([first["t"].cast(pa.timestamp("us", tz="UTC")), second["t"]])
    expected_i = pc.min_max(whole_i).as_py()
    low, high = (v.isoformat(timespec="microseconds").replace("+00:00", "Z")
                 for v in pc.min_max(whole_t).as_py().values())
    meta = summarize_listing(store, store.list("d/"), concurrency=2).to_dict()
    full = summarize_listing(store, store.list("d/"), concurrency=2, mode="full").to_dict()
    for stats in (meta["statistics"], full["statistics"]):
        assert (stats["i"]["min"], stats["i"]["max"]) == (expected_i["min"], expected_i["max"])
        assert (stats["t"]["min"], stats["t"]["max"]) == (low, high)
        assert stats["i"]["type_conflict"] is True  # the types differ, and the schema says which
    assert (full["profile"]["i"]["min"], full["profile"]["i"]["max"]) == (expected_i["min"], expected_i["max"])
    assert (full["profile"]["t"]["min"], full["profile"]["t"]["max"]) == (low, high)


def test_only_retryable_escapes_handle_pubsub():
    """The promise the review attacked, stated once more: a raise is a Retryable, nothing else."""
    class Failing(_Publisher):
        def publish(self, result, topic=None):
            raise Unavailable("Pub/Sub unavailable")

    settings = Settings(role_arn="", audience="", reply_topic="projects/p/topics/results")
    with pytest.raises(Retryable):
        _push(Worker(settings, _Store({}), Failing(10**7)), {"bucket": "bkt", "prefix": "p/"})
