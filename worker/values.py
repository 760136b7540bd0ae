"""Pure: values of any column type -> JSON figures, the same way in both modes.

Metadata mode decodes a footer statistic from its raw bytes and the leaf's Parquet types
(:func:`leaf_type`, :func:`decode_statistic`); full mode takes min/max from the column data
(:func:`value_type`, :func:`array_bounds`). Both yield *comparable* values, which merge with
Python's ``min``/``max`` exactly and in any order:

- numbers as Python ``int`` (any width), ``float`` (NaN never kept) or ``decimal.Decimal``
  (exact, with the column's scale as its exponent);
- strings, binary and UUIDs as ``bytes`` (byte order is the Parquet order, and code point
  order for valid UTF-8);
- dates as days since 1970-01-01, times, timestamps and durations as ``int`` counts of the
  :class:`ValueType`'s unit.

Only :func:`render` turns a comparable value into JSON, so a value that cannot be rendered
(invalid UTF-8, say) costs that one figure. Dates and times are computed from the integers
(no ``datetime``: its years stop at 9999; no pandas). Only pyarrow is imported.
"""

from __future__ import annotations

import base64
import codecs
import functools
import json
import math
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# Parquet writers bound statistics the same way (parquet-mr's truncation, Arrow's page index).
STATISTIC_MAX_BYTES = 128
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_PARQUET_UNITS = {"MILLIS": "ms", "MICROS": "us", "NANOS": "ns"}
_JSON_UNITS = {"milliseconds": "ms", "microseconds": "us", "nanoseconds": "ns"}
_UNIX_JULIAN_DAY = 2_440_588  # INT96 timestamps count Julian days


class Unusable(ValueError):
    """Raised when a footer statistic is not a usable bound (NaN, wrong length, unordered type)."""


@dataclass(frozen=True)
class ValueType:
    """How the comparable values of a column render.

    ``family`` is one of number, boolean, string, binary, uuid, date, time, timestamp,
    duration, null, nested, unordered. ``unit`` (s, ms, us, ns) is set for time, timestamp
    and duration; ``utc`` for timestamps adjusted to UTC (rendered with "Z"). ``name``
    describes the values, so that two files agree when their names do.
    """

    family: str
    name: str
    unit: str = ""
    utc: bool = False

    def common(self, other: ValueType) -> ValueType | None:
        """A type both sides' values render in after :meth:`convert`, or None if they do not compare."""
        if self == other:
            return self
        if self.family != other.family:
            return None
        if self.family in ("number", "string", "binary", "uuid", "date", "boolean"):
            return self if self.name <= other.name else other
        if self.family in ("time", "timestamp") and self.utc == other.utc:
            # the finer unit holds both exactly (a duration's unit is its meaning: no conversion)
            return self if _PER_SECOND[self.unit] >= _PER_SECOND[other.unit] else other
        return None

    def convert(self, value: Any, to: ValueType) -> Any:
        """``value`` of this type as a value of ``to`` (from :meth:`common`)."""
        if value is None or self.unit == to.unit:
            return value
        return value * (_PER_SECOND[to.unit] // _PER_SECOND[self.unit])


NUMBER = ValueType("number", "number")


# ---- full mode: Arrow types and arrays ---------------------------------------------------------

def value_type(arrow_type: pa.DataType) -> ValueType:
    """The :class:`ValueType` of an Arrow column type."""
    t = arrow_type
    if isinstance(t, pa.BaseExtensionType):
        if getattr(t, "extension_name", "") == "arrow.uuid":
            return ValueType("uuid", "uuid")
        return value_type(t.storage_type)
    if pa.types.is_dictionary(t):
        return value_type(t.value_type)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return NUMBER
    if pa.types.is_boolean(t):
        return ValueType("boolean", "boolean")
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return ValueType("string", "string")
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t)):
        return ValueType("binary", "binary")
    if pa.types.is_date(t):
        return ValueType("date", "date")
    if pa.types.is_time(t):
        return ValueType("time", f"time[{t.unit}]", t.unit)
    if pa.types.is_timestamp(t):
        return ValueType("timestamp", f"timestamp[{t.unit}{', UTC' if t.tz else ''}]", t.unit, bool(t.tz))
    if pa.types.is_duration(t):
        return ValueType("duration", f"duration[{t.unit}]", t.unit)
    if pa.types.is_null(t):
        return ValueType("null", "null")
    if pa.types.is_nested(t):
        return ValueType("nested", "nested")
    return ValueType("unordered", str(t))


