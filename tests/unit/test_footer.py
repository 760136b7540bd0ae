"""The bounded footer reader against pyarrow's own reading of the same footers."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.Thrift import TType
from thrift.transport.TTransport import TFileObjectTransport

from worker.footer import FooterError, column_key, read_schema

from .reaching import Branches
from .thrift_footers import _field, deep_footer, element, footer, parquet_file, varint, zigzag

NAMES = st.one_of(
    st.sampled_from(["a", "a.b", "b", ".", "a\\b", "\\.", "ü", "日本", "x y", "list", "element", "key"]),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=4),
)
SCALARS = st.sampled_from([pa.int64(), pa.int32(), pa.string(), pa.bool_(), pa.float64(), pa.binary(),
                           pa.date32(), pa.decimal128(9, 2), pa.timestamp("us", "UTC")])


def _struct(children):
    return st.lists(st.tuples(NAMES, children), min_size=1, max_size=3,
                    unique_by=lambda f: f[0]).map(lambda fs: pa.struct([pa.field(n, t) for n, t in fs]))


TYPES = st.recursive(SCALARS, lambda children: st.one_of(
    children.map(pa.list_), _struct(children), children.map(lambda t: pa.map_(pa.string(), t)),
    children.map(pa.large_list)), max_leaves=6)
SCHEMAS = st.lists(st.tuples(NAMES, TYPES), min_size=1, max_size=4, unique_by=lambda f: f[0])


def footer_of(table: pa.Table) -> tuple[bytes, pq.FileMetaData]:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    n = int.from_bytes(data[-8:-4], "little")
    return data[-8 - n:-8], pq.read_metadata(pa.BufferReader(data))


def table_of(fields) -> pa.Table:
    return pa.table({name: pa.array([None, None], type=t) for name, t in fields})


def schema_span(footer: bytes) -> tuple[int, int]:
    """Where the schema (FileMetaData's field 2) lies in a well-formed footer: [start, end) in bytes, as
    Thrift's pure-Python compact reader finds it (not the C decoder that read_schema uses)."""
    data = io.BytesIO(footer)
    protocol = TCompactProtocol(TFileObjectTransport(data))
    protocol.readStructBegin()
    while True:
        _, field_type, field_id = protocol.readFieldBegin()
        assert field_type != TType.STOP, "no schema"
        start = data.tell()
        protocol.skip(field_type)
        protocol.readFieldEnd()
        if field_id == 2:
            return start, data.tell()


def _shapes(arrow_type: pa.DataType, found: set[str]) -> set[str]:
    """The nested kinds inside an Arrow type, and the names of its structs' fields (as "name: ...")."""
    if pa.types.is_map(arrow_type):
        found.add("nested: map")
        _shapes(arrow_type.item_type, found)
    elif pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        found.add(f"nested: {'large_list' if pa.types.is_large_list(arrow_type) else 'list'}")
        _shapes(arrow_type.value_type, found)
    elif pa.types.is_struct(arrow_type):
        found.add("nested: struct")
        for field in arrow_type:
            found.add(f"name: {field.name}")
            _shapes(field.type, found)
    return found


LEAVES = Branches(**{"nested: map": 10, "nested: list": 10, "nested: large_list": 10, "nested: struct": 10,
                     "a name with . or \\": 10, "a name Parquet gives its own levels": 7})


@LEAVES.checked
@seed(10)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEMAS)
def test_leaf_paths_and_count_are_pyarrows(fields):
    found = set()
    for name, arrow_type in fields:
        _shapes(arrow_type, found).add(f"name: {name}")
    names = {label.removeprefix("name: ") for label in found if label.startswith("name: ")}
    for label in sorted(label for label in found if label.startswith("nested: ")):
        LEAVES.reached(label)
    if any("." in n or "\\" in n for n in names):
        LEAVES.reached("a name with . or \\")
    if names & {"list", "element", "key", "value"}:  # the names of the levels Parquet adds for lists and maps
        LEAVES.reached("a name Parquet gives its own levels")
    footer, md = footer_of(table_of(fields))
    shape = read_schema(footer)
    assert len(shape.leaves) == md.num_columns
    assert [".".join(p) for p in shape.leaves] == [md.schema.column(j).path for j in range(md.num_columns)]
    assert shape.leaves == read_schema(footer).leaves  # stopping after the schema reads the same
    assert shape.depth == max(len(p) for p in shape.leaves)
    assert [p[0] for p in shape.leaves if len(p) == 1] == [
        f.name for f in md.schema.to_arrow_schema() if not pa.types.is_nested(f.type)]


TRUNCATED = Branches(**{"cut: inside the schema": 5, "cut: after the schema": 5})


@TRUNCATED.checked
@seed(11)
@settings(max_examples=40, deadline=None)
@given(SCHEMAS, st.data())
def test_truncated_footers_are_refused(fields, data):
    footer, _ = footer_of(table_of(fields))
    cut = data.draw(st.integers(0, len(footer) - 1))
    start, end = schema_span(footer)
    TRUNCATED.reached(f"cut: {'before' if cut <= start else 'inside' if cut < end else 'after'} the schema")
    with pytest.raises(FooterError):
        read_schema(footer[:cut])


