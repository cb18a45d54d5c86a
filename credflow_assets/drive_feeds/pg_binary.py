"""Arrow columns → the body of a PostgreSQL `COPY … FROM STDIN (FORMAT binary)`, in Arrow's C++.

Why binary: a first load copies its rows straight into the feed's table (first_load.py), four
columns of which are the same on every row (the file, its revision, when). As CSV the server
parses each of them again on every row: two timestamps and two texts cost it 1.5 s of CPU per
1M rows, as much as the rest of the row. In binary a value is its bytes (a timestamp is 8 of
them), and a value that is the same on every row is encoded once (`constant_fields`).

The format (PostgreSQL's docs, "COPY", binary format): a header, then per row a 16-bit field
count and per field a 32-bit length (-1 for NULL) followed by that many bytes, all big-endian;
then a trailer. Each value's bytes are its type's binary send form: text as UTF-8, date as days
and timestamps as microseconds since 2000-01-01, bigint and double precision as 8 bytes,
boolean as 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(4) + bytes(4)  # signature, flags, header extension
TRAILER = b"\xff\xff"
NULL_FIELD = b"\xff\xff\xff\xff"
_POSTGRES_EPOCH_DAYS = 10_957  # 2000-01-01, in days since 1970-01-01
_POSTGRES_EPOCH_MICROSECONDS = _POSTGRES_EPOCH_DAYS * 86_400 * 1_000_000

# PostgreSQL's name of a column's type (`format_type`) → how its values are encoded.
ENCODINGS = {
    "text": "text", "character varying": "text",
    "date": "date",
    "timestamp without time zone": "timestamp", "timestamp with time zone": "timestamp",
    "bigint": "int8", "double precision": "float8", "boolean": "bool",
}


def column_fields(values: pa.Array | pa.ChunkedArray, encoding: str) -> list[pa.Array]:
    """One column's fields, as arrays the row join (`copy_body`) takes in order: a text column
    gives its lengths and its bytes, a fixed-width one its whole fields."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    valid = None if values.null_count == 0 else pc.is_valid(values)
    if encoding == "text":
        return _text_fields(values, valid)
    if encoding == "date":
        days = _numbers(pc.cast(values, pa.date32(), safe=False), pa.int32()) - _POSTGRES_EPOCH_DAYS
        return [_fixed_fields(days.astype(">i4"), valid)]
    if encoding == "timestamp":  # zone-aware values count in UTC, as PostgreSQL's do
        microseconds = _numbers(pc.cast(values, pa.timestamp("us"), safe=False), pa.int64())
        return [_fixed_fields((microseconds - _POSTGRES_EPOCH_MICROSECONDS).astype(">i8"), valid)]
    if encoding == "int8":
        return [_fixed_fields(_numbers(values, pa.int64()).astype(">i8"), valid)]
    if encoding == "float8":
        return [_fixed_fields(_numbers(values, pa.float64()).astype(">f8"), valid)]
    if encoding == "bool":
        return [_fixed_fields(_numbers(values, pa.bool_()).astype("u1"), valid)]
    raise ValueError(f"no binary COPY encoding {encoding!r}")


def constant_fields(value, encoding: str) -> bytes:
    """The encoded field of a value that every row has: joined to each row as it is."""
    import pyarrow as pa

    return b"".join(array[0].as_py() or b""
                    for array in column_fields(pa.array([value]), encoding))


def copy_body(fields: list[pa.Array], field_count: int, tail: bytes = b"") -> pa.Buffer:
    """The rows, each its field count, then `fields` in order, then `tail` (the constant
    fields): one buffer, without the header and trailer."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = pa.large_binary() if any(field.type == pa.large_binary() for field in fields) \
        else pa.binary()
    parts = [pa.scalar(np.array([field_count], ">i2").tobytes(), kind),
             *(field.cast(kind) for field in fields)]
    if tail:
        parts.append(pa.scalar(tail, kind))
    # A NULL text field is its length alone (-1): its missing bytes join as nothing.
    rows = pc.binary_join_element_wise(
        *parts, pa.scalar(b"", kind),
        options=pc.JoinOptions(null_handling="replace", null_replacement=""))
    offsets = _offsets(rows)
    return rows.buffers()[2][int(offsets[0]):int(offsets[-1])]


def _text_fields(values: pa.Array, valid) -> list[pa.Array]:
    import pyarrow as pa

    lengths = _offsets(values)
    lengths = (lengths[1:] - lengths[:-1]).astype(">i4")
    if valid is not None:
        lengths[~valid.to_numpy(zero_copy_only=False)] = -1
    binary = pa.large_binary() if pa.types.is_large_string(values.type) else pa.binary()
    return [_as_binary(lengths, 4), values.cast(binary)]


def _fixed_fields(big_endian, valid) -> pa.Array:
    """Fixed-width values → their fields (length, then value); a NULL → -1 alone."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    count, width = len(big_endian), big_endian.dtype.itemsize
    fields = np.empty((count, 4 + width), np.uint8)
    fields[:, :4] = np.frombuffer(np.array([width], ">i4").tobytes(), np.uint8)
    fields[:, 4:] = big_endian.view(np.uint8).reshape(count, width)
    array = _as_binary(fields, 4 + width)
    return array if valid is None else pc.if_else(valid, array, pa.scalar(NULL_FIELD, pa.binary()))


def _as_binary(raw, width: int) -> pa.Array:
    """A numpy array's bytes, `width` to an element, as a binary array."""
    import numpy as np
    import pyarrow as pa

    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), raw.size // width, [None, pa.py_buffer(raw)]).cast(pa.binary())


def _numbers(values: pa.Array, kind):
    """The values as a numpy array of `kind`, NULLs as 0 (their fields are replaced)."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.cast(values, kind), False if str(kind) == "bool" else 0) \
        .to_numpy(zero_copy_only=False)


def _offsets(array: pa.Array):
    """A (large) binary or string array's value offsets, as numpy, `offset` applied."""
    import numpy as np
    import pyarrow as pa

    wide = pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type)
    return np.frombuffer(array.buffers()[1], np.int64 if wide else np.int32,
                         count=len(array) + 1, offset=array.offset * (8 if wide else 4))
