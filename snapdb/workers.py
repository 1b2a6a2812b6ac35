"""Parallel table work in worker processes.

Why processes: reading COPY data costs Python work per row, which holds the GIL; threads would
serialise on it, processes use every core. `WorkerPool` runs the task functions below in
``jobs`` processes (forked on Linux, spawned elsewhere). Each worker keeps one database session per `Session` description
(so all parts a worker reads share its imported snapshot), reports bytes through a shared
counter, and stops at the next megabyte once any task has failed. Workers die with their parent
(PR_SET_PDEATHSIG), so a killed snapdb leaves no orphans writing into a temporary database.

Task contract: arguments and results are picklable; failures are raised as `SnapdbError`
subclasses (database errors are converted in the worker, with libpq's first line).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
import psycopg.sql
import zstandard

from .compression import ZstdSink, digest, open_zstd
from .config import Endpoint
from .errors import IntegrityError
from .postgres import TableRef, apply_data_settings, connect, first_line, open_data_session
from .pgtools import die_with_parent
from .progress import Reporter
from .store import Store
from .tabledata import CHECKSUM, PageRange, load_table, read_table

_progress = None  # shared byte counter (multiprocessing.Value)
_stop = None  # shared "a task failed" flag (multiprocessing.Event)
_sessions: dict = {}


class _Stopped(Exception):
    """Raised inside a task when another task has failed."""


@dataclass(frozen=True)
class Session:
    """How a worker connects: endpoint, database, client encoding, snapshot to import.

    `snapshot` None and `readonly` False gives an autocommit session for loading.
    """

    endpoint: Endpoint
    error_cls: type
    dbname: str | None = None
    encoding: str | None = None
    snapshot: str | None = None
    readonly: bool = True
    #: another session holds a lock on every table against rewrites for as long as the snapshot
    #: is read (a snapshot's exporter, a restore's hold): workers may end their transaction
    #: after each batch, releasing their own locks (`_end_reads`)
    release_locks: bool = False

    def key(self) -> tuple:
        return (self.endpoint.conninfo(self.dbname), self.encoding, self.snapshot, self.readonly, self.release_locks)


def _init(progress, stop) -> None:
    global _progress, _stop
    _progress, _stop = progress, stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    die_with_parent()


def _noop() -> None:
    """Forces the pool to start its processes."""


def _tick(nbytes: int) -> None:
    if _stop is not None and _stop.is_set():
        raise _Stopped()
    if _progress is not None:
        with _progress.get_lock():
            _progress.value += nbytes


def _session(s: Session) -> psycopg.Connection:
    conn = _sessions.get(s.key())
    if conn is None or conn.closed or conn.broken:
        if s.readonly:
            conn = open_data_session(s.endpoint, s.error_cls, dbname=s.dbname, encoding=s.encoding, snapshot=s.snapshot)
        else:
            conn = connect(s.endpoint, s.error_cls, dbname=s.dbname, autocommit=True)
            apply_data_settings(conn, s.encoding)
        _sessions[s.key()] = conn
    return conn


def _guard(s: Session, what: str, fn: Callable):
    try:
        return fn()
    except psycopg.Error as exc:
        raise s.error_cls(f"{what} failed: {first_line(exc)}") from None
    except zstandard.ZstdError as exc:  # a frame's content checksum or structure is wrong
        raise IntegrityError(f"{what} failed: damaged snapshot data ({exc})",
                             hint="the target was not touched; restore another snapshot") from None


# -- tasks -------------------------------------------------------------------------------------
def dump_pack(s: Session, store: Store, key: str, path: str, tables: list[tuple[TableRef, PageRange | None]]):
    """Copy several tables (or parts) one after another into one zstd file, so that many small
    tables cost one file; return ``([(rows, checksum, offset, length), ...], FileEntry)`` after
    reading the stored file back and checking its sha256. ``offset``/``length`` locate each
    table's COPY text in the decompressed stream (snapshot format 3)."""
    def run():
        segments = []
        with ZstdSink(store, key, path) as sink:  # fsynced (file and directory) before it is read back
            for table, pages in tables:
                start = sink.position
                rows, checksum = _guard(s, f"copying {table.qualname}",
                                        lambda: read_table(_session(s), table, sink, on_bytes=_tick, pages=pages))
                segments.append((rows, checksum, start, sink.position - start))
        sha, size = digest(store, key)
        if (sha, size) != (sink.entry.sha256, sink.entry.size):
            raise s.error_cls(f"snapshot file {path} changed while being stored (sha256 or size differs)")
        return segments, sink.entry
    return _guard(s, f"writing {path}", run)


