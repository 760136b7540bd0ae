"""Pure: a bounded look at a Parquet footer's schema before pyarrow decodes it.

pyarrow turns the flat list of schema elements into a tree by recursion, on the reading
thread's stack: a footer whose schema nests a few thousand levels (a 56 KB object) kills the
process. This module reads the footer's Thrift compact encoding (the ``FileMetaData`` of
apache/parquet-format's parquet.thrift) with loops and explicit stacks only, so the depth and
shape of the schema are known, and refused, before anything recursive runs. Every length and
count is checked against the bytes that remain, so hostile bytes raise :class:`FooterError`
instead of looping or allocating: each step consumes at least one byte.
"""

from __future__ import annotations

from dataclasses import dataclass

# Thrift compact protocol type codes (thrift/doc/specs/thrift-compact-protocol.md).
_STOP, _TRUE, _FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)
_BOOLS = (_TRUE, _FALSE)
_FIXED = {_I8: 1, _DOUBLE: 8}
_VARINTS = (_I16, _I32, _I64)
# Generic nesting of Thrift values: parquet.thrift needs about 6; Thrift's C++ reader allows 64.
MAX_THRIFT_NESTING = 64
# pyarrow refuses a Thrift list longer than this (ReaderProperties' thrift_container_size_limit).
MAX_CONTAINER_SIZE = 1_000_000

# FileMetaData and SchemaElement field ids (parquet.thrift).
_FMD_SCHEMA = 2
_SE_TYPE, _SE_NAME, _SE_NUM_CHILDREN = 1, 4, 5


class FooterError(ValueError):
    """Raised when footer bytes are not a FileMetaData this reader accepts; the message says why."""


@dataclass(frozen=True)
class FooterSchema:
    """The shape of a footer's schema: ``leaves`` holds each leaf column's path, in leaf order."""

    depth: int
    elements: int
    leaves: tuple[tuple[str, ...], ...]


