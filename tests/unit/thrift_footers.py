"""Hand-encoded Parquet footers (Thrift compact protocol) that no writer would produce."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def zigzag(n: int) -> bytes:
    return varint((n << 1) ^ (n >> 63))


def _field(delta: int, ftype: int) -> bytes:
    return bytes([(delta << 4) | ftype])


def element(name: str | bytes, children: int | None = None, ptype: int | None = None, rep: int = 1) -> bytes:
    """One SchemaElement: type (1), repetition_type (3), name (4), num_children (5)."""
    out, last = b"", 0
    if ptype is not None:
        out, last = _field(1, 5) + zigzag(ptype), 1
    out += _field(3 - last, 5) + zigzag(rep)
    raw = name.encode() if isinstance(name, str) else name
    out += _field(1, 8) + varint(len(raw)) + raw
    if children is not None:
        out += _field(1, 5) + zigzag(children)
    return out + b"\x00"


def footer(elements: list[bytes], rows: int = 0) -> bytes:
    """A FileMetaData: version, schema, num_rows, no row groups."""
    n = len(elements)
    header = bytes([(n << 4) | 12]) if n < 15 else bytes([0xFC]) + varint(n)
    return (_field(1, 5) + zigzag(2) + _field(1, 9) + header + b"".join(elements) + _field(1, 6) + zigzag(rows)
            + _field(1, 9) + bytes([0x0C]) + b"\x00")


def deep_footer(levels: int) -> bytes:
    """A schema of ``levels`` nested groups around one int32 leaf (depth levels + 1)."""
    return footer([element("schema", 1, rep=0)] + [element(f"g{i}", 1) for i in range(levels)]
                  + [element("x", ptype=1)])


def parquet_file(footer_bytes: bytes) -> bytes:
    """A file of magic + footer + length + magic: enough for any footer reader."""
    return b"PAR1" + footer_bytes + len(footer_bytes).to_bytes(4, "little") + b"PAR1"
