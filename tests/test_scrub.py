"""Acceptance 4: scrubbed restores into non-production services. The rules run on the build
after its verification and before the swap; a session watching the target throughout sees only
the old copy or the scrubbed one, never production's e-mails; a failing check leaves the old
target in place; scrub rules refuse production and anything but a restore's build.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import psycopg
import pytest

from snapdb import scrub
from snapdb.config import ScrubConfig, load_config
from snapdb.errors import ConfigError, RefusedError

from .conftest import create_db, databases, run_cli

SOURCE_SQL = """
CREATE SCHEMA app;
CREATE TABLE app.customers (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL);
INSERT INTO app.customers SELECT i, 'c' || i || '@prod.example.com', 'Customer ' || i FROM generate_series(1, 30000) i;
CREATE TABLE app.audit (id int PRIMARY KEY, detail text);
INSERT INTO app.audit SELECT i, 'mail sent to c' || i || '@prod.example.com' FROM generate_series(1, 3000) i;
"""
OLD_SQL = """
CREATE SCHEMA app;
CREATE TABLE app.customers (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL);
INSERT INTO app.customers SELECT i, 'old' || i || '@old.invalid', 'Old ' || i FROM generate_series(1, 500) i;
"""


def _config(tmp_path, pg, src: str, dev: str, dev2: str):
    (tmp_path / "scrub").mkdir()
    (tmp_path / "scrub" / "audit.sql").write_text(
        "UPDATE app.audit SET detail = regexp_replace(detail, '[^ ]+@[^ ]+', 'someone@example.invalid', 'g');\n"
        "UPDATE app.customers SET name = 'Customer ' || id;\n")
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
columns = {{ "app.customers.email" = "'user' || id || '@example.invalid'" }}
sql = ["scrub/audit.sql"]
settings = {{ "app.send_mail" = "off" }}
checks = ["SELECT 1 FROM app.customers WHERE email NOT LIKE '%@example.invalid'",
          "SELECT 1 FROM app.audit WHERE detail LIKE '%@prod.example.com%'"]

[services.dev2]
url = "{pg.url(dev2)}"
role = "dev"

[services.dev2.scrub]
columns = {{ "app.customers.email" = "lower(email)" }}
checks = ["SELECT 1 FROM app.customers WHERE email LIKE '%@prod.example.com'"]
''')
    return cfg


class Watcher(threading.Thread):
    """Polls the target's e-mail domains in new sessions until stopped."""

    def __init__(self, conninfo: str) -> None:
        super().__init__(daemon=True)
        self.conninfo, self.stop, self.seen = conninfo, threading.Event(), []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.conninfo, connect_timeout=3, autocommit=True) as conn:
                    while not self.stop.is_set():
                        row = conn.execute("SELECT array_agg(DISTINCT split_part(email, '@', 2) ORDER BY "
                                           "split_part(email, '@', 2)), count(*) FROM app.customers").fetchone()
                        self.seen.append((tuple(row[0] or ()), row[1]))
                        time.sleep(0.01)
            except psycopg.Error:
                time.sleep(0.02)  # ended by the swap, or the target renamed away for a moment


