"""Pure: a :class:`worker.summary.Summary` as bytes and back, exactly (a shard's partial summary).

A fanned-out run stores each shard's summary as a blob and merges them later; the merged answer
must be the one a single instance gives, so nothing may be rounded, retyped or dropped on the way.

Format: ``MAGIC`` (4 bytes), ``VERSION`` (1 byte), the payload's length (8 bytes, little-endian),
then the payload compressed with zlib. The payload is a pickle of plain values only (tuples,
dicts, str, bytes, int, float, bool, None) that this module builds field by field from the
dataclasses: decoding never looks up a global (the Unpickler refuses every one, so a blob
cannot name ``os.system`` or any class), then checks every value's type and rebuilds the
dataclasses through their constructors. Anything wrong is :class:`CorruptPartial`.

Exact: ints of any width, floats bit for bit (-0.0, infinities), Decimals by their text
(digits and exponent), bytes as bytes, sketches by their own serialization
(``ColumnProfile.__getstate__``). Sets are written sorted and maps by key, so the bytes do not
depend on the order of a summary's maps or on the process's hash seed.

Imports no cloud library, and :mod:`worker.profile` (numpy, datasketches) only for a summary
that holds profiles.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
import operator
import pickle  # plain values only: every global is refused on load (_PlainUnpickler)
import zlib
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from worker.errors import WorkerError
from worker.summary import Summary

MAGIC = b"PSUM"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 1 + 8
PICKLE_PROTOCOL = 5  # fixed, so the bytes do not change with the Python version's default
ZLIB_LEVEL = 6
# A payload may declare at most this many bytes (zlib expands up to ~1,000 times: a small blob must not
# claim gigabytes). A full-mode partial costs ~33 KB per numeric column, so 2 GiB holds ~60,000 of them.
MAX_PAYLOAD_BYTES = 2 << 30


class CorruptPartial(WorkerError):
    """Raised when bytes are not a partial summary this worker wrote: wrong magic or version, a
    damaged or truncated payload, a global named in it, or values of the wrong shape."""

    code = "internal"
    retryable = False


def encode(summary: Summary) -> bytes:
    """``summary`` as bytes that :func:`decode` turns back into an equal summary.

    Raises TypeError for a summary holding what a partial cannot (a profile that is not a
    ``worker.profile.ColumnProfile``, a min/max that is not a comparable value): a bug upstream,
    refused here rather than when the partial is read back.
    """
    if not isinstance(summary, Summary):
        raise TypeError(f"encode takes a worker.summary.Summary, not {type(summary).__name__}")
    try:
        tree = _SUMMARY.encode(summary)
    except _Shape as e:
        raise TypeError(f"cannot encode this summary: {e}") from None
    payload = pickle.dumps((_names(), tree), protocol=PICKLE_PROTOCOL)
    return (MAGIC + bytes([VERSION]) + len(payload).to_bytes(8, "little")
            + zlib.compress(payload, ZLIB_LEVEL))


def decode(data: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> Summary:
    """The summary :func:`encode` turned into ``data``; CorruptPartial for anything else.

    ``max_bytes`` bounds the decompressed payload, checked before it is decompressed.
    """
    view = memoryview(data)
    if len(view) < HEADER_BYTES:
        raise CorruptPartial(f"not a partial summary: {len(view)} bytes, shorter than the {HEADER_BYTES}-byte header")
    if view[:len(MAGIC)] != MAGIC:
        raise CorruptPartial("not a partial summary: the magic bytes are wrong")
    version = view[len(MAGIC)]
    if version != VERSION:
        raise CorruptPartial(f"partial summary of format version {version}; this worker reads version {VERSION}")
    size = int.from_bytes(view[len(MAGIC) + 1:HEADER_BYTES], "little")
    if size > max_bytes:
        raise CorruptPartial(f"partial summary declares a {size}-byte payload, over the limit of {max_bytes} bytes")
    payload = _inflate(view[HEADER_BYTES:], size)
    names, tree = _unpickle(payload)
    if names != _names():
        raise CorruptPartial("partial summary written by a worker whose summary fields differ from this one's: "
                             f"{_diff(names)}")
    try:
        return _SUMMARY.decode(tree)
    except _Shape as e:
        raise CorruptPartial(f"payload is not a partial summary: {e}") from None


def _inflate(body: memoryview, size: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(body, size + 1)  # at most one byte more than declared: enough to tell
    except zlib.error as e:
        raise CorruptPartial(f"compressed payload is corrupt (zlib: {e})") from None
    if len(payload) > size or inflater.unconsumed_tail:
        raise CorruptPartial(f"compressed payload is longer than the {size} bytes its header declares")
    if not inflater.eof:
        raise CorruptPartial("compressed payload is truncated")
    if len(payload) != size:
        raise CorruptPartial(f"payload is {len(payload)} bytes, its header declares {size}")
    if inflater.unused_data:
        raise CorruptPartial(f"{len(inflater.unused_data)} stray bytes after the compressed payload")
    return payload


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain values only: a partial never names a global, so any global is refused unloaded."""

    def find_class(self, module: str, name: str) -> Any:
        raise CorruptPartial(f"payload names the global {_short(module)}.{_short(name)}: a partial holds plain "
                             "values only, and no global is ever loaded")


