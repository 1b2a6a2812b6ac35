"""Freezing writes on the live database (A), in layers, and proving the freeze holds.

Layers (each stops what the one before cannot):

1. **Read-only default** (``read-only`` mode, also in ``offline``): ``ALTER DATABASE A SET
   default_transaction_read_only = on``, and the same per role in A for every role whose own
   setting would outrank it. New sessions' writes fail with PostgreSQL's clear read-only error.
   A courtesy only: ``SET default_transaction_read_only = off`` or ``BEGIN READ WRITE`` undo it.
2. **No new sessions** (``offline`` mode): ``REVOKE CONNECT`` on A from PUBLIC, every grantee and
   the owner (snapdb's own role keeps an explicit grant), and a gatekeeper that ends any other
   session that still gets in (superusers always may connect).
3. **Drain**: sessions opened before the freeze are read-write; they get `drain_timeout` seconds
   to finish what they are doing, then every session but snapdb's is terminated.
4. **Table locks** (`Hold`): one snapdb session holds ``LOCK TABLE ONLY … IN EXCLUSIVE MODE`` on
   every table, partitioned table and materialized view of A for the whole freeze. Reads (ACCESS
   SHARE, which snapdb's own snapshot takes too) pass; every INSERT, UPDATE, DELETE, TRUNCATE,
   ``SELECT … FOR UPDATE`` and DDL on them waits, for every role, superusers and owners
   included, whatever they SET. A write that waits never commits on A: the swap terminates it.
   Not covered: tables created after the locks were taken, sequences (``nextval`` outside a
   read-only transaction), large objects. The proof (`proof`) detects those.

`probe` checks the layers instead of assuming them: the read-only default in effect for every
role that can connect, a real write as snapdb's own role failing, the locks refusing a
``ROW EXCLUSIVE`` lock (what every write needs) on each table, no other session holding a
transaction ID, no prepared transaction. `release` undoes layers 1 and 2 exactly, from the
original state `capture` recorded before anything changed.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from ..config import Endpoint
from ..names import quote_ident
from ..errors import RefusedError, SnapdbError, TargetError
from ..hold import TableHold
from ..manifest import utcnow
from ..postgres import connect, control_session, first_line, is_superuser, read_database_props

log = logging.getLogger(__name__)

SETTING = "default_transaction_read_only"
MODES = ("read-only", "offline")



@dataclass
class FreezeState:
    """What a freeze changes and how to undo it: recorded (journaled) before anything changes.

    `db_setting`: the database's own ``default_transaction_read_only`` entry before the freeze
    (None: none); `role_settings`: {role: its entry in A before, or None} for the roles the freeze
    set it for; `acl`: the database's privileges before an offline freeze (aclexplode rows, None
    for the default); `token` marks snapdb's own sessions (application_name ``snapdb-<token>``).
    """

    dbname: str
    mode: str
    token: str
    own_user: str
    db_setting: str | None = None
    role_settings: dict[str, str | None] = field(default_factory=dict)
    acl: list[dict] | None = None
    acl_default: bool = True
    owner: str = ""
    props: dict = field(default_factory=dict)  # the database's properties before the freeze (for B)
    started_at: str | None = None
    #: application names of snapdb's own replication sessions (walsenders of its subscriptions,
    #: connected as `own_user`), which the drain and the gatekeeper leave alone
    keep_apps: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FreezeState:
        return cls(**data)

    @property
    def app_name(self) -> str:
        return f"snapdb-{self.token}"


def _entry(conn: psycopg.Connection, dbname: str, role: str | None) -> str | None:
    row = conn.execute(
        """SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
           JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase AND d.datname = %s
           WHERE s.setrole = coalesce((SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %s), 0)""",
        (dbname, role)).fetchone()
    for item in (row[0] if row else None) or []:
        name, _, value = item.partition("=")
        if name == SETTING:
            return value
    return None


def effective_read_only(conn: psycopg.Connection, dbname: str) -> dict[str, str]:
    """The ``default_transaction_read_only`` a new session of each login role that may connect
    to `dbname` starts with, by PostgreSQL's precedence: role in database, then role, then
    database, then the server's. Superusers are included (the setting applies to them too)."""
    rows = conn.execute(
        """WITH d AS (SELECT oid, datname FROM pg_catalog.pg_database WHERE datname = %s)
           SELECT r.rolname,
             (SELECT split_part(x, '=', 2) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) x
               WHERE s.setdatabase = d.oid AND s.setrole = r.oid AND split_part(x, '=', 1) = %s),
             (SELECT split_part(x, '=', 2) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) x
               WHERE s.setdatabase = 0 AND s.setrole = r.oid AND split_part(x, '=', 1) = %s),
             (SELECT split_part(x, '=', 2) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) x
               WHERE s.setdatabase = d.oid AND s.setrole = 0 AND split_part(x, '=', 1) = %s),
             pg_catalog.current_setting(%s)
           FROM pg_catalog.pg_roles r, d
           WHERE r.rolcanlogin AND (r.rolsuper OR pg_catalog.has_database_privilege(r.oid, d.oid, 'CONNECT'))""",
        (dbname, SETTING, SETTING, SETTING, SETTING)).fetchall()
    server_default = conn.execute(
        "SELECT boot_val FROM pg_catalog.pg_settings WHERE name = %s", (SETTING,)).fetchone()[0]
    out = {}
    for role, in_db, role_level, db_level, _mine in rows:
        out[role] = in_db or role_level or db_level or server_default
    return out


