"""A bounded look at a Parquet footer's schema before pyarrow decodes it.

pyarrow turns the flat list of schema elements into a tree by recursion, on the reading
thread's stack: a footer whose schema nests a few thousand levels (a 56 KB object) kills the
process. Here the footer's Thrift compact encoding (the ``FileMetaData`` of apache/parquet-format's
parquet.thrift) is decoded by Apache Thrift's own C decoder (``thrift.protocol.fastbinary``), asked
for the schema elements' names and child counts only: every other field is skipped in C, a struct
nested deeper than Thrift's recursion limit or bytes that end early are refused, and where a field
appears twice the last copy wins, as it does for the C++ decoder in pyarrow (a hostile footer can hold
a harmless schema and then a deep one). The tree is then walked with a loop, so its depth and shape are
known, and refused, before anything recursive runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from thrift.protocol import fastbinary
from thrift.protocol.TCompactProtocol import TCompactProtocolAccelerated
from thrift.Thrift import TException, TType
from thrift.transport.TTransport import TMemoryBuffer

# pyarrow refuses a Thrift list longer than this (ReaderProperties' thrift_container_size_limit).
MAX_CONTAINER_SIZE = 1_000_000


class FooterError(ValueError):
    """Raised when footer bytes are not a FileMetaData this reader accepts; the message says why."""


@dataclass(frozen=True)
class FooterSchema:
    """The shape of a footer's schema: ``leaves`` holds each leaf column's path, in leaf order."""

    depth: int
    elements: int
    leaves: tuple[tuple[str, ...], ...]


class _SchemaElement:
    """parquet.thrift's SchemaElement, only the fields needed: 1 type, 4 name, 5 num_children."""

    thrift_spec = (None, (1, TType.I32, "type", None, None), None, None, (4, TType.STRING, "name", "BINARY", None),
                   (5, TType.I32, "num_children", None, None))

    def __init__(self, type=None, name=None, num_children=None):
        self.type, self.name, self.num_children = type, name, num_children


class _FileMetaData:
    """parquet.thrift's FileMetaData, only field 2: the schema."""

    thrift_spec = (None, None, (2, TType.LIST, "schema", (TType.STRUCT, [_SchemaElement, _SchemaElement.thrift_spec],
                                                          False), None))

    def __init__(self, schema=None):
        self.schema = schema


def read_schema(footer: bytes | bytearray | memoryview, *, max_depth: int = 100) -> FooterSchema:
    """The schema of a Parquet footer (the Thrift FileMetaData, without magic or length).

    Raises FooterError when the bytes are not a well-formed FileMetaData schema, or the schema
    nests deeper than ``max_depth`` (a leaf ``a.b.c`` is at depth 3).
    """
    protocol = TCompactProtocolAccelerated(TMemoryBuffer(bytes(footer)), fallback=False,
                                           string_length_limit=len(footer), container_length_limit=MAX_CONTAINER_SIZE)
    decoded = _FileMetaData()
    try:
        fastbinary.decode_compact(decoded, protocol, [_FileMetaData, _FileMetaData.thrift_spec])
    except (TException, EOFError, ValueError, TypeError, OverflowError, MemoryError) as e:
        raise FooterError(f"corrupt footer: {type(e).__name__}: {str(e)[:100]}") from None
    if not decoded.schema:
        raise FooterError("the footer has no schema")
    elements = []
    for i, element in enumerate(decoded.schema):
        if element.name is None:
            raise FooterError(f"schema element {i} has no name")
        try:
            name = element.name.decode("utf-8")
        except UnicodeDecodeError:  # pyarrow cannot read such a file either
            raise FooterError(f"schema element {i}'s name is not valid UTF-8") from None
        elements.append((name, element.num_children or 0, element.type is not None))
    return _shape(elements, max_depth)


def _shape(elements: list[tuple[str, int, bool]], max_depth: int) -> FooterSchema:
    # Elements are the schema tree in depth-first order; a group is followed by its
    # num_children children. ``open_`` holds, per open group, how many children it still expects.
    if not elements:
        raise FooterError("the schema has no root element")
    open_ = [max(elements[0][1], 0)]
    path: list[str] = []
    leaves: list[tuple[str, ...]] = []
    depth = 0
    for i in range(1, len(elements)):
        name, children, has_type = elements[i]
        if open_[-1] <= 0:  # only the root stays open once its children are all read
            raise FooterError(f"schema element {i} lies outside the root's children")
        open_[-1] -= 1
        if len(path) + 1 > max_depth:
            raise FooterError(f"schema nests deeper than {max_depth} levels")
        depth = max(depth, len(path) + 1)
        if children > 0:
            open_.append(children)
            path.append(name)
            continue
        if has_type and children == 0:
            leaves.append((*path, name))
        # (a group with no children, or a negative count, holds no column, as in parquet-cpp)
        while len(open_) > 1 and open_[-1] == 0:
            open_.pop()
            path.pop()
    if any(open_):
        raise FooterError("the schema ends before every group's children")
    return FooterSchema(depth=depth, elements=len(elements), leaves=tuple(leaves))


def column_key(path: tuple[str, ...] | list[str]) -> str:
    """A leaf column's statistics key: its path components joined with ".", each "." or "\\"
    inside a component escaped with a backslash ("a\\.b" is the top-level column "a.b")."""
    return ".".join(c.replace("\\", "\\\\").replace(".", "\\.") for c in path)