def test_scrubbed_restore_is_never_seen_unscrubbed_and_a_failing_check_keeps_the_old_copy(pg, dbname, tmp_path):
    src, dev, dev2 = dbname, dbname + "_dev", dbname + "_dev2"
    create_db(pg, src, SOURCE_SQL)
    with pg.connect() as conn:
        conn.execute(f'ALTER DATABASE "{src}" SET app.send_mail = on')
    create_db(pg, dev, OLD_SQL)
    create_db(pg, dev2, OLD_SQL)
    cfg = _config(tmp_path, pg, src, dev, dev2)
    c = ["--config", str(cfg)]
    r = run_cli(*c, "snapshot", "src")
    assert r.returncode == 0, r.stderr

    watcher = Watcher(pg.conninfo(dev))
    watcher.start()
    while not watcher.seen:
        time.sleep(0.01)
    r = run_cli(*c, "--json", "restore", "--into", "dev", "--from", "src")
    time.sleep(0.3)
    watcher.stop.set()
    watcher.join(10)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    old, scrubbed = (("old.invalid",), 500), (("example.invalid",), 30000)
    assert set(watcher.seen) <= {old, scrubbed}, set(watcher.seen) - {old, scrubbed}
    assert watcher.seen[0] == old and watcher.seen[-1] == scrubbed and len(watcher.seen) > 20
    sc = res["scrub"]
    assert sc["columns"] == [{"column": "app.customers.email", "rows": 30000}] and sc["checks"] == 2
    assert sc["settings"] == {"app.send_mail": "off"} and sc["sql"][0]["file"].endswith("audit.sql")

    dump = subprocess.run([pg.tool("pg_dump"), "-d", pg.conninfo(dev)], capture_output=True, text=True, check=True).stdout
    assert "Customer 17" in dump and "@prod.example.com" not in dump  # no row anywhere holds a production e-mail
    with pg.connect(dev) as conn:
        assert conn.execute("SHOW app.send_mail").fetchone()[0] == "off"
    with pg.connect(src) as conn:
        assert conn.execute("SHOW app.send_mail").fetchone()[0] == "on"
        assert conn.execute("SELECT count(*) FROM app.customers WHERE email LIKE '%@prod.example.com'").fetchone()[0] == 30000
    catalog = [json.loads((tmp_path / "store" / "catalog" / "history" / f).read_text())
               for f in sorted(p.name for p in (tmp_path / "store" / "catalog" / "history").iterdir())]
    assert catalog[-1]["operation"] == "restore" and catalog[-1]["scrub"]["checks"] == 2

    # verification came first: the manifest's checksums are those of the unscrubbed rows, so the
    # scrubbed copy differs from its snapshot exactly where it was scrubbed
    r = run_cli(*c, "verify", res["snapshot_id"], "--against", "dev")
    assert r.returncode == 7 and "customers" in r.stdout + r.stderr

    before = set(databases(pg))
    r = run_cli(*c, "restore", "--into", "dev2", "--from", "src")
    assert r.returncode == 7, r.stderr
    assert "scrub check 1 returned a row" in r.stderr and r.stderr.count("error:") == 1
    with pg.connect(dev2) as conn:
        assert conn.execute("SELECT count(*) FILTER (WHERE email LIKE '%@old.invalid'), count(*) FROM app.customers").fetchone() == (500, 500)
    assert set(databases(pg)) == before  # the build is gone, nothing else appeared
    # the same database named by a bare name (or a URL) gets dev2's rules all the same
    r = run_cli(*c, "restore", "--into", dev2, "--server", "dev", "--from", "src")
    assert r.returncode == 7 and "scrub check 1 returned a row" in r.stderr, r.stderr
    with pg.connect(dev2) as conn:
        assert conn.execute("SELECT count(*) FROM app.customers").fetchone()[0] == 500


def test_scrub_refuses_production_and_live_databases(pg, dbname, tmp_path):
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[services.prod]\nurl = "{pg.url(dbname)}"\nrole = "production"\n\n'
                   '[services.prod.scrub]\ncolumns = { "users.email" = "\'x\'" }\n')
    with pytest.raises(ConfigError, match="production"):
        load_config(cfg)
    r = run_cli("--config", str(cfg), "status")
    assert r.returncode == 3 and "scrub rules on a production service are refused" in r.stderr
    create_db(pg, dbname, "CREATE TABLE users (id int, email text); INSERT INTO users VALUES (1, 'a@b.c')")
    rules = ScrubConfig(columns=[("public", "users", "email", "'x'")])
    with pg.connect(dbname) as conn:  # a live database, in a transaction: refused before any change
        with pytest.raises(RefusedError, match="only on a restore's temporary build"):
            scrub.run(conn, rules, build=dbname + "__snapdb_new", target=dbname)
    with pg.connect(dbname) as conn:
        assert conn.execute("SELECT email FROM users").fetchone()[0] == "a@b.c"
