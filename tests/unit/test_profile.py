"""Full mode on real Parquet bytes: exact figures, mergeable sketches, one row group at a time."""

import math
import random

import numpy as np
import pyarrow as pa
import pytest

from worker.devstack.datasets import events_table, parquet_bytes, recipe_table
from worker.profile import ColumnProfile, coalesce, kind_of, profile_object
from worker.summary import StoppedAtDeadline, Summary

from .support import Ranged


def test_exact_figures_of_a_numeric_column():
    values = np.random.default_rng(5).normal(10, 3, 10_000)
    array = pa.array(values, mask=np.arange(10_000) % 10 == 0)
    out = ColumnProfile.of_array(array).to_dict()
    kept = values[np.arange(10_000) % 10 != 0]
    assert out["kind"] == "numeric" and out["count"] == 9000 and out["null_count"] == 1000
    assert out["min"] == kept.min() and out["max"] == kept.max()
    assert out["mean"] == pytest.approx(kept.mean(), rel=1e-12)
    assert out["stddev"] == pytest.approx(kept.std(ddof=1), rel=1e-12)
    q25, q50, q75 = out["quartiles_approx"]
    assert q25 == pytest.approx(np.quantile(kept, 0.25), rel=0.02)
    assert q50 == pytest.approx(np.median(kept), rel=0.02)
    assert q75 == pytest.approx(np.quantile(kept, 0.75), rel=0.02)
    assert out["distinct_approx"] == pytest.approx(9000, rel=0.02)


def test_string_temporal_boolean_and_nested_kinds():
    table = pa.table({
        "s": ["b", "a", None, "c", "a"],
        "t": pa.array([1, 5, 3, None, 2], pa.timestamp("ms")),
        "b": [True, False, None, True, True],
        "l": pa.array([[1], None, [2, 3], [], [4]], pa.list_(pa.int64())),
        "d": pa.array(["x", "y", "x", None, "x"]).dictionary_encode(),
    })
    out = {name: ColumnProfile.of_array(table[name]).to_dict() for name in table.column_names}
    assert out["s"] == {"kind": "string", "count": 4, "null_count": 1, "min": "a", "max": "c", "distinct_approx": 3}
    assert out["t"]["kind"] == "temporal" and out["t"]["min"] == "1970-01-01T00:00:00.001"
    assert out["b"] == {"kind": "boolean", "count": 4, "null_count": 1, "min": False, "max": True,
                        "distinct_approx": 2}
    assert out["l"] == {"kind": "nested", "count": 4, "null_count": 1}
    assert out["d"]["kind"] == "string" and out["d"]["distinct_approx"] == 2


def test_kinds():
    assert kind_of(pa.decimal128(10, 2)) == "numeric"
    assert kind_of(pa.large_string()) == "string"
    assert kind_of(pa.date32()) == "temporal"
    assert kind_of(pa.struct([("a", pa.int8())])) == "nested"
    assert kind_of(pa.binary()) == "binary"


def test_merge_in_any_grouping_gives_the_same_profile():
    values = pa.array(np.random.default_rng(9).integers(0, 50_000, 40_000))
    whole = ColumnProfile.of_array(values).to_dict()
    rng = random.Random(4)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(values)), 6))
        parts = [ColumnProfile.of_array(values[a:b]) for a, b in zip([0, *cuts], [*cuts, len(values)], strict=True)]
        rng.shuffle(parts)
        merged = parts[0]
        for part in parts[1:]:
            merged = merged.merge(part)
        out = merged.to_dict()
        for exact in ("count", "null_count", "min", "max"):
            assert out[exact] == whole[exact]
        assert out["mean"] == pytest.approx(whole["mean"], rel=1e-12)
        assert out["stddev"] == pytest.approx(whole["stddev"], rel=1e-12)
        # HLL registers merge exactly, so the distinct estimate does not depend on the grouping
        assert out["distinct_approx"] == whole["distinct_approx"]
        # KLL compaction is randomized: the quartiles agree within the sketch's error
        for a, b in zip(out["quartiles_approx"], whole["quartiles_approx"], strict=True):
            assert a == pytest.approx(b, rel=0.02)


def test_merge_does_not_change_its_inputs():
    a, b = ColumnProfile.of_array(pa.array([1, 2, 3])), ColumnProfile.of_array(pa.array([10, 20]))
    before = a.to_dict()
    a.merge(b)
    assert a.to_dict() == before


def test_a_type_conflict_keeps_counts_only():
    merged = ColumnProfile.of_array(pa.array([1, 2])).merge(ColumnProfile.of_array(pa.array(["x", None])))
    assert merged.to_dict() == {"kind": "conflict", "count": 3, "null_count": 1, "types": ["int64", "string"]}


