"""Both modes against an independent oracle, for every Arrow type Parquet holds and its edge values.

Hypothesis builds tables of all the types (extreme integers, NaN/±inf/±0/1e308/subnormal floats,
decimals, dates and timestamps to the ends of int64, invalid UTF-8 and long strings, binary, UUID,
dictionary, null, nested), writes them with pyarrow.parquet as several files of several row groups,
and summarizes them in metadata mode (footers) and full mode (data). The figures are held against
pyarrow.compute over the same data, numpy's datetime formatting, Python's uuid/base64 and the
``statistics`` module (exact rational means and deviations); never against the project's own code.
Each test counts the branches its checks took (tests/unit/reaching.py) and fails unless, in its own run,
every type had values and every edge above was reached.
"""

from __future__ import annotations

import base64
import io
import json
import math
import random
import re
import statistics
import uuid
from decimal import Context, Decimal
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from worker.profile import ColumnProfile, profile_object
from worker.summary import Summary, summarize_object

from .reaching import Branches
from .support import Ranged

# No shrinking: a failing example of ~50 columns shrinks for minutes; the seed reproduces it.
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate)
RESULT_SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "result.schema.json").read_text())
LIMIT = 128  # STATISTIC_MAX_BYTES of the result contract
I64 = (-(2**63), 2**63 - 1)


def _ints(bits: int, signed: bool):
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return _ends(low, high)


def _ends(low: int, high: int):
    """Any integer from low to high, and the two ends themselves (st.integers alone almost never gives them)."""
    return st.one_of(st.sampled_from([low, high, 0]), st.integers(low, high))


def _narrow_floats(width: int, largest: float):
    # bounded: st.floats(width=16) draws float64 values and rejects the whole table when one overflows
    # float16 (40-75% of tables were rejected); the infinities and NaNs come from the sampled edges
    return st.floats(-largest, largest, width=width)


_EDGE_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, 2.2250738585072014e-308]
_TEXT = st.one_of(st.text(max_size=6), st.text(min_size=120, max_size=160),
                  st.sampled_from(["\U0010ffff" * 40, "é" * 70, "\x7f" * 200]))
