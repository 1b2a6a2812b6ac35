"""Check snapshots and databases against a manifest.

`verify_files` re-reads every stored file and compares sha256 and size (nothing is trusted
before this passes). `verify_database` compares a live database with the manifest: row count
and content checksum of every table (in parallel), tables present on one side only, sequence
values and the large-object count. Both return a list of `Mismatch`; empty means identical.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import psycopg

from . import manifest as mf
from .compression import digest
from .config import Endpoint
from .errors import SnapdbError, StoreError
from .postgres import first_line, open_data_session, large_object_count, list_tables, read_sequences
from .progress import NULL, Reporter
from .store import MissingError, Store
from .tabledata import read_table


@dataclass
class Mismatch:
    """One difference: what (`kind`, `name`), and the expected and actual values."""

    kind: str
    name: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: expected {self.expected}, found {self.actual}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "expected": self.expected, "actual": self.actual}


def verify_files(store: Store, manifest: mf.Manifest, reporter: Reporter = NULL) -> list[Mismatch]:
    """Compare every stored file of the snapshot with its manifest entry."""
    reporter.phase("verifying files", total_bytes=manifest.stored_bytes, total_items=len(manifest.files))
    out = []
    for entry in manifest.files:
        try:
            sha, size = digest(store, mf.key(manifest.id, entry.path))
        except MissingError:
            out.append(Mismatch("file", entry.path, f"{entry.size} bytes", "missing"))
            continue
        except StoreError:
            raise
        if size != entry.size:
            out.append(Mismatch("file", entry.path, f"{entry.size} bytes", f"{size} bytes"))
        elif sha != entry.sha256:
            out.append(Mismatch("file", entry.path, f"sha256 {entry.sha256[:16]}…", f"sha256 {sha[:16]}…"))
        reporter.advance(nbytes=size, items=1)
    reporter.done()
    return out


def verify_database(
    ep: Endpoint,
    manifest: mf.Manifest,
    *,
    error_cls: type[SnapdbError],
    dbname: str | None = None,
    jobs: int = 2,
    reporter: Reporter = NULL,
) -> list[Mismatch]:
    """Compare database `dbname` (default: `ep`'s) with `manifest`; return the differences."""
    encoding = manifest.database.encoding
    out: list[Mismatch] = []

    def session(snapshot: str | None = None) -> psycopg.Connection:
        return open_data_session(ep, error_cls, dbname=dbname, encoding=encoding, snapshot=snapshot)

    # every table is read in one exported snapshot, so a live database is checked at one instant
    main = session()
    try:
        try:
            exported = main.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]
            live = {(t.schema, t.name): t for t in list_tables(main)}
            seqs = {(s.schema, s.name): s for s in read_sequences(main)}
            lo = large_object_count(main)
        except psycopg.Error as exc:
            raise error_cls(f"reading the database catalog failed: {first_line(exc)}") from None
        out += _compare_tables(session, exported, manifest, live, jobs, error_cls, reporter)
    finally:
        main.close()

    expected = {(t.schema, t.name): t for t in manifest.tables}
    for k in sorted(set(expected) - set(live)):
        out.append(Mismatch("table", ".".join(k), f"{expected[k].rows} rows", "missing"))
    for k in sorted(set(live) - set(expected)):
        out.append(Mismatch("table", ".".join(k), "absent", "present"))
    for s in manifest.sequences:
        got = seqs.get((s.schema, s.name))
        want = f"{s.last_value} (called={s.is_called})"
        if got is None:
            out.append(Mismatch("sequence", f"{s.schema}.{s.name}", want, "missing"))
        elif (got.last_value, got.is_called) != (s.last_value, s.is_called):
            out.append(Mismatch("sequence", f"{s.schema}.{s.name}", want, f"{got.last_value} (called={got.is_called})"))
    if lo != manifest.large_objects:
        out.append(Mismatch("large_objects", "count", str(manifest.large_objects), str(lo)))

    return out


def _compare_tables(session, exported, manifest, live, jobs, error_cls, reporter) -> list[Mismatch]:
    """Checksum every table present on both sides with `jobs` sessions sharing `exported`."""
    out: list[Mismatch] = []
    todo = [t for t in manifest.tables if (t.schema, t.name) in live]
    reporter.phase("verifying tables", total_items=len(todo))
    work: queue.Queue = queue.Queue()
    for t in todo:
        work.put(t)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            conn = session(exported)
        except BaseException as exc:
            errors.append(exc)
            return
        try:
            while not errors:
                try:
                    t = work.get_nowait()
                except queue.Empty:
                    return
                rows, checksum = read_table(conn, t.ref())
                with lock:
                    if rows != t.rows:
                        out.append(Mismatch("table", f"{t.schema}.{t.name}", f"{t.rows} rows", f"{rows} rows"))
                    elif checksum != t.checksum:
                        out.append(Mismatch("table", f"{t.schema}.{t.name}", f"checksum {t.checksum}", f"checksum {checksum}"))
                reporter.advance(items=1)
        except psycopg.Error as exc:
            errors.append(error_cls(f"reading table data failed: {first_line(exc)}"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(jobs, len(todo))))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    reporter.done()
    return out
