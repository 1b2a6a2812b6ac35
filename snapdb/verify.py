"""Check snapshots and databases against a manifest.

`verify_files` re-reads every stored file and compares sha256 and size, and checks that the
manifest's parts lay out its files (`manifest.layout_problems`; nothing is trusted before this
passes). `verify_database` compares a live database with the manifest: row count
and content checksum of every table (in parallel), tables present on one side only, sequence
values and the large-object count. Both return a list of `Mismatch`; empty means identical.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import psycopg

from . import manifest as mf
from .config import Endpoint
from .errors import SnapdbError
from .postgres import first_line, open_data_session, large_object_count, read_sequences
from .relations import list_tables
from .progress import NULL, Reporter
from .store import Store
from .tabledata import ZERO, add_checksums, plan_parts
from .workers import Session, WorkerPool, analyze, checksum_part, digest_file


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


def verify_files(store: Store, manifest: mf.Manifest, reporter: Reporter = NULL,
                 pool: WorkerPool | None = None) -> list[Mismatch]:
    """Compare every stored file of the snapshot with its manifest entry (in `pool` if given),
    after checking that the tables' parts lay out the listed files (packs tile their streams)."""
    reporter.phase("verifying files", total_bytes=manifest.stored_bytes, total_items=len(manifest.files))
    tasks = [(store, mf.key(manifest.id, e.path)) for e in manifest.files]
    if pool is not None:
        found = pool.run_items(digest_file, tasks, [e.size for e in manifest.files],
                               on_done=lambda i, r: reporter.advance(nbytes=r[1] if r else 0, items=1))
    else:
        found = [digest_file(*t) for t in tasks]
    out = [Mismatch(*problem) for problem in mf.layout_problems(manifest)]
    for entry, got in zip(manifest.files, found):
        if got is None:
            out.append(Mismatch("file", entry.path, f"{entry.size} bytes", "missing"))
        elif got[1] != entry.size:
            out.append(Mismatch("file", entry.path, f"{entry.size} bytes", f"{got[1]} bytes"))
        elif got[0] != entry.sha256:
            out.append(Mismatch("file", entry.path, f"sha256 {entry.sha256[:16]}…", f"sha256 {got[0][:16]}…"))
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
    pool: WorkerPool | None = None,
    analyze: bool = False,
    read_tables: bool = True,
    expected_oid: int | None = None,
    held: bool = False,
) -> list[Mismatch]:
    """Compare database `dbname` (default: `ep`'s) with `manifest`; return the differences.

    Every table is read in one exported snapshot, so a live database is checked at one instant;
    large tables are read in page-range parts by the worker processes. With `analyze`, one worker
    runs ANALYZE on the database meanwhile. Without `read_tables` only the catalog is compared
    (tables present, sequences, large objects); the caller has checked the rows otherwise.
    Tables loaded through a partition root (`TableEntry.load_via`) are compared as one group per
    root; tables the snapshot skipped (`Manifest.skipped`) only need to exist. With
    `expected_oid`, the database must be the one with that OID (a restore verifies its own build,
    not a database that took its name). `held`: the caller's session locks every table against
    writes and rewrites throughout (a restore's hold), so the workers may release their own
    locks after each batch (`workers.Session.release_locks`).
    """
    encoding = manifest.database.encoding
    out: list[Mismatch] = []
    own_pool = pool is None
    pool = pool or WorkerPool(jobs, reporter)  # before the first connection (see workers)
    try:
        main = open_data_session(ep, error_cls, dbname=dbname, encoding=encoding)
    except BaseException:
        if own_pool:
            pool.close()
        raise
    try:
        try:
            exported = main.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]
            oid = main.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()").fetchone()[0]
            live = {(t.schema, t.name): t for t in list_tables(main)[0]}
            seqs = {(s.schema, s.name): s for s in read_sequences(main)}
            lo = large_object_count(main)
            version = main.info.server_version
        except psycopg.Error as exc:
            raise error_cls(f"reading the database catalog failed: {first_line(exc)}") from None
        if expected_oid is not None and oid != expected_oid:
            return [Mismatch("database", dbname or ep.dbname, f"OID {expected_oid} (this run's build)", f"OID {oid}")]
        session = Session(ep, error_cls, dbname=dbname, encoding=encoding, snapshot=exported, release_locks=held)
        try:
            todo = manifest.tables if read_tables else []
            out += _compare_tables(pool, session, todo, live, jobs, version, reporter, analyze, manifest.checksum)
        finally:
            if own_pool:
                pool.close()
    finally:
        main.close()

    expected = {(t.schema, t.name): t for t in manifest.tables}
    skipped = {(t["schema"], t["name"]) for t in manifest.skipped}
    for k in sorted(set(expected) - set(live)):
        out.append(Mismatch("table", ".".join(k), f"{expected[k].rows} rows", "missing"))
    for k in sorted(skipped - set(live)):
        out.append(Mismatch("table", ".".join(k), "present (rows not in the snapshot)", "missing"))
    for k in sorted(set(live) - set(expected) - skipped):
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


