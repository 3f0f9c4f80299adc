"""PostgreSQL's binary COPY format, encoded column-wise from Arrow (no Python loop over rows).

Owns the bytes the PostgreSQL writer streams with ``COPY ... FROM STDIN (FORMAT binary)``:
:data:`SIGNATURE` (header), :func:`encode_rows` (the tuples of a chunk), :data:`TRAILER`.
The binary format spares the server parsing text (about half the CPU of a CSV COPY, as
measured), and Arrow releases the GIL, so a chunk is encoded in a worker thread while the
previous one is sent (:func:`stream`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from convert.io.writers.frames import Layout

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["SIGNATURE", "TRAILER", "encode_rows", "stream"]


#: PostgreSQL's binary COPY format: signature, flags, header extension length; trailer.
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = b"\xff\xff"
#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
_PG_EPOCH_US = 946_684_800_000_000


def encode_rows(table: pa.Table, layout: Layout) -> memoryview:
    """The rows of *table* (ScoreOutput types) in PostgreSQL's binary COPY tuple format.

    Each tuple is a 16-bit field count, then per field a 32-bit length (-1 for NULL) and
    the value in network byte order: text as UTF-8, timestamp as int64 microseconds since
    2000-01-01, float8, int4. The pieces are built column-wise with numpy and glued row-wise
    by Arrow's ``binary_join_element_wise``; no Python loop over rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = len(table)
    null = pa.scalar(b"\xff\xff\xff\xff", pa.large_binary())
    glue = pa.scalar(b"", pa.large_binary())

    def fixed(values: np.ndarray) -> pa.Array:
        # length prefix + big-endian value, as one fixed-size binary per row
        record = np.empty(rows, dtype=[("length", ">i4"), ("value", values.dtype)])
        record["length"] = values.dtype.itemsize
        record["value"] = values
        width = record.dtype.itemsize
        array = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), rows, [None, pa.py_buffer(record.tobytes())]
        )
        return array.cast(pa.large_binary())

    pieces = []
    for column in layout.columns:
        values = table.column(column.name).combine_chunks()
        if column.dtype == "string":
            data = values.cast(pa.large_binary()).fill_null(b"")
            lengths = pc.binary_length(data).to_numpy().astype(">i4")
            prefix = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(4), rows, [None, pa.py_buffer(lengths.tobytes())]
            ).cast(pa.large_binary())
            piece = pc.binary_join_element_wise(prefix, data, glue)
        elif column.dtype == "timestamp":
            micros = values.cast(pa.int64()).fill_null(0).to_numpy()
            piece = fixed((micros - _PG_EPOCH_US).astype(">i8"))
        elif column.dtype == "number":
            piece = fixed(values.fill_null(0.0).to_numpy().astype(">f8"))
        else:
            piece = fixed(values.cast(pa.int32()).fill_null(0).to_numpy().astype(">i4"))
        if values.null_count:
            piece = pc.if_else(values.is_valid(), piece, null)
        pieces.append(piece)
    count = pa.scalar(len(pieces).to_bytes(2, "big"), pa.large_binary())
    joined = pc.binary_join_element_wise(count, *pieces, glue)
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)
    first, last = offsets[joined.offset], offsets[joined.offset + rows]
    return memoryview(joined.buffers()[2])[first:last]


def stream(table: pa.Table, layout: Layout, chunk_rows: int) -> Iterator[memoryview]:
    """The whole COPY stream of *table*: signature, the chunks' tuples, trailer.

    Each chunk is encoded in a worker thread while the previous one is sent; at most two
    encoded chunks wait (bounding memory to about two chunks' bytes).
    """
    encode: Callable[[int], memoryview] = lambda start: encode_rows(  # noqa: E731
        table.slice(start, chunk_rows), layout
    )
    yield memoryview(SIGNATURE)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert-copy") as pool:
        pending: deque[Future[memoryview]] = deque()
        for start in range(0, len(table), chunk_rows):
            pending.append(pool.submit(encode, start))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    yield memoryview(TRAILER)
