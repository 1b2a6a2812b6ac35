"""Restore a snapshot into a temporary database, verify it, and swap it in by rename.

Plan and order (each step safe to interrupt; the target is touched only by the final swap):

1. Refuse system databases and snapdb's own side databases as targets; verify every snapshot
   file against the manifest (sha256, size).
2. On the target server (a session to the maintenance database): refuse the snapshot's own
   source; take the server-wide lock of the target's name (`locks`: a second run, whichever
   maintenance database it uses, gets `BusyError`); read what the target carries (`swap.inspect`:
   prepared transactions, logical slots, subscriptions, closed to connections) and refuse what a
   rename would silently break; extract the schema archive and check that every role it needs
   exists (after the role map) and can be given ownership (`roles`), listing every problem at
   once.
3. Drop the previous copies the rotation would drop anyway (so the peak is the target, the
   copies kept and the build), and a build left by an interrupted run.
4. ``CREATE DATABASE <tmp> OWNER <owner>`` with the snapshot's encoding, locale and locale
   provider stated explicitly; remember its OID. Restore the pre-data and data sections
   (schema, large objects), set the sequences, load every table part with COPY in `jobs` worker
   processes (through the partition root where enum OIDs decide the partition), restore the
   post-data section with ``pg_restore -j``. Every pg_restore runs with ``--exit-on-error``;
   the server's row count for each file must equal the manifest's. With a role map, the schema
   sections go through ``pg_restore -f - | roles.rewrite | psql`` instead.
5. Verify the build, by OID, against the manifest (``verify="full"`` reads every table back),
   running ANALYZE beside it; stop the workers, whose sessions would block the rename.
6. Write a managed database's ``restore`` row; apply owner, comment, connection limit, grants
   and settings to the build.
7. Swap (`swap.swap_in`), in one transaction: terminate the target's sessions, rename it to a
   ``__prev_`` name, rename the build into place, and prove the database now called target has
   the build's OID. Then drop or detach what the old copy carried when told to (slots,
   subscriptions), and drop previous copies beyond `keep_previous`.

Any failure before step 7 commits drops the build (only the one with this run's OID) and leaves
the target as it was.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import zstandard

from . import faults, history, locks, manifest as mf, names, pgtools, pipes, roles, swap
from .compression import open_zstd
from .config import Endpoint
from .errors import IntegrityError, RefusedError, TargetError
from .postgres import (
    DatabaseProps, apply_database_props, connect, control_session, create_database, drop_database,
    first_line, set_sequences, system_identifier,
)
from .progress import NULL, Reporter
from .store import Store
from .verify import verify_database, verify_files
from .workers import Session, WorkerPool, load_part

log = logging.getLogger(__name__)

VERIFY_MODES = ("full", "quick")
SYSTEM_DATABASES = ("postgres", "template0", "template1")


@dataclass
class RestoreOptions:
    """How ownership, privileges and what the target carries are handled.

    `no_owner` / `no_privileges`: as pg_restore's ``--no-owner`` / ``--no-privileges`` (objects
    and the database owned by the restoring role; no grants, on objects or the database).
    `role_map`: source role -> target role. `drop_slots` / `detach_subscriptions`: replace a
    target that has logical slots (dropped with the old copy) or subscriptions (disabled and
    detached in the copy set aside) instead of refusing.
    """

    no_owner: bool = False
    no_privileges: bool = False
    role_map: dict[str, str] = field(default_factory=dict)
    drop_slots: bool = False
    detach_subscriptions: bool = False


@dataclass
class RestoreOutcome:
    target: str
    previous: str | None
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0
    oid: int | None = None
    system_identifier: str | None = None  # the target server's, when the role may read it
    warnings: list[str] = field(default_factory=list)


def check_target_name(target: str, maintenance_db: str) -> None:
    """Refuse targets that must never be replaced: system databases, the maintenance database,
    and snapdb's own temporary builds."""
    if not names.valid_dbname(target):
        raise TargetError(f"invalid target database name {target!r} (1 to 63 bytes, no NUL)")
    if target in SYSTEM_DATABASES or target == maintenance_db:
        what = "the maintenance database" if target == maintenance_db and target not in SYSTEM_DATABASES else "a system database"
        raise RefusedError(f"refusing to restore into {target!r}: it is {what}",
                           hint="restore into a database of your own, e.g. --into service0-dev; nothing was changed")
    if target.endswith(names.TMP_SUFFIX):
        raise RefusedError(f"refusing to restore into {target!r}: the name is one of snapdb's temporary builds",
                           hint="restore into the database it belongs to; nothing was changed")


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
    options: RestoreOptions | None = None,
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
    opts = options or RestoreOptions()
    started = time.monotonic()
    jobs = max(1, jobs)
    check_target_name(target, maintenance_db)
    pool = WorkerPool(jobs, reporter)
    maint = None
    workdir = None
    try:
        bad = verify_files(store, manifest, reporter, pool=pool)
        if bad:
            raise IntegrityError(
                f"snapshot {manifest.id} is damaged: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                hint="the target was not touched; restore another snapshot",
            )
        faults.checkpoint("restore:files-verified")
        maint = control_session(server, TargetError, dbname=maintenance_db)  # holds the lock for the whole build
        where = f"{target!r} on {server.host}:{server.port}"
        _check_not_source(maint, manifest, server, target)
        locks.acquire(maint, target, "restore", where)
        faults.checkpoint("restore:locked")
        state = swap.inspect(maint, target)
        swap.refuse_unsafe(state, target, drop_slots=opts.drop_slots, detach_subscriptions=opts.detach_subscriptions)
        workdir = pgtools.scratch_dir()
        archive = _extract_archive(store, manifest, workdir)
        tool = _restore_tool(manifest, maint)
        owner = _check_roles(maint, archive, manifest.database, opts, tool)
        outcome = RestoreOutcome(target=target, previous=None, tables=len(manifest.tables), rows=manifest.rows)
        outcome.dropped = _make_room(maint, server, target, keep_previous, state.exists)
        faults.checkpoint("restore:room-made")
        tmp = names.tmp_name(target)
        tmp_oid = None
        try:
            drop_database(maint, tmp)  # a build left by an interrupted run (we hold the lock)
            tmp_oid = create_database(maint, tmp, manifest.database, owner=owner)
            faults.checkpoint("restore:created")
            _build(pool, store, manifest, server, tmp, jobs, reporter, archive, tool, opts)
            faults.checkpoint("restore:loaded")
            diffs = verify_database(server, manifest, error_cls=TargetError, dbname=tmp, jobs=jobs, reporter=reporter,
                                    pool=pool, analyze=True, read_tables=verify == "full", expected_oid=tmp_oid)
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
                apply_database_props(maint, tmp, _mapped_props(manifest.database, opts, owner))
            faults.checkpoint("restore:before-swap")
            outcome.previous = swap.swap_in(maint, target, tmp, tmp_oid, keep_closed=not state.allow_connections)
            outcome.oid = tmp_oid
            outcome.system_identifier = system_identifier(maint)
        except BaseException:
            pool.close()
            swap.drop_build_quietly(maint, server, maintenance_db, tmp, target, tmp_oid)
            raise
        faults.checkpoint("restore:swapped")
    except psycopg.Error as exc:
        pool.close()
        if maint is not None:
            maint.close()
        raise TargetError(f"restore into {target!r} failed: {first_line(exc)}", hint=_privilege_hint(exc)) from None
    except BaseException:
        pool.close()
        if maint is not None:
            maint.close()
        raise
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if not state.allow_connections:
        outcome.warnings.append(f"{target!r} did not allow connections (ALLOW_CONNECTIONS false); the new copy does not either")
    try:
        outcome.warnings += _after_swap(maint, server, target, outcome.previous, state, opts, keep_previous, outcome)
    except psycopg.Error as exc:
        raise TargetError(
            f"{target!r} now holds snapshot {manifest.id}, but dropping older copies failed: {first_line(exc)}",
            hint=f"drop the {names.prev_prefix(target)}* databases you no longer need by hand",
        ) from None
    finally:
        maint.close()
    outcome.seconds = time.monotonic() - started
    return outcome