def _compare_tables(pool, session, tables, live, jobs, version, reporter, analyze, algorithm) -> list[Mismatch]:
    """Checksum every one of `tables` present in `live` (large ones in parts) and compare,
    table by table, or group by group for tables loaded through a partition root."""
    todo = [t for t in tables if (t.schema, t.name) in live]
    reporter.phase("verifying tables", total_bytes=sum(live[(t.schema, t.name)].bytes for t in todo) or None,
                   total_items=len(todo))
    tasks, owners, weights = [], [], []
    if analyze:
        tasks.append(("analyze", replace(session, snapshot=None, readonly=False)))
        owners.append(-1)
        weights.append(1 << 62)  # first, alone: it runs beside the reads
    for i, t in enumerate(todo):
        ranges = plan_parts(live[(t.schema, t.name)], jobs, version)
        for pages in ranges:
            tasks.append(("read", session, t.ref(), pages, algorithm))
            owners.append(i)
            weights.append(live[(t.schema, t.name)].bytes // len(ranges))
    results = pool.run_items(_dispatch, tasks, weights)
    found: dict[tuple[str, str], list] = {}
    want: dict[tuple[str, str], list] = {}
    for t in todo:
        found.setdefault(t.group(), [0, ZERO])
        w = want.setdefault(t.group(), [0, ZERO])
        w[0], w[1] = w[0] + t.rows, add_checksums(w[1], t.checksum)
    for owner, result in zip(owners, results):
        if owner >= 0:
            f = found[todo[owner].group()]
            f[0] += result[0]
            f[1] = add_checksums(f[1], result[1])
    grouped = {t.group() for t in todo if t.load_via}
    out = []
    for g, (rows, checksum) in want.items():
        name = ".".join(g) + (" (all partitions)" if g in grouped else "")
        if found[g][0] != rows:
            out.append(Mismatch("table", name, f"{rows} rows", f"{found[g][0]} rows"))
        elif found[g][1] != checksum:
            out.append(Mismatch("table", name, f"checksum {checksum}", f"checksum {found[g][1]}"))
    reporter.done()
    return out


def _dispatch(kind: str, *args):
    return analyze(*args) if kind == "analyze" else checksum_part(*args)


def table_sums(ep: Endpoint, tables: list, *, error_cls: type[SnapdbError], dbname: str | None = None,
               snapshot: str | None = None, jobs: int = 2, encoding: str | None = None,
               reporter: Reporter = NULL) -> dict[tuple[str, str], tuple[int, str]]:
    """Row count and content checksum of each of `tables` (`TableRef`, read with their own
    column lists, so two databases can be compared on the columns they share) in database
    `dbname`, all in one snapshot: the exported `snapshot` when given (a state held since
    earlier), else a new one. Large tables are read in page-range parts by worker processes."""
    pool = WorkerPool(jobs, reporter)
    try:
        main = open_data_session(ep, error_cls, dbname=dbname, encoding=encoding, snapshot=snapshot)
        try:
            try:
                exported = main.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]
                live = {(t.schema, t.name): t for t in list_tables(main)[0]}
                version = main.info.server_version
            except psycopg.Error as exc:
                raise error_cls(f"reading the database catalog failed: {first_line(exc)}") from None
            session = Session(ep, error_cls, dbname=dbname, encoding=encoding, snapshot=exported)
            tasks, owners, weights = [], [], []
            for i, t in enumerate(tables):
                here = live.get((t.schema, t.name))
                if here is None:
                    continue
                ranges = plan_parts(here, jobs, version)
                for pages in ranges:
                    tasks.append((session, t, pages))
                    owners.append(i)
                    weights.append(here.bytes // len(ranges))
            results = pool.run_items(checksum_part, tasks, weights)
        finally:
            main.close()
    finally:
        pool.close()
    out: dict[tuple[str, str], tuple[int, str]] = {}
    for k, i in enumerate(owners):
        key = (tables[i].schema, tables[i].name)
        rows, checksum = out.get(key, (0, ZERO))
        out[key] = (rows + results[k][0], add_checksums(checksum, results[k][1]))
    return out


def count_tables(conns: list[psycopg.Connection], tables: list[tuple[str, str]]) -> dict[tuple[str, str], int | None]:
    """``count(*)`` of each table (None: absent), spread over the open sessions `conns` (one
    thread each; sessions of the same database, or one transaction's snapshot each)."""
    import threading

    from psycopg import sql

    out: dict[tuple[str, str], int | None] = {}
    todo = list(tables)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(conn: psycopg.Connection) -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                s, n = todo.pop()
            try:
                if conn.execute("SELECT pg_catalog.to_regclass(%s)", (sql.Identifier(s, n).as_string(conn),)).fetchone()[0] is None:
                    out[(s, n)] = None
                else:
                    out[(s, n)] = int(conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(s, n))).fetchone()[0])
            except BaseException as exc:  # re-raised below
                errors.append(exc)
                return

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out
