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
# What a partial may weigh, stored and inflated, unless the caller says (PARTIAL_MAX_BYTES): zlib expands up
# to ~1,000 times, so a small blob must not claim gigabytes. A full-mode partial costs ~33 KB per numeric
# column, so 256 MiB holds ~8,000 of them.
MAX_PAYLOAD_BYTES = 256 << 20
# Compressed bytes handed to zlib at a time (what it has not consumed is copied on each call, so the whole
# body at once would be copied once per read), and inflated bytes asked of it at a time.
_INPUT_CHUNK = 64 << 10


class CorruptPartial(WorkerError):
    """Raised when bytes are not a partial summary this worker wrote: wrong magic or version, a
    damaged or truncated payload, a global named in it, or values of the wrong shape."""

    code = "internal"
    retryable = False


class PartialTooLarge(CorruptPartial):
    """Raised when a partial is over the size bound (PARTIAL_MAX_BYTES), as stored or as its header declares
    its payload: refused before it is downloaded or inflated. ``details`` carry ``size`` and ``max_bytes``."""

    def __init__(self, message: str, *, size: int, max_bytes: int):
        super().__init__(message, details={"size": size, "max_bytes": max_bytes})
        self.size, self.max_bytes = size, max_bytes


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

    ``max_bytes`` bounds the decompressed payload: a header that declares more is refused before anything is
    inflated (:class:`PartialTooLarge`), and the payload is inflated chunk by chunk as the unpickler reads it,
    never past what the header declares, so neither a bomb nor a long payload is ever held whole.
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
        raise PartialTooLarge(f"partial summary declares a {size}-byte payload, over the limit of {max_bytes} bytes "
                              "(PARTIAL_MAX_BYTES)", size=size, max_bytes=max_bytes)
    names, tree = _unpickle(_Inflating(view[HEADER_BYTES:], size))
    if names != _names():
        raise CorruptPartial("partial summary written by a worker whose summary fields differ from this one's: "
                             f"{_diff(names)}")
    try:
        return _SUMMARY.decode(tree)
    except _Shape as e:
        raise CorruptPartial(f"payload is not a partial summary: {e}") from None


class _Inflating:
    """The payload as a file the unpickler reads: inflated on demand a chunk at a time, never more than ``size``
    bytes (what the header declares), each fault of the compressed stream a CorruptPartial of its own."""

    def __init__(self, body: memoryview, size: int):
        self._body, self._size = body, size
        self._inflater = zlib.decompressobj()
        self._fed = 0  # bytes of body handed to zlib
        self._pending = b""  # what zlib has not consumed of what it was handed
        self._chunk, self._at = b"", 0  # inflated bytes, and how far the unpickler has read them
        self.inflated = 0

    def read(self, n: int = -1) -> bytes:
        left = self._size - self.inflated + len(self._chunk) - self._at
        want = left if n is None or n < 0 else min(n, left)
        pieces = []
        while want > 0 and self._fill():
            piece = self._chunk[self._at:self._at + want]
            self._at += len(piece)
            want -= len(piece)
            pieces.append(piece)
        if n is not None and n > left:
            self._refuse_more()  # the pickle reads past the declared end: is the payload longer?
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes ahead, not consumed: the C unpickler reads opcodes from what this returns and consumes
        them with read() afterwards, rather than calling read(1) for each (4 Mi opcodes outside a frame: 10 s
        that way, 0.1-0.4 s this way, measured)."""
        if len(self._chunk) - self._at < n and self.inflated < self._size:
            self._chunk, self._at = self._chunk[self._at:] + self._inflate(min(n, self._size - self.inflated)), 0
        return self._chunk[self._at:self._at + n]

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[:len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        # Only text opcodes read lines: encode never writes one, and a hostile one may not run on.
        line = b""
        while self._fill():
            end = self._chunk.find(b"\n", self._at)
            stop = len(self._chunk) if end < 0 else end + 1
            line += self._chunk[self._at:stop]
            self._at = stop
            if end >= 0:
                break
            if len(line) > _INPUT_CHUNK:
                raise CorruptPartial(f"payload has a text line longer than {_INPUT_CHUNK} bytes")
        return line

    def _fill(self) -> bool:
        """Whether there are inflated bytes not yet read (inflating the next chunk if need be)."""
        if self._at < len(self._chunk):
            return True
        self._chunk, self._at = self._inflate(min(_INPUT_CHUNK, self._size - self.inflated)), 0
        return bool(self._chunk)

    def _inflate(self, most: int) -> bytes:
        """Up to ``most`` more bytes of payload (fewer only at the end of the stream)."""
        while most > 0 and not self._inflater.eof:
            if not self._pending:
                if self._fed >= len(self._body):
                    raise CorruptPartial("compressed payload is truncated")
                self._pending = self._body[self._fed:self._fed + _INPUT_CHUNK]
                self._fed += len(self._pending)
            try:
                piece = self._inflater.decompress(self._pending, most)
            except zlib.error as e:
                raise CorruptPartial(f"compressed payload is corrupt (zlib: {e})") from None
            # At the end of the stream what is left of the input is unused_data (unconsumed_tail may repeat it).
            self._pending = b"" if self._inflater.eof else self._inflater.unconsumed_tail
            if piece:
                self.inflated += len(piece)
                return piece
        return b""

    def _refuse_more(self) -> None:
        if self.inflated == self._size and self._inflate(1):  # one byte more than declared is enough to tell
            raise CorruptPartial(f"compressed payload is longer than the {self._size} bytes its header declares")

    def finish(self) -> None:
        """After the unpickler stopped: the payload must end where the pickle did, and the compressed stream
        with it. What is left is counted a chunk at a time, never held."""
        stray = len(self._chunk) - self._at
        while piece := self._inflate(min(1 << 20, self._size - self.inflated)):
            stray += len(piece)
        if stray:
            raise CorruptPartial(f"{stray} stray bytes after the pickled payload")
        self._refuse_more()
        if self.inflated != self._size:
            raise CorruptPartial(f"payload is {self.inflated} bytes, its header declares {self._size}")
        unused = len(self._inflater.unused_data) + len(self._body) - self._fed
        if unused:
            raise CorruptPartial(f"{unused} stray bytes after the compressed payload")


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain values only: a partial never names a global, so any global is refused unloaded."""

    def find_class(self, module: str, name: str) -> Any:
        raise CorruptPartial(f"payload names the global {_short(module)}.{_short(name)}: a partial holds plain "
                             "values only, and no global is ever loaded")


def _unpickle(stream: _Inflating) -> tuple[Any, Any]:
    try:
        loaded = _PlainUnpickler(stream).load()  # no global can be loaded: see find_class
    except CorruptPartial:
        raise
    except Exception as e:  # noqa: BLE001 (hostile bytes raise anything pickle can: all of it is corruption)
        raise CorruptPartial(f"payload is not a valid pickle ({type(e).__name__})") from None
    stream.finish()
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
