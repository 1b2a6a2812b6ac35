"""A load harness for cutovers: client processes that write to a service while it is cut over and
log every commit acknowledged to them, and the checks made afterwards.

Tables (`SCHEMA`, created in schema ``lh``): ``events`` (client-generated uuid keys),
``counters`` (one row per worker, incremented), ``items`` (bigserial keys from a sequence).
Each worker process runs one kind of client:

- ``normal``: autocommit writes; on any error, reconnects and goes on;
- ``set-off``: ``SET default_transaction_read_only = off`` after connecting (bypasses the
  read-only default);
- ``begin-rw``: every write in ``BEGIN READ WRITE`` (bypasses it too);
- ``owner``: connects as the tables' owner role, and bypasses as ``set-off`` does;
- ``long``: opens a transaction, writes, waits `--hold` seconds, then commits (a transaction
  opened before the freeze that tries to commit after it).

Log lines (one file per worker): ``ack OP KEY SENT ACKED DBOID`` for every acknowledged commit
(SENT: client time just before COMMIT was sent; DBOID: the OID of the database that acknowledged
it), ``maybe OP KEY SENT`` for a commit whose outcome is unknown (the connection broke during
COMMIT), ``err KIND SENT`` for refused writes. `check` reads the logs and the databases.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE SCHEMA lh;
CREATE TABLE lh.events (id uuid PRIMARY KEY, worker int NOT NULL, n int NOT NULL);
CREATE TABLE lh.counters (worker int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE lh.items (id bigserial PRIMARY KEY, worker int NOT NULL, n int NOT NULL);
INSERT INTO lh.counters (worker) SELECT generate_series(0, 63);
INSERT INTO lh.items (worker, n) SELECT -1, g FROM generate_series(1, 500) g;
"""


def worker(conninfo: str, wid: int, kind: str, out: Path, stop: Path, hold: float, pause: float,
           conninfo_file: Path | None = None) -> None:
    """One client (see module docstring). With `conninfo_file`, every reconnection reads the
    conninfo from that file when it exists (a stand-in for a repointed PgBouncer or DNS name)."""
    import psycopg

    log = open(out, "a", buffering=1)
    conn = None
    oid = None
    n = 0
    while not stop.exists():
        started = time.time()  # this attempt's start: a write that waits, then fails, was unavailable all along
        try:
            if conn is None or conn.closed or conn.broken:
                ci = conninfo
                if conninfo_file is not None and conninfo_file.exists():
                    ci = conninfo_file.read_text().strip() or conninfo
                conn = psycopg.connect(ci, autocommit=True, connect_timeout=5)
                oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
                if kind in ("set-off", "owner"):
                    conn.execute("SET default_transaction_read_only = off")
            n += 1
            op = ("event", "counter", "item")[n % 3]
            begin = "BEGIN READ WRITE" if kind == "begin-rw" else "BEGIN"
            conn.execute(begin)
            if op == "event":
                key = str(uuid.uuid4())
                conn.execute("INSERT INTO lh.events VALUES (%s, %s, %s)", (key, wid, n))
            elif op == "counter":
                key = str(wid)
                conn.execute("UPDATE lh.counters SET n = n + 1 WHERE worker = %s", (wid,))
            else:
                key = str(conn.execute("INSERT INTO lh.items (worker, n) VALUES (%s, %s) RETURNING id",
                                       (wid, n)).fetchone()[0])
            if kind == "long":
                time.sleep(hold)
            sent = time.time()
            try:
                conn.execute("COMMIT")
            except psycopg.OperationalError:
                log.write(f"maybe {op} {key} {sent:.6f} {started:.6f}\n")
                conn = None
                continue
            log.write(f"ack {op} {key} {sent:.6f} {time.time():.6f} {oid}\n")
            if kind == "long":
                time.sleep(pause)
        except psycopg.Error as exc:
            log.write(f"err {type(exc).__name__} {started:.6f} {time.time():.6f}\n")
            try:
                if conn is not None and not conn.closed:
                    conn.execute("ROLLBACK")
            except psycopg.Error:
                conn = None
            if conn is not None and (conn.broken or conn.closed):
                conn = None
            time.sleep(random.uniform(0.005, 0.03))
        if pause and kind != "long":
            time.sleep(pause)
    log.close()


@dataclass
class Acks:
    events: dict[str, float] = field(default_factory=dict)  # id -> sent
    counters: dict[int, int] = field(default_factory=dict)  # worker -> acknowledged increments
    uncertain_counters: dict[int, int] = field(default_factory=dict)
    items: dict[int, float] = field(default_factory=dict)
    on: list[tuple[str, str, float, int]] = field(default_factory=list)  # (op, key, sent, db oid)
    errors: dict[str, int] = field(default_factory=dict)
    total: int = 0