class _Reader:
    """A cursor over compact-protocol bytes; every read is bounds-checked."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes | bytearray | memoryview):
        self.buf = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
        self.pos = 0
        self.end = len(buf)

    def byte(self) -> int:
        if self.pos >= self.end:
            raise FooterError(f"truncated footer at byte {self.pos}")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise FooterError(f"length {n} at byte {self.pos} runs past the footer's {self.end} bytes")
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift >= 70:  # 10 bytes hold any 64-bit value
                raise FooterError(f"varint longer than 10 bytes at byte {self.pos}")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def field(self, last_id: int) -> tuple[int, int]:
        """(type, id) of the next struct field; type _STOP ends the struct."""
        b = self.byte()
        if b == _STOP:
            return _STOP, 0
        ftype, delta = b & 0x0F, b >> 4
        if ftype > _STRUCT:
            raise FooterError(f"unknown Thrift type {ftype} at byte {self.pos - 1}")
        return ftype, (last_id + delta if delta else self.zigzag())

    def list_header(self) -> tuple[int, int]:
        """(size, element type) of a list or set; the size is checked against the bytes left."""
        b = self.byte()
        size, etype = b >> 4, b & 0x0F
        if size == 15:
            size = self.varint()
        if etype > _STRUCT or (etype == _STOP and size):
            raise FooterError(f"unknown Thrift element type {etype} at byte {self.pos}")
        self._check_count(size, 1)
        return size, etype

    def map_header(self) -> tuple[int, int, int]:
        size = self.varint()
        if not size:
            return 0, _STOP, _STOP
        b = self.byte()
        ktype, vtype = b >> 4, b & 0x0F
        if not (0 < ktype <= _STRUCT and 0 < vtype <= _STRUCT):
            raise FooterError(f"unknown Thrift map types {ktype}/{vtype} at byte {self.pos}")
        self._check_count(size, 2)
        return size, ktype, vtype

    def _check_count(self, size: int, min_bytes: int) -> None:
        if size > MAX_CONTAINER_SIZE:
            raise FooterError(f"a Thrift container of {size} elements (at most {MAX_CONTAINER_SIZE})")
        if size * min_bytes > self.end - self.pos:
            raise FooterError(f"a container of {size} elements at byte {self.pos} cannot fit in the footer")

    def scalar(self, vtype: int, in_container: bool) -> None:
        """Skip one non-container value."""
        if vtype in _BOOLS:
            if in_container:  # a bool element is one byte; a bool field lives in its header
                self.byte()
        elif vtype in _VARINTS:
            self.varint()
        elif vtype == _BINARY:
            self.take_skip(self.varint())
        elif vtype in _FIXED:
            self.take_skip(_FIXED[vtype])
        else:
            raise FooterError(f"unexpected Thrift type {vtype} at byte {self.pos}")

    def take_skip(self, n: int) -> None:
        if n > self.end - self.pos:
            raise FooterError(f"length {n} at byte {self.pos} runs past the footer's {self.end} bytes")
        self.pos += n

    def skip(self, vtype: int, in_container: bool = False) -> None:
        """Skip one value of any type, containers included, with an explicit stack (no recursion)."""
        if vtype not in (_LIST, _SET, _MAP, _STRUCT):
            self.scalar(vtype, in_container)
            return
        # A frame is [kind, remaining, type1, type2, last field id]; kind is _STRUCT, _LIST or _MAP.
        stack: list[list[int]] = []
        while True:
            if vtype == _STRUCT:
                stack.append([_STRUCT, 0, 0, 0, 0])
            elif vtype in (_LIST, _SET):
                size, etype = self.list_header()
                stack.append([_LIST, size, etype, 0, 0])
            elif vtype == _MAP:
                size, ktype, vt = self.map_header()
                stack.append([_MAP, 2 * size, ktype, vt, 0])
            else:
                self.scalar(vtype, in_container)
            if len(stack) > MAX_THRIFT_NESTING:
                raise FooterError(f"Thrift values nested deeper than {MAX_THRIFT_NESTING} at byte {self.pos}")
            # Find the next value to skip, closing the frames that are done.
            while stack:
                frame = stack[-1]
                if frame[0] == _STRUCT:
                    vtype, frame[4] = self.field(frame[4])
                    if vtype == _STOP:
                        stack.pop()
                        continue
                    if vtype in _BOOLS:
                        continue  # the value was in the field header
                    in_container = False
                    break
                if frame[1] == 0:
                    stack.pop()
                    continue
                frame[1] -= 1
                # A map alternates key, value: an odd count left means the key was just skipped.
                vtype = frame[2] if frame[0] == _LIST or frame[1] % 2 else frame[3]
                in_container = True
                break
            else:
                return


def read_schema(footer: bytes | bytearray | memoryview, *, max_depth: int = 100, whole: bool = False) -> FooterSchema:
    """The schema of a Parquet footer (the Thrift FileMetaData, without magic or length).

    Raises FooterError when the bytes are not a well-formed FileMetaData schema, or the schema
    nests deeper than ``max_depth`` (a leaf ``a.b.c`` is at depth 3). Reading stops after the
    schema unless ``whole`` is set, in which case every byte of the footer is checked.
    """
    r = _Reader(footer)
    elements: list[tuple[str, int, bool]] | None = None
    last = 0
    while True:
        ftype, last = r.field(last)
        if ftype == _STOP:
            break
        if last == _FMD_SCHEMA and ftype == _LIST and elements is None:
            elements = _schema_elements(r)
            if not whole:
                break
        else:
            r.skip(ftype)
    if elements is None:
        raise FooterError("the footer has no schema")
    return _shape(elements, max_depth)


def _schema_elements(r: _Reader) -> list[tuple[str, int, bool]]:
    """(name, num_children, has type) of each SchemaElement, other fields skipped."""
    size, etype = r.list_header()
    if etype != _STRUCT:
        raise FooterError(f"the schema is a list of Thrift type {etype}, not of structs")
    out = []
    for _ in range(size):
        name: str | None = None
        children, has_type, last = 0, False, 0
        while True:
            ftype, last = r.field(last)
            if ftype == _STOP:
                break
            if last == _SE_NAME and ftype == _BINARY:
                raw = r.take(r.varint())
                try:
                    name = raw.decode("utf-8")
                except UnicodeDecodeError:  # pyarrow cannot read such a file either
                    raise FooterError(f"schema element {len(out)}'s name is not valid UTF-8") from None
            elif last == _SE_NUM_CHILDREN and ftype == _I32:
                children = r.zigzag()
            elif last == _SE_TYPE and ftype == _I32:
                r.varint()
                has_type = True
            else:
                r.skip(ftype)
        if name is None:
            raise FooterError(f"schema element {len(out)} has no name")
        out.append((name, children, has_type))
    return out


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