def capture(conn: psycopg.Connection, dbname: str, mode: str) -> FreezeState:
    """Record A's state before a freeze (nothing changes)."""
    if mode not in MODES:
        raise RefusedError(f"unknown freeze mode {mode!r} (one of {', '.join(MODES)})")
    props = read_database_props(conn, dbname)
    own = conn.execute("SELECT current_user").fetchone()[0]
    st = FreezeState(dbname=dbname, mode=mode, token=secrets.token_hex(6), own_user=own,
                     db_setting=_entry(conn, dbname, None), owner=props.owner, props=asdict(props))
    st.acl_default = props.acl is None
    st.acl = props.acl
    return st


def _db(dbname: str) -> sql.Composable:
    return sql.Identifier(dbname)


def plan_roles(conn: psycopg.Connection, st: FreezeState) -> None:
    """Record in `st.role_settings` the roles whose own setting `apply` must override, with their
    entries as they are now (changes nothing). Journal `st` after this and before `apply`: a
    run killed inside `apply` then still knows the original entries (entries already recorded
    are kept, so calling it again on a frozen database records nothing wrong)."""
    for role, value in effective_read_only(conn, st.dbname).items():
        in_db = _entry(conn, st.dbname, role)
        if value != "on" or in_db is not None:
            st.role_settings.setdefault(role, in_db)


def apply(conn: psycopg.Connection, st: FreezeState) -> None:
    """Layers 1 and 2 (see module docstring), in one transaction on `conn` (any database).
    Applying it again with the same (journaled) `st` is harmless."""
    with conn.transaction():
        conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(_db(st.dbname)))
        for role, value in effective_read_only(conn, st.dbname).items():
            in_db = _entry(conn, st.dbname, role)
            if value != "on" or in_db is not None:  # this role's own setting outranks the database's
                st.role_settings.setdefault(role, in_db)
                conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET default_transaction_read_only = on").format(
                    sql.Identifier(role), _db(st.dbname)))
        if st.mode == "offline":
            grantees = {g["grantee"] for g in (st.acl or [])} | {"PUBLIC", st.owner}
            for g in sorted(grantees - {st.own_user}):
                who = sql.SQL("PUBLIC") if g == "PUBLIC" else sql.Identifier(g)
                conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(_db(st.dbname), who))
            if not is_superuser(conn):
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(_db(st.dbname), sql.Identifier(st.own_user)))
    st.started_at = st.started_at or utcnow().isoformat()


def release(conn: psycopg.Connection, st: FreezeState, dbname: str | None = None, *, reconnect: bool = True) -> None:
    """Undo layers 1 and 2 on database `dbname` (default: the frozen one; a set-aside copy
    keeps its state under its new name), exactly as `capture` recorded them.

    With `reconnect`, every other session then on the database is ended: sessions opened during
    the freeze keep its read-only default for as long as they live, so they must reconnect."""
    db = _db(dbname or st.dbname)
    with conn.transaction():
        if st.db_setting is None:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(db))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                db, sql.Literal(st.db_setting)))
        for role, value in st.role_settings.items():
            if not conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone():
                continue  # dropped meanwhile
            r = sql.Identifier(role)
            if value is None:
                conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET default_transaction_read_only").format(r, db))
            else:
                conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET default_transaction_read_only = {}").format(
                    r, db, sql.Literal(value)))
        if st.mode == "offline":
            _restore_acl(conn, db, st)
    if reconnect:
        for (pid,) in conn.execute("SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = %s "
                                   "AND pid <> pg_catalog.pg_backend_pid()", (dbname or st.dbname,)).fetchall():
            try:
                conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))
            except psycopg.Error:
                pass  # one we may not end: it stays read-only until it reconnects


