"""Bounded resources against hostile files: footer size and depth caps, the footer budget,
full mode's memory per batch and its deadline inside a row group, and exact column names."""

import io
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from worker.profile import profile_object
from worker.summary import TAIL_BYTES, ByteBudget, Limits, StoppedAtDeadline, read_footer, summarize_object

from .support import Ranged
from .thrift_footers import deep_footer, parquet_file


def parquet(table: pa.Table, **options) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **options)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["metadata", "full"])
def test_a_7000_level_schema_is_skipped_in_a_worker_thread(mode):
    data = parquet_file(deep_footer(7000))
    read = summarize_object if mode == "metadata" else profile_object
    with ThreadPoolExecutor(1, thread_name_prefix="reader") as pool:  # where it used to segfault
        out = pool.submit(read, "deep.parquet", len(data), Ranged(data)).result().to_dict()
    assert out["files"] == 0
    assert out["skipped"] == [{"key": "deep.parquet", "reason": "corrupt footer: schema nests deeper than 100 levels"}]


def test_a_schema_within_the_depth_limit_is_read():
    data = parquet_file(deep_footer(99))
    assert summarize_object("ok.parquet", len(data), Ranged(data)).to_dict()["files"] == 1


def test_a_footer_over_the_cap_is_skipped_without_fetching_it():
    size = 150 << 20  # a 150 MB object claiming a 150 MB footer; only its tail is ever served

    class Tail(Ranged):
        def __call__(self, start, end):
            self.reads.append((start, end))
            return bytes(end + 1 - start - 8) + (size - 12).to_bytes(4, "little") + b"PAR1"

    fetch = Tail(b"")
    out = summarize_object("big.parquet", size, fetch).to_dict()
    assert out["skipped"][0]["reason"] == f"footer of {size - 12} bytes is over the limit of {16 << 20} bytes"
    assert fetch.bytes_read == TAIL_BYTES


def test_a_footer_under_a_lowered_cap_is_fetched_in_two_reads_and_over_it_in_one():
    data = parquet(pa.table({f"c{i}": [i] for i in range(2000)}))
    footer_len = int.from_bytes(data[-8:-4], "little")
    assert footer_len > TAIL_BYTES
    fetch = Ranged(data)
    assert read_footer(len(data), fetch).num_columns == 2000
    assert fetch.bytes_read == footer_len + 8
    fetch = Ranged(data)
    out = summarize_object("k.parquet", len(data), fetch, limits=Limits(footer_max_bytes=footer_len - 1)).to_dict()
    assert "over the limit" in out["skipped"][0]["reason"]
    assert fetch.bytes_read == TAIL_BYTES


def test_the_budget_lets_one_oversized_request_through_alone():
    budget = ByteBudget(100)
    budget.acquire(60)
    entered = threading.Event()

    def second():
        budget.acquire(60)
        entered.set()

    threading.Thread(target=second, daemon=True).start()
    assert not entered.wait(0.2)
    budget.release(60)
    assert entered.wait(2)
    budget.release(60)
    with budget.hold(1000):  # larger than the capacity, nothing else held: proceeds
        assert budget.used == 1000
    assert budget.used == 0


@pytest.mark.parametrize("capacity,most_at_once", [(1, 1), (1 << 30, 4)])
def test_the_budget_serializes_large_footers(capacity, most_at_once):
    data = parquet(pa.table({f"c{i}": [i] for i in range(2000)}))  # a footer over the first read
    inside, peak, lock = [0], [0], threading.Lock()

    def fetch(start, end):
        if end + 1 < len(data):  # the second read: inside the budget
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1
        return data[start:end + 1]

    budget = ByteBudget(capacity)
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda _: summarize_object("k.parquet", len(data), fetch, budget=budget), range(4)))
    assert all(s.files == 1 for s in out)
    assert peak[0] == most_at_once
    assert budget.used == 0


MEASURE = """
import io, resource, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from worker.adapters.runtime import bound_allocator_retention
from worker.profile import profile_object
from worker.summary import Limits
bound_allocator_retention()  # as the function and the CLI do where they start
buf = io.BytesIO()
pq.write_table(pa.table({"v": np.full(20_000_000, 7, dtype=np.int64)}), buf, compression="zstd",
               row_group_size=20_000_000)
data = buf.getvalue()
del buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = profile_object("eq.parquet", len(data), lambda a, b: data[a:b + 1],
                     limits=Limits(full_mode_batch_bytes=int(sys.argv[1]))).to_dict()
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(data), out["profile"]["v"]["count"], out["profile"]["v"]["min"], pa.default_memory_pool().max_memory(), grew)
"""


def test_full_mode_memory_is_bounded_by_the_batch_budget_however_large_the_row_group():
    budget = 16 << 20
    run = subprocess.run([sys.executable, "-c", MEASURE, str(budget)], capture_output=True, text=True, check=True)
    size, count, low, arrow_peak, rss_growth_kib = map(int, run.stdout.split())
    assert size < 200_000 and count == 20_000_000 and low == 7
    # 20 M int64 values decode to 160 MB; before batching the file cost +468 MB.
    assert arrow_peak < 3 * budget, arrow_peak
    assert rss_growth_kib < 150 * 1024, rss_growth_kib