def comparable_array(array: pa.Array) -> pa.Array:
    """``array`` as an array whose ``pyarrow.compute.min_max`` gives comparable values.

    Extension and dictionary arrays become their values; strings become binary (so invalid
    UTF-8 never reaches a decoder); temporal types become their integers; float16 becomes
    float32 and decimal32/64 become decimal128 (both exact), which have kernels.
    """
    t = array.type
    if isinstance(t, pa.BaseExtensionType):
        return comparable_array(array.storage)
    if pa.types.is_dictionary(t):
        return comparable_array(array.dictionary_decode())
    if pa.types.is_string(t):
        return array.view(pa.binary())
    if pa.types.is_large_string(t):
        return array.view(pa.large_binary())
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return array.cast(pa.large_binary())
    if pa.types.is_float16(t):
        return array.cast(pa.float32())
    if pa.types.is_decimal(t) and t.bit_width < 128:
        return array.cast(pa.decimal128(t.precision, t.scale))
    if pa.types.is_temporal(t):
        ints = array.view(pa.int32() if t.bit_width == 32 else pa.int64())
        if pa.types.is_date64(t):  # milliseconds -> days (floor keeps the order)
            return _date64_days(ints)
        return ints
    return array


def _date64_days(ms: pa.Array) -> pa.Array:
    # Integer floor division: Arrow's divide truncates toward zero, so step back where it did.
    quotient = pc.divide(ms, 86_400_000)
    behind = pc.and_(pc.less(ms, 0), pc.not_equal(pc.multiply(quotient, 86_400_000), ms))
    return pc.if_else(behind, pc.subtract(quotient, 1), quotient)


def array_bounds(array: pa.Array) -> tuple[Any, Any]:
    """The comparable min and max of an array's non-null (and non-NaN) values; None, None if none."""
    values = comparable_array(array)
    if not pa.types.is_integer(values.type) and not pa.types.is_floating(values.type) and not (
            pa.types.is_decimal(values.type) or pa.types.is_boolean(values.type)
            or pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)
            or pa.types.is_fixed_size_binary(values.type)):
        return None, None
    if len(values) == values.null_count:
        return None, None
    bounds = pc.min_max(values)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if isinstance(low, float) and math.isnan(low):  # min_max skips NaN, and gives NaN when all are
        return None, None
    return low, high


# ---- metadata mode: Parquet leaves and footer statistics --------------------------------------

@dataclass(frozen=True)
class LeafType:
    """How one Parquet leaf's raw statistics decode: its :class:`ValueType` and physical details."""

    value: ValueType
    physical: str
    decode: str  # int, uint, float, float16, decimal, bytes, int96, bool, none
    scale: int = 0


def leaf_type(leaf) -> LeafType:
    """The :class:`LeafType` of a ``pyarrow.parquet.ColumnSchema`` (logical type first, then converted)."""
    try:
        logical = leaf.logical_type.to_json()
    except AttributeError:
        logical = ""
    converted = str(leaf.converted_type or "NONE")
    decimal = (leaf.precision, leaf.scale) if converted == "DECIMAL" else None
    return _leaf_type(leaf.physical_type, logical, converted, decimal)


@functools.lru_cache(maxsize=1024)
def _leaf_type(physical: str, logical_json: str, converted: str, decimal: tuple[int, int] | None) -> LeafType:
    # Cached: a prefix's files repeat the same few column types, and decoding them is most of a footer's cost.
    try:
        logical = json.loads(logical_json) if logical_json else {"Type": "None"}
    except ValueError:
        logical = {"Type": "None"}
    kind = logical.get("Type", "None")
    if kind == "None" and converted not in ("NONE", "None"):
        kind, logical = _from_converted(converted, decimal)
    if kind == "Int":
        width, signed = int(logical.get("bitWidth", 64)), bool(logical.get("isSigned", True))
        name = f"{'' if signed else 'u'}int{width}"
        return LeafType(ValueType("number", name), physical, "int" if signed else "uint")
    if kind == "Decimal":
        scale = int(logical.get("scale", 0))
        return LeafType(ValueType("number", f"decimal({logical.get('precision')},{scale})"), physical,
                        "decimal", scale)
    if kind == "Date":
        return LeafType(ValueType("date", "date"), physical, "int")
    if kind in ("Time", "Timestamp"):
        unit = _JSON_UNITS.get(logical.get("timeUnit", ""), "")
        if not unit:
            return LeafType(ValueType("unordered", f"{kind} of unknown unit"), physical, "none")
        utc = bool(logical.get("isAdjustedToUTC")) and kind == "Timestamp"
        family = kind.lower()
        return LeafType(ValueType(family, f"{family}[{unit}{', UTC' if utc else ''}]", unit, utc), physical, "int")
    if kind in ("String", "Enum", "JSON"):
        return LeafType(ValueType("string", "string"), physical, "bytes")
    if kind == "UUID":
        return LeafType(ValueType("uuid", "uuid"), physical, "bytes")
    if kind == "Float16":
        return LeafType(NUMBER if physical == "FIXED_LEN_BYTE_ARRAY" else ValueType("unordered", "float16"),
                        physical, "float16")
    if kind == "Null":
        return LeafType(ValueType("null", "null"), physical, "none")
    if kind == "BSON":
        return LeafType(ValueType("binary", "binary"), physical, "bytes")
    if kind != "None":  # Interval, Geometry, Variant...: the spec defines no order for their statistics
        return LeafType(ValueType("unordered", kind), physical, "none")
    return {
        "BOOLEAN": LeafType(ValueType("boolean", "boolean"), physical, "bool"),
        "INT32": LeafType(ValueType("number", "int32"), physical, "int"),
        "INT64": LeafType(ValueType("number", "int64"), physical, "int"),
        "INT96": LeafType(ValueType("timestamp", "timestamp[ns] (INT96)", "ns"), physical, "int96"),
        "FLOAT": LeafType(ValueType("number", "float"), physical, "float"),
        "DOUBLE": LeafType(ValueType("number", "double"), physical, "float"),
        "BYTE_ARRAY": LeafType(ValueType("binary", "binary"), physical, "bytes"),
        "FIXED_LEN_BYTE_ARRAY": LeafType(ValueType("binary", "binary"), physical, "bytes"),
    }.get(physical, LeafType(ValueType("unordered", physical), physical, "none"))


