"""Issue 9, review findings 2-4 (reproductions first written in review/issue9/): a scrubbed restore
must never let production data out, neither through the temporary build while it is made, nor
through a per-role setting that outranks a scrub setting, nor through `restore --if-newer`
keeping a copy restored before the scrub rules existed."""

from __future__ import annotations

import json

import psycopg
import pytest
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
    """The build is made by a restoring role that is no superuser and owned by it until the seal
    (the application's role, a LOGIN role here, owns the source and gets the copy): right after
    CREATE DATABASE neither the application's role nor PUBLIC may connect; after the swap the copy
    has the source's owner and default privileges again, as explicit grants equal to the defaults
    (a non-superuser cannot store "no ACL"), which read as default."""
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
    assert owner == f"{tag}_snap" and refused == [True, True], (owner, refused)
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


# -- finding 3: a scrub setting outranks every per-role setting of the same name -------------------------
def test_scrub_setting_wins_over_role_settings(pg, tmp_path, dbname):
    """The source sets app.send_mail for the mailer role in its database (ALTER ROLE … IN DATABASE,
    copied into dev), and the dev server sets it for another role everywhere (ALTER ROLE … SET):
    both outrank a database-level setting, so both get the scrub's value in the copy, and nothing
    else changes (production, the server-wide setting, the roles' other settings)."""
    ensure_roles(pg, "r9_mailer", "r9_global", options="LOGIN")
    src = create_db(pg, dbname, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);"
                                "GRANT SELECT ON t TO r9_mailer, r9_global;")
    dev = dbname + "-dev"
    db = sql.Identifier(src)
    with pg.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET app.send_mail = 'on'").format(db))
        conn.execute(sql.SQL("ALTER ROLE r9_mailer IN DATABASE {} SET app.send_mail = 'on'").format(db))
        conn.execute(sql.SQL("ALTER ROLE r9_mailer IN DATABASE {} SET work_mem = '7MB'").format(db))
        conn.execute("ALTER ROLE r9_global SET app.send_mail = 'on'")
    try:
        c = _config(tmp_path, pg.url(src), pg.url(dev), '\n[services.dev.scrub]\nsettings = { "app.send_mail" = "off" }\n')
        assert run_cli(*c, "snapshot", "src").returncode == 0
        r = run_cli(*c, "--json", "restore", "--into", "dev", "--from", "src")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)

        def show(dbname, user=None):
            with psycopg.connect(pg.url(dbname, user=user)) as conn:
                return [conn.execute(f"SHOW {s}").fetchone()[0] for s in ("app.send_mail", "work_mem")]

        assert show(dev)[0] == "off"  # the superuser: the database-level setting
        assert show(dev, "r9_mailer") == ["off", "7MB"], "the mailer's role still sends mail from the dev copy"
        assert show(dev, "r9_global")[0] == "off", "a server-wide role setting still sends mail from the dev copy"
        assert show(src, "r9_mailer")[0] == "on" and show(src, "r9_global")[0] == "on"  # production as it was
        assert res["scrub"]["role_settings"] == {"r9_global": ["app.send_mail"], "r9_mailer": ["app.send_mail"]}
    finally:
        pg.psql("ALTER ROLE r9_global RESET app.send_mail")


