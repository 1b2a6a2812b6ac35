"""Take a snapshot: one exported MVCC snapshot shared by pg_dump and parallel COPY workers.

Pipeline (each step safe to interrupt; nothing is visible until the manifest is written):

1. Open a REPEATABLE READ, READ ONLY transaction on the source, lock every user table in ACCESS
   SHARE mode, export its snapshot, and read the catalog (tables, sequences, large objects,
   database-level properties) inside it.
2. In parallel: ``pg_dump -Fc -Z0 --snapshot=<id>`` dumps everything except the rows of the
   tables snapdb copies itself (schema, sequence values, large objects, materialized-view
   refreshes, extension configuration data); `jobs` worker threads import the same snapshot and
   stream each table with COPY into its own zstd file, computing row counts and checksums.
3. The pg_dump archive is compressed into the store; every stored file is read back and its
   sha256 compared with the one computed while writing; the manifest is written last.

On failure every object already written for this snapshot id is deleted (best effort) and the
error propagates; a snapshot without a manifest does not exist in any case.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from . import faults, manifest as mf, pgtools
from .compression import READ_CHUNK, FileEntry, ZstdSink, digest
from .config import Endpoint
from .errors import IntegrityError, SnapdbError, SourceError
from .postgres import (
    TableRef, first_line, large_object_count, list_tables, open_data_session,
    read_database_props, read_sequences, system_identifier, version_string,
)
from .progress import NULL, Reporter
from .store import Store
from .tabledata import read_table

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised inside a worker when another worker has failed."""


def take_snapshot(
    source: Endpoint,
    store: Store,
    *,
    jobs: int = 2,
    label: str | None = None,
    release_probe: Callable[[psycopg.Connection], dict | None] | None = None,
    reporter: Reporter = NULL,
) -> mf.Manifest:
    """Snapshot `source` into `store` and return its manifest (see module docstring).

    `release_probe`, if given, is called with the source connection inside the exported
    snapshot's transaction; what it returns is recorded as the manifest's ``release``.
    """
    now = mf.utcnow()
    snap_id = mf.new_id(now)
    try:
        return _take(source, store, snap_id, now.isoformat(), max(1, jobs), label, release_probe, reporter)
    except BaseException:
        for k in store.list(mf.key(snap_id, "")):
            try:
                store.delete(k)
            except Exception:  # cleanup is best effort; the error that matters is re-raised
                log.warning("could not remove %s after a failed snapshot", k)
        raise


def _take(source, store, snap_id, created_at, jobs, label, release_probe, reporter) -> mf.Manifest:
    reporter.phase("reading catalog")
    main = open_data_session(source, SourceError)
    try:
        try:
            dbname = main.execute("SELECT current_database()").fetchone()[0]
            tables = list_tables(main)
            for i in range(0, len(tables), 200):
                main.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                        sql.SQL(", ").join(t.ident for t in tables[i:i + 200])
                    )
                )
            exported = main.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]
            props = read_database_props(main, dbname)
            sequences = read_sequences(main)
            lo_count = large_object_count(main)
            version_num = main.info.server_version
            sysid = system_identifier(main)
            release = release_probe(main) if release_probe else None
        except psycopg.Error as exc:
            raise SourceError(f"reading the source catalog failed: {first_line(exc)}") from None
        pg_dump = pgtools.find_tool("pg_dump", version_num // 10000)
        dump_version = "%d.%d" % pgtools.tool_version(pg_dump)
        reporter.done()

        workdir = Path(tempfile.mkdtemp(prefix="snapdb-"))
        try:
            dump_path = workdir / "schema.dump"
            dump_err: list[BaseException] = []
            argv = [pg_dump, "-Fc", "-Z0", "--no-sync", f"--snapshot={exported}", "-f", str(dump_path)]
            argv += [f"--exclude-table-data={_pattern(t)}" for t in tables]
            argv += pgtools.conninfo_arg(source.conninfo())

            def run_dump() -> None:
                try:
                    pgtools.run_tool(argv, SourceError, "pg_dump")
                except BaseException as exc:  # re-raised in the main thread
                    dump_err.append(exc)

            dumper = threading.Thread(target=run_dump, name="pg_dump", daemon=True)
            dumper.start()
            entries = _copy_tables(source, store, snap_id, tables, props.encoding, exported, jobs, reporter)
            dumper.join()
            if dump_err:
                raise dump_err[0]
            faults.checkpoint("snapshot:dumped")
            reporter.phase("compressing schema")
            with ZstdSink(store, mf.key(snap_id, mf.SCHEMA_FILE), mf.SCHEMA_FILE) as sink:
                with open(dump_path, "rb") as f:
                    while chunk := f.read(READ_CHUNK):
                        sink.write(chunk)
            reporter.done()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        main.close()

    files = [sink.entry] + [e for _, e in entries]
    reporter.phase("verifying stored files", total_bytes=sum(f.size for f in files))
    for f in files:  # read back what the store holds before declaring the snapshot done
        sha, size = digest(store, mf.key(snap_id, f.path))
        if (sha, size) != (f.sha256, f.size):
            raise IntegrityError(f"snapshot file {f.path} changed while being stored (sha256 or size differs)")
        reporter.advance(nbytes=size)
    reporter.done()
    manifest = mf.Manifest(
        id=snap_id,
        source=source.source_name,
        created_at=created_at,
        label=label,
        server={
            "version": version_string(version_num),
            "version_num": version_num,
            "host": source.host,
            "port": source.port,
            "dbname": dbname,
            "system_identifier": sysid,
        },
        pg_dump_version=dump_version,
        database=props,
        schema_file=mf.SCHEMA_FILE,
        files=files,
        tables=[t for t, _ in entries],
        sequences=sequences,
        large_objects=lo_count,
        release=release,
    )
    mf.write_manifest(store, manifest)
    return manifest


def _pattern(t: TableRef) -> str:
    """pg_dump name pattern matching exactly this table (quoted: no wildcard applies)."""
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    return f"{q(t.schema)}.{q(t.name)}"


def _copy_tables(source, store, snap_id, tables, encoding, exported, jobs, reporter):
    """Copy every table with `jobs` workers sharing the exported snapshot; keep table order."""
    reporter.phase("copying tables", total_bytes=sum(t.bytes for t in tables), total_items=len(tables))
    work: queue.Queue = queue.Queue()
    for i, t in enumerate(tables):
        work.put((i, t))
    results: dict[int, tuple[mf.TableEntry, FileEntry]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def tick(nbytes: int) -> None:
        if stop.is_set():
            raise _Stop()
        reporter.advance(nbytes=nbytes)

    def worker() -> None:
        conn = None
        try:
            conn = open_data_session(source, SourceError, encoding=encoding, snapshot=exported)
            while not stop.is_set():
                try:
                    i, t = work.get_nowait()
                except queue.Empty:
                    return
                path = f"data/{i + 1:05d}.copy.zst"
                with ZstdSink(store, mf.key(snap_id, path), path) as sink:
                    rows, checksum = read_table(conn, t, sink, on_bytes=tick)
                faults.checkpoint("snapshot:table-copied")
                results[i] = (mf.TableEntry(t.schema, t.name, t.columns, path, rows, checksum), sink.entry)
                reporter.advance(items=1)
        except _Stop:
            pass
        except psycopg.Error as exc:
            errors.append(SourceError(f"copying table data failed: {first_line(exc)}"))
            stop.set()
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker, name=f"copy-{n}", daemon=True) for n in range(min(jobs, max(1, len(tables))))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        err = errors[0]
        raise err if isinstance(err, SnapdbError) else err
    reporter.done()
    return [results[i] for i in sorted(results)]
