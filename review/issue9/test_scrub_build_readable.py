"""While a scrubbed restore runs, its temporary build holds production data that any session on
the dev server can read: the build is open to connections (CONNECT for PUBLIC, as CREATE DATABASE
makes it) until it is sealed, and the hold's SHARE locks do not stop SELECT. scrub.py's contract
says "no other session sees or changes the build meanwhile"; issue 9: real customer data should
not sit in dev, the target never unscrubbed. A plain dev role (the app's role, with SELECT as on
production) reads production e-mails out of the build while the restore is paused after scrubbing."""
from __future__ import annotations

import psycopg

from tests.conftest import create_db, ensure_roles, pause_env, pg, popen_cli, wait_for  # noqa: F401

SRC = """CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO customers SELECT i, 'c' || i || '@prod.example.com' FROM generate_series(1, 50) i;
GRANT SELECT ON customers TO r9_app;"""


def test_build_of_a_scrubbed_restore_is_not_readable_by_others(pg, tmp_path):
    ensure_roles(pg, "r9_app", options="LOGIN")
    src = create_db(pg, "r9src_build", SRC)
    dev = "r9dev_build"
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
columns = {{ "public.customers.email" = "'user' || id || '@example.invalid'" }}
checks = ["SELECT 1 FROM customers WHERE email NOT LIKE '%@example.invalid'"]
''')
    c = ("--config", str(cfg))
    import subprocess, sys
    r = subprocess.run([sys.executable, "-m", "snapdb", *c, "snapshot", "src"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    d, env = pause_env(tmp_path, "restore:scrubbed")
    proc = popen_cli(*c, "restore", "--into", "dev", "--from", "src", env=env)
    try:
        wait_for(d / "restore:scrubbed.reached", proc)
        leaked = None
        try:
            with psycopg.connect(pg.url(dev + "__snapdb_new", user="r9_app"), connect_timeout=10) as conn:
                conn.execute("SET lock_timeout = '5s'")
                leaked = conn.execute(
                    "SELECT count(*) FROM customers WHERE email LIKE '%@prod.example.com'").fetchone()[0]
        except psycopg.Error:
            leaked = None  # refused: what we want
    finally:
        (d / "restore:scrubbed.go").touch()
        proc.communicate(timeout=300)
    assert not leaked, f"a dev role read {leaked} production e-mails from the build during a scrubbed restore"