def _after_swap(maint, server, target, previous, state, opts, keep_previous, outcome) -> list[str]:
    """Deal with what the set-aside copy carries, then rotate previous copies."""
    notes = []
    if previous and state.subscriptions:
        done = swap.detach_subscriptions(server, previous)
        notes.append(f"disabled and detached {', '.join(done)} in {previous!r}; the publisher keeps its slots")
    if previous and state.slots:
        for slot in state.slots:
            maint.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
        notes.append(f"dropped replication slot(s) {', '.join(state.slots)} with the old copy (--drop-slots)")
    outcome.kept, dropped = swap.rotate(maint, server, target, keep_previous)
    outcome.dropped += dropped
    return notes


def _make_room(maint, server: Endpoint, target: str, keep_previous: int, target_exists: bool) -> list[str]:
    """Drop, before building, the previous copies the rotation after the swap would drop: the
    swap turns the current target into one more previous copy, so only the newest
    ``keep_previous - 1`` survive it. Peak disk: target + kept copies + build."""
    keep = keep_previous - 1 if target_exists else keep_previous
    prevs = swap.prev_copies(maint, target)
    doomed = prevs[max(keep, 0):]
    for d in doomed:
        swap.drop_copy(maint, server, d)
    return doomed


def _privilege_hint(exc: psycopg.Error) -> str:
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ("the restoring role needs CREATEDB, membership in the roles that own objects (or --no-owner), and "
                "ownership of the target; see docs/quickstart.md (least privilege). The target is unchanged")
    return "the target is unchanged"


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