def _from_converted(converted: str, decimal: tuple[int, int] | None) -> tuple[str, dict]:
    # Old writers set only the converted type; pyarrow usually maps it to a logical type already.
    if converted in ("UTF8", "ENUM", "JSON"):
        return "String", {}
    if converted.startswith(("INT_", "UINT_")):
        return "Int", {"bitWidth": int(converted.split("_")[1]), "isSigned": converted.startswith("INT_")}
    if converted == "DECIMAL":
        precision, scale = decimal or (0, 0)
        return "Decimal", {"precision": precision, "scale": scale}
    if converted == "DATE":
        return "Date", {}
    if converted.startswith(("TIMESTAMP_", "TIME_")):
        kind = "Timestamp" if converted.startswith("TIMESTAMP_") else "Time"
        unit = {"ms": "milliseconds", "us": "microseconds"}[_PARQUET_UNITS[converted.split("_")[1]]]
        return kind, {"isAdjustedToUTC": True, "timeUnit": unit}
    if converted == "BSON":
        return "BSON", {}
    if converted == "INTERVAL":
        return "Interval", {}
    return "None", {}


def decode_statistic(leaf: LeafType, raw: Any) -> Any:
    """A raw footer bound (``Statistics.min_raw``/``max_raw``) as a comparable value.

    Raises :class:`Unusable` where the Parquet spec says readers must ignore the bound.
    """
    how = leaf.decode
    if how == "none":
        raise Unusable(f"no order defined for {leaf.value.name} statistics")
    if how == "bool":
        return bool(raw)
    if how in ("int", "uint"):
        value = int(raw)
        if how == "uint" and value < 0:  # unsigned values are stored in the signed physical type
            value += 1 << (32 if leaf.physical == "INT32" else 64)
        return value
    if how == "float":
        value = float(raw)
        if math.isnan(value):
            raise Unusable("a row group's statistics hold NaN")
        return value
    if how == "float16":
        if not isinstance(raw, bytes) or len(raw) != 2:
            raise Unusable("float16 statistics are not 2 bytes")
        value = struct.unpack("<e", raw)[0]
        if math.isnan(value):
            raise Unusable("a row group's statistics hold NaN")
        return value
    if how == "decimal":
        unscaled = int(raw) if isinstance(raw, int) else int.from_bytes(raw, "big", signed=True)
        return _decimal(unscaled, leaf.scale)
    if how == "int96":
        if not isinstance(raw, bytes) or len(raw) != 12:
            raise Unusable("INT96 statistics are not 12 bytes")
        nanos, day = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        return (day - _UNIX_JULIAN_DAY) * 86_400 * 10**9 + nanos
    if isinstance(raw, str):  # defensive: pyarrow gives bytes for BYTE_ARRAY and FLBA
        return raw.encode("utf-8", "surrogatepass")
    return bytes(raw)


def _decimal(unscaled: int, scale: int) -> Decimal:
    # The tuple constructor is exact whatever the number of digits (scaleb would round to 28).
    digits = tuple(int(c) for c in str(abs(unscaled)))
    return Decimal((1 if unscaled < 0 else 0, digits, -scale))


# ---- rendering ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rendered:
    """A figure as JSON: ``value``; or None with ``reason`` (why it is not rendered); ``truncated``
    when the value is a shortened bound."""

    value: Any
    reason: str | None = None
    truncated: bool = False