_BYTES = st.one_of(st.binary(max_size=6), st.binary(min_size=120, max_size=160), st.sampled_from([b"\xff" * 200]))
_STRING_BYTES = st.one_of(_TEXT.map(lambda s: s.encode()), st.sampled_from([b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80"]))

# name -> (Arrow type, value strategy); values are what pa.array takes for the type (ints for temporal).
COLUMNS = {
    **{f"{'i' if s else 'u'}{b}": (getattr(pa, f"{'' if s else 'u'}int{b}")(), _ints(b, s))
       for b in (8, 16, 32, 64) for s in (True, False)},
    "f16": (pa.float16(), st.one_of(st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, -0.0, 65504.0, 6e-08]),
                                    _narrow_floats(16, 65504.0))),
    "f32": (pa.float32(), st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 3.4028234663852886e38]),
                                    _narrow_floats(32, 3.4028234663852886e38))),
    "f64": (pa.float64(), st.one_of(st.sampled_from(_EDGE_FLOATS), st.floats())),
    "big": (pa.float64(), st.sampled_from([1e308, 1.5e308, -1e308, 7e307])),  # finite, the mean overflows a sum
    # finite, the deviation overflows a float
    "huge": (pa.float64(), st.sampled_from([1.7976931348623157e308, -1.7976931348623157e308])),
    "d9": (pa.decimal128(9, 2), st.integers(-(10**9) + 1, 10**9 - 1)),
    "d38": (pa.decimal128(38, 6), st.integers(-(10**38) + 1, 10**38 - 1)),
    "d76": (pa.decimal256(76, 10), st.integers(-(10**76) + 1, 10**76 - 1)),
    "d32": (pa.decimal32(7, 3), st.integers(-(10**7) + 1, 10**7 - 1)),
    "d64": (pa.decimal64(18, 0), st.integers(-(10**18) + 1, 10**18 - 1)),
    "date32": (pa.date32(), st.integers(-(2**31), 2**31 - 1)),
    "date64": (pa.date64(), st.integers(-(10**8), 10**8).map(lambda d: d * 86_400_000)),
    "t32s": (pa.time32("s"), st.integers(0, 86_399)),
    "t32ms": (pa.time32("ms"), st.integers(0, 86_399_999)),
    "t64us": (pa.time64("us"), st.integers(0, 86_399_999_999)),
    "t64ns": (pa.time64("ns"), st.integers(0, 86_399_999_999_999)),
    # seconds are written as milliseconds: keep them inside int64 after the * 1000
    "ts_s": (pa.timestamp("s"), _ends(-(I64[1] // 1000), I64[1] // 1000)),
    "ts_ms_tz": (pa.timestamp("ms", "Asia/Kolkata"), _ends(*I64)),
    "ts_us": (pa.timestamp("us"), _ends(*I64)),
    "ts_ns_utc": (pa.timestamp("ns", "UTC"), _ends(*I64)),
    **{f"dur_{u}": (pa.duration(u), _ends(*I64)) for u in ("s", "ms", "us", "ns")},
    "str": (pa.string(), _STRING_BYTES),
    "lstr": (pa.large_string(), _STRING_BYTES),
    "vstr": (pa.string_view(), _STRING_BYTES),
    "bin": (pa.binary(), _BYTES),
    "lbin": (pa.large_binary(), _BYTES),
    "fsb": (pa.binary(3), st.binary(min_size=3, max_size=3)),
    "uuid": (pa.uuid(), st.uuids().map(lambda u: u.bytes)),
    "dict": (pa.dictionary(pa.int32(), pa.string()), st.sampled_from(["x", "y", "zz", "é"])),
    "bool": (pa.bool_(), st.booleans()),
    "null": (pa.null(), st.none()),
    "st": (pa.struct([("x", pa.int32()), ("s", pa.string())]),
           st.fixed_dictionaries({"x": st.one_of(st.none(), _ints(32, True)), "s": st.one_of(st.none(), _TEXT)})),
    "lst": (pa.list_(pa.int64()), st.lists(st.one_of(st.none(), _ints(64, True)), max_size=3)),
}


def _array(arrow_type: pa.DataType, values: list) -> pa.Array:
    if pa.types.is_decimal(arrow_type):
        exact = Context(prec=100)  # Decimal's default 28 digits would round a decimal256
        return pa.array([None if v is None else Decimal(v).scaleb(-arrow_type.scale, exact) for v in values],
                        pa.decimal256(76, arrow_type.scale)).cast(arrow_type)
    if pa.types.is_temporal(arrow_type):
        ints = pa.array(values, pa.int32() if arrow_type.bit_width == 32 else pa.int64())
        return ints.view(arrow_type)
    if arrow_type in (pa.string(), pa.large_string(), pa.string_view()):  # bytes, maybe invalid UTF-8
        return pa.array(values, pa.binary()).view(pa.string()).cast(arrow_type)
    if isinstance(arrow_type, pa.UuidType):
        return pa.ExtensionArray.from_storage(arrow_type, pa.array(values, pa.binary(16)))
    if pa.types.is_dictionary(arrow_type):
        return pa.array(values, pa.string()).dictionary_encode()
    return pa.array(values, arrow_type)


@st.composite
def tables(draw) -> list[pa.Table]:
    rows = draw(st.integers(1, 12))
    # a few columns of only nulls (no bounds, no moments), whatever the table's size; the others with or
    # without nulls, so that each type has values in most tables
    only_nulls = draw(st.sets(st.sampled_from(list(COLUMNS)), max_size=3))
    columns = {}
    for name, (arrow_type, values) in COLUMNS.items():
        cells = st.none() if name in only_nulls else st.none() | values if draw(st.booleans()) else values
        columns[name] = _array(arrow_type, draw(st.lists(cells, min_size=rows, max_size=rows)))
    table = pa.table(columns)
    # two or three files whenever there are two rows (max_size=2 alone left most tables one file)
    cuts = sorted(set(draw(st.lists(st.integers(1, rows - 1), min_size=1, max_size=2)))) if rows > 1 else []
    return [table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, rows], strict=True)]


