"""restore --if-newer skips a target that holds the snapshot *unscrubbed* once scrub rules were
added: the dev copy keeps production e-mails although [services.dev.scrub] now demands it be
scrubbed (issue 9: real customer data should not sit in dev; the target never holds unscrubbed data)."""
from __future__ import annotations

import psycopg

from tests.conftest import create_db, pg, run_cli  # noqa: F401  (pg is a fixture)

SRC = """CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO customers SELECT i, 'c' || i || '@prod.example.com' FROM generate_series(1, 50) i;"""


def test_if_newer_does_not_skip_when_scrub_rules_demand_a_scrub(pg, tmp_path):
    src = create_db(pg, "r9src_ifn", SRC)
    dev = "r9dev_ifn"
    base = f'''[store]
url = "{tmp_path / 'store'}"

[services.src]
url = "{pg.url(src)}"
role = "production"

[services.dev]
url = "{pg.url(dev)}"
role = "dev"
'''
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(base)
    c = ("--config", str(cfg))
    r = run_cli(*c, "snapshot", "src")
    assert r.returncode == 0, r.stderr
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src")
    assert r.returncode == 0, r.stderr
    # the operator now adds scrub rules for dev; the nightly cron job runs with --if-newer
    cfg.write_text(base + '''
[services.dev.scrub]
columns = { "public.customers.email" = "'user' || id || '@example.invalid'" }
checks = ["SELECT 1 FROM customers WHERE email NOT LIKE '%@example.invalid'"]
''')
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", "--if-newer")
    with psycopg.connect(pg.url(dev)) as conn:
        prod = conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%@prod.example.com'").fetchone()[0]
    assert prod == 0, (f"exit {r.returncode}, {r.stderr.strip()!r}: dev still holds {prod} production e-mails "
                       "although its scrub rules' checks would reject this copy")
