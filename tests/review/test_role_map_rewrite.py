"""Review: the role map rewrites text that is not a role reference (comments, function bodies)."""

from __future__ import annotations

from ..conftest import create_db, ensure_roles, run_cli

SRC_SQL = r"""
CREATE TABLE t (id int);
INSERT INTO t VALUES (1);
ALTER TABLE t OWNER TO rvm_app;
COMMENT ON TABLE t IS E'how to fix ownership:\nALTER TABLE public.t OWNER TO rvm_app;\n-- (run as superuser)';
CREATE FUNCTION doc() RETURNS text LANGUAGE sql AS $body$ SELECT '
--
-- Name: t; Type: ACL; Schema: public; Owner: rvm_app
--

GRANT ALL ON TABLE public.t TO rvm_app;
'::text $body$;
ALTER FUNCTION doc() OWNER TO rvm_app;
"""


def _cfg(pg, tmp_path, src, dev):
    text = f"""[store]
url = "{tmp_path / 'store'}"

[services.prod]
url = "{pg.url(src)}"
role = "production"

[services.dev]
url = "{pg.url(dev)}"
role = "dev"

[services.dev.roles]
rvm_app = "rvm_app_dev"
"""
    (tmp_path / "snapdb.toml").write_text(text)
    return str(tmp_path / "snapdb.toml")


def test_role_map_rewrites_a_comment_and_a_function_body(pg, tmp_path, dbname):
    ensure_roles(pg, "rvm_app", "rvm_app_dev")
    src = create_db(pg, dbname, SRC_SQL)
    cfg = _cfg(pg, tmp_path, src, dbname + "_dev")
    assert run_cli("--config", cfg, "snapshot", "prod").returncode == 0
    r = run_cli("--config", cfg, "restore", "--into", "dev")
    assert r.returncode == 0, r.stderr
    with pg.connect(src) as a, pg.connect(dbname + "_dev") as b:
        q_comment = "SELECT obj_description('public.t'::regclass, 'pg_class')"
        q_body = "SELECT prosrc FROM pg_proc WHERE proname = 'doc'"
        q_owner = "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'doc'"
        got = {q: (a.execute(q).fetchone()[0], b.execute(q).fetchone()[0]) for q in (q_comment, q_body, q_owner)}
    for q, (want, have) in got.items():
        print(q, "\n  source:", repr(want), "\n  restored:", repr(have))
    assert got[q_comment][0] == got[q_comment][1], "COMMENT text rewritten"
    assert got[q_body][0] == got[q_body][1], "function body rewritten"
    assert got[q_owner][1] == "rvm_app_dev", "function owner not mapped"


def test_role_map_to_a_reserved_word(pg, tmp_path, dbname):
    """Mapping to a role named like a reserved keyword (a role called "group") writes it
    unquoted: `OWNER TO group;` is a syntax error, found only halfway through the build."""
    ensure_roles(pg, "rvm_app", "group")
    src = create_db(pg, dbname, "CREATE TABLE t (id int); ALTER TABLE t OWNER TO rvm_app")
    cfg = _cfg(pg, tmp_path, src, dbname + "_dev").replace("x", "x")
    text = open(cfg).read().replace('rvm_app = "rvm_app_dev"', 'rvm_app = "group"')
    open(cfg, "w").write(text)
    assert run_cli("--config", cfg, "snapshot", "prod").returncode == 0
    r = run_cli("--config", cfg, "restore", "--into", "dev")
    print(r.returncode, r.stderr)
    assert r.returncode == 0, r.stderr


def test_role_map_misses_the_owner_of_a_table_with_a_newline_in_its_name(pg, tmp_path, dbname):
    ensure_roles(pg, "rvm_app", "rvm_app_dev")
    src = create_db(pg, dbname, 'CREATE TABLE "two\nlines" (id int); INSERT INTO "two\nlines" VALUES (1);'
                                'ALTER TABLE "two\nlines" OWNER TO rvm_app')
    cfg = _cfg(pg, tmp_path, src, dbname + "_dev")
    assert run_cli("--config", cfg, "snapshot", "prod").returncode == 0
    r = run_cli("--config", cfg, "restore", "--into", "dev")
    assert r.returncode == 0, r.stderr
    with pg.connect(dbname + "_dev") as conn:
        owner = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = E'two\\nlines'").fetchone()[0]
    print("owner:", owner)
    assert owner == "rvm_app_dev"
