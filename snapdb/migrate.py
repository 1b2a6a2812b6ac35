"""Run alembic revisions against one database: plan, lock, apply one revision at a time, record.

Contract:

- `plan(scripts, current, target)` returns the revisions from the database's `current` revision
  to `target` in upgrade order, or raises `RefusedError` when the database is ahead of `target`,
  on another branch, or at a revision the scripts do not know.
- `UpgradeSession(ep, lock=True)` opens a control session on the target database and takes the
  server-wide lock of the database's name (`snapdb.locks`, the same lock restores and
  cutovers take): a second upgrade, or a restore into the same database, gets `BusyError` at
  once. It reads the current revision and the snapshot the database was restored from, and
  `apply` runs the plan.
- `apply` runs each revision through ``alembic.command.upgrade`` on its own SQLAlchemy
  connection, one revision per call, so each revision commits on its own (``env.py`` sets
  ``transaction_per_migration``; an ``autocommit_block()`` inside a script commits early). The
  ``snapdb.history`` row is written from the control session before the first revision, after
  each one, and at the end, and the same record is published in the store's catalog. When a
  revision fails, its transaction rolls back, the database stays at the previous revision and
  `MigrationError` names the failing revision.
- `offline_sql` renders the plan as SQL (alembic's offline mode) without touching the database.

alembic and SQLAlchemy are imported here only; the CLI imports this module on first use.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import sqlalchemy
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.pool import NullPool

from . import faults, history, locks
from .replication import compat
from .config import Endpoint
from .errors import MigrationError, RefusedError, SnapdbError, StoreError, TargetError
from .manifest import utcnow
from .postgres import alembic_revisions, control_session, first_line, system_identifier
from .releases import Scripts
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One revision to apply."""

    revision: str
    down_revision: str | None
    file: str
    doc: str
    tag: str | None = None  # the release whose revision this is, if any

    def to_json(self) -> dict:
        return {"revision": self.revision, "down_revision": self.down_revision, "file": self.file,
                "doc": self.doc, "tag": self.tag}


def single_revision(revisions: list[str] | None, where: str) -> str | None:
    """The database's one current revision (None: no version table or no row)."""
    if not revisions:
        return None
    if len(revisions) > 1:
        raise RefusedError(
            f"{where} has {len(revisions)} alembic heads ({', '.join(revisions)}); snapdb upgrades single-head databases",
            hint="merge the branches into one revision (alembic merge) and release that",
        )
    return revisions[0]


def plan(scripts: Scripts, current: str | None, target: str, tag_for: Callable[[str], str | None],
         where: str, worktree: Scripts | None = None) -> list[Step]:
    """Revisions to run from `current` to `target`, in order; [] when already there."""
    path = scripts.path_to(target)
    order = [s.revision for s in path]
    if current is not None and current not in order:
        if scripts.knows(current) and target in {s.revision for s in scripts.path_to(current)}:
            ahead = True
        else:  # scripts read from an older tag do not know newer revisions; the working tree may
            ahead = bool(worktree and worktree.knows(current)
                         and target in {s.revision for s in worktree.path_to(current)})
        what = tag_for(current) or current
        if ahead:
            raise RefusedError(
                f"{where} is at revision {current} ({what}), ahead of the release's revision {target}",
                hint="snapdb does not downgrade; restore a snapshot taken at that release instead",
            )
        raise RefusedError(
            f"{where} is at revision {current}, which is not on the path to {target} in the scripts",
            hint="the database was migrated from other scripts; check `snapdb releases` and its history",
        )
    done = set() if current is None else {s.revision for s in scripts.path_to(current)}
    steps = []
    for s in path:
        if s.revision not in done:
            down = s.down_revision if isinstance(s.down_revision, str) or s.down_revision is None else ",".join(s.down_revision)
            steps.append(Step(s.revision, down, scripts.relpath(s), s.doc, tag_for(s.revision)))
    return steps


