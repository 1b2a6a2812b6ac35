"""Restore a snapshot into a temporary database, verify it, and swap it in by rename.

Plan and order (each step safe to interrupt; the target is touched only by the final swap):

1. Verify every snapshot file against the manifest (sha256, size).
2. On the target server's maintenance database: take a session advisory lock for the target
   (a second run gets `BusyError`), refuse when the target has prepared transactions, drop a
   temporary database left by an earlier, interrupted run.
3. ``CREATE DATABASE <tmp>`` with the snapshot's encoding and locale; ``pg_restore`` the
   pre-data and data sections (schema, sequence values, large objects); load every table part
   with COPY in `jobs` worker processes; ``pg_restore -j`` the post-data section (indexes,
   constraints, triggers, materialized-view refreshes). Every pg_restore runs with
   ``--exit-on-error``.
   The row count the server reports for each file must equal the manifest's.
4. Verify the temporary database against the manifest (tables present, sequences, LOs, and with
   ``verify="full"``, the default, every table read back: counts and checksums), running
   ANALYZE beside it; then stop the workers, whose sessions would block the rename.
5. Re-apply database-level owner, comment, grants and settings to the temporary database.
6. Swap, in one transaction: terminate the target's sessions, rename target to a ``__prev_``
   name, rename the temporary database to the target name. Retried while new sessions race in.
7. Drop previous copies beyond `keep_previous`.

Any failure before step 6 commits drops the temporary database (best effort; the next run drops
it otherwise) and leaves the target as it was.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psycopg
import zstandard

from . import faults, history, manifest as mf, names, pgtools
from .compression import open_zstd
from .config import Endpoint
from .errors import BusyError, IntegrityError, RefusedError, SnapdbError, TargetError
from .postgres import (
    apply_database_props, control_session, try_advisory_lock, connect, create_database, database_exists,
    drop_database, first_line, list_databases, prepared_xacts, rename_database,
    set_sequences, system_identifier,
    terminate_sessions,
)
from .progress import NULL, Reporter
from .store import Store
from .verify import verify_database, verify_files
from .workers import Session, WorkerPool, load_part

log = logging.getLogger(__name__)

LOCK_CLASS = 0x5D4B  # advisory lock key space of snapdb ("restore into database")
SWAP_ATTEMPTS = 5
VERIFY_MODES = ("full", "quick")


@dataclass
class RestoreOutcome:
    target: str
    previous: str | None
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0


def restore_snapshot(
    store: Store,
    manifest: mf.Manifest,
    server: Endpoint,
    target: str,
    *,
    jobs: int = 2,
    keep_previous: int = 1,
    maintenance_db: str = "postgres",
    verify: str = "full",
    reporter: Reporter = NULL,
) -> RestoreOutcome:
    """Restore `manifest`'s snapshot into database `target` on `server` (see module docstring).

    `verify` is ``"full"`` (read every table back and compare its rows and checksum with the
    manifest) or ``"quick"`` (no read-back). Both check, before anything is touched, every file's
    sha256, then zstd's content checksum as each file is decompressed, the server's row count
    for each file, the tables present, sequence values and the large-object count: what was
    loaded is provably the snapshot's rows; "full" also proves what the server stored.
    """
    if verify not in VERIFY_MODES:
        raise TargetError(f"unknown verification mode {verify!r} (one of {', '.join(VERIFY_MODES)})")
    started = time.monotonic()
    jobs = max(1, jobs)
    if not names.valid_dbname(target):
        raise TargetError(f"invalid target database name {target!r} (1 to 63 bytes, no NUL)")
    pool = WorkerPool(jobs, reporter)
    try:
        bad = verify_files(store, manifest, reporter, pool=pool)
        if bad:
            raise IntegrityError(
                f"snapshot {manifest.id} is damaged: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                hint="the target was not touched; restore another snapshot",
            )
        faults.checkpoint("restore:files-verified")
        maint = control_session(server, TargetError, dbname=maintenance_db)  # holds the lock for the whole build
    except BaseException:
        pool.close()
        raise
    try:
        _check_not_source(maint, manifest, server, target)
        if not try_advisory_lock(maint, LOCK_CLASS, target):
            raise BusyError(
                f"another snapdb run is restoring into {target!r} on {server.host}:{server.port}",
                hint="wait for it to finish; nothing was changed",
            )
        faults.checkpoint("restore:locked")
        if database_exists(maint, target):
            gids = prepared_xacts(maint, target)
            if gids:
                raise RefusedError(
                    f"database {target!r} has {len(gids)} prepared transaction(s) ({gids[0]}); a rename would wait forever",
                    hint="COMMIT PREPARED or ROLLBACK PREPARED them first",
                )
        tmp = names.tmp_name(target)
        drop_database(maint, tmp)  # a build left by an interrupted run
        try:
            create_database(maint, tmp, manifest.database)
            faults.checkpoint("restore:created")
            _build(pool, store, manifest, server, tmp, jobs, reporter)
            faults.checkpoint("restore:loaded")
            diffs = verify_database(server, manifest, error_cls=TargetError, dbname=tmp, jobs=jobs,
                                    reporter=reporter, pool=pool, analyze=True, read_tables=verify == "full")
            pool.close()  # the workers' sessions must be gone before the rename
            if diffs:
                raise IntegrityError(
                    f"restored database differs from snapshot {manifest.id}: {diffs[0]}"
                    + (f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""),
                    hint="the target was not touched",
                )
            faults.checkpoint("restore:verified")
            history.record_restore(server, tmp, target, manifest)  # managed sources: the `restore` row
            with maint.transaction():
                apply_database_props(maint, tmp, manifest.database)
            faults.checkpoint("restore:before-swap")
            previous = _swap(maint, target, tmp)
        except BaseException:
            pool.close()
            _drop_quietly(maint, server, maintenance_db, target, tmp)
            raise
        faults.checkpoint("restore:swapped")
    except psycopg.Error as exc:
        pool.close()
        maint.close()
        raise TargetError(f"restore into {target!r} failed: {first_line(exc)}", hint="the target is unchanged") from None
    except BaseException:
        pool.close()
        maint.close()
        raise
    outcome = RestoreOutcome(target=target, previous=previous, tables=len(manifest.tables), rows=manifest.rows)
    try:
        outcome.kept, outcome.dropped = _rotate(maint, target, keep_previous)
    except psycopg.Error as exc:
        raise TargetError(
            f"{target!r} now holds snapshot {manifest.id}, but dropping older copies failed: {first_line(exc)}",
            hint=f"drop the {names.prev_prefix(target)}* databases you no longer need by hand",
        ) from None
    finally:
        maint.close()
    outcome.seconds = time.monotonic() - started
    return outcome


def _check_not_source(maint: psycopg.Connection, manifest: mf.Manifest, server: Endpoint, target: str) -> None:
    src = manifest.server
    if target != src.get("dbname"):
        return
    src_server = Endpoint(params={"host": str(src.get("host")), "port": str(src.get("port"))})
    same = server.server_key() == src_server.server_key()
    sysid = src.get("system_identifier")
    if sysid and not same:
        same = system_identifier(maint) == sysid
    if same:
        raise RefusedError(
            f"{target!r} on this server is the snapshot's own source; refusing to replace it",
            hint="restore into another database, e.g. --into " + target + "-dev",
        )


def _pg_restore(server: Endpoint, dbname: str, archive: Path, sections: list[str], jobs: int, tool: str) -> None:
    argv = [tool, "--exit-on-error", "--no-tablespaces"] + [f"--section={s}" for s in sections]
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    argv += pgtools.conninfo_arg(server.conninfo(dbname)) + [str(archive)]
    pgtools.run_tool(argv, TargetError, f"pg_restore ({'+'.join(sections)})")


def _build(pool: WorkerPool, store: Store, manifest: mf.Manifest, server: Endpoint, tmp: str, jobs: int,
           reporter: Reporter) -> None:
    probe = connect(server, TargetError, dbname=tmp)
    try:
        target_major = probe.info.server_version // 10000
    finally:
        probe.close()
    tool = pgtools.choose_pg_restore(manifest.server["version_num"] // 10000,  # docs/postgres-versions.md
                                     int(manifest.pg_dump_version.split(".")[0]), target_major)
    workdir = pgtools.scratch_dir()
    try:
        archive = workdir / "schema.dump"
        reporter.phase("restoring schema")
        try:
            with open_zstd(store, mf.key(manifest.id, manifest.schema_file)) as src, open(archive, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"schema archive of snapshot {manifest.id} is damaged ({exc})",
                                 hint="the target was not touched; restore another snapshot") from None
        except OSError as exc:  # pg_restore needs the archive as a seekable local file
            raise TargetError(
                f"cannot write the schema archive to {workdir}: {exc.strerror or exc}",
                hint="free space there or set TMPDIR to a roomier directory; the target is unchanged",
            ) from None
        _pg_restore(server, tmp, archive, ["pre-data", "data"], 1, tool)
        with connect(server, TargetError, dbname=tmp, autocommit=True) as conn, conn.transaction():
            set_sequences(conn, manifest.sequences)
        reporter.done()
        faults.checkpoint("restore:schema")
        _load_tables(pool, store, manifest, server, tmp, reporter)
        reporter.phase("building indexes and constraints")
        _pg_restore(server, tmp, archive, ["post-data"], jobs, tool)
        reporter.done()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _load_tables(pool: WorkerPool, store: Store, manifest: mf.Manifest, server: Endpoint, tmp: str,
                 reporter: Reporter) -> None:
    """Load every table part in parallel (parts of one table load concurrently too); the row
    count the server reports for each file must equal the manifest's."""
    sizes = {f.path: f.raw_size for f in manifest.files}
    session = Session(server, TargetError, dbname=tmp, encoding=manifest.database.encoding, readonly=False)
    parts = sorted(((t, p) for t in manifest.tables for p in t.parts), key=lambda tp: -sizes.get(tp[1]["file"], 0))
    reporter.phase("loading tables", total_bytes=sum(sizes.values()), total_items=len(parts))

    def done(index: int, stored: int) -> None:
        t, p = parts[index]
        if stored != p["rows"]:
            raise IntegrityError(
                f"table {t.schema}.{t.name}, {p['file']}: the server stored {stored} rows, the manifest says {p['rows']}",
                hint="the target was not touched",
            )
        reporter.advance(items=1)
        faults.checkpoint("restore:table-loaded")

    pool.run_items(load_part, [(session, store, mf.key(manifest.id, p["file"]), t.ref()) for t, p in parts],
                   [sizes.get(p["file"], 0) for _, p in parts], on_done=done)
    reporter.done()


