"""Issue 9, review finding 2 (the reproduction was review/issue9/test_scrub_build_readable.py): a
scrubbed restore must not let production data out through the temporary build while it is made."""

from __future__ import annotations

import psycopg
from psycopg import sql

from snapdb import names
from snapdb.postgres import read_database_props

from .conftest import create_db, ensure_roles, pause_env, popen_cli, run_cli, wait_for

EMAILS = """CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO customers SELECT i, 'c' || i || '@prod.example.com' FROM generate_series(1, 50) i;"""
SCRUB_EMAILS = '''
[services.dev.scrub]
columns = { "public.customers.email" = "'user' || id || '@example.invalid'" }
checks = ["SELECT 1 FROM customers WHERE email NOT LIKE '%@example.invalid'"]
'''


def _config(tmp_path, src_url: str, dev_url: str, extra: str = "") -> tuple[str, ...]:
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'''[store]
url = "{tmp_path / 'store'}"

[services.src]
url = "{src_url}"
role = "production"

[services.dev]
url = "{dev_url}"
role = "dev"
''' + extra)
    return ("--config", str(cfg))


def _try_read(url: str) -> int | str:
    """The production e-mails a session at `url` reads, or why it could not connect."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("SET lock_timeout = '5s'")
            return conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%@prod.example.com'").fetchone()[0]
    except psycopg.Error as exc:
        return str(exc)


def _acl(pg, dbname: str):
    with pg.connect() as conn:
        return read_database_props(conn, dbname).acl, conn.execute(
            "SELECT datacl IS NULL FROM pg_database WHERE datname = %s", (dbname,)).fetchone()[0]


# -- finding 2: the build is snapdb's alone until it is sealed -------------------------------------------
def test_build_of_a_scrubbed_restore_is_not_readable_by_others(pg, tmp_path, dbname):
    """A plain dev role with SELECT (as on production) and CONNECT through PUBLIC cannot reach the
    build while the restore is paused after the scrub (the scrub is not committed yet: the build
    still holds the production rows); after the swap the copy has the source's default
    privileges again (no ACL at all: snapdb is a superuser here) and the role reads scrubbed rows."""
    ensure_roles(pg, "r9_app", options="LOGIN")
    src = create_db(pg, dbname, EMAILS + "GRANT SELECT ON customers TO r9_app;")
    dev = dbname + "-dev"
    c = _config(tmp_path, pg.url(src), pg.url(dev), SCRUB_EMAILS)
    assert run_cli(*c, "snapshot", "src").returncode == 0
    d, env = pause_env(tmp_path, "restore:scrubbed")
    proc = popen_cli(*c, "restore", "--into", "dev", "--from", "src", env=env)
    try:
        wait_for(d / "restore:scrubbed.reached", proc)
        seen = _try_read(pg.url(names.tmp_name(dev), user="r9_app"))
    finally:
        (d / "restore:scrubbed.go").touch()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert isinstance(seen, str) and "permission denied for database" in seen, \
        f"a dev role read {seen} production e-mails from the build during a scrubbed restore"
    assert _acl(pg, dev) == (None, True)  # the source's default privileges, as no ACL
    assert _try_read(pg.url(dev, user="r9_app")) == 0


def test_build_is_closed_from_its_creation_with_a_least_privilege_restoring_role(pg, tmp_path):
    """The build is owned by the application's role (a LOGIN role here) and made by a restoring
    role that is no superuser: right after CREATE DATABASE neither the owner nor PUBLIC may
    connect; after the swap the copy has the source's default privileges again, as explicit
    grants equal to the defaults (a non-superuser cannot store "no ACL"), which read as default."""
    tag = "r9lp"
    with pg.connect() as conn:
        for db in (f"{tag}_src", f"{tag}_src-dev"):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    pg.psql(f"DROP ROLE IF EXISTS {tag}_app; DROP ROLE IF EXISTS {tag}_snap")
    pg.psql(f"CREATE ROLE {tag}_app LOGIN; CREATE ROLE {tag}_snap LOGIN CREATEDB; GRANT {tag}_app TO {tag}_snap; "
            f"GRANT pg_signal_backend TO {tag}_snap")
    pg.psql(f"CREATE DATABASE {tag}_src OWNER {tag}_app")
    with pg.connect(f"{tag}_src") as conn:
        conn.execute(f"SET ROLE {tag}_app; " + EMAILS)
    dev = f"{tag}_src-dev"
    c = _config(tmp_path, pg.url(f"{tag}_src", user=f"{tag}_snap"), pg.url(dev, user=f"{tag}_snap"), SCRUB_EMAILS)
    r = run_cli(*c, "snapshot", "src")
    assert r.returncode == 0, r.stderr
    d, env = pause_env(tmp_path, "restore:created")
    proc = popen_cli(*c, "restore", "--into", "dev", "--from", "src", env=env)
    try:
        wait_for(d / "restore:created.reached", proc)
        with pg.connect() as conn:
            owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                 (names.tmp_name(dev),)).fetchone()[0]
        refused = []
        ensure_roles(pg, "r9_nobody", options="LOGIN")
        for user in (f"{tag}_app", "r9_nobody"):
            try:
                psycopg.connect(pg.url(names.tmp_name(dev), user=user), connect_timeout=10).close()
            except psycopg.Error as exc:
                refused.append("permission denied for database" in str(exc))
    finally:
        (d / "restore:created.go").touch()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert owner == f"{tag}_app" and refused == [True, True], (owner, refused)
    assert _acl(pg, dev) == (None, False)  # explicit grants, equal to the defaults
    assert _try_read(pg.url(dev, user=f"{tag}_app")) == 0


def test_explicit_database_privileges_are_applied_after_the_scrub(pg, tmp_path, dbname):
    """A source with an explicit database ACL: the copy gets exactly that ACL, and snapdb's own
    grants on the build are gone."""
    ensure_roles(pg, "r9_app", options="LOGIN")
    src = create_db(pg, dbname, EMAILS + "GRANT SELECT ON customers TO r9_app;")
    pg.psql(f'REVOKE ALL ON DATABASE "{src}" FROM PUBLIC; GRANT CONNECT ON DATABASE "{src}" TO r9_app')
    dev = dbname + "-dev"
    c = _config(tmp_path, pg.url(src), pg.url(dev), SCRUB_EMAILS)
    assert run_cli(*c, "snapshot", "src").returncode == 0
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src")
    assert r.returncode == 0, r.stderr
    assert _acl(pg, dev) == _acl(pg, src) and _acl(pg, dev)[0] is not None
    assert _try_read(pg.url(dev, user="r9_app")) == 0
