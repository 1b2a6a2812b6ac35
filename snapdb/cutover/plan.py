"""Preflight of a cutover: every check that can be made before anything changes, the plan, and
the predicted freeze window.

Contract: `preflight(...)` connects to A (the service's database, through its admin connection),
reads and checks, and returns a `Plan`; it never changes anything. Problems that forbid the
cutover are collected and raised together as one `RefusedError` (exit 8), except a modified
release script, which is `IntegrityError` (exit 7) as for `snapdb upgrade`. What the cutover can
still do, but less well, is a warning in the plan (no logical decoding for the proof, free disk
unknown on a remote server).

The prediction adds what was measured on this service before: the newest snapshot of its own
database (`Manifest.seconds`, scaled by how the database's size changed since), the newest
catalog record of a restore of such a snapshot (its duration, scaled alike), and the
rehearsal's upgrade duration; plus the drain (at most `drain_timeout`) and a second for the
freeze, the proof and the swap. Unknown parts are listed as unknown, never guessed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime

import psycopg

from .. import history, manifest as mf, swap
from ..config import Endpoint
from ..errors import RefusedError
from ..postgres import first_line

OVERHEAD_SECONDS = 1.0


@dataclass
class Plan:
    """What a cutover will do (``--dry-run`` prints it)."""

    service: str
    database: str
    tag: str
    revision: str
    checksum: str
    scripts: str
    from_revision: str | None
    from_tag: str | None
    steps: list[dict]
    freeze_mode: str
    drain_timeout: float
    timeout: float | None
    rehearsal: str | None
    size_bytes: int
    free_bytes: int | None
    proof: str  # "decoded WAL and catalog fingerprint" | "catalog fingerprint"
    prediction: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    mode: str = "snapshot"
    replicate: dict | None = None  # replicate mode: `rplan.check`'s info
    to_server: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def check_database(conn: psycopg.Connection, dbname: str, own_pids: set[int]) -> tuple[list[str], list[str]]:
    """The checks on A itself: (problems, warnings). `conn` is any session on A's server."""
    problems, warnings = [], []
    st = swap.inspect(conn, dbname)
    if st.prepared:
        problems.append(f"{dbname!r} has prepared transaction(s) {', '.join(st.prepared)} (they could commit on the "
                        "old database after the freeze)")
    if st.slots:
        problems.append(f"{dbname!r} holds logical replication slot(s) {', '.join(st.slots)}, which the swap would "
                        "leave with the old database")
    if st.subscriptions:
        problems.append(f"{dbname!r} has subscription(s) {', '.join(st.subscriptions)}, which would go on "
                        "consuming into the old database")
    supers = [r for r in conn.execute(
        """SELECT a.pid, a.usename, coalesce(a.application_name, '') FROM pg_catalog.pg_stat_activity a
           JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid
           WHERE a.datname = %s AND r.rolsuper AND a.pid <> pg_catalog.pg_backend_pid()""", (dbname,)).fetchall()
              if r[0] not in own_pids]
    if supers:
        problems.append("application session(s) connected as a superuser, which no freeze can stop: "
                        + ", ".join(f"pid {p} ({u}{', ' + a if a else ''})" for p, u, a in supers[:5]))
    return problems, warnings


def proof_available(conn: psycopg.Connection) -> tuple[bool, str | None]:
    """Whether the proof can decode WAL here (and why not)."""
    level = conn.execute("SHOW wal_level").fetchone()[0]
    if level != "logical":
        return False, f"wal_level is {level}, not logical"
    su, repl = conn.execute("SELECT rolsuper, rolreplication FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if not (su or repl):
        return False, "the admin role has no REPLICATION attribute"
    free = conn.execute("SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_catalog.pg_replication_slots)").fetchone()[0]
    if free < 1:
        return False, "no free replication slot (max_replication_slots)"
    return True, None


def free_disk(conn: psycopg.Connection, ep: Endpoint) -> int | None:
    """Free bytes where the server keeps its data, when that is this machine and readable."""
    if ep.server_key()[0] != "local":
        return None
    try:
        with conn.transaction():
            path = conn.execute("SHOW data_directory").fetchone()[0]
    except psycopg.Error:
        return None
    try:
        s = os.statvfs(path)
    except OSError:
        return None
    return s.f_bavail * s.f_frsize


def predict(store, service: str, ep: Endpoint, size: int, rehearsal: history.Record | None,
            drain_timeout: float, own: list[mf.Manifest], busy_sessions: int = 1) -> dict:
    """The predicted freeze window (see module docstring). The drain counts `drain_timeout` (at
    most) when `busy_sessions` (sessions on A inside a transaction now) is not 0."""
    parts: dict[str, float | None] = {"drain (at most)": drain_timeout if busy_sessions else 0.0, "snapshot": None, "restore": None,
                                      "upgrade": None, "freeze, proof and swap": OVERHEAD_SECONDS}
    basis: dict[str, str] = {}
    timed = next((m for m in own if m.seconds is not None), None)
    scale = 1.0
    if timed is not None:
        if timed.database_bytes:
            scale = max(size, 1) / timed.database_bytes
        parts["snapshot"] = round(timed.seconds * scale, 3)
        basis["snapshot"] = f"snapshot {timed.id} took {timed.seconds:.1f} s for {_mb(timed.database_bytes)}"
    ids = {m.id for m in own}
    rec = next((r for r in history.list_catalog(store) if r.operation == "restore" and r.outcome == "succeeded"
                and r.restored_from in ids and r.seconds is not None), None)
    if rec is not None:
        parts["restore"] = round(rec.seconds * scale, 3)
        basis["restore"] = f"restore {rec.record_id} took {rec.seconds:.1f} s"
    if rehearsal is not None and rehearsal.ended_at and rehearsal.started_at:
        secs = (datetime.fromisoformat(rehearsal.ended_at) - datetime.fromisoformat(rehearsal.started_at)).total_seconds()
        parts["upgrade"] = round(secs, 3)
        basis["upgrade"] = f"rehearsal {rehearsal.record_id} upgraded in {secs:.1f} s"
    known = [v for v in parts.values() if v is not None]
    unknown = [k for k, v in parts.items() if v is None]
    return {"seconds": round(sum(known), 1) if not unknown else None,
            "at_least_seconds": round(sum(known), 1), "parts": parts, "unknown": unknown, "basis": basis,
            "scale": round(scale, 3)}


def _mb(n: int | None) -> str:
    return f"{n / 1e6:.0f} MB" if n else "an unknown size"


def raise_problems(service: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise RefusedError(f"refusing to cut {service!r} over: {problems[0]}{more}",
                           hint="nothing was changed; fix these and run the cutover again (--dry-run shows the plan)")


def size_of(conn: psycopg.Connection, dbname: str) -> int:
    try:
        return int(conn.execute("SELECT pg_catalog.pg_database_size(%s)", (dbname,)).fetchone()[0])
    except psycopg.Error as exc:
        raise RefusedError(f"cannot read the size of {dbname!r}: {first_line(exc)}") from None
