"""The summary engine on real Parquet bytes: footers in at most two reads, merging in any order."""

import datetime as dt
import random
from decimal import Decimal

import pyarrow as pa
import pytest

from worker.devstack.datasets import events_table, parquet_bytes, recipe_table
from worker.summary import (
    MAX_SKIPPED_LISTED,
    TAIL_BYTES,
    Summary,
    UnreadableFile,
    partition_values,
    read_footer,
    skip_reason,
    summarize_object,
    to_json_value,
)

from .support import Ranged


def summarize(key: str, data: bytes) -> Summary:
    return summarize_object(key, len(data), Ranged(data))


def test_recipe_file():
    out = summarize("recipe/data.parquet", parquet_bytes(recipe_table())).to_dict()
    assert (out["rows"], out["columns"], out["files"], out["row_groups"]) == (3, 4, 1, 1)
    assert [c["name"] for c in out["schema"]] == ["id", "name", "age", "score"]
    assert [c["type"] for c in out["schema"]] == ["int64", "string", "int64", "double"]
    assert out["statistics"]["age"] == {"null_count": 1, "min": 36, "max": 45}
    assert out["statistics"]["name"] == {"null_count": 0, "min": "Ada", "max": "Linus"}


def test_small_footer_takes_one_read_and_large_footer_two():
    small = Ranged(parquet_bytes(recipe_table()))
    read_footer(len(small.data), small)
    assert len(small.reads) == 1
    wide = pa.table({f"column_{i:03d}_with_a_long_name": pa.array(range(50)) for i in range(400)})
    data = parquet_bytes(wide, row_group_size=10)
    big = Ranged(data)
    md = read_footer(len(data), big)
    footer_len = int.from_bytes(data[-8:-4], "little")
    assert footer_len + 8 > TAIL_BYTES  # the case under test
    assert len(big.reads) == 2 and md.num_columns == 400 and md.num_rows == 50
    # the second read fetches only what the first missed
    assert big.reads[1][1] == big.reads[0][0] - 1


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "too small"),
    (b"PAR1", "too small"),
    (b"id,name\n1,a\n2,b\n", "no PAR1 magic"),
    (b"PAR1" + b"\x00" * 20 + (10_000).to_bytes(4, "little") + b"PAR1", "corrupt footer length"),
    (b"PAR1" + b"\xff" * 40 + (40).to_bytes(4, "little") + b"PAR1", "corrupt footer"),
    (b"PAR1" + b"\x00" * 40 + (40).to_bytes(4, "little") + b"PARE", "encrypted"),
])
def test_unreadable_objects_are_skipped_with_a_reason(data, reason):
    with pytest.raises(UnreadableFile, match=reason):
        read_footer(len(data), Ranged(data))
    out = summarize("x/bad.parquet", data).to_dict()
    assert out["files"] == 0 and out["skipped_count"] == 1
    assert reason in out["skipped"][0]["reason"]


def test_truncated_file_is_skipped():
    data = parquet_bytes(recipe_table())[:-50]
    out = summarize("x/truncated.parquet", data).to_dict()
    assert out["files"] == 0 and out["skipped"][0]["key"] == "x/truncated.parquet"


def test_nested_columns_have_leaf_statistics():
    table = pa.table({
        "id": [1, 2, 3],
        "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
        "point": pa.array([{"x": 1.0, "y": 2.0}, None, {"x": -1.0, "y": 5.0}]),
        "attrs": pa.array([[("k", 1)], None, [("z", 3)]], pa.map_(pa.string(), pa.int64())),
    })
    out = summarize("n.parquet", parquet_bytes(table)).to_dict()
    assert out["columns"] == 4
    types = {c["name"]: c["type"] for c in out["schema"]}
    assert types["tags"].startswith("list<") and types["point"].startswith("struct<")
    assert types["attrs"].startswith("map<")
    stats = out["statistics"]
    assert stats["tags.list.element"]["min"] == "a" and stats["tags.list.element"]["max"] == "b"
    assert stats["point.x"]["min"] == -1.0 and stats["point.y"]["max"] == 5.0
    assert stats["attrs.key_value.key"]["min"] == "k"


def test_all_null_row_group_does_not_hide_the_others_min_max():
    table = pa.table({"v": pa.array([None, None, 5, 7], pa.int64())})
    out = summarize("n.parquet", parquet_bytes(table, row_group_size=2)).to_dict()
    assert out["statistics"]["v"] == {"null_count": 2, "min": 5, "max": 7}


def test_missing_statistics_make_min_max_unknown_not_wrong():
    data = parquet_bytes(pa.table({"v": [1, 2, 3]}), write_statistics=False)
    out = summarize("n.parquet", data).to_dict()
    assert out["statistics"]["v"] == {"null_count": None, "min": None, "max": None}
    with_stats = summarize("m.parquet", parquet_bytes(pa.table({"v": [0, 9]})))
    merged = Summary.merge_all([summarize("n.parquet", data), with_stats]).to_dict()
    assert merged["statistics"]["v"]["min"] is None and merged["rows"] == 5


