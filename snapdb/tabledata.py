"""Table rows as COPY text streams: read (whole tables or page ranges) with a content checksum,
and load back.

Content checksum (`CHECKSUM`, ``xxh3-64-sum``, snapshot format 2): for every COPY text row ``r``
(its bytes without the terminating newline) take XXH3's 64-bit hash of ``r`` (seed 0); the
checksum is the sum of these values modulo 2**64, written as 16 hex digits. A sum does not depend
on row order, counts duplicate rows, and the checksums of a table's parts add up to the table's.
Each row's hash is well mixed, so an edit that keeps the row count (two rows swapping values,
say) changes the sum except with probability about 2**-64. It is computed the same way when a
snapshot is taken, when a restore is verified and by ``snapdb verify --against``. It detects
damage and divergence; it is not a cryptographic digest (the stored files carry sha256).

Format-1 snapshots used ``crc32-adler32-sum`` (``crc32(r) | adler32(r) << 32`` summed): both parts
are nearly linear, so two rows swapping equal-length values cancel out about once in 13,000
swaps. It is kept only to verify those snapshots (`ALGORITHMS`).

Rows are split on newlines, which COPY text never leaves unescaped inside a value, so the
per-row work runs in C (``bytes.split``, ``map``, ``sum``). Sessions must use
`postgres.DATA_SESSION_SETTINGS` so both sides print values alike.

Page ranges: a large table is split into parts by ``ctid`` page ranges (TID range scans,
PostgreSQL 14+), so several sessions can read one table in parallel within one snapshot. The last
part of a table is open-ended.
"""

from __future__ import annotations

import zlib

import xxhash
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import psycopg
from psycopg import pq, sql

from .postgres import TableRef

_MASK = (1 << 64) - 1
LOAD_CHUNK = 1 << 20
_WRITE_BATCH = 1 << 20


class Writer(Protocol):
    def write(self, data: bytes | memoryview) -> object: ...


@dataclass(frozen=True)
class PageRange:
    """Pages ``[lo, hi)`` of a table; `hi` None means "to the end"."""

    lo: int
    hi: int | None

    def condition(self) -> sql.Composable:
        cond = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({self.lo},0)"))
        if self.hi is not None:
            cond = sql.SQL("{} AND ctid < {}::tid").format(cond, sql.Literal(f"({self.hi},0)"))
        return cond


