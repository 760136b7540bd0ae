"""Pure: Parquet footers -> a mergeable summary.

A :class:`Summary` is built per file (or per skipped object) and merged; ``merge`` is
associative and commutative, so a prefix can be summarized in any order or split across
workers and the parts combined. Only pyarrow is imported: no cloud library.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MAGIC = b"PAR1"
ENCRYPTED_MAGIC = b"PARE"
# One ranged read of the last 64 KiB holds the whole footer of most files; a larger
# footer costs exactly one more read of the part that is missing.
TAIL_BYTES = 64 * 1024
MAX_SKIPPED_LISTED = 100
_PARTITION = re.compile(r"^([^=/]+)=([^/]*)$")


class UnreadableFile(Exception):
    """Raised when an object cannot be read as Parquet; the message is the skip reason."""


class DeadlineReached(Exception):
    """Raised when a job must stop before its deadline; the message names where it stopped."""


Fetch = Callable[[int, int], bytes]
"""Read bytes ``start`` to ``end`` inclusive of one object (an HTTP Range)."""


def read_footer(size: int, fetch: Fetch) -> pq.FileMetaData:
    """The footer metadata of a Parquet object of ``size`` bytes, in at most two ranged reads."""
    if size < len(MAGIC) * 2 + 4:
        raise UnreadableFile(f"too small to be Parquet ({size} bytes)")
    start = max(0, size - TAIL_BYTES)
    tail = fetch(start, size - 1)
    if len(tail) != size - start:
        raise UnreadableFile(f"short read: asked for {size - start} bytes, got {len(tail)}")
    if tail[-4:] == ENCRYPTED_MAGIC:
        raise UnreadableFile("encrypted Parquet footer (PARE) is not supported")
    if tail[-4:] != MAGIC:
        raise UnreadableFile("not a Parquet file (no PAR1 magic at the end)")
    footer_len = int.from_bytes(tail[-8:-4], "little")
    if footer_len <= 0 or footer_len + 8 + len(MAGIC) > size:
        raise UnreadableFile(f"corrupt footer length {footer_len} in a {size}-byte file")
    if footer_len + 8 <= len(tail):
        footer = tail[len(tail) - 8 - footer_len:-8]
    else:
        missing = fetch(size - 8 - footer_len, start - 1)
        footer = missing + tail[:-8]
        if len(footer) != footer_len:
            raise UnreadableFile(f"short read of a {footer_len}-byte footer")
    return parse_footer(footer)


def parse_footer(footer: bytes) -> pq.FileMetaData:
    """Decode footer bytes (the Thrift FileMetaData) without the rest of the file."""
    # Offsets inside the footer point into the original file; metadata alone never follows
    # them, so a minimal file of magic + footer + length + magic decodes exactly.
    framed = MAGIC + footer + len(footer).to_bytes(4, "little") + MAGIC
    try:
        return pq.read_metadata(pa.BufferReader(framed))
    except (OSError, pa.ArrowException, ValueError) as e:
        raise UnreadableFile(f"corrupt footer: {e}") from None


def skip_reason(key: str, size: int) -> str | None:
    """Why a listed object is not read, or None for a ``.parquet`` key to read."""
    if key.endswith("/"):
        return "folder marker"
    if not key.endswith(".parquet"):
        return "not a .parquet key"
    return None


def summarize_object(key: str, size: int, fetch: Fetch, columns: Collection[str] | None = None) -> Summary:
    """The summary of one ``.parquet`` object from its footer; unreadable objects become skips."""
    try:
        return Summary.of_file(key, size, read_footer(size, fetch), columns)
    except UnreadableFile as e:
        return Summary.of_skipped(key, str(e))
    except (pa.ArrowException, ValueError, OSError) as e:  # a footer pyarrow decodes but cannot map
        return Summary.of_skipped(key, f"unsupported Parquet schema: {e}")


def partition_values(key: str) -> dict[str, str]:
    """Hive partition ``name=value`` folders in an object key, outermost first."""
    out: dict[str, str] = {}
    for part in key.split("/")[:-1]:
        m = _PARTITION.match(part)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@dataclass(frozen=True)
class FieldInfo:
    """A top-level column: the types files gave it, how many files have it, its first position."""

    types: frozenset[str]
    files: int
    position: int

    def merge(self, other: FieldInfo) -> FieldInfo:
        return FieldInfo(self.types | other.types, self.files + other.files, min(self.position, other.position))


@dataclass(frozen=True)
class ColumnStats:
    """Footer statistics of one leaf column; min/max only where every row group recorded them."""

    types: frozenset[str]
    position: int
    null_count: int | None
    has_min_max: bool
    min: Any = None
    max: Any = None

    def merge(self, other: ColumnStats) -> ColumnStats:
        types = self.types | other.types
        null_count = None if self.null_count is None or other.null_count is None else self.null_count + other.null_count
        has_min_max = self.has_min_max and other.has_min_max and len(types) == 1
        return ColumnStats(
            types=types,
            position=min(self.position, other.position),
            null_count=null_count,
            has_min_max=has_min_max,
            min=merge_bound(min, self.min, other.min) if has_min_max else None,
            max=merge_bound(max, self.max, other.max) if has_min_max else None,
        )


def merge_bound(pick, a, b):
    # None is "no value seen yet" (an empty or all-null part): the other side decides.
    if a is None:
        return b
    if b is None:
        return a
    try:
        return pick(a, b)
    except TypeError:  # same Parquet type, values Python cannot order: report neither
        return None


@dataclass(frozen=True)
class Summary:
    """A mergeable summary of Parquet objects. ``Summary()`` is the identity of ``merge``.

    ``profiles`` (full mode) holds one :class:`worker.profile.ColumnProfile` per column; any
    object with ``merge``/``absorb``/``copy``/``to_dict`` serves, so this module needs no
    numpy or sketch library.
    """

    files: int = 0
    rows: int = 0
    bytes: int = 0
    row_groups: int = 0
    fields: Mapping[str, FieldInfo] = field(default_factory=dict)
    stats: Mapping[str, ColumnStats] = field(default_factory=dict)
    partition_columns: frozenset[str] = frozenset()
    skipped: tuple[tuple[str, str], ...] = ()
    skipped_count: int = 0
    compression: frozenset[str] = frozenset()
    created_by: frozenset[str] = frozenset()
    profiles: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of_file(cls, key: str, size: int, md: pq.FileMetaData, columns: Collection[str] | None = None,
                profiles: Mapping[str, Any] | None = None) -> Summary:
        """The summary of one readable Parquet object from its footer; ``columns`` limits the statistics."""
        schema = md.schema.to_arrow_schema()
        fields = {f.name: FieldInfo(frozenset([str(f.type)]), 1, i) for i, f in enumerate(schema)}
        stats: dict[str, ColumnStats] = {}
        codecs: set[str] = set()
        for j in range(md.num_columns):
            leaf = md.schema.column(j)
            if columns is not None and leaf.path.split(".", 1)[0] not in columns:
                continue
            kind = frozenset([f"{leaf.physical_type}/{leaf.logical_type}"])
            acc = ColumnStats(types=kind, position=j, null_count=0, has_min_max=True)
            for r in range(md.num_row_groups):
                chunk = md.row_group(r).column(j)
                codecs.add(chunk.compression)
                acc = acc.merge(_chunk_stats(chunk, kind, j))
            stats[leaf.path] = acc
        return cls(
            files=1,
            rows=md.num_rows,
            bytes=size,
            row_groups=md.num_row_groups,
            fields=fields,
            stats=stats,
            partition_columns=frozenset(partition_values(key)),
            compression=frozenset(codecs),
            created_by=frozenset([md.created_by or "unknown"]),
            profiles=dict(profiles or {}),
        )

    @classmethod
    def of_skipped(cls, key: str, reason: str) -> Summary:
        """The summary of an object that was not read, with the reason."""
        return cls(skipped=((key, reason),), skipped_count=1)

    def merge(self, other: Summary) -> Summary:
        """Combine two summaries of disjoint sets of objects (neither is changed)."""
        builder = SummaryBuilder()
        builder.add(self, copy=True)
        builder.add(other, copy=True)
        return builder.build()

    @classmethod
    def merge_all(cls, parts: Iterable[Summary]) -> Summary:
        builder = SummaryBuilder()
        for part in parts:
            builder.add(part, copy=True)
        return builder.build()

    def to_dict(self) -> dict:
        """The summary fields of a result message (JSON-ready)."""
        ordered = sorted(self.fields.items(), key=lambda kv: (kv[1].position, kv[0]))
        schema = []
        for name, info in ordered:
            entry: dict[str, Any] = {"name": name, "type": next(iter(info.types)) if len(info.types) == 1 else None,
                                     "files": info.files}
            if len(info.types) > 1:
                entry["types"] = sorted(info.types)
            schema.append(entry)
        statistics = {}
        for path, st in sorted(self.stats.items(), key=lambda kv: (kv[1].position, kv[0])):
            item: dict[str, Any] = {"null_count": st.null_count, "min": None, "max": None}
            if st.has_min_max:
                item["min"], item["max"] = to_json_value(st.min), to_json_value(st.max)
            if len(st.types) > 1:
                item["type_conflict"] = True
            statistics[path] = item
        out = {
            "rows": self.rows,
            "columns": len(self.fields),
            "files": self.files,
            "bytes": self.bytes,
            "row_groups": self.row_groups,
            "schema": schema,
            "schema_conflicts": [e["name"] for e in schema if e["type"] is None],
            "statistics": statistics,
            "partition_columns": sorted(self.partition_columns),
            "compression": sorted(self.compression),
            "created_by": sorted(self.created_by),
            "skipped_count": self.skipped_count,
            "skipped": [{"key": k, "reason": r} for k, r in self.skipped],
        }
        if self.profiles:
            order = {name: i for i, name in enumerate(e["name"] for e in schema)}
            out["profile"] = {name: p.to_dict() for name, p in
                              sorted(self.profiles.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))}
        return out


class SummaryBuilder:
    """Merges summaries in place: what a job uses to fold thousands of per-file parts cheaply.

    ``add(part)`` takes ownership of the part's profiles unless ``copy`` is set.
    """

    def __init__(self) -> None:
        self.files = self.rows = self.bytes = self.row_groups = self.skipped_count = 0
        self.fields: dict[str, FieldInfo] = {}
        self.stats: dict[str, ColumnStats] = {}
        self.partition_columns: set[str] = set()
        self.skipped: set[tuple[str, str]] = set()
        self.compression: set[str] = set()
        self.created_by: set[str] = set()
        self.profiles: dict[str, Any] = {}

    def add(self, part: Summary, *, copy: bool = False) -> None:
        self.files += part.files
        self.rows += part.rows
        self.bytes += part.bytes
        self.row_groups += part.row_groups
        self.skipped_count += part.skipped_count
        _merge_into(self.fields, part.fields)
        _merge_into(self.stats, part.stats)
        self.partition_columns |= part.partition_columns
        self.compression |= part.compression
        self.created_by |= part.created_by
        if part.skipped:
            # Keep the first keys in key order, so the listed sample does not depend on merge order.
            self.skipped = set(sorted(self.skipped | set(part.skipped))[:MAX_SKIPPED_LISTED])
        for name, profile in part.profiles.items():
            if name in self.profiles:
                self.profiles[name].absorb(profile)
            else:
                self.profiles[name] = profile.copy() if copy else profile

    def build(self) -> Summary:
        return Summary(
            files=self.files, rows=self.rows, bytes=self.bytes, row_groups=self.row_groups,
            fields=dict(self.fields), stats=dict(self.stats), partition_columns=frozenset(self.partition_columns),
            skipped=tuple(sorted(self.skipped)), skipped_count=self.skipped_count,
            compression=frozenset(self.compression), created_by=frozenset(self.created_by),
            profiles={k: v.copy() for k, v in self.profiles.items()},
        )


def _chunk_stats(chunk, kind: frozenset[str], position: int) -> ColumnStats:
    st = chunk.statistics
    if st is None:
        return ColumnStats(types=kind, position=position, null_count=None, has_min_max=False)
    null_count = st.null_count if st.has_null_count else None
    if st.has_min_max:
        return ColumnStats(types=kind, position=position, null_count=null_count, has_min_max=True,
                           min=st.min, max=st.max)
    # A chunk of nulls only records no min/max, yet leaves the others' min/max exact.
    all_null = null_count is not None and null_count == chunk.num_values
    return ColumnStats(types=kind, position=position, null_count=null_count, has_min_max=all_null)


def _merge_into(into: dict, other: Mapping) -> None:
    for k, v in other.items():
        into[k] = into[k].merge(v) if k in into else v


def to_json_value(value: Any) -> Any:
    """A statistics value as JSON: numbers and strings as they are, the rest as ISO or text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value + 0.0 if math.isfinite(value) else str(value)  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode("ascii")
    return str(value)
