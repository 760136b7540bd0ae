"""Pure: Parquet footers -> a mergeable summary.

A :class:`Summary` is built per file (or per skipped object) and merged; ``merge`` is
associative and commutative, so a prefix can be summarized in any order or split across
workers and the parts combined. Only pyarrow is imported: no cloud library.
"""

from __future__ import annotations

import base64
import bisect
import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from worker.errors import WorkerError
from worker.footer import FooterError, FooterSchema, column_key, read_schema
from worker.values import LeafType, Unusable, ValueType, decode_statistic, leaf_type, render, render_number

MAGIC = b"PAR1"
ENCRYPTED_MAGIC = b"PARE"
# One ranged read of the last 64 KiB holds the whole footer of most files; a larger
# footer costs exactly one more read of the part that is missing.
TAIL_BYTES = 64 * 1024
MAX_SKIPPED_LISTED = 100
MAX_CREATED_BY = 20  # distinct writer strings listed (they come from the files: bounded like all else)
MAX_CREATED_BY_CHARS = 200
_PARTITION = re.compile(r"^([^=/]+)=([^/]*)$")
# Parsing a footer costs about 17 times its size at the peak (a valid 50 MB footer: ~850 MB),
# so footers beyond the first tail read are parsed at most this many bytes' worth at a time.
FOOTER_BUDGET_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource bounds for reading one object, whatever its bytes say.

    ``footer_max_bytes``: a larger footer skips its file before the footer is fetched. 16 MiB
    holds the footer of any ordinary file (thousands of columns and row groups) and costs about
    270 MiB at the peak to parse; with FOOTER_BUDGET_BYTES no more than that is parsed at once,
    so the worst case stays well under 400 MiB however many reads are in flight.
    ``schema_max_depth``: a deeper schema skips its file before pyarrow's recursive schema code
    runs (7,000 levels overflow a thread's stack); 100 levels is ~33 nested lists.
    ``full_mode_batch_bytes``: full mode decodes about this much of one object at a time,
    whatever the size of its row groups.
    """

    footer_max_bytes: int = 16 * 1024 * 1024
    schema_max_depth: int = 100
    full_mode_batch_bytes: int = 32 * 1024 * 1024


class ByteBudget:
    """A weighted semaphore over bytes, shared by threads.

    ``acquire(n)`` waits until ``used + n <= capacity`` or nothing else is held, so one request
    larger than the capacity still proceeds, alone.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._changed = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._changed:
            while self.used and self.used + n > self.capacity:
                self._changed.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self._changed:
            self.used -= n
            self._changed.notify_all()

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Hold ``n`` bytes of the budget for the duration of a ``with`` block."""
        self.acquire(n)
        try:
            yield
        finally:
            self.release(n)


FOOTER_BUDGET = ByteBudget(FOOTER_BUDGET_BYTES)
DEFAULT_LIMITS = Limits()


class UnreadableFile(Exception):
    """Raised when an object cannot be read as Parquet; the message is the skip reason."""


class StoppedAtDeadline(Exception):
    """Raised inside reading when the job's deadline has passed: a signal to its caller, never a result.

    Named fields, all keyword-only: ``key`` is where reading stopped, ``done`` of ``total`` objects were read by
    then (``total`` is None while the listing was still going; ``done`` is 0 where it is not counted, inside one
    object). The caller answers with ``worker.errors.DeadlineExceeded`` (a job: code ``deadline_exceeded``) or
    hands the work back (a shard); the two names keep the signal apart from the error.
    """

    def __init__(self, *, key: str, done: int = 0, total: int | None = None):
        super().__init__(f"stopped at the deadline at {key!r} after {done} object(s)")
        self.key, self.done, self.total = key, done, total


Fetch = Callable[[int, int], bytes]
"""Read bytes ``start`` to ``end`` inclusive of one object (an HTTP Range)."""


class Footer(NamedTuple):
    """A decoded footer and the shape of its schema (leaf paths as components)."""

    metadata: pq.FileMetaData
    schema: FooterSchema


def read_footer(size: int, fetch: Fetch, *, limits: Limits = DEFAULT_LIMITS, budget: ByteBudget | None = None
                ) -> pq.FileMetaData:
    """The footer metadata of a Parquet object of ``size`` bytes, in at most two ranged reads."""
    return load_footer(size, fetch, limits=limits, budget=budget).metadata


def load_footer(size: int, fetch: Fetch, *, limits: Limits = DEFAULT_LIMITS,
                budget: ByteBudget | None = None) -> Footer:
    """The footer of a Parquet object of ``size`` bytes and its schema's shape, in at most two
    ranged reads. A footer over ``limits.footer_max_bytes`` is refused before it is fetched; one
    larger than the first read is fetched and parsed within ``budget`` (FOOTER_BUDGET by default).
    """
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
    if footer_len > limits.footer_max_bytes:
        raise UnreadableFile(f"footer of {footer_len} bytes is over the limit of {limits.footer_max_bytes} bytes")
    if footer_len + 8 <= len(tail):
        return _parse(tail[len(tail) - 8 - footer_len:-8], limits)
    with (budget or FOOTER_BUDGET).hold(footer_len):
        missing = fetch(size - 8 - footer_len, start - 1)
        footer = missing + tail[:-8]
        del missing
        if len(footer) != footer_len:
            raise UnreadableFile(f"short read of a {footer_len}-byte footer")
        return _parse(footer, limits)


def parse_footer(footer: bytes, *, limits: Limits = DEFAULT_LIMITS) -> pq.FileMetaData:
    """Decode footer bytes (the Thrift FileMetaData) without the rest of the file; a schema
    nested deeper than ``limits.schema_max_depth`` is refused before pyarrow sees it."""
    return _parse(footer, limits).metadata


def _parse(footer: bytes, limits: Limits) -> Footer:
    try:
        schema = read_schema(footer, max_depth=limits.schema_max_depth)
    except FooterError as e:
        raise UnreadableFile(f"corrupt footer: {e}") from None
    # Offsets inside the footer point into the original file; metadata alone never follows
    # them, so a minimal file of magic + footer + length + magic decodes exactly.
    framed = MAGIC + footer + len(footer).to_bytes(4, "little") + MAGIC
    try:
        md = pq.read_metadata(pa.BufferReader(framed))
    except (OSError, pa.ArrowException, ValueError) as e:
        raise UnreadableFile(f"corrupt footer: {e}") from None
    if md.num_columns != len(schema.leaves):  # never seen; the keys would be wrong, so say so
        raise UnreadableFile(f"footer schema has {len(schema.leaves)} leaves, pyarrow reads {md.num_columns}")
    # Two columns of one name (Parquet does not forbid it) would be merged as one: figures of two
    # columns under one name, counts doubled. Say so instead.
    names = [f.name for f in md.schema.to_arrow_schema()]
    twice = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if twice or len(set(schema.leaves)) != len(schema.leaves):
        what = f"top-level column {twice[0]!r}" if twice else "a nested field"
        raise UnreadableFile(f"ambiguous schema: {what} is named twice, so its figures could not be told apart")
    return Footer(md, schema)


def skip_reason(key: str, size: int) -> str | None:
    """Why a listed object is not read, or None for a ``.parquet`` key to read."""
    if key.endswith("/"):
        return "folder marker"
    if not key.endswith(".parquet"):
        return "not a .parquet key"
    return None


# What decoding one object's hostile or unusual bytes can raise: the object is skipped with
# the reason. Retryable faults and the other WorkerErrors (from fetching) are none of these.
DECODE_ERRORS = (pa.ArrowException, ValueError, OSError, RecursionError, IndexError, KeyError, OverflowError)
# What reading and mapping one object's footer can raise for the object's own bytes: the object is skipped
# (unreadable_footer says why).
FOOTER_ERRORS = (UnreadableFile, *DECODE_ERRORS)


def is_objects_own(error: BaseException, *, fetched: bool) -> bool:
    """Whether ``error``, met while reading one object, is that object's own fault: the object is skipped with
    the reason and the job goes on. The rule, in one place (docs/reliability.md says it in words):

    ====================================  =====================================================================
    met where, what                       outcome
    ====================================  =====================================================================
    decoding: ``FOOTER_ERRORS``           the object's own (hostile, corrupt or unsupported bytes): skipped
    fetch: ``WorkerError.object_fault``   the object's own (S3 refused that object: denied, archived,
                                          encrypted out of reach, deleted or shrunk since listed): skipped
    fetch: ``Retryable``                  the delivery ends and is retried (network, 5xx, throttling, STS or
                                          the metadata server failing at a credential refresh)
    fetch: another ``WorkerError``        the delivery ends with that error as the job's answer (STS refused
                                          the role or token, a refused signature or credentials...)
    anything else, anywhere               the delivery ends as ``internal`` (a bug, ``MemoryError``, a fault
                                          no adapter classified): it must not pass for a bad object, or a fault
                                          of every object would answer ``ok`` with nothing read
    ====================================  =====================================================================

    ``fetched``: ``error`` was raised by the fetch (the store), whatever the decoder then made of it; the fetch's
    own exception decides, never the decoder's view of it (pyarrow reports a failed read as its own ``OSError``,
    and botocore's timeouts are ``OSError`` too).
    """
    if not fetched and isinstance(error, FOOTER_ERRORS):
        return True
    return isinstance(error, WorkerError) and error.object_fault


def summarize_object(key: str, size: int, fetch: Fetch, columns: Collection[str] | None = None, *,
                     limits: Limits = DEFAULT_LIMITS, budget: ByteBudget | None = None) -> Summary:
    """The summary of one ``.parquet`` object from its footer; unreadable objects become skips."""
    try:
        footer = load_footer(size, fetch, limits=limits, budget=budget)
        return Summary.of_file(key, size, footer.metadata, columns, leaves=footer.schema.leaves)
    except FOOTER_ERRORS as e:
        return unreadable_footer(key, e)


def unreadable_footer(key: str, error: Exception) -> Summary:
    """The skip of an object whose footer raised one of FOOTER_ERRORS, in both modes: an UnreadableFile gives
    its own reason; a footer pyarrow decodes but cannot map is an unsupported schema."""
    if isinstance(error, UnreadableFile):
        return Summary.of_skipped(key, str(error))
    return Summary.of_skipped(key, f"unsupported Parquet schema: {type(error).__name__}: {error}")


def leaf_paths(md: pq.FileMetaData) -> tuple[tuple[str, ...], ...]:
    """Each leaf column's path as components, from decoded metadata. pyarrow only gives paths
    joined with ".", which cannot tell the column "a.b" from child "b" of "a"; so the footer is
    serialized again and walked."""
    _, (buffer,) = md.__reduce__()
    return read_schema(buffer, max_depth=1 << 30).leaves


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
    """Footer statistics of one leaf column; min/max only where every row group recorded them.

    ``min``/``max`` are comparable values (:mod:`worker.values`), rendered by ``vtype`` only in
    ``to_dict``, so merging compares exact values (ints, Decimals, bytes), never their text.
    ``unusable`` says why a row group's bounds were ignored (a NaN bound, an unordered type).
    """

    types: frozenset[str]
    position: int
    null_count: int | None
    has_min_max: bool
    min: Any = None
    max: Any = None
    vtype: ValueType | None = None
    unusable: str | None = None

    def merge(self, other: ColumnStats) -> ColumnStats:
        types = self.types | other.types
        null_count = None if self.null_count is None or other.null_count is None else self.null_count + other.null_count
        # Values of types that compare (int32 and int64, timestamps of two units) merge as full mode's do,
        # in a type that holds both; others lose their bounds (type_conflict).
        common = self.vtype.common(other.vtype) if self.vtype and other.vtype else None
        has_min_max = self.has_min_max and other.has_min_max and (len(types) == 1 or common is not None)
        reasons = [r for r in (self.unusable, other.unusable) if r]
        low = high = None
        if has_min_max and common is not None:
            low = merge_bound(min, self.vtype.convert(self.min, common), other.vtype.convert(other.min, common))
            high = merge_bound(max, self.vtype.convert(self.max, common), other.vtype.convert(other.max, common))
        elif has_min_max:
            low, high = merge_bound(min, self.min, other.min), merge_bound(max, self.max, other.max)
        return ColumnStats(
            types=types,
            position=min(self.position, other.position),
            null_count=null_count,
            has_min_max=has_min_max,
            min=low,
            max=high,
            vtype=common or self.vtype or other.vtype,
            unusable=min(reasons) if reasons else None,  # min: the same reason whatever the merge order
        )

    def to_dict(self) -> dict[str, Any]:
        """The statistics entry of a result: null_count, min, max (rendered), and what was not rendered."""
        item: dict[str, Any] = {"null_count": self.null_count, "min": None, "max": None}
        unrendered: dict[str, str] = {}
        truncated: list[str] = []
        if len(self.types) > 1:
            item["type_conflict"] = True
        if self.has_min_max and self.vtype is not None:
            for figure in ("min", "max"):
                shown = render(self.vtype, getattr(self, figure), figure)
                item[figure] = shown.value
                if shown.reason:
                    unrendered[figure] = shown.reason
                if shown.truncated:
                    truncated.append(figure)
        elif self.unusable:
            unrendered = {"min": self.unusable, "max": self.unusable}
        if unrendered:
            item["unrendered"] = unrendered
        if truncated:
            item["truncated"] = truncated
        return item


def merge_bound(pick, a, b):
    """``pick`` (min or max) of two comparable values, where None is "no value seen yet"."""
    # None is "no value seen yet" (an empty or all-null part): the other side decides.
    if a is None:
        return b
    if b is None:
        return a
    try:
        return pick(a, b)
    except TypeError:  # values Python cannot order (a bug upstream): report neither
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
                profiles: Mapping[str, Any] | None = None, *, leaves: Sequence[tuple[str, ...]] | None = None
                ) -> Summary:
        """The summary of one readable Parquet object from its footer; ``columns`` (top-level names,
        matched exactly) limits the statistics. ``leaves`` are the leaf columns' paths as components
        (``Footer.schema.leaves``); without them they are read again from ``md``."""
        paths = leaf_paths(md) if leaves is None else leaves
        schema = md.schema.to_arrow_schema()
        fields = {f.name: FieldInfo(frozenset([str(f.type)]), 1, i) for i, f in enumerate(schema)}
        stats: dict[str, ColumnStats] = {}
        codecs: set[str] = set()
        for j in range(md.num_columns):
            if columns is not None and paths[j][0] not in columns:
                continue
            leaf = md.schema.column(j)
            kind = frozenset([(decoder := leaf_type(leaf)).value.name])
            acc = ColumnStats(types=kind, position=j, null_count=0, has_min_max=True, vtype=decoder.value)
            for r in range(md.num_row_groups):
                chunk = md.row_group(r).column(j)
                codecs.add(chunk.compression)
                acc = acc.merge(_chunk_stats(chunk, kind, j, decoder))
            stats[column_key(paths[j])] = acc
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
            statistics[path] = st.to_dict()
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
        self.skipped: list[tuple[str, str]] = []  # sorted, at most MAX_SKIPPED_LISTED, no duplicates
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
        if part.created_by - self.created_by:
            # Writers' strings come from the files: keep a bounded sample, the same whatever the merge order.
            self.created_by = set(sorted(self.created_by | {c[:MAX_CREATED_BY_CHARS] for c in part.created_by})
                                  [:MAX_CREATED_BY])
        for item in part.skipped:
            self._sample(item)
        for name, profile in part.profiles.items():
            if name in self.profiles:
                self.profiles[name].absorb(profile)
            else:
                self.profiles[name] = profile.copy() if copy else profile

    def skip(self, key: str, reason: str) -> None:
        """Count one object that is not read (cheaper than ``add(Summary.of_skipped(...))``)."""
        self.skipped_count += 1
        self._sample((key, reason))

    def _sample(self, item: tuple[str, str]) -> None:
        # Keep the first keys in key order, so the listed sample does not depend on merge order; a key past
        # the sample's last costs one comparison, so a listing of millions of skipped keys stays linear.
        if len(self.skipped) >= MAX_SKIPPED_LISTED and item >= self.skipped[-1]:
            return
        at = bisect.bisect_left(self.skipped, item)
        if at < len(self.skipped) and self.skipped[at] == item:
            return
        self.skipped.insert(at, item)
        del self.skipped[MAX_SKIPPED_LISTED:]

    def build(self) -> Summary:
        return Summary(
            files=self.files, rows=self.rows, bytes=self.bytes, row_groups=self.row_groups,
            fields=dict(self.fields), stats=dict(self.stats), partition_columns=frozenset(self.partition_columns),
            skipped=tuple(self.skipped), skipped_count=self.skipped_count,
            compression=frozenset(self.compression), created_by=frozenset(self.created_by),
            profiles={k: v.copy() for k, v in self.profiles.items()},
        )


def _chunk_stats(chunk, kind: frozenset[str], position: int, leaf: LeafType) -> ColumnStats:
    st = chunk.statistics
    if leaf.value.family == "null":  # a Null-typed leaf holds nulls only, statistics or not
        return ColumnStats(types=kind, position=position, null_count=chunk.num_values, has_min_max=True,
                           vtype=leaf.value)
    if st is None:
        return ColumnStats(types=kind, position=position, null_count=None, has_min_max=False)
    null_count = st.null_count if st.has_null_count else None
    if st.has_min_max:
        # The raw bounds, decoded by the leaf's types: pyarrow's st.min raises on invalid UTF-8,
        # needs pandas for nanoseconds and stops at Python's datetime range.
        try:
            low, high = decode_statistic(leaf, st.min_raw), decode_statistic(leaf, st.max_raw)
        except Unusable as e:
            return ColumnStats(types=kind, position=position, null_count=null_count, has_min_max=False,
                               vtype=leaf.value, unusable=str(e))
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
            return ColumnStats(types=kind, position=position, null_count=null_count, has_min_max=False,
                               vtype=leaf.value, unusable=f"undecodable statistics: {e}"[:200])
        return ColumnStats(types=kind, position=position, null_count=null_count, has_min_max=True,
                           min=low, max=high, vtype=leaf.value)
    # A chunk of nulls only records no min/max, yet leaves the others' min/max exact.
    all_null = null_count is not None and null_count == chunk.num_values
    return ColumnStats(types=kind, position=position, null_count=null_count, has_min_max=all_null)


def _merge_into(into: dict, other: Mapping) -> None:
    for k, v in other.items():
        into[k] = into[k].merge(v) if k in into else v


def to_json_value(value: Any) -> Any:
    """A plain Python value as JSON by the result contract (column values go through
    :func:`worker.values.render`, which knows their type): non-finite floats as "NaN",
    "Infinity", "-Infinity", Decimals exactly, bytes as "base64:...", dates and times in ISO."""
    if value is None or isinstance(value, (bool, int, str, float, Decimal)):
        return value if isinstance(value, str) or value is None else render_number(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return "base64:" + base64.b64encode(value).decode("ascii")
    return str(value)