def _parquet(table: pa.Table, index: int) -> bytes:
    out = io.BytesIO()
    # decimals as INT32/INT64 in odd files, FLBA in even ones: both physical forms are in play
    pq.write_table(table, out, row_group_size=max(1, len(table) // 2), store_decimal_as_integer=bool(index % 2))
    return out.getvalue()


def _both_modes(parts: list[pa.Table]) -> tuple[dict, dict, pa.Table]:
    objects = {f"p/{i}.parquet": _parquet(t, i) for i, t in enumerate(parts)}
    meta = [summarize_object(k, len(v), Ranged(v)) for k, v in objects.items()]
    full = [profile_object(k, len(v), Ranged(v)) for k, v in objects.items()]
    for part in meta + full:
        assert not part.skipped, part.skipped  # no file is lost to any type or value
    order = list(range(len(parts)))
    random.Random(len(parts)).shuffle(order)
    m, f = Summary.merge_all(meta).to_dict(), Summary.merge_all(full).to_dict()
    # merging is order-free: the exact figures do not depend on the order of the files
    assert Summary.merge_all([meta[i] for i in order]).to_dict() == m
    back = Summary.merge_all([full[i] for i in order]).to_dict()
    for name, profile in f["profile"].items():
        for figure in ("count", "null_count", "nan_count", "min", "max", "distinct_approx", "unrendered"):
            assert back["profile"][name].get(figure) == profile.get(figure), (name, figure)
    # the oracle reads the files back with pyarrow, as written
    data = pa.concat_tables([pq.read_table(io.BytesIO(v)) for v in objects.values()])
    return m, f, data


# ---- the oracle's renderings -------------------------------------------------------------------

def _iso(text: str) -> tuple[int, str]:
    """(signed year, rest) of an ISO 8601 date or date-time, in numpy's form or the expanded one."""
    m = re.fullmatch(r"([+-]?)(\d+)(-\d\d-\d\d.*)", text)
    assert m, text
    return (-1 if m.group(1) == "-" else 1) * int(m.group(2)), m.group(3)


def _expected_bound(column: pa.ChunkedArray, which: str):
    """The column's min or max by pyarrow.compute, as (kind, value) for the checks below."""
    t = column.type
    if isinstance(t, pa.UuidType):
        bounds = pc.min_max(pc.cast(column, pa.binary()) if False else
                            pa.chunked_array([c.storage for c in column.chunks], t.storage_type))
        raw = bounds[which].as_py()
        return "exact", None if raw is None else str(uuid.UUID(bytes=raw))
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        raw = pc.min_max(column.cast(pa.large_binary()))[which].as_py()
        return "text", raw
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytes", pc.min_max(column)[which].as_py()
    if pa.types.is_floating(t):
        value = pc.min_max(column.cast(pa.float64()))[which].as_py()
        if value is not None and math.isnan(value):  # all NaN: no bound over non-NaN values
            value = None
        if value is None or math.isfinite(value):
            return "exact", None if value is None else value + 0.0
        return "exact", "Infinity" if value > 0 else "-Infinity"
    if pa.types.is_decimal(t):
        value = pc.min_max(column.cast(pa.decimal256(76, t.scale)))[which].as_py()
        return "exact", None if value is None else format(value, "f")
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "exact", pc.min_max(column)[which].as_py()
    if pa.types.is_duration(t):
        return "exact", pc.min_max(column.cast(pa.int64()))[which].as_py()
    if pa.types.is_temporal(t):
        ints = pc.min_max(column.cast(pa.int32() if t.bit_width == 32 else pa.int64()))[which].as_py()
        if ints is None:
            return "exact", None
        if pa.types.is_date(t):
            unit = "D" if pa.types.is_date32(t) else "ms"
            return "iso", (np.datetime_as_string(np.datetime64(ints, unit), unit="D"), "")
        if pa.types.is_time(t):
            return "time", np.datetime_as_string(np.datetime64(ints, t.unit)).split("T")[1]
        # numpy formats the seconds (int64's minimum would be its NaT in the column's own unit)
        digits = {"s": 0, "ms": 3, "us": 6, "ns": 9}[t.unit]
        seconds, fraction = divmod(ints, 10**digits)
        text = np.datetime_as_string(np.datetime64(seconds, "s")) + (f".{fraction:0{digits}d}" if digits else "")
        return "iso", (text, "Z" if t.tz else "")
    raise AssertionError(f"no oracle for {t}")


def _check_bound(ours, extra: dict, kind: str, expected, which: str, where: str) -> str:
    """Hold one bound against the oracle's; the branch it took, for the test's count."""
    unrendered = extra.get("unrendered", {})
    truncated = extra.get("truncated", [])
    if kind == "exact":
        assert ours == expected, where
        return "exact"
    if kind == "time":
        assert ours == expected, where
        return "exact"
    if kind == "iso":
        text, suffix = expected
        assert ours is not None and ours.endswith(suffix), where
        assert _iso(ours[:len(ours) - len(suffix)] if suffix else ours) == _iso(text), where
        if 1 <= _iso(text)[0] <= 9999:
            assert ours == text + suffix, where  # the plain form inside 0001..9999
            return "inside 0001-9999"
        return "outside 0001-9999"
    if expected is None:
        assert ours is None and which not in unrendered, where
        return "none"
    if kind == "text":
        try:
            text = expected.decode("utf-8")
        except UnicodeDecodeError:
            if len(expected) <= LIMIT or which not in truncated:
                assert ours is None and unrendered[which] == "not valid UTF-8", where
                return "invalid UTF-8"
            text = None
        if len(expected) <= LIMIT:
            assert ours == text and which not in truncated, where
            return "exact"
        if ours is None:  # no shorter upper bound than code points U+10FFFF
            assert which == "max" and which in unrendered and set(text[:LIMIT // 4]) == {"\U0010ffff"}, where
            return "no shorter bound"
        assert len(ours.encode()) <= LIMIT and which in truncated, where
        value = ours.encode()
    else:
        if len(expected) <= LIMIT:
            assert ours == "base64:" + base64.b64encode(expected).decode() and which not in truncated, where
            return "exact"
        if ours is None:  # no shorter upper bound than 128 bytes of 0xFF
            assert which == "max" and which in unrendered and set(expected[:LIMIT]) == {0xFF}, where
            return "no shorter bound"
        assert ours.startswith("base64:") and which in truncated, where
        value = base64.b64decode(ours[7:])
        assert len(value) <= LIMIT, where
    # a shortened bound still bounds the column: min a prefix of it, max above it
    if which == "min":
        assert expected.startswith(value), where
    else:
        assert value > expected, where
    return "shortened"


def _numbers(column: pa.ChunkedArray) -> list:
    """The non-null, non-NaN values as Python numbers (float64 where the project takes floats)."""
    t = column.type
    if pa.types.is_decimal(t):
        return [v for v in column.cast(pa.decimal256(76, t.scale)).to_pylist() if v is not None]
    if pa.types.is_integer(t):
        # mean and stddev are figures of the float64 values (min and max stay exact)
        return [v for v in column.cast(pa.float64(), safe=False).to_pylist() if v is not None]
    return [v for v in column.cast(pa.float64()).to_pylist() if v is not None and not math.isnan(v)]


def _check_moments(profile: dict, column: pa.ChunkedArray, name: str) -> list[str]:
    """Hold mean and deviation against exact rationals; the branches it took, for the test's count."""
    values = _numbers(column)
    floats = [float(v) for v in values]
    scale = max((abs(v) for v in floats if math.isfinite(v)), default=0.0)
    infinite = [v for v in floats if math.isinf(v)]
    if pa.types.is_floating(column.type):
        assert profile["nan_count"] == (pc.sum(pc.is_nan(column.cast(pa.float64()))).as_py() or 0), name
    if not values:
        assert profile["mean"] is None and profile["stddev"] is None, name
        return ["no values"]
    if infinite:  # the mean is the infinity (NaN with both signs), the deviation NaN
        # not pyarrow.compute's mean: that is NaN when the finite values' float sum overflows to the other
        # infinity ([inf, -1e308, -1e308]), though inf plus any finite number is inf
        signs = {v > 0 for v in infinite}
        assert profile["mean"] == ("NaN" if len(signs) == 2 else "Infinity" if True in signs else "-Infinity"), name
        assert profile["stddev"] == ("NaN" if len(values) > 1 else None), name
        return ["infinite values"]
    # statistics computes in exact rationals: the truth, even where a float sum overflows
    exact_mean = statistics.mean(values)
    assert profile["mean"] == pytest.approx(float(exact_mean), rel=1e-9, abs=1e-12 * scale), name
    reached = ["the mean overflows a float sum"] if math.isinf(sum(floats)) else []
    if len(values) < 2:
        assert profile["stddev"] is None, name
        return [*reached, "one value"]
    try:
        exact = statistics.stdev(values)
    except OverflowError:
        exact = math.inf
    if not math.isfinite(float(exact)):
        assert profile["stddev"] is None and "stddev" in profile["unrendered"], name
        return [*reached, "the deviation overflows a float"]
    assert profile["stddev"] == pytest.approx(float(exact), rel=1e-7, abs=1e-12 * scale), name
    return [*reached, "finite"]


def _check(parts: list[pa.Table]) -> set[str]:
    """Both modes' figures against the oracle's; the branches the checks took, for the test's count."""
    meta, full, data = _both_modes(parts)
    rows = data.num_rows
    reached = {f"files: {'several' if len(parts) > 1 else 'one'}"}
    if any(len(part) > 1 for part in parts):
        reached.add("row groups: several in a file")
    assert meta["rows"] == full["rows"] == rows
    for result in (meta, full):  # strict JSON, valid UTF-8, and the documented shape
        json.dumps(result, allow_nan=False, ensure_ascii=False).encode("utf-8", "strict")
        jsonschema.validate(result["statistics"], RESULT_SCHEMA["properties"]["statistics"])
    jsonschema.validate(full["profile"], RESULT_SCHEMA["properties"]["profile"])
    for name in data.column_names:
        column, profile = data.column(name), full["profile"][name]
        assert profile["count"] == pc.count(column).as_py() if name != "null" else profile["count"] == 0, name
        assert profile["null_count"] == column.null_count, name
        if name != "null":
            reached.add(f"values: {name}" if profile["count"] else "a column of only nulls")
        if name == "null":
            assert profile["kind"] == "null" and meta["statistics"]["null"]["null_count"] == rows
            continue
        if name in ("st", "lst"):
            assert profile["kind"] == "nested"
            continue
        stats = meta["statistics"][name]
        assert stats["null_count"] == column.null_count, name
        for which in ("min", "max"):
            kind, expected = _expected_bound(column, which)
            branch = _check_bound(profile[which], profile, kind, expected, which, f"full {name} {which}")
            if kind != "exact":
                reached.add(f"{kind} bound: {branch}: {which}")
            if stats[which] is None and profile.get("nan_count"):
                reached.add("footer: no bounds for a row group of NaN and nulls")
                continue  # Arrow records no bounds for a row group of NaN and nulls: the footer has none
            _check_bound(stats[which], stats, kind, expected, which, f"metadata {name} {which}")
        # both modes agree wherever both render
        for which in ("min", "max"):
            if stats[which] is not None:
                assert stats[which] == profile[which], (name, which)
        if profile.get("nan_count"):
            reached.add("floats: NaN")
        if profile["kind"] == "numeric":
            reached.update(f"moments: {branch}" for branch in _check_moments(profile, column, name))
    child = data.column("st").combine_chunks()
    elements = data.column("lst").combine_chunks().flatten()
    for leaf, values in (("st.x", child.field("x")), ("lst.list.element", elements)):
        bounds = pc.min_max(values)
        if meta["statistics"][leaf]["min"] is not None or bounds["min"].as_py() is None:
            assert meta["statistics"][leaf]["min"] == bounds["min"].as_py(), leaf
            assert meta["statistics"][leaf]["max"] == bounds["max"].as_py(), leaf
            if bounds["min"].as_py() is not None:
                reached.add(f"nested leaf bounds: {leaf}")
    return reached


# Each type with values, and each edge the oracle has a branch for, in the test's own run of 20 tables
ORACLE = Branches(**{f"values: {name}": 4 for name in COLUMNS if name != "null"}, **{
    "a column of only nulls": 4, "files: several": 3, "row groups: several in a file": 4, "floats: NaN": 4,
    "footer: no bounds for a row group of NaN and nulls": 2, "moments: infinite values": 4,
    "moments: the mean overflows a float sum": 5, "moments: the deviation overflows a float": 2,
    "iso bound: outside 0001-9999": 5, "text bound: invalid UTF-8": 5, "text bound: shortened": 5,
    "text bound: no shorter bound": 1, "bytes bound: shortened": 1, "bytes bound: no shorter bound": 5,
    "nested leaf bounds: st.x": 4, "nested leaf bounds: lst.list.element": 4})


@ORACLE.checked
@seed(20260110)
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), phases=_PHASES,
          database=None)
@given(tables())
def test_both_modes_agree_with_the_oracle_for_every_type(parts):
    for branch in sorted(_check(parts)):
        ORACLE.reached(branch)


SLICED = ("i64", "u64", "f64", "big", "d76", "ts_ns_utc", "dur_ns", "str", "vstr", "fsb", "uuid", "null")
SLICES = Branches(**{f"cut between values: {name}": 3 for name in SLICED if name != "null"})


@SLICES.checked
@seed(7)
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), phases=_PHASES,
          database=None)