def _restore_acl(conn: psycopg.Connection, db: sql.Composable, st: FreezeState) -> None:
    """Give back the privileges an offline freeze revoked (the default ones as explicit grants:
    owner all, PUBLIC CONNECT and TEMPORARY)."""
    acl = st.acl if not st.acl_default else [
        {"grantee": st.owner, "privilege": p, "grantable": False} for p in ("CONNECT", "CREATE", "TEMPORARY")
    ] + [{"grantee": "PUBLIC", "privilege": p, "grantable": False} for p in ("CONNECT", "TEMPORARY")]
    if not is_superuser(conn) and not any(g["grantee"] == st.own_user and g["privilege"] == "CONNECT" for g in acl):
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(db, sql.Identifier(st.own_user)))
    for g in acl:
        if g["privilege"] != "CONNECT":
            continue
        who = sql.SQL("PUBLIC") if g["grantee"] == "PUBLIC" else sql.Identifier(g["grantee"])
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}{}").format(
            db, who, sql.SQL(" WITH GRANT OPTION") if g["grantable"] else sql.SQL("")))


# -- sessions ---------------------------------------------------------------------------------------
def others(conn: psycopg.Connection, st: FreezeState, dbname: str | None = None) -> list[tuple]:
    """Sessions on A that are not snapdb's own: (pid, user, application_name, holds an xid,
    in a transaction, in a transaction begun before the freeze was applied)."""
    return conn.execute(
        """SELECT pid, usename, application_name, backend_xid IS NOT NULL, xact_start IS NOT NULL,
                  coalesce(xact_start < %s::timestamptz, false)
           FROM pg_catalog.pg_stat_activity
           WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()
             AND NOT (application_name = %s AND usename = %s)
             AND NOT (backend_type = 'walsender' AND application_name = ANY(%s) AND usename = %s)""",
        (st.started_at or "infinity", dbname or st.dbname, st.app_name, st.own_user, list(st.keep_apps),
         st.own_user)).fetchall()


def close_and_end_sessions(conn: psycopg.Connection, dbname: str, keep_pid: int) -> None:
    """Close `dbname` to new connections and end every session on it but `keep_pid`'s (the
    locks' own) and `conn`'s: a write waiting for the locks never gets to run."""
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(_db(dbname)))
    for (pid,) in conn.execute("SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = %s "
                               "AND pid <> pg_catalog.pg_backend_pid() AND pid <> %s", (dbname, keep_pid)).fetchall():
        conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))


def terminate_others(conn: psycopg.Connection, st: FreezeState) -> int:
    n = 0
    for pid, *_ in others(conn, st):
        try:
            if conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                n += 1
        except psycopg.errors.InsufficientPrivilege as exc:
            raise TargetError(f"cannot end session {pid} on {st.dbname!r}: {first_line(exc)}",
                              hint="the role needs pg_signal_backend (or to be a superuser)") from None
    return n