def _restore_tool(manifest: mf.Manifest, maint: psycopg.Connection) -> str:
    """The pg_restore for this snapshot and target server (docs/postgres-versions.md); refuses
    a target older than the snapshot's source or its archive before anything is built."""
    return pgtools.choose_pg_restore(manifest.server["version_num"] // 10000,
                                     int(manifest.pg_dump_version.split(".")[0]), maint.info.server_version // 10000)


def _extract_archive(store: Store, manifest: mf.Manifest, workdir: Path) -> Path:
    """Decompress the schema archive into `workdir` (pg_restore needs a seekable local file)."""
    archive = workdir / "schema.dump"
    try:
        with open_zstd(store, mf.key(manifest.id, manifest.schema_file)) as src, open(archive, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"schema archive of snapshot {manifest.id} is damaged ({exc})",
                             hint="the target was not touched; restore another snapshot") from None
    except OSError as exc:
        raise TargetError(
            f"cannot write the schema archive to {workdir}: {exc.strerror or exc}",
            hint="free space there or set TMPDIR to a roomier directory; the target is unchanged",
        ) from None
    return archive


def _restore_flags(opts: RestoreOptions) -> list[str]:
    return (["--no-owner"] if opts.no_owner else []) + (["--no-privileges"] if opts.no_privileges else [])


def _check_roles(maint: psycopg.Connection, archive: Path, props: DatabaseProps, opts: RestoreOptions,
                 tool: str) -> str | None:
    """Check every role the restore needs (see `roles`); return the build's owner (None: the
    restoring role). Raises `TargetError` listing every missing role and every ownership the
    restoring role cannot give."""
    refs = roles.scan(pipes.lines_of([tool, "--section=pre-data", "--section=post-data", "-f", "-", str(archive)],
                                     TargetError, "reading the schema archive"))
    needs: dict[str, set[str]] = {}
    for role, uses in refs.uses.items():
        keep = set(uses)
        if opts.no_owner:
            keep.discard("owner")
        if opts.no_privileges:
            keep -= {"grantee", "grantor", "default privileges"}
        if keep:
            needs[role] = keep
    if props.owner and not opts.no_owner:
        needs.setdefault(props.owner, set()).add("database owner")
    if props.acl and not opts.no_privileges:
        for g in props.acl:
            if g["grantee"] != "PUBLIC":
                needs.setdefault(g["grantee"], set()).add("database privilege")
    for role in props.role_settings:
        needs.setdefault(role, set()).add("database settings")
    mapped = {opts.role_map.get(r, r): uses for r, uses in needs.items()}
    tr = roles.target_roles(maint)
    missing = sorted(r for r in mapped if r not in tr.existing)
    problems = []
    if missing:
        problems.append("missing role(s) " + ", ".join(f"{r} ({', '.join(sorted(mapped[r]))})" for r in missing))
    owners = sorted(r for r, u in mapped.items() if r in tr.existing and u & {"owner", "database owner"})
    cannot = [r for r in owners if not tr.can_set(r)]
    if cannot:
        problems.append(f"role {tr.current} cannot give ownership to {', '.join(cannot)} (it is not a member)")
    if props.role_settings and not (tr.superuser or tr.createrole):
        problems.append(f"role {tr.current} cannot set per-role settings in the database (needs CREATEROLE)")
    if problems:
        raise TargetError(
            "the target server is not ready for this snapshot: " + "; ".join(problems),
            hint="create the roles there, map them in snapdb.toml ([services.NAME.roles] app = \"app_dev\"), "
                 "GRANT the owner roles to the restoring role, or restore with --no-owner / --no-privileges; "
                 "nothing was changed",
        )
    if opts.no_owner or not props.owner:
        return None
    return opts.role_map.get(props.owner, props.owner)


def _mapped_props(props: DatabaseProps, opts: RestoreOptions, owner: str | None) -> DatabaseProps:
    """The database-level properties to apply, after the role map and the options."""
    m = opts.role_map
    acl = None if opts.no_privileges or props.acl is None else [
        {**g, "grantee": m.get(g["grantee"], g["grantee"])} for g in props.acl]
    return DatabaseProps(
        encoding=props.encoding, collate=props.collate, ctype=props.ctype, locale_provider=props.locale_provider,
        icu_locale=props.icu_locale, icu_rules=props.icu_rules, owner=owner or "", comment=props.comment,
        connection_limit=props.connection_limit, acl=acl, settings=list(props.settings),
        role_settings={m.get(r, r): list(v) for r, v in props.role_settings.items()},
    )


def _pg_restore(server: Endpoint, dbname: str, archive: Path, sections: list[str], jobs: int, tool: str,
                opts: RestoreOptions) -> None:
    base = [tool, "--exit-on-error", "--no-tablespaces"] + _restore_flags(opts) + [f"--section={s}" for s in sections]
    what = f"pg_restore ({'+'.join(sections)})"
    schema = [s for s in sections if s != "data"]
    if opts.role_map and schema:
        # role names rewritten on the way: pg_restore prints SQL, psql runs it in one transaction
        psql = str(Path(tool).with_name("psql"))
        consumer = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"] + \
            pgtools.conninfo_arg(server.conninfo(dbname)) + ["-f", "-"]
        producer = [tool, "--no-tablespaces"] + _restore_flags(opts) + [f"--section={s}" for s in schema] + \
            ["-f", "-", str(archive)]
        pipes.pipe_through(producer, consumer, lambda lines: roles.rewrite(lines, opts.role_map), TargetError, what)
        if "data" not in sections:
            return
        base = [tool, "--exit-on-error", "--no-tablespaces"] + _restore_flags(opts) + ["--section=data"]
    elif jobs > 1:
        base.append(f"--jobs={jobs}")
    pgtools.run_tool(base + pgtools.conninfo_arg(server.conninfo(dbname)) + [str(archive)], TargetError, what)


def _build(pool: WorkerPool, store: Store, manifest: mf.Manifest, server: Endpoint, tmp: str, jobs: int,
           reporter: Reporter, archive: Path, tool: str, opts: RestoreOptions) -> None:
    reporter.phase("restoring schema")
    _pg_restore(server, tmp, archive, ["pre-data", "data"], 1, tool, opts)
    with connect(server, TargetError, dbname=tmp, autocommit=True) as conn, conn.transaction():
        set_sequences(conn, manifest.sequences)
    reporter.done()
    faults.checkpoint("restore:schema")
    _load_tables(pool, store, manifest, server, tmp, reporter)
    reporter.phase("building indexes and constraints")
    _pg_restore(server, tmp, archive, ["post-data"], jobs, tool, opts)
    reporter.done()


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

    pool.run_items(load_part, [(session, store, mf.key(manifest.id, p["file"]), t.load_ref()) for t, p in parts],
                   [sizes.get(p["file"], 0) for _, p in parts], on_done=done)
    reporter.done()