def _unpickle(payload: bytes) -> tuple[Any, Any]:
    stream = io.BytesIO(payload)
    try:
        loaded = _PlainUnpickler(stream).load()  # no global can be loaded: see find_class
    except CorruptPartial:
        raise
    except Exception as e:  # noqa: BLE001 (hostile bytes raise anything pickle can: all of it is corruption)
        raise CorruptPartial(f"payload is not a valid pickle ({type(e).__name__})") from None
    if stream.tell() != len(payload):
        raise CorruptPartial(f"{len(payload) - stream.tell()} stray bytes after the pickled payload")
    if type(loaded) is not tuple or len(loaded) != 2:
        raise CorruptPartial(f"payload is not a partial summary: {type(loaded).__name__} at the top, not a pair")
    return loaded[0], loaded[1]


def _short(text: Any) -> str:
    return repr(text)[1:-1][:80] if isinstance(text, str) else type(text).__name__


# ---- the codecs: one per kind of field, and one per dataclass ------------------------------------

class _Shape(Exception):
    """A value of the wrong shape; the message says where and what type, never the value."""


@dataclasses.dataclass(frozen=True)
class _Codec:
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _expect(value: Any, *types: type) -> Any:
    # exact types on the way back: a pickle of plain values holds no subclass
    if type(value) not in types:
        raise _Shape(f"{' or '.join(t.__name__ for t in types)} expected, found {type(value).__name__}")
    return value


def _encode_int(value: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise _Shape(f"int expected, found {type(value).__name__}")
    return operator.index(value)  # numpy integers too, exactly


def _encode_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Shape(f"bool expected, found {type(value).__name__}")
    return bool(value)


def _encode_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Shape(f"str expected, found {type(value).__name__}")
    return str(value)


def _encode_float(value: Any) -> float:
    if not isinstance(value, float):
        raise _Shape(f"float expected, found {type(value).__name__}")
    return float(value)


def _encode_bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise _Shape(f"bytes expected, found {type(value).__name__}")
    return bytes(value)


def _encode_strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (frozenset, set)):
        raise _Shape(f"frozenset expected, found {type(value).__name__}")
    return tuple(sorted(_encode_str(item) for item in value))


def _decode_strs(tree: Any) -> frozenset[str]:
    return frozenset(_expect(item, str) for item in _expect(tree, tuple))


def _encode_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, tuple):
        raise _Shape(f"tuple expected, found {type(value).__name__}")
    out = []
    for item in value:
        if not isinstance(item, tuple) or len(item) != 2:
            raise _Shape("pairs of str expected")
        out.append((_encode_str(item[0]), _encode_str(item[1])))
    return tuple(out)