def test_profile_object_reads_only_the_requested_columns():
    data = parquet_bytes(events_table(3, 6000), row_group_size=2000)
    everything = Ranged(data)
    full = profile_object("p/dt=2026-01-03/x.parquet", len(data), everything).to_dict()
    assert full["profile"]["event_id"]["count"] == 6000 and full["row_groups"] == 3
    assert full["profile"]["dt"] == {"kind": "string", "count": 6000, "null_count": 0, "partition": True,
                                     "min": "2026-01-03", "max": "2026-01-03", "distinct_approx": 1}
    one = Ranged(data)
    only = profile_object("p/x.parquet", len(data), one, columns={"amount"}).to_dict()
    assert set(only["profile"]) == {"amount"}
    assert set(only["statistics"]) == {"amount"}
    assert one.bytes_read < everything.bytes_read / 2
    exact = {k: v for k, v in full["profile"]["amount"].items() if k != "quartiles_approx"}
    assert {k: v for k, v in only["profile"]["amount"].items() if k != "quartiles_approx"} == exact
    for a, b in zip(only["profile"]["amount"]["quartiles_approx"], full["profile"]["amount"]["quartiles_approx"],
                    strict=True):
        assert a == pytest.approx(b, abs=0.02 * 100)  # KLL compacts at random: within 2% of the range


def test_profile_object_agrees_with_the_footer_statistics():
    data = parquet_bytes(recipe_table())
    out = profile_object("r.parquet", len(data), Ranged(data)).to_dict()
    for column in ("id", "age", "score", "name"):
        assert out["profile"][column]["min"] == out["statistics"][column]["min"]
        assert out["profile"][column]["max"] == out["statistics"][column]["max"]
        assert out["profile"][column]["null_count"] == out["statistics"][column]["null_count"]


def test_profile_object_stops_between_row_groups_at_the_deadline():
    data = parquet_bytes(events_table(1, 3000), row_group_size=1000)
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(StoppedAtDeadline):
        profile_object("x.parquet", len(data), Ranged(data), should_stop=should_stop)


def test_corrupt_data_pages_skip_the_file_with_a_reason():
    data = bytearray(parquet_bytes(events_table(1, 3000)))
    data[200:4000] = b"\x00" * 3800  # pages destroyed, footer intact
    out = profile_object("bad.parquet", len(data), Ranged(bytes(data))).to_dict()
    assert out["files"] == 0 and out["skipped"][0]["key"] == "bad.parquet"
    assert "unreadable data" in out["skipped"][0]["reason"]


def test_unreadable_footer_is_skipped_in_full_mode_too():
    out = profile_object("empty.parquet", 0, Ranged(b"")).to_dict()
    assert out["skipped"] == [{"key": "empty.parquet", "reason": "too small to be Parquet (0 bytes)"}]


def test_full_summaries_merge_like_metadata_ones():
    parts = []
    for i in range(4):
        data = parquet_bytes(events_table(i, 1500 + 100 * i), row_group_size=700)
        parts.append(profile_object(f"e/{i}.parquet", len(data), Ranged(data)))
    forward = Summary.merge_all(parts).to_dict()
    backward = Summary.merge_all(reversed(parts)).to_dict()
    assert forward["rows"] == backward["rows"] == sum(1500 + 100 * i for i in range(4))
    for name, profile in forward["profile"].items():
        other = backward["profile"][name]
        assert profile["count"] == other["count"] and profile.get("min") == other.get("min")
        if profile.get("mean") is not None:
            assert math.isclose(profile["mean"], other["mean"], rel_tol=1e-12)
        assert profile.get("distinct_approx") == other.get("distinct_approx")


@pytest.mark.parametrize(("ranges", "expected"), [
    ([(0, 10), (10, 20)], [(0, 20)]),
    ([(100, 200), (0, 10)], [(0, 10), (100, 200)]),
    ([(0, 10), (5, 8)], [(0, 10)]),
])
def test_coalesce(ranges, expected):
    assert coalesce(ranges, gap=50) == expected


def test_a_part_of_zeros_does_not_wash_out_the_deviation_of_tiny_values():
    """Found by the differential test: a slice whose values are all 0.0 has no scale of its own, and merging
    took its exponent (0), scaling the tiny values' moments by 4**-897 to nothing: stddev 0.0 instead of ~1e-270."""
    import pyarrow as pa

    tiny, zeros = pa.array([1e-270, 3e-270, 2e-270]), pa.array([0.0, 0.0])
    whole = ColumnProfile.of_array(pa.concat_arrays([tiny, zeros])).to_dict()
    for merged in (ColumnProfile.of_array(tiny).merge(ColumnProfile.of_array(zeros)),
                   ColumnProfile.of_array(zeros).merge(ColumnProfile.of_array(tiny))):
        got = merged.to_dict()
        assert got["stddev"] > 0 and math.isclose(got["stddev"], whole["stddev"], rel_tol=1e-9)
        assert math.isclose(got["mean"], whole["mean"], rel_tol=1e-9)