def checksum_part(s: Session, table: TableRef, pages: PageRange | None, algorithm: str = CHECKSUM) -> tuple[int, str]:
    """Return (rows, checksum) of one table part, with checksum `algorithm` (tabledata.ALGORITHMS)."""
    return _guard(s, f"reading {table.qualname}",
                  lambda: read_table(_session(s), table, on_bytes=_tick, pages=pages, algorithm=algorithm))


def load_pack(s: Session, store: Store, key: str, segments: list[tuple[TableRef, int | None, int | None]]) -> list[int]:
    """Load a zstd COPY file holding one table (``offset``/``length`` None: the whole stream) or
    several, each the ``length`` bytes of the decompressed stream from ``offset`` on; segments
    must follow each other from offset 0 and cover the stream to its end. Reads the file once,
    in one transaction; returns the rows the server reported per segment. Raises
    `IntegrityError` when the stream does not match the segments: before COPY reads past the
    end of a table's rows (a segment must end at a row's newline, and the stream must hold it
    all), so the damage is reported as such and nothing is committed."""
    hint = "the target was not touched; restore another snapshot"

    def run():
        conn = _session(s)
        stored = []
        with conn.transaction(), open_zstd(store, key) as src:
            at = 0
            for table, offset, length in segments:
                if offset is not None and offset != at:
                    raise IntegrityError(f"{key}: {table.qualname} starts at byte {offset}, expected {at}", hint=hint)
                part = _Slice(src, length, f"{key}: {table.qualname}", hint)
                stored.append(_guard(s, f"loading {table.qualname}", lambda: load_table(conn, table, part, on_bytes=_tick)))
                at += part.read_bytes
            if segments[-1][1] is not None and src.read(1):
                raise IntegrityError(f"{key}: data after the last table of the file", hint=hint)
        return stored
    return _guard(s, f"loading {key}", run)


class _Slice:
    """The next `length` bytes of a stream (None: the rest of it), as a reader for one table's
    COPY. Raises `IntegrityError` instead of handing COPY an incomplete last row: when the
    stream ends before `length` bytes, or the bytes do not end with a row's ``b"\n"``."""

    def __init__(self, src, length: int | None, what: str, hint: str) -> None:
        self.src, self.left, self.what, self.hint = src, length, what, hint
        self.read_bytes = 0
        self.last = b"\n"  # an empty segment (an empty table) is whole

    def read(self, n: int = -1) -> bytes:
        if self.left is not None and self.left <= 0:
            return b""
        want = n if self.left is None else (self.left if n < 0 else min(n, self.left))
        data = self.src.read(want)
        if data:
            self.read_bytes += len(data)
            self.last = data[-1:]
            if self.left is not None:
                self.left -= len(data)
        elif self.left is not None:
            raise IntegrityError(f"{self.what}: the stream ended {self.left} bytes before the end of this table",
                                 hint=self.hint)
        if (not data or self.left == 0) and self.last != b"\n":
            raise IntegrityError(f"{self.what}: its {self.read_bytes} bytes end inside a row (not with a newline)",
                                 hint=self.hint)
        return data


def analyze(s: Session) -> None:
    """Run ANALYZE on the whole database of session `s` (planner statistics for a fresh copy)."""
    def run():
        _session(s).execute("ANALYZE")
    _guard(s, "ANALYZE", run)


def digest_file(store: Store, key: str) -> tuple[str, int] | None:
    """Return (sha256, size) of a stored object, or None when it is missing."""
    from .store import MissingError

    try:
        return digest(store, key)
    except MissingError:
        return None


def _batch(fn: Callable, items: list[tuple]) -> list:
    out = []
    for item in items:
        if _stop is not None and _stop.is_set():
            raise _Stopped()
        out.append(fn(*item))
    _end_reads()
    return out


