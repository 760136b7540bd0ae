"""A deterministic corpus of hostile Parquet objects, for the integration test and the benchmark.

Each :class:`Case` is one object under its own prefix (``hostile/<name>/``), so one job per case
answers for exactly that object. A case says what a correct answer is: ``read`` (the object is
read; rows, columns and statistics agree with pyarrow reading the same bytes, see :func:`oracle`),
``skip`` (the object is skipped with a reason, the job still answers ``ok``), or ``read-or-skip``
(a reader with a footer-size cap may skip it; if it reads it, the figures must be right).

Large objects are built in memory in seconds and never written to the repository. Three cases
are for the benchmark only (``corpus(large=True)``): a 150 MB object whose last 8 bytes claim a
150 MB footer, a valid ~50 MB footer, and the full-size version of the former. Some footers
pyarrow cannot write (statistics of several MB, a schema nested 7,000 levels) are written here
with a small Thrift compact-protocol encoder.

    python -m worker.devstack.hostile [--large] DIR   # write the corpus to DIR as files
"""

from __future__ import annotations

import base64
import io
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PREFIX = "hostile/"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One hostile object: its key, how to build its bytes, and what a correct answer is."""

    name: str
    key: str
    build: Callable[[], bytes]
    outcome: str  # "read", "skip" or "read-or-skip"
    why: str  # what is hostile about it, and what a correct answer looks like
    job: dict[str, Any] = field(default_factory=dict)  # extra job fields (e.g. columns)
    bench_only: bool = False
    oracle_safe: bool = True  # False where pyarrow itself must not be pointed at the bytes (it crashes)

    @property
    def prefix(self) -> str:
        """The job prefix that lists exactly this object."""
        return f"{PREFIX}{self.name}/"


# -- Parquet with pyarrow ---------------------------------------------------------------------

def _parquet(table: pa.Table, **kwargs: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()


def _small() -> bytes:
    return _parquet(pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["Ada", "Grace", "Linus"]}))


def int_extremes() -> bytes:
    """int64 above 2^53 (IDs, ns epochs) and every integer width at its limits."""
    big = 2**53
    return _parquet(pa.table({
        "i64": pa.array([big + 1, 2**63 - 1, -(2**63), big + 3, None], pa.int64()),
        "i64_ns_epoch": pa.array([1_767_225_600_123_456_789 + i for i in range(5)], pa.int64()),
        "i8": pa.array([-128, 127, 0, None, 1], pa.int8()),
        "i16": pa.array([-32768, 32767, 0, 1, None], pa.int16()),
        "i32": pa.array([-(2**31), 2**31 - 1, 0, 1, 2], pa.int32()),
        "u8": pa.array([0, 255, 1, 2, 3], pa.uint8()),
        "u16": pa.array([0, 65535, 1, 2, 3], pa.uint16()),
        "u32": pa.array([0, 2**32 - 1, 1, 2, 3], pa.uint32()),
        "u64": pa.array([0, 2**64 - 1, 2**63, big + 1, None], pa.uint64()),
    }))


def float16() -> bytes:
    return _parquet(pa.table({"f16": pa.array(np.array([0.5, -1.5, 65504.0, -65504.0, 0.0], np.float16)),
                              "f16_null": pa.array([np.float16(1.0), None, None, np.float16(2.0), None],
                                                   pa.float16())}))


def time32() -> bytes:
    return _parquet(pa.table({"t32_s": pa.array([0, 86_399, 3600, None], pa.time32("s")),
                              "t32_ms": pa.array([0, 86_399_999, 1, 2], pa.time32("ms"))}))


def time64_ns() -> bytes:
    return _parquet(pa.table({"t64_ns": pa.array([0, 86_399_999_999_999, 1, None], pa.time64("ns")),
                              "t64_us": pa.array([0, 86_399_999_999, 1, 2], pa.time64("us"))}))


def duration() -> bytes:
    return _parquet(pa.table({"dur_s": pa.array([0, 2**62, -5, None], pa.duration("s")),
                              "dur_ns": pa.array([1, 2**63 - 1, -(2**63), 7], pa.duration("ns"))}))


def date64() -> bytes:
    # Parquet stores date64 as a 32-bit day count; the extremes are the days of year 1 and 9999.
    day_ms = 86_400_000
    return _parquet(pa.table({"d64": pa.array([0, -719_162 * day_ms, 2_932_896 * day_ms, None], pa.date64()),
                              "d32": pa.array([-1_000_000, 0, 1_000_000, None], pa.date32())}))


def timestamp_ns_tz() -> bytes:
    return _parquet(pa.table({
        "ts_ns_oslo": pa.array([0, 1_767_225_600_123_456_789, -1, None], pa.timestamp("ns", tz="Europe/Oslo")),
        "ts_ns_naive": pa.array([0, 2**63 - 1, -(2**63) + 1, 5], pa.timestamp("ns")),
        # year 275760 and -271821: the limits of JavaScript dates, outside Python's datetime
        "ts_ms_utc": pa.array([8_640_000_000_000_000, -8_640_000_000_000_000, 0, None], pa.timestamp("ms", tz="UTC")),
    }))


def float_nonfinite() -> bytes:
    return _parquet(pa.table({
        "f64": pa.array([float("inf"), float("-inf"), float("nan"), 1.5, None], pa.float64()),
        "f32": pa.array([float("nan"), 2.5, -0.0, None, float("inf")], pa.float32()),
        "only_nan": pa.array([float("nan")] * 5, pa.float64()),
    }))


def float_overflow() -> bytes:
    """Two 1e308: the sum (and a naive mean) overflows to inf though the mean is 1e308."""
    return _parquet(pa.table({"f": pa.array([1e308, 1e308], pa.float64()),
                              "g": pa.array([-1e308, -1.7976931348623157e308], pa.float64())}))


def decimals() -> bytes:
    return _parquet(pa.table({
        "d128": pa.array([Decimal("1234567890123456789012345678901234.5678"), Decimal("-0.0001"), None],
                         pa.decimal128(38, 4)),
        "d256": pa.array([Decimal("9" * 66 + "." + "9" * 10), Decimal("-1.0000000001"), Decimal(0)],
                         pa.decimal256(76, 10)),
        "d_small": pa.array([Decimal("123.45"), Decimal("-0.01"), None], pa.decimal128(5, 2)),
    }))


def invalid_utf8() -> bytes:
    """A string column whose values (and so its footer min/max) are not valid UTF-8: pyarrow's
    ``view`` reinterprets binary as string without validating it."""
    raw = pa.array([b"ok", b"\xff\xfe bad", b"\xc3\x28", b"\xed\xa0\x80", None], pa.binary())
    return _parquet(pa.table({"s": raw.view(pa.string()), "n": pa.array([1, 2, 3, 4, 5], pa.int64())}))


def wide(columns: int = 20_000) -> bytes:
    """20,000 columns of mixed types: a full-mode result over 10 MB unless reduced."""
    rng = np.random.default_rng(20_000)
    cols: dict[str, pa.Array] = {}
    for i in range(columns):
        name = f"wide_column_{i:05d}_with_a_rather_long_descriptive_name"
        if i % 3 == 0:
            cols[name] = pa.array(rng.integers(-(2**62), 2**62, 4))
        elif i % 3 == 1:
            cols[name] = pa.array(rng.normal(0, 1, 4))
        else:
            cols[name] = pa.array([f"value-{i}-{j}-{'x' * 40}" for j in range(4)])
    return _parquet(pa.table(cols))


def zero_rows() -> bytes:
    return _parquet(pa.table({"id": pa.array([], pa.int64()), "name": pa.array([], pa.string())}))


def null_column() -> bytes:
    return _parquet(pa.table({"nothing": pa.nulls(5), "id": pa.array([1, 2, 3, 4, 5], pa.int64())}))


def dotted_column() -> bytes:
    """A top-level column named "a.b" beside a struct a with a child b: distinct leaf paths."""
    return _parquet(pa.table({
        "a.b": pa.array([1, 2, 3], pa.int64()),
        "a": pa.array([{"b": 100}, {"b": 200}, {"b": 300}]),
    }))


def zstd_bomb(rows: int = 20_000_000) -> bytes:
    """~87 KB of zstd: 20 M equal int64 values in one row group (160 MB once decoded)."""
    return _parquet(pa.table({"v": pa.array(np.full(rows, 7, np.int64))}), compression="zstd", row_group_size=rows)


def encrypted() -> bytes:
    """A real encrypted file (PARE magic, encrypted footer). Its keys are random, so unlike the
    other cases its bytes differ from run to run; the answer (skipped) does not."""
    import pyarrow.parquet.encryption as pe

    class Kms(pe.KmsClient):  # no real KMS: the "wrapped" key is the key itself
        def __init__(self, _config):
            super().__init__()

        def wrap_key(self, key_bytes, master_key_identifier):
            return base64.b64encode(key_bytes)

        def unwrap_key(self, wrapped_key, master_key_identifier):
            return base64.b64decode(wrapped_key)

    config = pe.EncryptionConfiguration(footer_key="footer", column_keys={"footer": ["id"]}, plaintext_footer=False,
                                        double_wrapping=False, internal_key_material=True)
    props = pe.CryptoFactory(Kms).file_encryption_properties(pe.KmsConnectionConfig(), config)
    return _parquet(pa.table({"id": [1, 2, 3]}), encryption_properties=props)


def not_parquet() -> bytes:
    return b"id,name\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(500))


def truncated() -> bytes:
    whole = _parquet(pa.table({"id": pa.array(range(10_000), pa.int64())}))
    return whole[: len(whole) // 2]


def footer_claim(size: int) -> bytes:
    """An object of ``size`` bytes of zeros whose last 8 bytes claim a footer of almost all of it."""
    claim = size - 12
    return b"PAR1" + bytes(size - 12) + claim.to_bytes(4, "little") + b"PAR1"


def big_footer(columns: int = 1_000, row_groups: int = 520) -> bytes:
    """A valid footer of ~50 MB: many columns times many one-row row groups."""
    table = pa.table({f"c{i:04d}": pa.array(np.arange(row_groups, dtype=np.int64) + i) for i in range(columns)})
    return _parquet(table, row_group_size=1, compression="none", use_dictionary=False)


# -- Parquet by hand: a Thrift compact-protocol encoder ----------------------------------------

_BOOL_TRUE, _I32, _I64, _BINARY, _LIST, _STRUCT = 1, 5, 6, 8, 9, 12


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(n: int, bits: int) -> bytes:
    return _varint((n << 1) ^ (n >> (bits - 1)))


def _value(ttype: int, value: Any) -> bytes:
    if ttype == _I32:
        return _zigzag(value, 32)
    if ttype == _I64:
        return _zigzag(value, 64)
    if ttype == _BINARY:
        data = value.encode() if isinstance(value, str) else value
        return _varint(len(data)) + data
    if ttype == _STRUCT:
        return _struct(value)
    if ttype == _LIST:
        elem, items = value
        head = bytes([(len(items) << 4) | elem]) if len(items) < 15 else bytes([0xF0 | elem]) + _varint(len(items))
        return head + b"".join(_value(elem, item) for item in items)
    raise ValueError(ttype)


def _struct(fields: list[tuple[int, int, Any]]) -> bytes:
    """A Thrift struct from (field id, type, value), ids ascending; a stop byte ends it."""
    out, last = bytearray(), 0
    for fid, ttype, value in fields:
        delta = fid - last
        out += bytes([(delta << 4) | ttype]) if 0 < delta <= 15 else bytes([ttype]) + _zigzag(fid, 16)
        out += _value(ttype, value)
        last = fid
    out.append(0)
    return bytes(out)


def _framed(body: bytes, footer: bytes) -> bytes:
    return body + footer + struct.pack("<I", len(footer)) + b"PAR1"


def deep_schema(levels: int = 7_000) -> bytes:
    """A footer whose schema nests ``levels`` groups deep (~56 KB), no row groups: recursive
    readers overflow their stack on it (pyarrow's reader segfaults)."""
    elements = [[(4, _BINARY, "schema"), (5, _I32, 1)]]
    elements += [[(3, _I32, 1), (4, _BINARY, "g"), (5, _I32, 1)] for _ in range(levels - 1)]
    elements.append([(1, _I32, 2), (3, _I32, 1), (4, _BINARY, "leaf")])  # INT64, OPTIONAL
    footer = _struct([(1, _I32, 1), (2, _LIST, (_STRUCT, elements)), (3, _I64, 0), (4, _LIST, (_STRUCT, [])),
                      (6, _BINARY, "hostile corpus")])
    return _framed(b"PAR1", footer)


def big_statistics(value_bytes: int = 6 * MiB) -> bytes:
    """One UTF-8 column, one row holding a string of ``value_bytes``, with the footer's min and max
    statistics set to that whole value (~12 MB of footer; pyarrow's writer drops statistics over
    4 KB, other writers do not). Metadata mode on it gives a result over 10 MB unless truncated."""
    value = (b"0123456789abcdef" * (value_bytes // 16 + 1))[:value_bytes]
    plain = struct.pack("<I", len(value)) + value  # PLAIN byte array: length + bytes
    # DATA_PAGE v1, PLAIN values; a REQUIRED column has no definition levels
    page_header = _struct([(1, _I32, 0), (2, _I32, len(plain)), (3, _I32, len(plain)),
                           (5, _STRUCT, [(1, _I32, 1), (2, _I32, 0), (3, _I32, 3), (4, _I32, 3)])])
    body = b"PAR1" + page_header + plain
    stats = [(3, _I64, 0), (5, _BINARY, value), (6, _BINARY, value)]  # null_count, max_value, min_value
    column_meta = [(1, _I32, 6), (2, _LIST, (_I32, [0])), (3, _LIST, (_BINARY, ["s"])), (4, _I32, 0),
                   (5, _I64, 1), (6, _I64, len(body) - 4), (7, _I64, len(body) - 4), (9, _I64, 4),
                   (12, _STRUCT, stats)]
    row_group = [(1, _LIST, (_STRUCT, [[(2, _I64, 4), (3, _STRUCT, column_meta)]])), (2, _I64, len(body) - 4),
                 (3, _I64, 1)]
    schema = [[(4, _BINARY, "schema"), (5, _I32, 1)],
              [(1, _I32, 6), (3, _I32, 0), (4, _BINARY, "s"), (6, _I32, 0), (10, _STRUCT, [(1, _STRUCT, [])])]]
    footer = _struct([(1, _I32, 1), (2, _LIST, (_STRUCT, schema)), (3, _I64, 1),
                      (4, _LIST, (_STRUCT, [row_group])), (6, _BINARY, "parquet-cpp-arrow version 25.0.1"),
                      (7, _LIST, (_STRUCT, [[(1, _STRUCT, [])]]))])  # TYPE_ORDER: min/max are valid
    return _framed(body, footer)


# -- the corpus --------------------------------------------------------------------------------

ODD_KEYS = {  # case name -> object key below the case's prefix
    "key-dot-segment": "./x.parquet",
    "key-dotdot-segment": "sub/../x.parquet",
    "key-double-slash": "a//x.parquet",
    "key-space": "with space.parquet",
    "key-percent": "100%25 %2F.parquet",
    "key-plus": "a+b.parquet",
    "key-unicode": "données-日本-🙂.parquet",
    "key-question": "what?x=1.parquet",
    "key-hash": "part#1.parquet",
}


def corpus(*, large: bool = False, claim_bytes: int = 8 * MiB) -> list[Case]:
    """The cases, in a fixed order. ``large`` adds the benchmark-only cases (150 MB object, ~50 MB
    footer); ``claim_bytes`` sizes the always-present smaller footer-claim case."""

    def case(name: str, build: Callable[[], bytes], outcome: str, why: str, *, key: str = "data.parquet",
             **kwargs: Any) -> Case:
        return Case(name=name, key=f"{PREFIX}{name}/{key}", build=build, outcome=outcome, why=why, **kwargs)

    cases = [
        case("int-extremes", int_extremes, "read", "int64 above 2^53, every int/uint width at its limits: exact"),
        case("float16", float16, "read", "float16 columns: figures, not a skipped file"),
        case("time32", time32, "read", "time32 s/ms: figures, not a skipped file"),
        case("time64-ns", time64_ns, "read", "time64 ns/us: figures"),
        case("duration", duration, "read", "duration s/ns up to int64 limits: integer counts"),
        case("date64", date64, "read", "date64/date32 at year 1, 9999 and beyond: ISO dates"),
        case("timestamp-ns-tz", timestamp_ns_tz, "read", "ns with a zone, naive ns at int64 limits, ms at +-275760"),
        case("float-nonfinite", float_nonfinite, "read", "inf/-inf/NaN/-0.0: strict JSON, rendered as strings"),
        case("float-overflow", float_overflow, "read", "two 1e308: mean 1e308, not inf/NaN, strict JSON"),
        case("decimal", decimals, "read", "decimal128(38,4), decimal256(76,10): exact decimal strings"),
        case("invalid-utf8", invalid_utf8, "read", "invalid UTF-8 strings: rows counted, min/max unrendered"),
        case("wide-20k", wide, "read", "20,000 columns: the full-mode result fits 10 MB (reduced, says so)"),
        case("big-statistics", big_statistics, "read-or-skip",
             "12 MB footer of 6 MB string min/max: truncated to 128 bytes, or skipped by a footer cap"),
        case("deep-schema", deep_schema, "skip", "schema nested 7,000 levels (56 KB): skipped, no crash",
             oracle_safe=False),
        case("zstd-bomb", zstd_bomb, "read", "87 KB zstd, 20 M int64 in one row group: bounded memory"),
        case("dotted-column", dotted_column, "read", "'a.b' beside struct a{b}: keys a\\.b and a.b both present"),
        case("dotted-column-select", dotted_column, "read", "columns ['a.b'] selects the top-level 'a.b' only",
             job={"columns": ["a.b"]}),
        case("not-parquet", not_parquet, "skip", "CSV bytes named .parquet: skipped"),
        case("truncated", truncated, "skip", "first half of a valid file: skipped"),
        case("encrypted", encrypted, "skip", "PARE encrypted footer: skipped with its reason"),
        case("empty", lambda: b"", "skip", "0-byte .parquet: skipped"),
        case("zero-rows", zero_rows, "read", "a valid file with 0 rows: read, 0 rows, 2 columns"),
        case("null-column", null_column, "read", "null-typed column: kind null, count 0, null_count = rows"),
        case("footer-claim-small", lambda: footer_claim(claim_bytes), "skip",
             f"{claim_bytes // MiB} MB object claiming a footer of all of it: skipped, memory bounded",
             oracle_safe=False),
    ]
    cases += [case(name, _small, "read", f"key with odd characters {key!r}: read, 3 rows", key=key)
              for name, key in ODD_KEYS.items()]
    if large:
        cases += [
            case("footer-claim-150mb", lambda: footer_claim(150 * MiB), "skip",
                 "150 MB object whose last 8 bytes claim a 150 MB footer: skipped by the footer cap",
                 bench_only=True, oracle_safe=False),
            case("footer-50mb", big_footer, "read-or-skip",
                 "a valid ~50 MB footer (1,000 columns x 520 row groups): skipped by the cap, or read in bounds",
                 bench_only=True),
        ]
    return cases


# -- the oracle: pyarrow reading the same bytes ---------------------------------------------------

def oracle(data: bytes, *, read_data: bool = True) -> dict[str, Any]:
    """What pyarrow says about a readable object: rows, row groups, top-level columns and, from
    reading the data (``read_data``), each top-level column's (non-null count, null count)."""
    md = pq.read_metadata(pa.BufferReader(data))
    out: dict[str, Any] = {"rows": md.num_rows, "row_groups": md.num_row_groups,
                           "columns": len(md.schema.to_arrow_schema().names), "counts": {}}
    if read_data:
        table = pq.read_table(pa.BufferReader(data))
        for name, column in zip(table.column_names, table.columns, strict=True):
            out["counts"][name] = (len(column) - column.null_count, column.null_count)
    return out


def write(folder: Path, cases: list[Case]) -> None:
    """Write each case's object under ``folder`` at its key (for looking at them by hand)."""
    for c in cases:
        path = folder / c.key.replace("/./", "/dot/").replace("/../", "/dotdot/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(c.build())


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--large"]
    write(Path(args[0] if args else "hostile-corpus"), corpus(large="--large" in sys.argv))
