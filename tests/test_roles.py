"""Issue 12, points 12 and 13: the least-privilege setup of docs/quickstart.md works end to end with
no superuser for snapdb, and the roles a snapshot needs are checked (and mapped) before building."""

from __future__ import annotations

import json

import psycopg


from .conftest import databases, ensure_roles, run_cli, write_config
from .dbcompare import assert_same_database, table_fingerprints

APP_SQL = """
CREATE SCHEMA shop;
CREATE TABLE shop.items (id serial PRIMARY KEY, name text, price int);
INSERT INTO shop.items (name, price) SELECT 'item ' || g, g FROM generate_series(1, 500) g;
CREATE VIEW shop.cheap AS SELECT * FROM shop.items WHERE price < 10;
CREATE FUNCTION shop.total() RETURNS bigint LANGUAGE sql AS 'SELECT sum(price) FROM shop.items';
CREATE TABLE public.notes (id int, body text);
INSERT INTO public.notes VALUES (1, 'in schema public');
SELECT lo_from_bytea(0, 'owned by the application');
"""


def _sql(pg, dbname, text):
    with pg.connect(dbname) as conn:
        conn.execute(text)


def test_least_privilege_setup_without_superuser(pg, tmp_path):
    """docs/quickstart.md: a LOGIN CREATEDB role that is a member of the owner role (and of
    pg_signal_backend) snapshots, restores and verifies; no superuser anywhere in snapdb."""
    pg.psql("DROP ROLE IF EXISTS lp_app; DROP ROLE IF EXISTS lp_snapdb; DROP ROLE IF EXISTS lp_dev")
    pg.psql("CREATE ROLE lp_app NOLOGIN; CREATE ROLE lp_snapdb LOGIN CREATEDB; GRANT lp_app TO lp_snapdb; "
            "GRANT pg_signal_backend TO lp_snapdb; CREATE ROLE lp_dev LOGIN")
    pg.psql("CREATE DATABASE lp_src OWNER lp_app")
    pg.psql("CREATE DATABASE \"lp_src-dev\" OWNER lp_app")
    pg.psql("GRANT CONNECT ON DATABASE \"lp_src-dev\" TO lp_dev")
    _sql(pg, "lp_src", "SET ROLE lp_app; " + APP_SQL)
    pg.psql("ALTER DATABASE lp_src SET work_mem = '9MB'; ALTER DATABASE lp_src CONNECTION LIMIT 40")
    with pg.connect() as conn:
        assert not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'lp_snapdb'").fetchone()[0]
    cfg = write_config(tmp_path / "snapdb.toml", tmp_path / "store", {
        "prod": (pg.url("lp_src", user="lp_snapdb"), "production"),
        "dev": (pg.url("lp_src-dev", user="lp_snapdb"), "dev"),
    })
    r = run_cli("--config", str(cfg), "snapshot", "prod", "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["id"]
    # a developer's session on dev, of another role: the swap ends it (pg_signal_backend)
    dev_session = psycopg.connect(pg.conninfo("lp_src-dev").replace("user=postgres", "user=lp_dev"), autocommit=True)
    r = run_cli("--config", str(cfg), "restore", "--into", "dev", "--from", "prod")
    assert r.returncode == 0, r.stderr
    assert dev_session.closed or dev_session.broken or _is_gone(dev_session)
    r = run_cli("--config", str(cfg), "verify", sid, "--against", "dev")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_database(pg, "lp_src", "lp_src-dev")
    with pg.connect("lp_src-dev") as conn:
        owners = set(r[0] for r in conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'shop'::regnamespace"))
        assert owners == {"lp_app"}
        assert conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()").fetchone()[0] == "lp_app"


def _is_gone(conn) -> bool:
    try:
        conn.execute("SELECT 1")
        return False
    except psycopg.Error:
        return True


ROLES_SQL = """
CREATE TABLE owned (id int, v text);
INSERT INTO owned SELECT g, 'v' || g FROM generate_series(1, 100) g;
ALTER TABLE owned OWNER TO r13_app;
GRANT SELECT ON owned TO "R13 reader";
ALTER TABLE owned ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON owned TO r13_pol USING (id > 0);
"""


def _roles_setup(pg, pg2, tmp_path, roles_table: str = ""):
    for c in (pg, pg2):
        c.psql("DROP DATABASE IF EXISTS r13_src")
        c.psql("DROP DATABASE IF EXISTS r13_dev")
    ensure_roles(pg, "r13_app", "R13 reader", "r13_pol")
    pg.psql("CREATE DATABASE r13_src")
    _sql(pg, "r13_src", ROLES_SQL)
    lines = ["[store]", f'url = "{tmp_path / "store"}"', "",
             "[services.prod]", f'url = "{pg.url("r13_src")}"', 'role = "production"', "",
             "[services.dev]", f'url = "{pg2.url("r13_dev")}"', 'role = "dev"', roles_table]
    (tmp_path / "snapdb.toml").write_text("\n".join(lines) + "\n")
    cfg = str(tmp_path / "snapdb.toml")
    assert run_cli("--config", cfg, "snapshot", "prod").returncode == 0
    return cfg


def test_missing_roles_are_listed_before_anything_is_built(pg, pg2, tmp_path):
    cfg = _roles_setup(pg, pg2, tmp_path)
    before = databases(pg2)
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--from", "prod")
    assert r.returncode == 5, r.stderr
    first = r.stderr.splitlines()[0]
    for role, use in (("r13_app", "owner"), ("R13 reader", "grantee"), ("r13_pol", "policy")):
        assert role in first and use in first, first
    assert "hint:" in r.stderr and "--no-owner" in r.stderr and "[services.NAME.roles]" in r.stderr
    assert databases(pg2) == before  # nothing was created, not even the build


def test_roles_mapped_per_service(pg, pg2, tmp_path):
    ensure_roles(pg2, "r13_app_dev", "r13 reader dev", "r13_pol_dev")
    cfg = _roles_setup(pg, pg2, tmp_path, '[services.dev.roles]\nr13_app = "r13_app_dev"\n'
                                           '"R13 reader" = "r13 reader dev"\nr13_pol = "r13_pol_dev"')
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--from", "prod")
    assert r.returncode == 0, r.stderr
    with pg2.connect("r13_dev") as conn:
        assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'owned'").fetchone()[0] == "r13_app_dev"
        assert conn.execute("SELECT has_table_privilege('r13 reader dev', 'owned', 'SELECT')").fetchone()[0]
        assert conn.execute("SELECT array(SELECT pg_get_userbyid(u) FROM unnest(polroles) u) FROM pg_policy").fetchone()[0] == ["r13_pol_dev"]
        assert conn.execute("SELECT count(*) FROM owned").fetchone()[0] == 100


def test_no_owner_and_no_privileges(pg, pg2, tmp_path):
    ensure_roles(pg2, "r13_pol_dev")
    cfg = _roles_setup(pg, pg2, tmp_path, '[services.dev.roles]\nr13_pol = "r13_pol_dev"')  # policies still name roles
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--from", "prod", "--no-owner", "--no-privileges")
    assert r.returncode == 0, r.stderr
    with pg2.connect("r13_dev") as conn:
        assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'owned'").fetchone()[0] == "postgres"
        assert conn.execute("SELECT relacl FROM pg_class WHERE relname = 'owned'").fetchone()[0] is None
    assert table_fingerprints(pg2, "r13_dev")["public.owned"] == table_fingerprints(pg, "r13_src")["public.owned"]

