"""The build's owner cannot grant itself back into an unscrubbed build (review/issue9b finding 1).

The build's ACL narrowing (review/issue9 item 2's fix) alone did not keep the build's OWNER out.

`restrict_database_acl` revokes PUBLIC's and the owner's privileges on the build, but the build is
created OWNER <the source's owner> (often the application's LOGIN role, whose password sits in
the dev application's configuration). PostgreSQL treats an object's owner as holding every
grant option: the owner may simply grant CONNECT back to itself (from any database it can reach,
e.g. `postgres`) and read the unscrubbed production rows of the build while the restore runs,
and of a build left behind by a killed restore for as long as it stays there. The build is now
owned by the restoring role until the seal, which gives it its owner once the scrub committed."""
from __future__ import annotations

import psycopg
from psycopg import sql

from snapdb import names

from .conftest import pause_env, popen_cli, run_cli, wait_for

TAG = "r9bown"
ROWS = """CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO customers SELECT i, 'c' || i || '@prod.example.com' FROM generate_series(1, 50) i;"""
SCRUB = '''
[services.dev.scrub]
columns = { "public.customers.email" = "'user' || id || '@example.invalid'" }
checks = ["SELECT 1 FROM customers WHERE email NOT LIKE '%@example.invalid'"]
'''


def _setup(pg, tmp_path, suffix: str) -> tuple[tuple[str, ...], str, str]:
    src, dev, app = f"{TAG}{suffix}_src", f"{TAG}{suffix}_dev", f"{TAG}_app"
    with pg.connect() as conn:
        for db in (src, dev, names.tmp_name(dev)):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(app)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(src), sql.Identifier(app)))
    with pg.connect(src) as conn:  # the application owns its tables, as usual
        conn.execute(sql.SQL("SET ROLE {}; ").format(sql.Identifier(app)).as_string(conn) + ROWS)
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'''[store]
url = "{tmp_path / 'store'}"

[services.src]
url = "{pg.url(src)}"
role = "production"

[services.dev]
url = "{pg.url(dev)}"
role = "dev"
''' + SCRUB)
    c = ("--config", str(cfg))
    r = run_cli(*c, "snapshot", "src")
    assert r.returncode == 0, r.stderr
    return c, dev, app


def _owner_reads(pg, build: str, app: str) -> int | str:
    """What the build's owner reads after granting itself CONNECT again (from `postgres`)."""
    try:
        with psycopg.connect(pg.url("postgres", user=app), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(build), sql.Identifier(app)))
        with psycopg.connect(pg.url(build, user=app), connect_timeout=10) as conn:
            conn.execute("SET lock_timeout = '5s'")
            return conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%@prod.example.com'").fetchone()[0]
    except psycopg.Error as exc:
        return str(exc).strip()


def test_build_owner_cannot_grant_itself_into_the_build_during_a_scrubbed_restore(pg, tmp_path):
    c, dev, app = _setup(pg, tmp_path, "a")
    d, env = pause_env(tmp_path, "restore:scrubbed")
    proc = popen_cli(*c, "restore", "--into", "dev", "--from", "src", env=env)
    try:
        wait_for(d / "restore:scrubbed.reached", proc)
        seen = _owner_reads(pg, names.tmp_name(dev), app)
    finally:
        (d / "restore:scrubbed.go").touch()
        proc.communicate(timeout=300)
    assert not isinstance(seen, int), \
        f"the build's owner {app} granted itself CONNECT and read {seen} production e-mails before the seal"


def test_build_left_by_a_killed_restore_is_not_readable_by_its_owner(pg, tmp_path):
    """SIGKILL after the load: the half-made build stays (unscrubbed) until a later restore of the
    same target drops it; its owner must not be able to read it meanwhile."""
    c, dev, app = _setup(pg, tmp_path, "b")
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", env={"SNAPDB_KILL_AT": "restore:loaded"})
    assert r.returncode == -9, (r.returncode, r.stderr)
    seen = _owner_reads(pg, names.tmp_name(dev), app)
    assert not isinstance(seen, int), \
        f"the build left by a killed restore let its owner {app} read {seen} production e-mails"