def test_scrub_setting_that_cannot_be_given_to_a_role_is_refused_before_building(pg, tmp_path):
    """A restoring role that may not set another role's settings (no CREATEROLE) cannot make a
    scrub setting win over that role's server-wide one: refused before anything is built."""
    tag = "r9ov"
    with pg.connect() as conn:
        for db in (f"{tag}_src", f"{tag}_src-dev"):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    pg.psql(f"DROP ROLE IF EXISTS {tag}_app; DROP ROLE IF EXISTS {tag}_snap; DROP ROLE IF EXISTS {tag}_mailer")
    pg.psql(f"CREATE ROLE {tag}_app NOLOGIN; CREATE ROLE {tag}_snap LOGIN CREATEDB; GRANT {tag}_app TO {tag}_snap; "
            f"GRANT pg_signal_backend TO {tag}_snap; CREATE ROLE {tag}_mailer LOGIN; "
            f"ALTER ROLE {tag}_mailer SET app.send_mail = 'on'; "
            f"GRANT SET ON PARAMETER app.send_mail TO {tag}_snap")  # for the database-level setting (15+)
    pg.psql(f"CREATE DATABASE {tag}_src OWNER {tag}_app")
    with pg.connect(f"{tag}_src") as conn:
        conn.execute(f"SET ROLE {tag}_app; CREATE TABLE t (id int PRIMARY KEY)")
    c = _config(tmp_path, pg.url(f"{tag}_src", user=f"{tag}_snap"), pg.url(f"{tag}_src-dev", user=f"{tag}_snap"),
                '\n[services.dev.scrub]\nsettings = { "app.send_mail" = "off" }\n')
    assert run_cli(*c, "snapshot", "src").returncode == 0
    trace = tmp_path / "trace"
    trace.mkdir()
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", env={"SNAPDB_TRACE_DIR": str(trace)})
    assert r.returncode == 5 and f"{tag}_mailer" in r.stderr and "app.send_mail" in r.stderr, r.stderr
    assert not (trace / "restore:created.passed").exists()
    pg.psql(f"ALTER ROLE {tag}_mailer RESET app.send_mail; REVOKE SET ON PARAMETER app.send_mail FROM {tag}_snap")


# -- finding 4: --if-newer restores a copy scrubbed under other rules again -------------------------------
def test_if_newer_restores_again_when_the_scrub_rules_changed(pg, tmp_path, dbname):
    src = create_db(pg, dbname, EMAILS)
    dev = dbname + "-dev"
    c = _config(tmp_path, pg.url(src), pg.url(dev))
    cfg = tmp_path / "snapdb.toml"
    base = cfg.read_text()
    assert run_cli(*c, "snapshot", "src").returncode == 0
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src")
    assert r.returncode == 0, r.stderr

    def if_newer() -> dict:
        r = run_cli(*c, "--json", "restore", "--into", "dev", "--from", "src", "--if-newer")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def prod_emails() -> int:
        with psycopg.connect(pg.url(dev)) as conn:
            return conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%@prod.example.com'").fetchone()[0]

    assert if_newer()["outcome"] == "skipped" and prod_emails() == 50  # no rules then, none now
    # the operator now adds scrub rules for dev; the nightly cron job runs with --if-newer
    cfg.write_text(base + SCRUB_EMAILS)
    res = if_newer()
    assert res["outcome"] == "restored" and "scrub" in res["held"], res
    assert prod_emails() == 0
    assert if_newer()["outcome"] == "skipped"  # the same rules: up to date
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", "--if-newer")
    assert r.returncode == 0 and "is up to date" in r.stderr, r.stderr
    # a changed rule (a check added) is another digest: restored again, and the text says why
    cfg.write_text(base + SCRUB_EMAILS.replace("checks = [", "checks = [\"SELECT 1 FROM customers WHERE id < 0\", "))
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", "--if-newer")
    assert r.returncode == 0 and "scrub rules" in r.stderr and "restored snapshot" in r.stderr, r.stderr
    assert if_newer()["outcome"] == "skipped"


@pytest.mark.parametrize("edit", ["file", "setting"])
def test_scrub_digest_follows_what_the_rules_demand(tmp_path, edit):
    """The digest changes with a SQL file's contents or a setting's value, not with the file's name."""
    from snapdb.config import ScrubConfig
    from snapdb.scrub import rules_digest

    f = tmp_path / "a.sql"
    f.write_text("UPDATE t SET x = 1;\n")
    rules = ScrubConfig(sql=[f], settings={"app.send_mail": "off"})
    before = rules_digest(rules)
    g = tmp_path / "b.sql"
    g.write_text(f.read_text())
    assert rules_digest(ScrubConfig(sql=[g], settings={"app.send_mail": "off"})) == before
    if edit == "file":
        f.write_text("UPDATE t SET x = 2;\n")
    else:
        rules.settings["app.send_mail"] = "on"
    assert rules_digest(rules) != before and rules_digest(None) is None
