"""Known gap, confirmed: on PostgreSQL 15+ a restoring role that is no superuser cannot
`ALTER DATABASE … SET app.send_mail = 'off'` (a placeholder parameter: it needs SET privilege on
it, GRANT SET ON PARAMETER). `_check_roles` checks the per-role settings before building but not
the database-level ones, so the restore copies and verifies the whole snapshot, scrubs it, and
only then fails at `apply_database_props` (exit 5): a nightly job of hours wasted every night,
and the same happens for a source database's own custom settings (`ALTER DATABASE src SET
app.x`), scrub or not. The preflight should refuse it before CREATE DATABASE ("nothing was
changed"), naming the parameter and the GRANT that fixes it."""
from __future__ import annotations

from psycopg import sql

from tests.conftest import pg, run_cli  # noqa: F401

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
    return c


def _restore(c, tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", env={"SNAPDB_TRACE_DIR": str(trace)})
    return r, trace


def test_scrub_setting_the_role_may_not_set_is_refused_before_building(pg, tmp_path):
    c = _setup(pg, tmp_path, scrub=True)
    r, trace = _restore(c, tmp_path)
    assert r.returncode == 5 and "app.send_mail" in r.stderr, (r.returncode, r.stderr)
    assert not (trace / "restore:created.passed").exists(), \
        f"refused only after the whole build (loaded, verified, scrubbed): {r.stderr.strip()}"


def test_source_custom_setting_the_role_may_not_set_is_refused_before_building(pg, tmp_path):
    c = _setup(pg, tmp_path, scrub=False)
    r, trace = _restore(c, tmp_path)
    assert r.returncode == 5 and "app.region" in r.stderr, (r.returncode, r.stderr)
    assert not (trace / "restore:created.passed").exists(), \
        f"refused only after the whole build (loaded, verified): {r.stderr.strip()}"


def test_invalid_scrub_setting_value_is_refused_before_building(pg, tmp_path):
    """The same late failure, as a superuser: `settings = { "work_mem" = "lots" }` is only found
    invalid by `ALTER DATABASE … SET` after the whole build; the server can check it up front
    (e.g. `SET LOCAL work_mem = 'lots'` in a rolled-back transaction, or `set_config`)."""
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
settings = {{ "work_mem" = "lots" }}
''')
    c = ("--config", str(cfg))
    assert run_cli(*c, "snapshot", "src").returncode == 0
    r, trace = _restore(c, tmp_path)
    assert r.returncode in (3, 5) and "work_mem" in r.stderr, (r.returncode, r.stderr)
    assert not (trace / "restore:created.passed").exists(), \
        f"refused only after the whole build (loaded, verified, scrubbed): {r.stderr.strip()}"