def render_float(value: float) -> float | str:
    """A float as JSON: the number (-0.0 as 0.0), or "NaN", "Infinity", "-Infinity"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value + 0.0


def render_number(value: Any) -> Any:
    """An int, float, Decimal or bool as JSON (Decimals as exact strings with their scale)."""
    if isinstance(value, int):  # bool too
        return value
    if isinstance(value, float):
        return render_float(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not a number: {type(value).__name__}")


def render(vt: ValueType, value: Any, bound: str = "min") -> Rendered:
    """A comparable value of type ``vt`` as a JSON figure; ``bound`` ("min" or "max") says which way
    a long string or binary value may be shortened and still bound the column."""
    if value is None:
        return Rendered(None)
    try:
        family = vt.family
        if family in ("number", "boolean"):
            return Rendered(render_number(value))
        if family == "string":
            return _render_string(value, bound)
        if family == "binary":
            return _render_binary(value, bound)
        if family == "uuid":
            if len(value) != 16:
                return _render_binary(value, bound)
            h = value.hex()
            return Rendered(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
        if family == "date":
            return Rendered(format_date(value))
        if family == "time":
            return _render_time(value, vt.unit)
        if family == "timestamp":
            return Rendered(format_timestamp(value, vt.unit, vt.utc))
        if family == "duration":
            return Rendered(int(value))
        return Rendered(None, f"no rendering for {vt.name}")
    except (TypeError, ValueError, OverflowError) as e:  # a value of the wrong shape: cost this figure only
        return Rendered(None, f"cannot render: {e}"[:200])


def _render_string(value: bytes, bound: str) -> Rendered:
    if len(value) <= STATISTIC_MAX_BYTES:
        try:
            return Rendered(value.decode("utf-8"))
        except UnicodeDecodeError:
            return Rendered(None, "not valid UTF-8")
    try:
        # the code points that fit whole: an incomplete one at the cut is held back, not an error
        prefix = codecs.getincrementaldecoder("utf-8")("strict").decode(value[:STATISTIC_MAX_BYTES], final=False)
    except UnicodeDecodeError:
        return Rendered(None, "not valid UTF-8")
    if bound == "min":
        return Rendered(prefix, truncated=True)
    points = [ord(c) for c in prefix]
    for i in range(len(points) - 1, -1, -1):
        nxt = points[i] + 1
        if 0xD800 <= nxt <= 0xDFFF:
            nxt = 0xE000
        if nxt > 0x10FFFF:
            continue
        candidate = prefix[:i] + chr(nxt)
        if len(candidate.encode("utf-8")) <= STATISTIC_MAX_BYTES:
            return Rendered(candidate, truncated=True)
    return Rendered(None, f"longer than {STATISTIC_MAX_BYTES} bytes and no shorter upper bound exists")


def _render_binary(value: bytes, bound: str) -> Rendered:
    if len(value) <= STATISTIC_MAX_BYTES:
        return Rendered("base64:" + base64.b64encode(value).decode("ascii"))
    prefix = value[:STATISTIC_MAX_BYTES]
    if bound == "max":
        i = len(prefix) - 1
        while i >= 0 and prefix[i] == 0xFF:
            i -= 1
        if i < 0:
            return Rendered(None, f"longer than {STATISTIC_MAX_BYTES} bytes and no shorter upper bound exists")
        prefix = prefix[:i] + bytes([prefix[i] + 1])
    return Rendered("base64:" + base64.b64encode(prefix).decode("ascii"), truncated=True)


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the proleptic Gregorian calendar, ``days`` after 1970-01-01 (any int)."""
    # Howard Hinnant's days_from_civil inverse; Python's floor division makes it exact for any sign.
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def format_date(days: int) -> str:
    """ISO 8601 date; years outside 0001..9999 in the expanded form ("+275760-09-13", "-000001-12-31")."""
    year, month, day = civil_from_days(int(days))
    text = f"{year:04d}" if 1 <= year <= 9999 else f"{'-' if year < 0 else '+'}{abs(year):06d}"
    return f"{text}-{month:02d}-{day:02d}"


def _clock(count: int, unit: str) -> str:
    per = _PER_SECOND[unit]
    seconds, fraction = divmod(count, per)
    hours, rest = divmod(seconds, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    digits = len(str(per)) - 1
    return f"{text}.{fraction:0{digits}d}" if digits else text


def format_timestamp(count: int, unit: str, utc: bool) -> str:
    """ISO 8601 date and time of ``count`` units since the epoch, digits by unit, "Z" when ``utc``."""
    days, rest = divmod(int(count), 86_400 * _PER_SECOND[unit])
    return f"{format_date(days)}T{_clock(rest, unit)}{'Z' if utc else ''}"


def _render_time(count: int, unit: str) -> Rendered:
    if not 0 <= count <= 86_400 * _PER_SECOND[unit]:  # 24:00:00 is allowed by ISO 8601
        return Rendered(None, "not a time of day")
    return Rendered(_clock(int(count), unit))