def require_session_visibility(conn: psycopg.Connection) -> None:
    """Refuse (`RefusedError`) unless snapdb's role sees every session's details: without
    superuser or pg_read_all_stats, pg_stat_activity hides other roles' state, xact_start and
    query, so the drain cannot tell a session inside a transaction from an idle one (it would
    end them all at once, whatever --drain-timeout says) and the plan's busy count reads 0.
    (backend_xid is shown to every role: the probe's transaction-ID check is not blind.)"""
    user, sees = conn.execute(
        "SELECT current_user, rolsuper OR pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
        "FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if not sees:
        raise RefusedError(
            f"snapdb's role {user!r} cannot see other roles' sessions in pg_stat_activity (their state, "
            "transaction start and query are hidden), so the freeze's drain would be blind",
            hint=f"GRANT pg_read_all_stats, pg_signal_backend TO {quote_ident(user)} (or use a superuser); nothing "
                 "was changed")


def refuse_prepared(conn: psycopg.Connection, dbname: str) -> None:
    """Raise `RefusedError` naming the first prepared transaction on `dbname`, if any: one
    survives every drain and termination, could still commit on A, and holds its locks (the
    table locks would wait for it until their timeout)."""
    gids = [r[0] for r in conn.execute(
        "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = %s ORDER BY prepared", (dbname,))]
    if gids:
        more = f" (and {len(gids) - 1} more: {', '.join(gids[1:6])})" if len(gids) > 1 else ""
        raise RefusedError(f"prepared transaction {gids[0]} exists on {dbname!r}{more}: it could still commit there "
                           "after the freeze", hint=f"COMMIT PREPARED or ROLLBACK PREPARED '{gids[0]}', then start again")


def drain(conn: psycopg.Connection, st: FreezeState, timeout: float) -> dict:
    """Layer 3: wait up to `timeout` seconds until no other session on A is inside a
    transaction begun before the freeze was applied, then terminate every other session.
    Returns what was found. Transactions begun later (sessions opened before the freeze keep
    their read-write default) are not waited for: ending them loses nothing acknowledged, and
    clients that retry in a loop would otherwise hold the freeze for the whole timeout. A
    prepared transaction (no session to wait for or end) fails it at once (`refuse_prepared`)."""
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    waited_for = 0
    while True:
        refuse_prepared(conn, st.dbname)
        busy = [s for s in others(conn, st) if s[5]]
        waited_for = max(waited_for, len(busy))
        if not busy or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return {"busy_at_start": waited_for, "still_busy": len(busy), "waited_seconds": round(time.monotonic() - started, 3),
            "terminated": terminate_others(conn, st)}


class Hold:
    """Layer 4: a session on A holding EXCLUSIVE locks on every table (`hold.TableHold`, see
    module docstring), and in offline mode a gatekeeper thread that ends any other session that
    gets in. Sessions still holding conflicting locks while the locks are taken are ended."""

    def __init__(self, ep: Endpoint, st: FreezeState, maint: Endpoint, *, timeout: float = 30.0) -> None:
        self.st = st
        self._stop = threading.Event()
        self._gate: threading.Thread | None = None
        self._maint_ep = maint
        with control_session(maint, TargetError) as helper:
            refuse_prepared(helper, st.dbname)  # its locks would make ours wait until the timeout
            self._hold = TableHold(_own(ep, st), st.dbname, "EXCLUSIVE", TargetError, timeout=timeout,
                                   on_wait=lambda _pid: terminate_others(helper, st))
        self.conn = self._hold.conn
        self.tables = self._hold.tables
        if st.mode == "offline":
            self._gate = threading.Thread(target=self._gatekeeper, name="snapdb-gatekeeper", daemon=True)
            self._gate.start()

    def _gatekeeper(self) -> None:
        try:
            with control_session(self._maint_ep, TargetError) as conn:
                while not self._stop.wait(0.1):
                    terminate_others(conn, self.st)
        except (SnapdbError, psycopg.Error) as exc:  # the locks still hold writes; say so
            log.warning("the freeze's gatekeeper stopped: %s", exc)

    def alive(self) -> bool:
        return self._hold.alive()

    def close(self) -> None:
        """Release the locks (ends the session)."""
        self._stop.set()
        if self._gate is not None:
            self._gate.join(timeout=5)
        self._hold.close()


def _own(ep: Endpoint, st: FreezeState) -> Endpoint:
    """`ep` with the application_name that marks snapdb's own sessions on A."""
    return Endpoint(params={**ep.params, "application_name": st.app_name}, name=ep.name, role=ep.role)


def own_endpoint(ep: Endpoint, st: FreezeState) -> Endpoint:
    return _own(ep, st)


def probe(ep: Endpoint, st: FreezeState, tables: list[tuple[str, str]], maint: psycopg.Connection,
          sample: int = 200) -> dict:
    """Check the freeze's layers (see module docstring); return what was checked. Any layer that
    does not hold raises `RefusedError` naming it."""
    out: dict = {}
    eff = effective_read_only(maint, st.dbname)
    off = sorted(r for r, v in eff.items() if v != "on")
    if off:
        raise RefusedError(f"freeze layer 1 does not hold: new sessions of {', '.join(off)} would still be read-write")
    out["read_only_roles"] = len(eff)
    with connect(_own(ep, st), TargetError, dbname=st.dbname, autocommit=True) as conn:
        if conn.execute("SHOW default_transaction_read_only").fetchone()[0] != "on":
            raise RefusedError("freeze layer 1 does not hold: a new session is read-write")
        # a write that needs no table lock (a DML statement would first wait for the freeze's
        # locks, before PostgreSQL checks read-only), rolled back should it ever succeed
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"snapdb_probe_{st.token}")))
            raise RefusedError("freeze probe: a write as snapdb's own role was accepted (and rolled back)")
        except psycopg.errors.ReadOnlySqlTransaction:
            out["probe_write"] = "refused: read-only"
        conn.execute("SET default_transaction_read_only = off")  # as a bypassing writer would
        checked = 0
        for s, n in tables[:sample]:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ROW EXCLUSIVE MODE NOWAIT").format(sql.Identifier(s, n)))
                raise RefusedError(f"freeze layer 4 does not hold: {s}.{n} could be written")
            except psycopg.errors.LockNotAvailable:
                checked += 1
        out["locked_tables"] = len(tables)
        out["lock_probes"] = checked
    holders = [x for x in others(maint, st) if x[3]]
    if holders:
        raise RefusedError(f"freeze does not hold: session {holders[0][0]} ({holders[0][1]}) holds a transaction ID")
    prepared = [r[0] for r in maint.execute(
        "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = %s", (st.dbname,))]
    if prepared:
        raise RefusedError(f"freeze does not hold: prepared transaction {prepared[0]} exists on {st.dbname!r} "
                           "(it could still commit there)")
    out["xid_holders"] = 0
    out["prepared"] = 0
    return out


def unfreeze_quietly(maint: psycopg.Connection, st: FreezeState, dbname: str) -> None:
    """Best effort, on a failed rollback: `dbname` open again and its freeze `st` undone."""
    try:
        maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))
        release(maint, st)
    except psycopg.Error:
        pass
