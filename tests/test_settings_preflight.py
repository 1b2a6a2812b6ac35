"""Settings the build gets are checked before it is created (review/issue9b finding 3).

On PostgreSQL 15+ a restoring role that is no superuser cannot `ALTER DATABASE … SET
app.send_mail = 'off'` (a placeholder parameter needs SET privilege on it: GRANT SET ON
PARAMETER), and no role can store an invalid value (`work_mem = 'lots'`). The restore used to
copy, verify and scrub the whole snapshot and fail only then (exit 5, with a hint about
CREATEDB); the preflight now refuses before CREATE DATABASE, naming the parameter and the GRANT
that fixes it, for the scrub's settings and for the source's own database settings alike."""
from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from snapdb.postgres import setting_problems

from .conftest import run_cli

TAG = "r9bgs"


def _setup(pg, tmp_path, scrub: bool):
    tag = f"{TAG}{int(scrub)}"
    src, dev = f"{tag}_src", f"{tag}_src-dev"
    with pg.connect() as conn:
        assert conn.info.server_version >= 150000
        for db in (src, dev):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    pg.psql(f"DROP ROLE IF EXISTS {tag}_app; DROP ROLE IF EXISTS {tag}_snap")
    pg.psql(f"CREATE ROLE {tag}_app NOLOGIN; CREATE ROLE {tag}_snap LOGIN CREATEDB; GRANT {tag}_app TO {tag}_snap; "
            f"GRANT pg_signal_backend TO {tag}_snap")
    pg.psql(f"CREATE DATABASE {src} OWNER {tag}_app")
    with pg.connect(src) as conn:
        conn.execute(f"SET ROLE {tag}_app; CREATE TABLE t (id int PRIMARY KEY); "
                     "INSERT INTO t SELECT generate_series(1, 1000)")
    if not scrub:  # the source's own custom setting, made by a superuser on production
        pg.psql(f"ALTER DATABASE {src} SET app.region = 'eu'")
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'''[store]
url = "{tmp_path / 'store'}"
[services.src]
url = "{pg.url(src, user=f'{tag}_snap')}"
role = "production"
[services.dev]
url = "{pg.url(dev, user=f'{tag}_snap')}"
role = "dev"
''' + ('[services.dev.scrub]\nsettings = { "app.send_mail" = "off" }\n' if scrub else ""))
    c = ("--config", str(cfg))
    r = run_cli(*c, "snapshot", "src")
    assert r.returncode == 0, r.stderr
    return c, tag, dev


def _restore(c, tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir(exist_ok=True)
    for f in trace.iterdir():
        f.unlink()
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", env={"SNAPDB_TRACE_DIR": str(trace)})
    return r, trace


def _databases(pg, tag: str) -> list[str]:
    with pg.connect() as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                           (f"{tag}%",))]


@pytest.mark.parametrize("scrub, name", [(True, "app.send_mail"), (False, "app.region")])
def test_setting_the_role_may_not_set_is_refused_before_building(pg, tmp_path, scrub, name):
    c, tag, dev = _setup(pg, tmp_path, scrub=scrub)
    r, trace = _restore(c, tmp_path)
    assert r.returncode == 5 and name in r.stderr, (r.returncode, r.stderr)
    assert not (trace / "restore:created.passed").exists(), \
        f"refused only after the whole build (loaded, verified, scrubbed): {r.stderr.strip()}"
    grant = f"GRANT SET ON PARAMETER {name} TO {tag}_snap"
    assert grant in r.stderr and "CREATEDB" not in r.stderr, r.stderr
    assert _databases(pg, tag) == [f"{tag}_src"]  # nothing created
    pg.psql(grant)  # the hint's GRANT is what it takes
    try:
        r, trace = _restore(c, tmp_path)
        assert r.returncode == 0, r.stderr
        with pg.connect(dev) as conn:
            assert conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0] == ("off" if scrub else "eu")
    finally:
        pg.psql(f"REVOKE SET ON PARAMETER {name} FROM {tag}_snap")


def test_invalid_scrub_setting_value_is_refused_before_building(pg, tmp_path):
    """The same late failure, as a superuser: `settings = { "work_mem" = "lots" }` was only found
    invalid by `ALTER DATABASE … SET` after the whole build. A fault of the configuration: exit 3."""
    src, dev = f"{TAG}v_src", f"{TAG}v_src-dev"
    with pg.connect() as conn:
        for db in (src, dev):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(src)))
    with pg.connect(src) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)")
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'''[store]
url = "{tmp_path / 'store'}"
[services.src]
url = "{pg.url(src)}"
role = "production"
[services.dev]
url = "{pg.url(dev)}"
role = "dev"
[services.dev.scrub]
settings = {{ "work_mem" = "lots", "shared_buffers" = "1GB" }}
''')
    c = ("--config", str(cfg))
    assert run_cli(*c, "snapshot", "src").returncode == 0
    r, trace = _restore(c, tmp_path)
    assert r.returncode == 3 and "work_mem" in r.stderr and "shared_buffers" in r.stderr, (r.returncode, r.stderr)
    assert "[services.dev.scrub]" in r.stderr, r.stderr
    assert not (trace / "restore:created.passed").exists(), \
        f"refused only after the whole build (loaded, verified, scrubbed): {r.stderr.strip()}"
    assert _databases(pg, f"{TAG}v_") == [src]


# what `ALTER DATABASE d SET` / `ALTER ROLE r IN DATABASE d SET` say, by the restoring role
# (observed on PostgreSQL 15 and 18); None: stored
CASES = [
    ("app.send_mail=off", None, "42501"),                  # a placeholder: superuser or GRANT SET
    ("work_mem=lots", "22023", "22023"),                   # invalid value
    ("work_mem=64MB", None, None),
    ('search_path="x y", public', None, None),             # GUC_LIST, elements quoted
    ("search_path=", None, None),                          # the empty list
    ("shared_buffers=1GB", "55P02", "55P02"),              # PGC_POSTMASTER: never per database
    ("log_connections=on", "55P02", "55P02"),              # PGC_BACKEND: "cannot be set after connection start"
    ("server_version=1", "55P02", "55P02"),                # PGC_INTERNAL
    ("work_mme=1", "42704", "42704"),                      # no such parameter
    ("session_replication_role=replica", None, "42501"),   # PGC_SUSET
    ("default_tablespace=nope", None, None),               # checked leniently, as the ALTER does (set_config
    ("default_text_search_config=public.only_in_source", None, None),  # would refuse these two)
]


@pytest.mark.parametrize("server", ["pg", "pg18"])
def test_setting_problems_are_what_the_alter_says(request, server):
    pg = request.getfixturevalue(server)
    pg.psql("DROP ROLE IF EXISTS r9bgs_probe; CREATE ROLE r9bgs_probe LOGIN")
    items = [i for i, _, _ in CASES]
    for user, col in (("postgres", 1), ("r9bgs_probe", 2)):
        with psycopg.connect(pg.conninfo("postgres") + f" user={user}", autocommit=True) as conn:
            got = {item: exc.sqlstate for item, exc in setting_problems(conn, items + items[:2])}
            assert got == {c[0]: c[col] for c in CASES if c[col]}, user
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.execute("SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                                "JOIN pg_database d ON d.oid = s.setdatabase "
                                "WHERE r.rolname = current_user AND d.datname = current_database()").fetchone()[0] == 0  # nothing stored
            # (in this database: other tests on the shared cluster store role settings elsewhere meanwhile)
