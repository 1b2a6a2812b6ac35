"""Take a snapshot: one exported MVCC snapshot shared by pg_dump and parallel COPY workers.

Pipeline (each step safe to interrupt; nothing is visible until the manifest is written):

1. Open a REPEATABLE READ, READ ONLY transaction on the source whose first statements lock every
   user table in ACCESS SHARE mode, so that its snapshot is fixed only once every lock is held
   (`relations.lock_tables`: one committed state, schema and data alike); export the snapshot
   and read the catalog (tables, sequences, large objects, database-level properties) inside
   it. On a hot standby the rows of unlogged tables cannot be read: they are skipped, and the
   manifest and the result say so.
2. In parallel: ``pg_dump -Fc -Z0 --snapshot=<id>`` dumps everything except the rows of the
   tables snapdb copies itself and the values of the sequences it recorded (schema, large
   objects, materialized-view refreshes, extension configuration data). Sequence values are read
   right after the snapshot is exported, so each is at least the highest value any copied row
   used; they are not transactional, so pg_dump's own later reading is not used; `jobs` worker processes import the same snapshot
   and stream each table (large tables in page-range parts) with COPY into its own zstd file,
   computing row counts and checksums, then read each stored file back to check its sha256.
3. The pg_dump archive is compressed into the store; every stored file is read back and its
   sha256 compared with the one computed while writing; the manifest is written last.

The writer's lease (`store.lease`) is published before anything else and removed after the
manifest, so a prune can tell a running writer's unfinished snapshot from a dead one's debris.
On failure every object already written for this snapshot id is deleted (best effort, the lease
last) and the error propagates; a snapshot without a manifest does not exist in any case.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Callable

import psycopg
import psycopg.sql
from psycopg._encodings import pg2pyenc  # PostgreSQL encoding name -> Python codec (no public equivalent)

from . import faults, history, manifest as mf, pgtools, relations
from .compression import READ_CHUNK, ZstdSink, digest
from .config import Endpoint
from .errors import IntegrityError, SourceError
from .postgres import (
    DatabaseProps, TableRef, first_line, large_object_count, open_data_session,
    read_database_props, read_sequences, system_identifier, version_string,
)
from .progress import NULL, Reporter
from .store import Store, lease
from .tabledata import CHECKSUM, ZERO, add_checksums, plan_parts
from .workers import Session, WorkerPool, dump_pack

log = logging.getLogger(__name__)


def take_snapshot(
    source: Endpoint,
    store: Store,
    *,
    jobs: int = 2,
    label: str | None = None,
    release_probe: Callable[[psycopg.Connection], dict | None] | None = None,
    reporter: Reporter = NULL,
    database_props: DatabaseProps | None = None,
    pin: Callable[[], str] | None = None,
) -> mf.Manifest:
    """Snapshot `source` into `store` and return its manifest (see module docstring).

    `pin`, if given, is called once the tables are locked, before the snapshot is fixed, and
    returns the name of an exported snapshot to take instead (a replication slot's, so that the
    copy and the slot's stream meet exactly); it is called again if the locking is retried.

    `release_probe`, if given, is called with the source connection inside the exported
    snapshot's transaction; what it returns is recorded as the manifest's ``release``.
    `database_props` replaces the database-level properties read from the source (a cutover's
    snapshot records the database as it is outside its freeze, not the freeze's settings).
    """
    now = mf.utcnow()
    snap_id = mf.new_id(now)
    started = time.monotonic()
    # the writer's lease comes first and goes last: while it is there and its process runs, no
    # prune touches this unfinished snapshot (store/lease.py)
    lease.publish(store, lease.Lease.mine(snap_id, source.source_name))
    try:
        m = _take(source, store, snap_id, now.isoformat(), max(1, jobs), label, release_probe, reporter, started,
                  database_props, pin)
    except BaseException:
        lease_key = lease.key(snap_id)
        for k in [k for k in store.list(mf.key(snap_id, "")) if k != lease_key] + [lease_key]:
            try:
                store.delete(k)
            except Exception:  # cleanup is best effort; the error that matters is re-raised
                log.warning("could not remove %s after a failed snapshot", k)
        raise
    try:
        store.delete(lease.key(snap_id))
    except Exception:  # the snapshot exists; a leftover lease of a complete snapshot is ignored
        log.warning("could not remove the writer lease of snapshot %s", snap_id)
    return m


def _take(source, store, snap_id, created_at, jobs, label, release_probe, reporter, started, props_override,
          pin=None) -> mf.Manifest:
    pool = WorkerPool(jobs, reporter)  # before any connection or thread exists (see workers)
    try:
        return _take_with(pool, source, store, snap_id, created_at, jobs, label, release_probe, reporter, started,
                          props_override, pin)
    finally:
        pool.close()


def _take_with(pool, source, store, snap_id, created_at, jobs, label, release_probe, reporter, started,
               props_override=None, pin=None) -> mf.Manifest:
    reporter.phase("reading catalog")
    main = open_data_session(source, SourceError)
    warnings: list[str] = []
    try:
        try:
            main.autocommit = True  # outside the snapshot transaction, which must start with its locks
            dbname, standby = main.execute("SELECT current_database(), pg_catalog.pg_is_in_recovery()").fetchone()
            subscriptions = _subscriptions(main)
            main.autocommit = False
            before = None
            if pin is not None:
                def before(conn):
                    conn.execute(psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(pin())))
            relations.lock_tables(main, checkpoint=faults.checkpoint, before_snapshot=before)
            exported = main.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]
            tables, unlogged = relations.list_tables(main, skip_unlogged=standby)
            props = props_override or read_database_props(main, dbname)
            sequences = read_sequences(main, skip_unlogged=standby)
            lo_count = large_object_count(main)
            db_bytes = int(main.execute("SELECT pg_catalog.pg_database_size(pg_catalog.current_database())").fetchone()[0])
            version_num = main.info.server_version
            sysid = system_identifier(main)
            release = release_probe(main) if release_probe else None
            exclusions = data_exclusions(main, [(t.schema, t.name) for t in tables + unlogged]
                                         + [(q.schema, q.name) for q in sequences])
        except psycopg.Error as exc:
            raise SourceError(f"reading the source catalog failed: {first_line(exc)}") from None
        except relations.TablesChanging as exc:
            raise SourceError(str(exc), hint="take the snapshot again when the schema changes have finished") from None
        skipped = [{"schema": t.schema, "name": t.name, "reason": "unlogged table on a hot standby"} for t in unlogged]
        if unlogged:
            warnings.append(f"the rows of {len(unlogged)} unlogged table(s) were not copied: a hot standby cannot "
                            f"read them ({', '.join(t.qualname for t in unlogged[:5])}{' …' if len(unlogged) > 5 else ''}); "
                            "a restore creates them empty")
        if subscriptions:
            warnings.append(f"subscription(s) {', '.join(subscriptions)} were not copied: a copy must not consume "
                            "its source's replication slots")
        faults.checkpoint("snapshot:catalog-read")
        pg_dump = pgtools.choose_pg_dump(main, SourceError)  # docs/postgres-versions.md
        dump_version = "%d.%d" % pgtools.tool_version(pg_dump)
        pg_restore = pgtools.find_tool("pg_restore", pgtools.tool_version(pg_dump)[0])  # lists the archive
        db_encoding = main.info.parameter_status("server_encoding") or "UTF8"
        reporter.done()

        workdir = pgtools.scratch_dir()
        try:
            dump_path = workdir / "schema.dump"
            dump_err: list[BaseException] = []
            # the client encoding is the database's own (not PGCLIENTENCODING's or the URL's): pg_dump
            # matches the patterns below in its queries, so their bytes must be in that encoding
            argv: list[str | bytes] = [pg_dump, "-Fc", "-Z0", "--no-sync", "--no-subscriptions",
                                       f"--snapshot={exported}", f"--encoding={db_encoding}", "-f", str(dump_path)]
            # rows of copied tables, and sequence values: sequences are not transactional, so
            # pg_dump's later reading could differ from the manifest's; restore sets them itself
            argv += exclusion_args(exclusions, db_encoding)
            argv += pgtools.conninfo_arg(source.conninfo())

            dump_procs: list = []

            def run_dump() -> None:
                try:
                    pgtools.run_tool(argv, SourceError, "pg_dump", started=dump_procs.append)
                    _check_no_copied_rows(pgtools.archive_table_data(pg_restore, dump_path, SourceError),
                                          tables + unlogged)
                except BaseException as exc:  # re-raised in the main thread
                    dump_err.append(exc)

            dumper = threading.Thread(target=run_dump, name="pg_dump", daemon=True)
            dumper.start()
            try:
                entries = _copy_tables(pool, source, store, snap_id, tables, props.encoding, exported,
                                       jobs, version_num, reporter)
                pool.close()  # the workers' sessions hold the snapshot; release them now
            except BaseException:
                for proc in dump_procs:  # no need to wait for a dump that will be thrown away
                    proc.kill()
                raise
            finally:
                dumper.join()
            if dump_err:
                raise dump_err[0]
            _exporter_alive(main)
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

    files = [sink.entry] + [f for _, fs in entries for f in fs]  # data files were read back by the workers
    sha, size = digest(store, mf.key(snap_id, mf.SCHEMA_FILE))
    if (sha, size) != (sink.entry.sha256, sink.entry.size):
        raise IntegrityError(f"snapshot file {mf.SCHEMA_FILE} changed while being stored (sha256 or size differs)")
    # every file was fsynced when written (not syncfs: that would also flush whatever else is dirty on
    # the filesystem, e.g. a PostgreSQL data directory): all are durable before the manifest makes the snapshot exist
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
            "in_recovery": bool(standby),
        },
        pg_dump_version=dump_version,
        database=props,
        schema_file=mf.SCHEMA_FILE,
        files=files,
        tables=[t for t, _ in entries],
        sequences=sequences,
        large_objects=lo_count,
        release=release,
        checksum=CHECKSUM,
        skipped=skipped,
        warnings=warnings,
        database_bytes=db_bytes,
        taken_by={"os_user": history.os_user(), "client_host": socket.gethostname()},
    )
    manifest.seconds = round(time.monotonic() - started, 3)
    mf.write_manifest(store, manifest)
    return manifest


def _exporter_alive(main: psycopg.Connection) -> None:
    """Raise `SourceError` unless the session that exported the snapshot is still in its
    transaction: only then were its ACCESS SHARE locks held while every table was read (a
    TRUNCATE or a rewrite is not MVCC-safe; on a hot standby, the replay of one ends that session)."""
    try:
        if main.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            raise psycopg.OperationalError("its transaction ended")
        main.execute("SELECT 1")
    except psycopg.Error as exc:
        raise SourceError(f"the session holding the snapshot's locks ended while the tables were copied ({first_line(exc)}); "
                          "the copy may not be of one instant", hint="take the snapshot again") from None


def _subscriptions(conn: psycopg.Connection) -> list[str]:
    """Names of the subscriptions of the connected database (pg_dump skips them, see above)."""
    return [r[0] for r in conn.execute(
        """SELECT s.subname FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
           WHERE d.datname = pg_catalog.current_database() ORDER BY 1""").fetchall()]


def data_exclusions(conn: psycopg.Connection, excluded: list[tuple[str, str]]) -> list[str]:
    """pg_dump ``--exclude-table-data`` patterns matching exactly the relations `excluded`.

    A schema all of whose relations with data (tables, sequences, materialized views) are
    excluded gets one pattern, ``"schema".*`` (the views, foreign and partitioned tables it also
    matches have no data to dump); other schemas list their excluded relations one by one. So
    tens of thousands of tables make a short command line (ARG_MAX) and pg_dump runs one catalog
    query per schema, not one per table."""
    wanted = set(excluded)
    by_schema: dict[str, list[str]] = {}
    for schema, name in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'S', 'm')").fetchall():
        by_schema.setdefault(schema, []).append(name)
    out = []
    for schema in sorted(by_schema):
        names = by_schema[schema]
        if all((schema, n) in wanted for n in names):
            out.append(_pattern(schema, None))
        else:
            out += [_pattern(schema, n) for n in sorted(names) if (schema, n) in wanted]
    return out


def exclusion_args(patterns: list[str], encoding: str) -> list[str | bytes]:
    """``--exclude-table-data`` arguments for `patterns`, encoded in the database's `encoding`
    (a PostgreSQL name, e.g. ``LATIN1``), in which pg_dump (``--encoding``) sends them to the
    server: a non-ASCII name passed as UTF-8 matches nothing in a LATIN1 database, and its rows
    would be dumped beside snapdb's own copy. ASCII patterns stay `str` (every server encoding
    is an ASCII superset). Raises `SourceError` when Python has no codec for `encoding` and a
    pattern needs one."""
    out: list[str | bytes] = []
    for p in patterns:
        arg = f"--exclude-table-data={p}"
        if arg.isascii():
            out.append(arg)
            continue
        try:
            out.append(arg.encode(pg2pyenc(encoding.encode())))
        except (psycopg.NotSupportedError, UnicodeEncodeError) as exc:
            raise SourceError(
                f"cannot pass the name pattern {p} to pg_dump in the database's encoding {encoding}: {exc}",
                hint="rename the schema or table to ASCII, or snapshot it with pg_dump yourself") from None
    return out


def _check_no_copied_rows(dumped: set[int], tables: list[TableRef]) -> None:
    """Refuse an archive holding the rows of a table snapdb copies itself: a restore would load
    them twice (its patterns missed the table, however that came about)."""
    twice = [t.qualname for t in tables if t.oid in dumped]
    if twice:
        raise IntegrityError(
            f"pg_dump's archive holds the rows of {len(twice)} table(s) snapdb copied itself ("
            f"{', '.join(twice[:5])}{' …' if len(twice) > 5 else ''}): its --exclude-table-data patterns did "
            "not match them, and every restore would load their rows twice",
            hint="the snapshot was not written; report this with the table names")


def _pattern(schema: str, name: str | None) -> str:
    """pg_dump name pattern matching exactly this relation (quoted: no wildcard applies), or with
    `name` None every relation of the schema."""
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    return f"{q(schema)}.{q(name) if name is not None else '*'}"


#: tables smaller than PACK_TABLE_BYTES on disk (heap and TOAST: `TableRef.data_bytes`; a table of
#: a few large values is all TOAST), read whole, share files ("packs", format 3) of at most
#: PACK_TABLES tables and about PACK_BYTES: creating a file costs more than copying a small table
PACK_TABLE_BYTES = 1 << 20
PACK_BYTES = 8 << 20
PACK_TABLES = 256


def plan_files(tables: list, jobs: int, version_num: int) -> list[tuple[str, list[tuple[int, object]]]]:
    """The data files of a snapshot: ``(path, [(table index, page range or None), ...])``.

    A large table (by its heap, which page ranges split) gets one file per page range
    (``data/NNNNN.PPP.copy.zst``), a table too large to pack (heap and TOAST) one file
    (``data/NNNNN.copy.zst``); the small ones are packed, in table order, into
    ``data/pack-NNNNN.copy.zst`` (at least `jobs` packs when there are that many small tables, so
    every worker has one)."""
    files: list[tuple[str, list[tuple[int, object]]]] = []
    small: list[int] = []
    for i, t in enumerate(tables):
        ranges = plan_parts(t, jobs, version_num)
        if len(ranges) > 1:
            files += [(f"data/{i + 1:05d}.{p + 1:03d}.copy.zst", [(i, pages)]) for p, pages in enumerate(ranges)]
        elif t.data_bytes >= PACK_TABLE_BYTES:
            files.append((f"data/{i + 1:05d}.copy.zst", [(i, None)]))
        else:
            small.append(i)
    if len(small) == 1:
        return files + [(f"data/{small[0] + 1:05d}.copy.zst", [(small[0], None)])]
    total = sum(tables[i].data_bytes for i in small)
    per_pack = min(PACK_TABLES, max(1, -(-len(small) // max(1, jobs))))
    packs: list[list[int]] = []
    weight = 0
    for i in small:
        if not packs or len(packs[-1]) >= per_pack or weight >= max(PACK_BYTES, total // max(1, jobs) + 1):
            packs.append([])
            weight = 0
        packs[-1].append(i)
        weight += tables[i].data_bytes
    return files + [(f"data/pack-{n + 1:05d}.copy.zst", [(i, None) for i in pack]) for n, pack in enumerate(packs)]


def _copy_tables(pool, source, store, snap_id, tables, encoding, exported, jobs, version_num, reporter):
    """Copy every table (large ones in parts, small ones packed) in the worker pool; return
    entries in table order."""
    reporter.phase("copying tables", total_bytes=sum(t.data_bytes for t in tables), total_items=len(tables))
    session = Session(source, SourceError, encoding=encoding, snapshot=exported, release_locks=True)  # main holds them
    files = plan_files(tables, jobs, version_num)
    refs = [TableRef(t.schema, t.name, t.columns) for t in tables]
    parts_of = [0] * len(tables)  # files holding each table (its page-range parts, or 1)
    for _path, segs in files:
        for i, _pages in segs:
            parts_of[i] += 1
    remaining = list(parts_of)

    def done(index: int, _result) -> None:
        for i, _pages in files[index][1]:
            remaining[i] -= 1
            if remaining[i] == 0:
                reporter.advance(items=1)
                faults.checkpoint("snapshot:table-copied")

    tasks = [(session, store, mf.key(snap_id, path), path, [(refs[i], pages) for i, pages in segs]) for path, segs in files]
    weights = [sum(tables[i].data_bytes // parts_of[i] for i, _pages in segs) for _path, segs in files]
    results = pool.run_items(dump_pack, tasks, weights, on_done=done)
    parts: list[list[dict]] = [[] for _ in tables]
    file_entries: list[list] = [[] for _ in tables]
    for (path, segs), (segments, entry) in zip(files, results):
        packed = len(segs) > 1
        for (i, _pages), (rows, checksum, offset, length) in zip(segs, segments):
            part = {"file": path, "rows": rows, "checksum": checksum}
            if packed:
                part.update(offset=offset, length=length)
            parts[i].append(part)
        file_entries[segs[0][0]].append(entry)  # a file is listed once, with its first table
    entries = []
    for i, t in enumerate(tables):
        checksum = ZERO
        for p in parts[i]:
            checksum = add_checksums(checksum, p["checksum"])
        entry = mf.TableEntry(t.schema, t.name, t.columns, sum(p["rows"] for p in parts[i]), checksum, parts[i],
                              load_via=list(t.load_via) if t.load_via else None)
        entries.append((entry, file_entries[i]))
    reporter.done()
    return entries