def read_logs(paths: list[Path]) -> Acks:
    a = Acks()
    for p in paths:
        if not p.exists():  # the worker has not started yet
            continue
        for line in p.read_text().splitlines():
            f = line.split()
            if f[0] == "ack":
                op, key, sent, oid = f[1], f[2], float(f[3]), int(f[5])
                a.total += 1
                a.on.append((op, key, sent, oid))
                if op == "event":
                    a.events[key] = sent
                elif op == "counter":
                    a.counters[int(key)] = a.counters.get(int(key), 0) + 1
                else:
                    a.items[int(key)] = sent
            elif f[0] == "maybe" and f[1] == "counter":
                a.uncertain_counters[int(f[2])] = a.uncertain_counters.get(int(f[2]), 0) + 1
            elif f[0] == "err":
                a.errors[f[1]] = a.errors.get(f[1], 0) + 1
    return a


def unavailability(paths: list[Path]) -> float:
    """Write unavailability as the writers saw it: the longest time, over all workers, from the
    start of a refused write (or one whose outcome is unknown; a write that waited on a lock
    before it failed counts from when it was sent) to the next acknowledged one."""
    worst = 0.0
    for p in paths:
        if not p.exists():
            continue
        first_refused = None
        for line in p.read_text().splitlines():
            f = line.split()
            if f[0] in ("err", "maybe"):
                t = float(f[2] if f[0] == "err" else f[4] if len(f) > 4 else f[3])
                first_refused = t if first_refused is None else first_refused
            elif f[0] == "ack" and first_refused is not None:
                worst = max(worst, float(f[4]) - first_refused)
                first_refused = None
    return worst


def check(acks: Acks, conn, a_oid: int | None = None, freeze_point: float | None = None) -> list[str]:
    """Problems with the new service's database (`conn`) against the acknowledged writes: every
    one there exactly once; none acknowledged by A (`a_oid`) after `freeze_point`; no sequence
    collision (a unique violation on items would show as an error)."""
    problems = []
    ids = {str(r[0]) for r in conn.execute("SELECT id FROM lh.events")}
    missing = [k for k in acks.events if k not in ids]
    if missing:
        problems.append(f"{len(missing)} acknowledged event(s) missing, e.g. {missing[0]}")
    counts = dict(conn.execute("SELECT worker, n FROM lh.counters").fetchall())
    for w, n in acks.counters.items():
        have = counts.get(w, 0)
        if not (n <= have <= n + acks.uncertain_counters.get(w, 0)):
            problems.append(f"counter of worker {w}: {n} acknowledged increments (+{acks.uncertain_counters.get(w, 0)} "
                            f"uncertain), the database has {have}")
    items = {r[0] for r in conn.execute("SELECT id FROM lh.items")}
    lost = [k for k in acks.items if k not in items]
    if lost:
        problems.append(f"{len(lost)} acknowledged item(s) missing, e.g. {lost[0]}")
    dup = conn.execute("SELECT count(*) - count(DISTINCT id) FROM lh.items").fetchone()[0]
    if dup:
        problems.append(f"{dup} duplicate item ids")
    if acks.errors.get("UniqueViolation"):
        problems.append(f"{acks.errors['UniqueViolation']} unique violation(s): a sequence handed out a taken id")
    if a_oid is not None and freeze_point is not None:
        late = [x for x in acks.on if x[3] == a_oid and x[2] > freeze_point]
        if late:
            problems.append(f"{len(late)} write(s) acknowledged by the old database after the freeze point, "
                            f"e.g. {late[0]}")
    return problems


class Harness:
    """Start worker processes of the given kinds against `conninfo`; `stop()` them."""

    def __init__(self, conninfo: str, kinds: list[str], workdir: Path, *, hold: float = 2.0, pause: float = 0.0,
                 conninfos: dict[str, str] | None = None, conninfo_file: Path | None = None) -> None:
        import subprocess

        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stopfile = self.dir / "stop"
        self.logs = []
        self.procs = []
        for i, kind in enumerate(kinds):
            log = self.dir / f"w{i}-{kind}.log"
            self.logs.append(log)
            ci = (conninfos or {}).get(kind, conninfo)
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--conninfo", ci, "--worker", str(i), "--kind", kind, "--out", str(log),
                 "--stop", str(self.stopfile), "--hold", str(hold), "--pause", str(pause)]
                + (["--conninfo-file", str(conninfo_file)] if conninfo_file is not None else []),
                stdout=subprocess.DEVNULL, stderr=open(self.dir / f"w{i}.stderr", "w")))

    def wait_for_acks(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while read_logs(self.logs).total < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the writers acknowledged fewer than {n} writes in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> Acks:
        self.stopfile.touch()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except Exception:
                p.kill()
        return read_logs(self.logs)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--conninfo")
    ap.add_argument("--worker", type=int)
    ap.add_argument("--kind")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--stop", type=Path)
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--pause", type=float, default=0.0)
    ap.add_argument("--conninfo-file", type=Path, default=None)
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    worker(a.conninfo, a.worker, a.kind, a.out, a.stop, a.hold, a.pause, a.conninfo_file)