def test_a_kill_at_the_seal_before_the_scrub_commits_leaves_the_build_to_snapdb_alone(pg, tmp_path):
    """`seal` closes the build and ends its sessions, then commits the hold (the scrub) and only
    after that gives the build its owner and privileges: killed in between, the unscrubbed build
    is still owned by, and open to, the restoring role alone."""
    c, dev, app = _setup(pg, tmp_path, "d")
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", env={"SNAPDB_KILL_AT": "restore:sealing"})
    assert r.returncode == -9, (r.returncode, r.stderr)
    build = names.tmp_name(dev)
    with pg.connect() as conn:
        owner, me, app_connect = conn.execute(
            "SELECT pg_get_userbyid(datdba), current_user, has_database_privilege(%s, datname, 'CONNECT') "
            "FROM pg_database WHERE datname = %s", (app, build)).fetchone()
    assert (owner, app_connect) == (me, False), (owner, me, app_connect)
    seen = _owner_reads(pg, build, app)
    assert not isinstance(seen, int), f"{app} read {seen} production e-mails in the build left at the seal"


def test_scrubbed_copy_ends_owned_by_its_owner_with_the_default_privileges(pg, tmp_path):
    """The end result is as before: the copy belongs to the source's owner (who may connect and
    owns schema public through pg_database_owner) and reads only scrubbed rows."""
    c, dev, app = _setup(pg, tmp_path, "e")
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src")
    assert r.returncode == 0, r.stderr
    with pg.connect() as conn:
        owner, acl = conn.execute("SELECT pg_get_userbyid(datdba), datacl FROM pg_database WHERE datname = %s",
                                  (dev,)).fetchone()
    assert (owner, acl) == (app, None)
    with psycopg.connect(pg.url(dev, user=app), connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%@example.invalid'").fetchone()[0] == 50
        assert conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
                            ).fetchone()[0] == "pg_database_owner"
        conn.execute("CREATE TABLE public.made_by_owner (id int)")


def _public_acl(pg, db: str) -> list:
    with pg.connect(db) as conn:
        return conn.execute("SELECT pg_get_userbyid(nspowner), array_agg(a::text ORDER BY a::text) "
                            "FROM pg_namespace, unnest(nspacl) a WHERE nspname = 'public' GROUP BY 1").fetchall()


def test_least_privilege_restore_into_a_build_of_its_own_keeps_schema_public_as_the_source_has_it(pg, tmp_path):
    """A restoring role that is no superuser owns the build until the seal, so the owner-to-be
    lacks pg_database_owner's CREATE on schema public, which pg_restore's ``ALTER TABLE public.x
    OWNER TO app`` needs: it is lent for the restore and taken back, and public's privileges end
    as the source's (here an explicit CREATE for the owner too, which the lending must not eat)."""
    tag = "r9bol"
    src, dev = f"{tag}_src", f"{tag}_src-dev"
    with pg.connect() as conn:
        for db in (src, dev, names.tmp_name(dev)):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    pg.psql(f"DROP ROLE IF EXISTS {tag}_app; DROP ROLE IF EXISTS {tag}_snap; DROP ROLE IF EXISTS {tag}_reader")
    pg.psql(f"CREATE ROLE {tag}_app LOGIN; CREATE ROLE {tag}_snap LOGIN CREATEDB; GRANT {tag}_app TO {tag}_snap; "
            f"GRANT pg_signal_backend TO {tag}_snap; CREATE ROLE {tag}_reader")
    pg.psql(f"CREATE DATABASE {src} OWNER {tag}_app")
    with pg.connect(src) as conn:
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {tag}_app; GRANT USAGE ON SCHEMA public TO {tag}_reader; "
                     f"REVOKE USAGE ON SCHEMA public FROM PUBLIC; SET ROLE {tag}_app; " + ROWS)
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'''[store]
url = "{tmp_path / 'store'}"

[services.src]
url = "{pg.url(src, user=f'{tag}_snap')}"
role = "production"

[services.dev]
url = "{pg.url(dev, user=f'{tag}_snap')}"
role = "dev"
''' + SCRUB)
    c = ("--config", str(cfg))
    assert run_cli(*c, "snapshot", "src").returncode == 0
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src")
    assert r.returncode == 0, r.stderr
    assert _public_acl(pg, dev) == _public_acl(pg, src)
    with pg.connect(dev) as conn:
        assert conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
                            ).fetchone()[0] == f"{tag}_app"
        assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.customers'::regclass"
                            ).fetchone()[0] == f"{tag}_app"