def _end_reads() -> None:
    """End the transaction of every session reading an exported snapshot and begin the next one
    in the same snapshot: the ACCESS SHARE locks its COPYs took are released, so reading tens of
    thousands of tables does not need one lock per table in each worker (the exporting session
    holds its own locks on every table, and a table already read needs none). Only for sessions
    marked `Session.release_locks`: without such a lock elsewhere, a rewrite (VACUUM FULL,
    CLUSTER) between two page-range parts of one table would move its rows."""
    for key, conn in list(_sessions.items()):
        snapshot, release = key[2], key[4]
        if snapshot is None or not release or conn.closed or conn.broken:
            continue
        try:
            conn.rollback()
            conn.execute(psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(snapshot)))
        except psycopg.Error:
            conn.close()  # the next task opens a new session and reports its error; the pipeline checks the exporter at the end


# -- the pool ----------------------------------------------------------------------------------
BATCH_WEIGHT = 8 << 20
BATCH_ITEMS = 64

class WorkerPool:
    """`jobs` worker processes; use as a context manager, submit batches with `run`."""

    def __init__(self, jobs: int, reporter: Reporter) -> None:
        # fork on Linux: fast, and callers need no ``if __name__ == "__main__"`` guard. The
        # workers are started here, at once, so create the pool before opening connections or
        # starting threads: a forked child must not inherit a live session or a held lock.
        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        self.reporter = reporter
        self.progress = ctx.Value("q", 0)
        self.stop = ctx.Event()
        self.executor = cf.ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx,
                                               initializer=_init, initargs=(self.progress, self.stop))
        self.executor.submit(_noop).result()
        self._reported = 0

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.stop.set()
        self.close()

    def close(self) -> None:
        """Stop the workers, closing their database sessions (idempotent)."""
        self.executor.shutdown(wait=True, cancel_futures=True)

    def run(self, fn: Callable, tasks: Sequence[tuple], on_done: Callable[[int, object], None] | None = None) -> list:
        """Run ``fn(*task)`` for every task; return results in task order.

        Stops at the first failure: pending tasks are cancelled, running ones abandon their work
        at the next megabyte, and the first error is raised. `on_done(index, result)` runs in
        this process as each task completes.
        """
        futures = {self.executor.submit(fn, *t): i for i, t in enumerate(tasks)}
        results: list = [None] * len(tasks)
        pending = set(futures)
        try:
            while pending:
                done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                self._report()
                for f in done:
                    exc = f.exception()
                    if exc is not None:
                        raise exc
                    results[futures[f]] = f.result()
                    if on_done is not None:
                        on_done(futures[f], f.result())
        except BaseException:
            self.stop.set()
            for f in pending:
                f.cancel()
            cf.wait(pending)  # running tasks abandon their work at their next megabyte
            raise
        self._report()
        return results

    def run_items(self, fn: Callable, items: Sequence[tuple], weights: Sequence[int],
                  on_done: Callable[[int, object], None] | None = None) -> list:
        """Run ``fn(*item)`` for every item like `run`, but in batches: items lighter than
        `BATCH_WEIGHT` (bytes, roughly) travel together, so hundreds of small tables cost a few
        round trips to the workers instead of one each. Heavy items go first."""
        order = sorted(range(len(items)), key=lambda i: -weights[i])
        batches: list[list[int]] = []
        current: list[int] = []
        weight = 0
        for i in order:
            if weights[i] >= BATCH_WEIGHT:
                batches.append([i])
                continue
            current.append(i)
            weight += weights[i]
            if weight >= BATCH_WEIGHT or len(current) >= BATCH_ITEMS:
                batches.append(current)
                current, weight = [], 0
        if current:
            batches.append(current)
        out: list = [None] * len(items)

        def done(b: int, results: list) -> None:
            for i, r in zip(batches[b], results):
                out[i] = r
                if on_done is not None:
                    on_done(i, r)

        self.run(_batch, [(fn, [items[i] for i in b]) for b in batches], on_done=done)
        return out

    def _report(self) -> None:
        value = self.progress.value
        if value > self._reported:
            self.reporter.advance(nbytes=value - self._reported)
            self._reported = value