def split_pages(total_pages: int, parts: int) -> list[PageRange | None]:
    """Split a table of `total_pages` into `parts` ranges (``[None]`` when not split)."""
    if parts <= 1 or total_pages < parts:
        return [None]
    step = -(-total_pages // parts)
    bounds = list(range(0, total_pages, step))
    return [PageRange(lo, bounds[i + 1] if i + 1 < len(bounds) else None) for i, lo in enumerate(bounds)]


#: tables from SPLIT_MIN_BYTES on are read in page-range parts of about PART_BYTES (PG 14+)
SPLIT_MIN_BYTES = 64 << 20
PART_BYTES = 128 << 20
MAX_PARTS = 64
BLOCK_SIZE = 8192


def plan_parts(table: TableRef, jobs: int, server_version: int) -> list[PageRange | None]:
    """Split a large table into page ranges so `jobs` sessions can share it."""
    if server_version < 140000 or table.bytes < SPLIT_MIN_BYTES:
        return [None]
    n = max(-(-table.bytes // PART_BYTES), jobs)
    n = min(MAX_PARTS, -(-n // max(1, jobs)) * max(1, jobs))  # a multiple of jobs: no part left to run alone at the end
    return split_pages(table.bytes // BLOCK_SIZE, n)


def copy_out_sql(table: TableRef, pages: PageRange | None = None) -> sql.Composable:
    if pages is not None:
        cols = table.column_list() if table.columns else sql.SQL("")
        return sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT").format(cols, table.ident, pages.condition())
    if table.columns:
        return sql.SQL("COPY {} ({}) TO STDOUT").format(table.ident, table.column_list())
    return sql.SQL("COPY {} TO STDOUT").format(table.ident)


def copy_in_sql(table: TableRef) -> sql.Composable:
    if table.columns:
        return sql.SQL("COPY {} ({}) FROM STDIN").format(table.ident, table.column_list())
    return sql.SQL("COPY {} FROM STDIN").format(table.ident)


def add_checksums(a: str, b: str) -> str:
    """Combine the checksums of two disjoint sets of rows."""
    return f"{(int(a, 16) + int(b, 16)) & _MASK:016x}"


ZERO = f"{0:016x}"


def _sum_xxh3(lines: list[bytes]) -> int:
    return sum(map(xxhash.xxh3_64_intdigest, lines))


def _sum_crc32_adler32(lines: list[bytes]) -> int:
    return sum(map(zlib.crc32, lines)) + (sum(map(zlib.adler32, lines)) << 32)


#: checksum algorithm name -> per-row sum over a list of rows (see module docstring)
ALGORITHMS: dict[str, Callable[[list[bytes]], int]] = {
    "xxh3-64-sum": _sum_xxh3,
    "crc32-adler32-sum": _sum_crc32_adler32,
}
CHECKSUM = "xxh3-64-sum"
LEGACY_CHECKSUM = "crc32-adler32-sum"


def checksum_rows(rows: list[bytes], algorithm: str = CHECKSUM) -> str:
    """The checksum of `rows` (COPY text lines without their newline), as 16 hex digits."""
    return f"{ALGORITHMS[algorithm](rows) & _MASK:016x}"


def read_table(
    conn: psycopg.Connection,
    table: TableRef,
    sink: Writer | None = None,
    on_bytes: Callable[[int], None] | None = None,
    pages: PageRange | None = None,
    algorithm: str = CHECKSUM,
) -> tuple[int, str]:
    """Stream `table`'s rows (or one page range) into `sink` if given; return (rows, checksum).

    Uses libpq's COPY interface directly: the reading loop is the hot path of snapshots and
    verification, so it only appends each row to a buffer; checksums are taken per megabyte.
    """
    pgconn = conn.pgconn
    pgconn.send_query(copy_out_sql(table, pages).as_bytes(conn))
    res = pgconn.get_result()
    if res is None or res.status != pq.ExecStatus.COPY_OUT:
        _drain(pgconn)
        raise _error(res, pgconn)
    summer = ALGORITHMS[algorithm]
    totals = [0, 0]  # rows, sum of row hashes
    buf = bytearray()
    get = pgconn.get_copy_data
    while True:
        nbytes, row = get(0)
        if nbytes < 0:
            break
        buf += row
        if len(buf) >= _WRITE_BATCH:
            _flush(buf, totals, summer, sink, on_bytes)
            buf = bytearray()
    final = pgconn.get_result()
    _drain(pgconn)
    if nbytes == -2 or final is None or final.status != pq.ExecStatus.COMMAND_OK:
        raise _error(final, pgconn)
    if buf:
        _flush(buf, totals, summer, sink, on_bytes)
    return _format(totals)


def _flush(buf: bytearray, totals: list[int], summer: Callable[[list[bytes]], int], sink: Writer | None,
           on_bytes: Callable[[int], None] | None) -> None:
    """Checksum a buffer of whole rows, then pass it on."""
    _sum_rows(buf, totals, summer)
    if sink is not None:
        sink.write(buf)
    if on_bytes is not None:
        on_bytes(len(buf))


def _sum_rows(data: bytes | bytearray, totals: list[int], summer: Callable[[list[bytes]], int]) -> None:
    """Add whole newline-terminated rows to (rows, hash sum) with C-level loops."""
    lines = data.split(b"\n")
    lines.pop()  # the data ends with a newline: the last piece is empty
    totals[0] += len(lines)
    totals[1] += summer(lines)


def _format(totals: list[int]) -> tuple[int, str]:
    return totals[0], f"{totals[1] & _MASK:016x}"


def _drain(pgconn) -> None:
    while pgconn.get_result() is not None:
        pass


def _error(res, pgconn) -> psycopg.Error:
    msg = (res.error_message if res is not None else b"") or pgconn.error_message or b"COPY failed"
    return psycopg.OperationalError(msg.decode("utf-8", "replace").strip())


def load_table(
    conn: psycopg.Connection,
    table: TableRef,
    source: BinaryIO,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Load COPY text from `source` into `table` (in the caller's transaction); return rows."""
    with conn.cursor() as cur:
        with cur.copy(copy_in_sql(table)) as cp:
            while chunk := source.read(LOAD_CHUNK):
                cp.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return cur.rowcount