def _swap(maint: psycopg.Connection, target: str, tmp: str) -> str | None:
    """Rename target aside and tmp into place in one transaction; return the previous name."""
    if not database_exists(maint, target):
        rename_database(maint, tmp, target)
        return None
    existing = set(list_databases(maint))
    when = mf.utcnow()
    prev = names.prev_name(target, when)
    while prev in existing:
        when += timedelta(seconds=1)
        prev = names.prev_name(target, when)
    last: psycopg.Error | None = None
    for attempt in range(SWAP_ATTEMPTS):
        try:
            with maint.transaction():
                terminate_sessions(maint, target)
                rename_database(maint, target, prev)
                rename_database(maint, tmp, target)
            return prev
        except psycopg.errors.ObjectInUse as exc:  # a session raced in; terminate again
            last = exc
            time.sleep(0.2 * (attempt + 1))
    raise TargetError(
        f"could not swap {target!r}: {first_line(last) if last else 'busy'}",
        hint="sessions keep reconnecting to the target; the target is unchanged",
    )


def _rotate(maint: psycopg.Connection, target: str, keep: int) -> tuple[list[str], list[str]]:
    """Drop previous copies of `target` beyond the newest `keep`; return (kept, dropped)."""
    prevs = sorted((d for d in list_databases(maint) if names.is_prev_of(target, d)), reverse=True)
    kept, dropped = prevs[:max(keep, 0)], prevs[max(keep, 0):]
    for d in dropped:
        drop_database(maint, d)
    return kept, dropped


def _drop_quietly(maint: psycopg.Connection, server: Endpoint, maintenance_db: str, target: str, tmp: str) -> None:
    """Drop the temporary build after a failure; reconnect once if the session was lost."""
    try:
        if not (maint.closed or maint.broken):
            drop_database(maint, tmp)
            return
    except psycopg.Error:
        pass
    try:
        with connect(server, TargetError, dbname=maintenance_db, autocommit=True) as fresh:
            # our lock went with the lost session: drop the build only if no other run holds it now
            if try_advisory_lock(fresh, LOCK_CLASS, target):
                drop_database(fresh, tmp)
                return
    except (psycopg.Error, SnapdbError):
        pass
    log.warning("could not drop %s; the next run will", tmp)