# Well-formed Thrift with any schema elements in any order (names not UTF-8, negative or missing child
# counts, groups that end early or never, leaves outside the root), and flat schemas that read. Random
# bytes almost never get past the Thrift decoding (0 of 300 did), so these reach the schema's own checks.
ELEMENT_NAMES = NAMES | st.binary(max_size=2)  # bytes: often not UTF-8
any_elements = st.lists(st.builds(element, ELEMENT_NAMES, st.none() | st.integers(-2, 3), st.none() | st.integers(0, 7),
                                  st.integers(0, 2)), max_size=8).map(footer)
flat_schemas = st.lists(ELEMENT_NAMES, max_size=5).map(
    lambda names: footer([element("schema", len(names), rep=0)] + [element(n, ptype=1) for n in names]))
GARBAGE = Branches(reads=40, **{"refused: the schema's elements": 40})


@GARBAGE.checked
@seed(12)
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | any_elements | flat_schemas)
def test_garbage_raises_footer_error_or_reads(garbage):
    try:  # any other exception, or a hang, fails
        read_schema(garbage)
    except FooterError as e:
        GARBAGE.reached("refused: corrupt Thrift" if str(e).startswith("corrupt footer") else
                        "refused: no schema" if "has no schema" in str(e) else "refused: the schema's elements")
    else:
        GARBAGE.reached("reads")


FLIPPED = Branches(**{"flips: in the schema": 25, "reads": 8, "reads: other leaves": 1,
                      "refused: the schema's elements": 5})


@FLIPPED.checked
@seed(13)
@settings(max_examples=100, deadline=None)
@given(st.data())
def test_flipped_bytes_never_escape_as_anything_else(data):
    footer, _ = footer_of(pa.table({"a": [1], "s": pa.array([{"x": [1.0]}])}))
    broken = bytearray(footer)
    # the schema is a tenth of this footer (the rest is row-group metadata the decoder skips): half the flips
    # go into it (drawn anywhere, one example in five changed a byte of the schema)
    start, end = schema_span(footer)
    where = set()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(start, end - 1) | st.integers(0, len(broken) - 1))
        where.add("in the schema" if start <= i < end else "elsewhere")
        broken[i] = data.draw(st.integers(0, 255))
    FLIPPED.reached(f"flips: {'in the schema' if 'in the schema' in where else 'elsewhere only'}")
    try:  # any other exception, or a hang, fails
        leaves = read_schema(bytes(broken)).leaves
    except FooterError as e:
        FLIPPED.reached("refused: corrupt Thrift" if str(e).startswith("corrupt footer") else
                        "refused: no schema" if "has no schema" in str(e) else "refused: the schema's elements")
    else:
        FLIPPED.reached(f"reads: {'the same' if leaves == read_schema(footer).leaves else 'other'} leaves")


def test_a_huge_claimed_container_is_refused_without_allocating():
    # schema field (id 2, list) claiming 2^31 structs in a 10-byte footer
    with pytest.raises(FooterError, match=r"limit"):
        read_schema(b"\x15\x04\x19\xfc\xff\xff\xff\xff\x07\x00")


def test_depth_limit():
    with pytest.raises(FooterError, match="deeper than 100"):
        read_schema(deep_footer(7000), max_depth=100)
    assert read_schema(deep_footer(99), max_depth=100).depth == 100
    with pytest.raises(FooterError, match="deeper than 100"):
        read_schema(deep_footer(100), max_depth=100)


def test_invalid_utf8_name_is_refused_as_pyarrow_cannot_read_it():
    with pytest.raises(FooterError, match="UTF-8"):
        read_schema(footer([element("schema", 1, rep=0), element(b"a\xffb", ptype=1)]))


@pytest.mark.parametrize("path,key", [
    (("a.b",), "a\\.b"), (("a", "b"), "a.b"), (("a\\b",), "a\\\\b"), (("a\\", "b"), "a\\\\.b"),
    (("x", "list", "element"), "x.list.element"),
])
def test_column_key(path, key):
    assert column_key(path) == key


def test_a_schema_given_twice_is_judged_by_the_copy_pyarrow_keeps():
    """Thrift keeps the last copy of a field: a harmless schema first and a 7,000-level one second must be
    refused (it used to pass the check and crash pyarrow), and a decoy first must not name the columns."""
    def twice(first: list[bytes], second: list[bytes]) -> bytes:
        def schema_list(elements):
            n = len(elements)
            return (bytes([(n << 4) | 12]) if n < 15 else bytes([0xFC]) + varint(n)) + b"".join(elements)

        return (_field(1, 5) + zigzag(2) + _field(1, 9) + schema_list(first)
                + bytes([0x09]) + zigzag(2) + schema_list(second)  # field 2 again, in the long form
                + _field(1, 6) + zigzag(0) + _field(1, 9) + bytes([0x0C]) + b"\x00")

    shallow = [element("schema", 1, rep=0), element("decoy", ptype=1)]
    deep = [element("schema", 1, rep=0), *(element(f"g{i}", 1) for i in range(7000)), element("x", ptype=1)]
    with pytest.raises(FooterError, match="deeper than 100"):
        read_schema(twice(shallow, deep))
    real = [element("schema", 1, rep=0), element("real", ptype=1)]
    fmd = twice(shallow, real)
    assert read_schema(fmd).leaves == (("real",),)
    assert pq.read_metadata(pa.BufferReader(parquet_file(fmd))).schema.column(0).path == "real"  # pyarrow agrees
