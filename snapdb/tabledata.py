"""Table rows as COPY text streams: read with a content checksum, and load back.

Content checksum: the sum, modulo 2**64, of the first 8 bytes (little-endian) of
``blake2b(row, digest_size=8)`` over every COPY text row (newline included), as 16 hex digits.
It does not depend on row order, counts duplicate rows, and is computed the same way when a
snapshot is taken, when a restore is verified and by ``snapdb verify --against``. Sessions must
use `postgres.DATA_SESSION_SETTINGS` so both sides print values identically.
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import blake2b
from typing import BinaryIO, Protocol

import psycopg
from psycopg import sql

from .postgres import TableRef

_MASK = (1 << 64) - 1
LOAD_CHUNK = 1 << 20


class Writer(Protocol):
    def write(self, data: bytes | memoryview) -> object: ...


def copy_out_sql(table: TableRef) -> sql.Composable:
    if table.columns:
        return sql.SQL("COPY {} ({}) TO STDOUT").format(table.ident, table.column_list())
    return sql.SQL("COPY {} TO STDOUT").format(table.ident)


def copy_in_sql(table: TableRef) -> sql.Composable:
    if table.columns:
        return sql.SQL("COPY {} ({}) FROM STDIN").format(table.ident, table.column_list())
    return sql.SQL("COPY {} FROM STDIN").format(table.ident)


def read_table(
    conn: psycopg.Connection,
    table: TableRef,
    sink: Writer | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Stream `table`'s rows (into `sink` if given); return (row count, content checksum)."""
    rows = 0
    acc = 0
    pending = 0
    with conn.cursor() as cur, cur.copy(copy_out_sql(table)) as cp:
        for row in cp:  # libpq yields exactly one data row per message
            acc += int.from_bytes(blake2b(row, digest_size=8).digest(), "little")
            rows += 1
            if sink is not None:
                sink.write(row)
            if on_bytes is not None:
                pending += len(row)
                if pending >= LOAD_CHUNK:
                    on_bytes(pending)
                    pending = 0
    if on_bytes is not None and pending:
        on_bytes(pending)
    return rows, f"{acc & _MASK:016x}"


def load_table(
    conn: psycopg.Connection,
    table: TableRef,
    source: BinaryIO,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Load COPY text from `source` into `table` (in the caller's transaction)."""
    with conn.cursor() as cur, cur.copy(copy_in_sql(table)) as cp:
        while chunk := source.read(LOAD_CHUNK):
            cp.write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