def _alembic_config(scripts: Scripts, output: io.StringIO | None = None) -> AlembicConfig:
    cfg = AlembicConfig(output_buffer=output, stdout=io.StringIO())
    cfg.set_main_option("script_location", str(scripts.dir).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def offline_sql(scripts: Scripts, current: str | None, target: str) -> str:
    """The SQL that upgrading from `current` to `target` runs, rendered by alembic offline."""
    out = io.StringIO()
    try:
        command.upgrade(_alembic_config(scripts, out), f"{current}:{target}" if current else target, sql=True)
    except Exception as exc:
        raise MigrationError(f"rendering SQL failed: {type(exc).__name__}: {first_line(exc)}") from None
    return out.getvalue()


def _error_text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    if isinstance(orig, BaseException):
        return first_line(orig)
    return f"{type(exc).__name__}: {first_line(exc)}"


class UpgradeSession:
    """A control session on the target database, holding the upgrade lock when `lock`."""

    def __init__(self, ep: Endpoint, lock: bool = True) -> None:
        self.ep = ep
        self.where = ep.name or ep.display()
        self.conn = control_session(ep, TargetError)  # holds the lock while alembic works on other sessions
        try:
            if lock:
                locks.acquire(self.conn, ep.dbname, "upgrade", self.where)
                faults.checkpoint("upgrade:locked")
            self.current = single_revision(alembic_revisions(self.conn), self.where)
            self.restored_from = history.restored_from(self.conn)
            self.oid = int(self.conn.execute(
                "SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()").fetchone()[0])
            self.system_identifier = system_identifier(self.conn)
        except psycopg.Error as exc:
            self.close()
            raise TargetError(f"reading {self.where} failed: {first_line(exc)}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.conn.close()  # ends the session, and with it the lock

    def __enter__(self) -> UpgradeSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def apply(self, scripts: Scripts, steps: list[Step], rec: history.Record, store: Store, *,
              rows: bool = True) -> float:
        """Run `steps` in order, recording progress in `rec`; return the seconds taken.

        Each revision's duration and what it did (`compat.classify`; its row counters only with
        `rows`) are appended to ``rec.revisions``."""
        started = time.monotonic()
        try:
            history.ensure_table(self.conn)
            history.mark_interrupted(self.conn)
            history.insert(self.conn, rec)
        except psycopg.Error as exc:
            raise TargetError(f"cannot write snapdb.history in {self.where}: {first_line(exc)}",
                              hint="the role needs CREATE on the database (or an existing snapdb.history); nothing was changed") from None
        failure: SnapdbError | None = None
        engine = sqlalchemy.create_engine(
            "postgresql+psycopg://", poolclass=NullPool,
            creator=lambda: psycopg.connect(self.ep.conninfo(), connect_timeout=30),
        )
        rec.revisions = list(rec.revisions or [])
        try:
            cfg = _alembic_config(scripts)
            for step in steps:
                try:
                    before = compat.capture(self.conn)
                    t0 = time.monotonic()
                    # each revision on a session of its own: when it ends, the server publishes its
                    # row counters, which tell what the revision wrote (`compat`)
                    with engine.connect() as sa_conn:
                        pid = sa_conn.exec_driver_sql("SELECT pg_catalog.pg_backend_pid()").scalar()
                        sa_conn.commit()
                        cfg.attributes["connection"] = sa_conn
                        command.upgrade(cfg, step.revision)
                        if sa_conn.in_transaction():
                            sa_conn.commit()
                    seconds = time.monotonic() - t0
                    now = single_revision(alembic_revisions(self.conn), self.where)
                    if now != step.revision:
                        raise RuntimeError(f"the version table says {now} afterwards")
                except Exception as exc:
                    failure = self._failed(step, exc, rec)
                    break
                rec.reached_revision = step.revision
                rec.revisions.append({"revision": step.revision, "seconds": round(seconds, 3),
                                      "replication": self._classify(before, pid, rows)})
                history.update(self.conn, rec)
                faults.checkpoint("upgrade:revision-applied")
        except psycopg.Error as exc:
            failure = failure or MigrationError(f"upgrade of {self.where} failed: {first_line(exc)}")
            rec.error = rec.error or failure.message
        except sqlalchemy.exc.SQLAlchemyError as exc:  # could not connect for the migrations
            failure = failure or TargetError(f"cannot connect to {self.ep.display()}: {_error_text(exc)}")
            rec.error = rec.error or failure.message
        finally:
            engine.dispose()
        rec.outcome = "failed" if failure else "succeeded"
        rec.ended_at = utcnow().isoformat()
        self._finish(rec, store, failure)
        return time.monotonic() - started

    def _classify(self, before: dict, pid: int, rows: bool) -> dict:
        """What the revision just applied did (see `compat`), once its session `pid` has ended."""
        deadline = time.monotonic() + 10
        while self.conn.execute("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            if time.monotonic() > deadline:
                out = compat.classify(before, compat.capture(self.conn), rows=False)
                out["reasons"].append("its session did not end, so its row changes are unknown")
                out["compatible"] = False
                return out
            time.sleep(0.01)
        return compat.classify(before, compat.capture(self.conn), rows=rows)

    def _failed(self, step: Step, exc: BaseException, rec: history.Record) -> MigrationError:
        try:
            reached = single_revision(alembic_revisions(self.conn), self.where)
        except (psycopg.Error, SnapdbError):
            reached = rec.reached_revision
        rec.reached_revision = reached
        rec.failed_revision = step.revision
        rec.error = f"revision {step.revision} ({step.file}) failed: {_error_text(exc)}"
        return MigrationError(
            f"{self.where}: {rec.error}",
            hint=f"{self.where} stays at revision {reached or 'base (none)'}: that revision rolled back and the "
                 "ones after it did not run (its history records the failure). A released script never "
                 "changes, so fix it in a new revision, record a new release (`snapdb release add TAG`), "
                 "rehearse that on a fresh copy (`snapdb restore --into DEV --from SERVICE`, then `snapdb "
                 "upgrade DEV --to TAG`) and upgrade again",
        )

    def _finish(self, rec: history.Record, store: Store, failure: SnapdbError | None) -> None:
        db_error = None
        try:
            history.update(self.conn, rec)
        except psycopg.Error as exc:  # e.g. the server went away; the catalog still gets the record
            db_error = first_line(exc)
        try:
            history.write_catalog(store, rec)
        except StoreError as exc:
            if failure is None:
                raise StoreError(f"{self.where} was upgraded, but recording it in the store failed: {exc.message}",
                                 hint="the rehearsal gate reads the store's catalog; fix the store") from None
        if failure is not None:
            raise failure
        if db_error:
            raise TargetError(f"{self.where} was upgraded, but updating snapdb.history failed: {db_error}")