def test_a_deadline_stops_inside_one_big_row_group():
    data = parquet(pa.table({"v": np.arange(2_000_000)}), row_group_size=2_000_000)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(StoppedAtDeadline) as info:
        profile_object("one.parquet", len(data), Ranged(data), should_stop=should_stop,
                       limits=Limits(full_mode_batch_bytes=1 << 20))
    assert info.value.key == "one.parquet"
    assert len(calls) == 4  # before the row group, then after each of three batches (of ~16)


def test_a_row_group_over_the_budget_is_read_in_bounded_pieces_with_the_same_answer():
    rng = np.random.default_rng(3)
    table = pa.table({"i": rng.integers(-1000, 1000, 300_000), "x": rng.normal(size=300_000),
                      "s": pa.array([f"s{i % 700}" for i in range(300_000)])})
    data = parquet(table, row_group_size=300_000, compression="none")
    whole, small = Ranged(data), Ranged(data)
    a = profile_object("w.parquet", len(data), whole).to_dict()["profile"]
    b = profile_object("w.parquet", len(data), small, limits=Limits(full_mode_batch_bytes=1 << 20)).to_dict()["profile"]
    assert max(e - s + 1 for s, e in small.reads[1:]) <= 1 << 20  # after the footer: pieces, no whole chunk
    for name in table.column_names:
        bounds = pc.min_max(table[name])
        for out in (a, b):
            assert (out[name]["count"], out[name]["min"], out[name]["max"]) == (
                300_000, bounds["min"].as_py(), bounds["max"].as_py())
    assert b["x"]["mean"] == pytest.approx(pc.mean(table["x"]).as_py(), rel=1e-12)


def dotted() -> bytes:
    return parquet(pa.table({"a.b": pa.array([1, 5, 3]), "a": pa.array([{"b": 10}, {"b": 30}, {"b": 20}])}))


def test_a_dotted_column_and_a_struct_child_keep_their_own_statistics():
    data = dotted()
    oracle = pq.read_table(pa.BufferReader(data))
    top, child = pc.min_max(oracle["a.b"]), pc.min_max(pc.struct_field(oracle["a"], "b"))
    stats = summarize_object("d.parquet", len(data), Ranged(data)).to_dict()["statistics"]
    assert list(stats) == ["a\\.b", "a.b"]
    assert (stats["a\\.b"]["min"], stats["a\\.b"]["max"]) == (top["min"].as_py(), top["max"].as_py())
    assert (stats["a.b"]["min"], stats["a.b"]["max"]) == (child["min"].as_py(), child["max"].as_py())
    only_top = summarize_object("d.parquet", len(data), Ranged(data), frozenset(["a.b"])).to_dict()
    assert list(only_top["statistics"]) == ["a\\.b"]
    only_struct = summarize_object("d.parquet", len(data), Ranged(data), frozenset(["a"])).to_dict()
    assert list(only_struct["statistics"]) == ["a.b"]


def test_full_mode_selects_a_dotted_column_exactly():
    data = dotted()
    oracle = pq.read_table(pa.BufferReader(data))
    out = profile_object("d.parquet", len(data), Ranged(data), columns=frozenset(["a.b"])).to_dict()
    assert list(out["profile"]) == ["a.b"] and list(out["statistics"]) == ["a\\.b"]
    bounds = pc.min_max(oracle["a.b"])
    got = out["profile"]["a.b"]
    assert (got["min"], got["max"]) == (bounds["min"].as_py(), bounds["max"].as_py())
    both = profile_object("d.parquet", len(data), Ranged(data)).to_dict()
    assert set(both["profile"]) == {"a.b", "a"}
    assert both["profile"]["a"]["count"] == 3 and both["profile"]["a.b"]["count"] == 3
    only_struct = profile_object("d.parquet", len(data), Ranged(data), columns=frozenset(["a"])).to_dict()
    assert list(only_struct["profile"]) == ["a"] and list(only_struct["statistics"]) == ["a.b"]


def test_a_decode_error_skips_the_object_not_the_job():
    data = bytearray(parquet(pa.table({"v": np.arange(100_000)}), compression="zstd"))
    start = pq.read_metadata(pa.BufferReader(bytes(data))).row_group(0).column(0).data_page_offset
    data[start:start + 16] = b"\xff" * 16  # the first page header
    out = profile_object("bad.parquet", len(data), Ranged(bytes(data))).to_dict()
    assert out["files"] == 0 and out["skipped"][0]["reason"].startswith("unreadable data: ")


def test_wide_files_are_read_a_few_hundred_columns_at_a_time_without_splitting_a_struct():
    from worker.profile import column_groups

    paths = (("a",), ("s", "x"), ("s", "y"), ("s", "z"), ("b",), ("c",))
    assert column_groups(paths, list(range(6)), most=2) == [[0, 1, 2, 3], [4, 5]]
    assert column_groups(paths, [0, 4, 5], most=2) == [[0, 4], [5]]
    # and the answer is the same as reading every column at once
    table = pa.table({f"c{i}": pa.array([i, None, 2 * i]) for i in range(600)}
                     | {"s": pa.array([{"x": 1, "y": "a"}, None, {"x": 3, "y": "b"}])})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    out = profile_object("k.parquet", len(data), lambda a, b: data[a:b + 1]).to_dict()["profile"]
    assert len(out) == 601 and out["s"]["count"] == 2 and out["s"]["null_count"] == 1
    assert all((out[f"c{i}"]["min"], out[f"c{i}"]["max"]) == (i, 2 * i) for i in range(600))
