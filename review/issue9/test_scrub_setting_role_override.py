"""[services.dev.scrub] settings = { "app.send_mail" = "off" } is applied as a database-level
setting, but the copy also receives the source's per-role-in-database settings, which take
precedence in PostgreSQL: production's `ALTER ROLE app IN DATABASE prod SET app.send_mail = on`
arrives in dev and the app, connecting as its role, still sees send_mail = on (the demo's very
case: mail from the dev server must not go to the world)."""
from __future__ import annotations

import subprocess
import sys

import psycopg

from tests.conftest import create_db, ensure_roles, pg  # noqa: F401


def test_scrub_setting_wins_over_a_role_setting_of_the_source(pg, tmp_path):
    ensure_roles(pg, "r9_mailer", options="LOGIN")
    src = create_db(pg, "r9src_mail", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);"
                                      "GRANT SELECT ON t TO r9_mailer;")
    with pg.connect() as conn:
        conn.execute('ALTER DATABASE r9src_mail SET app.send_mail = \'on\'')
        conn.execute('ALTER ROLE r9_mailer IN DATABASE r9src_mail SET app.send_mail = \'on\'')
    dev = "r9dev_mail"
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
settings = {{ "app.send_mail" = "off" }}
''')
    run = lambda *a: subprocess.run([sys.executable, "-m", "snapdb", "--config", str(cfg), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run("snapshot", "src")
    assert r.returncode == 0, r.stderr
    r = run("restore", "--into", "dev", "--from", "src")
    assert r.returncode == 0, r.stderr
    with psycopg.connect(pg.url(dev)) as conn:  # the superuser: the database-level setting
        assert conn.execute("SHOW app.send_mail").fetchone()[0] == "off"
    with psycopg.connect(pg.url(dev, user="r9_mailer")) as conn:  # the application's role
        seen = conn.execute("SHOW app.send_mail").fetchone()[0]
    assert seen == "off", f"the app's role sees app.send_mail = {seen!r} in the scrubbed dev copy"