def test_schema_drift_is_reported_not_fatal():
    a = summarize("a.parquet", parquet_bytes(pa.table({"id": [1, 2], "v": [1, 2]})))
    b = summarize("b.parquet", parquet_bytes(pa.table({"id": [3], "v": ["x"], "extra": [True]})))
    out = a.merge(b).to_dict()
    assert out["rows"] == 3 and out["columns"] == 3
    v = next(c for c in out["schema"] if c["name"] == "v")
    assert v == {"name": "v", "type": None, "types": ["int64", "string"], "files": 2}
    assert out["schema_conflicts"] == ["v"]
    assert next(c for c in out["schema"] if c["name"] == "extra")["files"] == 1
    assert out["statistics"]["v"] == {"null_count": 0, "min": None, "max": None, "type_conflict": True}
    assert out["statistics"]["id"] == {"null_count": 0, "min": 1, "max": 3}


def _parts() -> list[Summary]:
    parts = [summarize(f"events/dt=2026-01-0{d}/p{p}.parquet",
                       parquet_bytes(events_table(d * 10 + p, 300 + 50 * p), row_group_size=100))
             for d in (1, 2, 3) for p in range(2)]
    parts.append(summarize("events/other.parquet", parquet_bytes(pa.table({"event_id": [-5], "note": ["x"]}))))
    parts += [Summary.of_skipped(f"events/junk-{i}.crc", "not a .parquet key") for i in range(3)]
    parts.append(summarize("events/broken.parquet", b"garbage"))
    return parts


def test_merge_is_order_independent_and_associative():
    parts = _parts()
    expected = Summary.merge_all(parts).to_dict()
    rng = random.Random(7)
    for _ in range(20):
        shuffled = parts[:]
        rng.shuffle(shuffled)
        # split into random groups, merge each group, then merge the groups
        cuts = sorted(rng.sample(range(1, len(shuffled)), 3))
        groups = [shuffled[i:j] for i, j in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
        merged = Summary.merge_all(Summary.merge_all(g) for g in groups)
        assert merged.to_dict() == expected
    assert Summary().merge(parts[0]).to_dict() == parts[0].to_dict()


def test_merged_figures():
    out = Summary.merge_all(_parts()).to_dict()
    assert out["files"] == 7
    assert out["rows"] == 3 * (300 + 350) + 1
    assert out["columns"] == 6  # event_id, user, amount, ts, tags + note
    assert out["partition_columns"] == ["dt"]
    assert out["skipped_count"] == 4
    assert out["statistics"]["event_id"]["min"] == -5
    assert out["statistics"]["ts"]["min"].startswith("2026-")


def test_skipped_list_is_capped_but_counted():
    parts = [Summary.of_skipped(f"k/{i:04d}", "not a .parquet key") for i in range(250)]
    random.Random(1).shuffle(parts)
    out = Summary.merge_all(parts).to_dict()
    assert out["skipped_count"] == 250
    assert len(out["skipped"]) == MAX_SKIPPED_LISTED
    assert out["skipped"][0]["key"] == "k/0000" and out["skipped"][-1]["key"] == "k/0099"


@pytest.mark.parametrize(("key", "reason"), [
    ("a/b.parquet", None), ("a/_SUCCESS", "not a .parquet key"), ("a/.b.parquet.crc", "not a .parquet key"),
    ("a/folder/", "folder marker"), ("a/b.PARQUET", "not a .parquet key"),
])
def test_skip_reason(key, reason):
    assert skip_reason(key, 0) == reason


def test_partition_values():
    assert partition_values("p/year=2026/month=01/x=/file.parquet") == {"year": "2026", "month": "01", "x": ""}
    assert partition_values("p/dt=2026-01-01") == {}  # the file name itself is not a folder


@pytest.mark.parametrize(("value", "expected"), [
    (1, 1), (1.5, 1.5), (-0.0, 0.0), (float("nan"), "NaN"), (float("-inf"), "-Infinity"), ("s", "s"), (True, True),
    (None, None),
    (dt.date(2026, 1, 2), "2026-01-02"), (dt.datetime(2026, 1, 2, 3, 4), "2026-01-02T03:04:00"),
    (Decimal("1.10"), "1.10"), (b"abc", "base64:YWJj"), (b"\xff\x00", "base64:/wA="),
])
def test_json_values(value, expected):
    assert to_json_value(value) == expected


@pytest.mark.parametrize("data", [b"PAR1" + b"x" * 20 + b"NOPE", b"PAR1" + b"\x00" * 20 + (16).to_bytes(4, "little")
                                  + b"PAR1"])
def test_both_modes_skip_an_unreadable_footer_with_one_reason(data):
    from worker.profile import profile_object

    metadata, full = summarize("bad.parquet", data), profile_object("bad.parquet", len(data), Ranged(data))
    assert metadata.skipped == full.skipped and metadata.skipped_count == full.skipped_count == 1