def _decode_pairs(tree: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for item in _expect(tree, tuple):
        if type(item) is not tuple or len(item) != 2:
            raise _Shape("pairs of str expected")
        out.append((_expect(item[0], str), _expect(item[1], str)))
    return tuple(out)


_PLAIN_VALUES = (type(None), bool, int, float, bytes, str)
_DECIMAL = "decimal"


def _encode_value(value: Any) -> Any:
    """A comparable value (worker.values) as a plain value; a Decimal as ("decimal", its exact text)."""
    if type(value) in _PLAIN_VALUES:
        return value
    if isinstance(value, Decimal):
        return (_DECIMAL, str(value))
    for kind in (bool, int, float, bytes, str):  # subclasses (numpy's float64 is a float) as the base type
        if isinstance(value, kind):
            return kind(value)
    raise _Shape(f"a comparable value expected (None, bool, int, float, Decimal, bytes or str), "
                 f"found {type(value).__name__}")


def _decode_value(tree: Any) -> Any:
    if type(tree) in _PLAIN_VALUES:
        return tree
    if type(tree) is tuple and len(tree) == 2 and tree[0] == _DECIMAL and type(tree[1]) is str:
        try:
            value = Decimal(tree[1])
        except (ArithmeticError, ValueError):
            raise _Shape("a Decimal whose text does not parse") from None
        if str(value) != tree[1]:
            raise _Shape("a Decimal whose text is not the one encode writes")
        return value
    raise _Shape(f"a comparable value expected, found {type(tree).__name__}")


def _optional(codec: _Codec) -> _Codec:
    return _Codec(lambda v: None if v is None else codec.encode(v),
                  lambda t: None if t is None else codec.decode(t))


INT = _Codec(_encode_int, lambda t: _expect(t, int))
BOOL = _Codec(_encode_bool, lambda t: _expect(t, bool))
STR = _Codec(_encode_str, lambda t: _expect(t, str))
FLOAT = _Codec(_encode_float, lambda t: _expect(t, float))
BYTES = _Codec(_encode_bytes, lambda t: _expect(t, bytes))
STRS = _Codec(_encode_strs, _decode_strs)
PAIRS = _Codec(_encode_pairs, _decode_pairs)
VALUE = _Codec(_encode_value, _decode_value)


class _Record:
    """A dataclass as a tuple of its fields' plain values, in the order of ``fields``.

    ``stateful``: the fields are read with ``__getstate__`` and set with ``__setstate__`` (ColumnProfile,
    whose sketches are bytes only in its state). The class is imported when first needed, so a summary
    without profiles never imports worker.profile.
    """

    def __init__(self, module: str, name: str, fields: tuple[tuple[str, _Codec], ...], *, stateful: bool = False):
        self.module, self.name, self.fields, self.stateful = module, name, fields, stateful
        self.names = tuple(n for n, _ in fields)

    @functools.cached_property
    def cls(self) -> type:
        cls = getattr(importlib.import_module(self.module), self.name)
        actual = {f.name for f in dataclasses.fields(cls)}
        if actual != set(self.names):  # a field added or renamed without teaching this codec
            raise TypeError(f"worker.partials does not know the fields of {self.module}.{self.name}: it has "
                            f"{sorted(actual)}, the codec {sorted(self.names)}")
        return cls

    def encode(self, obj: Any) -> tuple:
        if not isinstance(obj, self.cls):
            raise _Shape(f"{self.name} expected, found {type(obj).__name__}")
        state = obj.__getstate__() if self.stateful else obj.__dict__
        out = []
        for name, codec in self.fields:
            try:
                out.append(codec.encode(state[name]))
            except _Shape as e:
                raise _Shape(f"{self.name}.{name}: {e}") from None
        return tuple(out)

    def decode(self, tree: Any) -> Any:
        if type(tree) is not tuple or len(tree) != len(self.fields):
            raise _Shape(f"{self.name} expected as a tuple of {len(self.fields)}, found {type(tree).__name__}"
                         + (f" of {len(tree)}" if type(tree) is tuple else ""))
        values = {}
        for (name, codec), item in zip(self.fields, tree, strict=True):
            try:
                values[name] = codec.decode(item)
            except _Shape as e:
                raise _Shape(f"{self.name}.{name}: {e}") from None
        if not self.stateful:
            return self.cls(**values)
        obj = self.cls.__new__(self.cls)
        try:
            obj.__setstate__(values)
        except Exception as e:  # noqa: BLE001 (a sketch library's error on hostile bytes, whatever its type)
            raise _Shape(f"{self.name}: its state does not load ({type(e).__name__})") from None
        return obj

    @property
    def codec(self) -> _Codec:
        return _Codec(self.encode, self.decode)


def _map_of(record: _Record) -> _Codec:
    def encode(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _Shape(f"a mapping expected, found {type(value).__name__}")
        items = []
        for i, (key, item) in enumerate(value.items()):
            try:
                items.append((_encode_str(key), record.encode(item)))
            except _Shape as e:
                raise _Shape(f"entry {i}: {e}") from None
        return dict(sorted(items, key=lambda kv: kv[0]))  # by key: the bytes do not depend on merge order

    def decode(tree: Any) -> dict[str, Any]:
        out = {}
        for i, (key, item) in enumerate(_expect(tree, dict).items()):
            try:
                out[_expect(key, str)] = record.decode(item)
            except _Shape as e:
                raise _Shape(f"entry {i}: {e}") from None
        return out

    return _Codec(encode, decode)


_VALUE_TYPE = _Record("worker.values", "ValueType", (("family", STR), ("name", STR), ("unit", STR), ("utc", BOOL)))
_FIELD_INFO = _Record("worker.summary", "FieldInfo", (("types", STRS), ("files", INT), ("position", INT)))
_COLUMN_STATS = _Record("worker.summary", "ColumnStats", (
    ("types", STRS), ("position", INT), ("null_count", _optional(INT)), ("has_min_max", BOOL),
    ("min", VALUE), ("max", VALUE), ("vtype", _optional(_VALUE_TYPE.codec)), ("unusable", _optional(STR)),
))
_COLUMN_PROFILE = _Record("worker.profile", "ColumnProfile", (
    ("kind", STR), ("types", STRS), ("count", INT), ("null_count", INT), ("nan_count", INT),
    ("min", VALUE), ("max", VALUE), ("vtype", _optional(_VALUE_TYPE.codec)), ("bounds_lost", _optional(STR)),
    ("n", INT), ("mean", FLOAT), ("m2", FLOAT), ("exp", INT),
    ("hll", _optional(BYTES)), ("kll", _optional(BYTES)),  # the sketches' own serializations
    ("partition", BOOL),
), stateful=True)
_SUMMARY = _Record("worker.summary", "Summary", (
    ("files", INT), ("rows", INT), ("bytes", INT), ("row_groups", INT),
    ("fields", _map_of(_FIELD_INFO)), ("stats", _map_of(_COLUMN_STATS)),
    ("partition_columns", STRS), ("skipped", PAIRS), ("skipped_count", INT),
    ("compression", STRS), ("created_by", STRS), ("profiles", _map_of(_COLUMN_PROFILE)),
))
RECORDS = (_SUMMARY, _FIELD_INFO, _COLUMN_STATS, _VALUE_TYPE, _COLUMN_PROFILE)


@functools.cache
def _names() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The field names each record is written with: a partial of other fields is refused by name."""
    return tuple((r.name, r.names) for r in RECORDS)


def _diff(names: Any) -> str:
    ours = dict(_names())
    if type(names) is not tuple or not all(type(x) is tuple and len(x) == 2 and type(x[0]) is str for x in names):
        return "its field list is malformed"
    theirs = dict(names)
    for name, fields in ours.items():
        if theirs.get(name) != fields:
            other = theirs.get(name)
            shown = ", ".join(_short(f) for f in other)[:300] if type(other) is tuple else "nothing"
            return f"{name} has ({', '.join(fields)}) here, ({shown}) in the partial"
    return "it names other records"
