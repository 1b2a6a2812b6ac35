"""Acceptance 5: a password-protected source; the password never shows in ps, logs, manifest
or error messages.

Wrappers placed first through SNAPDB_PG_BINDIR record the full `ps` listing (every process's
argv) while each pg_dump / pg_restore child runs, then exec the real program.
"""

from __future__ import annotations

import stat

from .conftest import create_db, run_cli, write_config

PASSWORD = "Pw-9f3e-Secret-Value"


def _wrappers(pg, d, log):
    d.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        w = d / tool
        w.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" != "--version" ]; then ps -eo pid,args >> "{log}"; echo "--- {tool}" >> "{log}"; fi\n'
            f'exec "{pg.tool(tool)}" "$@"\n'
        )
        w.chmod(w.stat().st_mode | stat.S_IXUSR)


def test_password_never_leaks(pg, tmp_path, store):
    with pg.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS app_pw")
        conn.execute(f"CREATE ROLE app_pw LOGIN CREATEDB PASSWORD '{PASSWORD}' IN ROLE snapdb_pw")
    src = create_db(pg, "secret_src")
    pg.psql("ALTER DATABASE secret_src OWNER TO app_pw")
    with pg.connect("secret_src") as conn:
        conn.execute("SET ROLE app_pw; CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g")
    # TCP connections of app_pw need the password (pg_hba: scram for members of snapdb_pw)
    cfg = write_config(tmp_path / "snapdb.toml", store, {
        "src": (pg.url(src, user="app_pw"), "production"),
        "dev": (pg.url("secret_dev", user="app_pw"), "dev"),
    })
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg.port}:*:app_pw:{PASSWORD}\n")
    pgpass.chmod(0o600)
    log = tmp_path / "ps.log"
    _wrappers(pg, tmp_path / "bin", log)
    env = {"PGPASSFILE": str(pgpass), "SNAPDB_PG_BINDIR": str(tmp_path / "bin")}
    env_noauth = {k: v for k, v in env.items() if k != "PGPASSFILE"}

    # without a password source, the connection is refused: proves the password is really needed
    r = run_cli("--config", str(cfg), "snapshot", "src", env={**env_noauth, "PGPASSFILE": "/nonexistent"})
    assert r.returncode == 4 and "password" in r.stderr.lower()

    r1 = run_cli("--debug", "--config", str(cfg), "snapshot", "src", env=env)
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli("--debug", "--config", str(cfg), "restore", "--into", "dev", env=env)
    assert r2.returncode == 0, r2.stderr
    # a wrong password (through PGPASSWORD) fails with a message that does not echo it
    r3 = run_cli("--config", str(cfg), "snapshot", "src",
                 env={**env_noauth, "PGPASSFILE": "/nonexistent", "PGPASSWORD": "Wrong-" + PASSWORD})
    assert r3.returncode == 4 and "password authentication failed" in r3.stderr

    # the other two password routes libpq offers work too: PGPASSWORD, and a service file
    r4 = run_cli("--config", str(cfg), "snapshot", "src",
                 env={**env_noauth, "PGPASSFILE": "/nonexistent", "PGPASSWORD": PASSWORD})
    assert r4.returncode == 0, r4.stderr
    svcfile = tmp_path / "pg_service.conf"
    svcfile.write_text(f"[snapdbsvc]\nhost=127.0.0.1\nport={pg.port}\nuser=app_pw\npassword={PASSWORD}\n")
    svcfile.chmod(0o600)
    svc_cfg = write_config(tmp_path / "svc.toml", store, {"src": ("service=snapdbsvc dbname=secret_src", "production")})
    r5 = run_cli("--config", str(svc_cfg), "snapshot", "src",
                 env={**env_noauth, "PGPASSFILE": "/nonexistent", "PGSERVICEFILE": str(svcfile)})
    assert r5.returncode == 0, r5.stderr
    # the hint for a missing password says what to put in .pgpass, never the password
    r6 = run_cli("--config", str(cfg), "snapshot", "src", env={**env_noauth, "PGPASSFILE": "/nonexistent"})
    assert f"127.0.0.1:{pg.port}:*:app_pw:PASSWORD" in r6.stderr, r6.stderr

    listing = log.read_text()
    assert "--- pg_dump" in listing and "--- pg_restore" in listing  # the children were observed
    assert "snapdb" in listing and "app_pw" in listing  # ...with their argv
    texts = [listing, r1.stdout, r1.stderr, r2.stdout, r2.stderr, r3.stdout, r3.stderr, r4.stderr, r5.stderr, r6.stderr]
    texts += [p.read_text(errors="replace") for p in store.rglob("manifest.json")]
    for text in texts:
        assert PASSWORD not in text
    with pg.connect("secret_dev") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 3000