@given(tables(), st.data())
def test_profiles_of_slices_merge_to_the_profile_of_the_whole(parts, data):
    # full mode reads record batches: any slicing must give the same exact figures
    table = pa.concat_tables(parts)
    for name in SLICED:
        column = table.column(name)
        whole = ColumnProfile.of_array(column).to_dict()
        # a cut inside the column (st.integers(0, len) gave an end half the time); the empty slices at both
        # ends are merged as well, so an empty batch's profile both absorbs and is absorbed
        cut = data.draw(st.integers(1, max(1, len(column) - 1)))
        left, right = column.slice(0, cut), column.slice(cut)
        merged = ColumnProfile.of_array(column.slice(0, 0))
        for piece in (left, right, column.slice(len(column))):
            merged.absorb(ColumnProfile.of_array(piece))
        values_on_both_sides = left.null_count < len(left) and right.null_count < len(right)
        SLICES.reached(f"cut {'between values' if values_on_both_sides else 'with no values on a side'}: {name}")
        got = merged.to_dict()
        for figure in ("count", "null_count", "nan_count", "min", "max", "unrendered", "truncated"):
            assert got.get(figure) == whole.get(figure), (name, figure)
        for figure in ("mean", "stddev"):
            if isinstance(whole.get(figure), float):
                # Chan's merge rounds differently from one pass: within a few ulps of the largest value
                scale = max(abs(v) for v in _numbers(column) if math.isfinite(v))
                assert got[figure] == pytest.approx(whole[figure], rel=1e-9, abs=1e-12 * float(scale)), (name, figure)
            else:
                assert got.get(figure) == whole.get(figure), (name, figure)


def test_a_footer_nan_bound_costs_the_bound_not_the_file():
    # written by hand: Arrow's writer never records NaN, other writers may
    table = pa.table({"f": pa.array([1.0, math.nan, 2.0])})
    out = io.BytesIO()
    pq.write_table(table, out)
    data = out.getvalue()
    result = summarize_object("f.parquet", len(data), Ranged(data)).to_dict()
    assert result["statistics"]["f"]["min"] == 1.0 and result["statistics"]["f"]["max"] == 2.0
    full = profile_object("f.parquet", len(data), Ranged(data)).to_dict()["profile"]["f"]
    assert full["nan_count"] == 1 and full["min"] == 1.0 and full["max"] == 2.0 and full["mean"] == 1.5
