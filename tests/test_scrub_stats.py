"""Issue 9, review finding 1 (fixed): after a scrubbed restore no production e-mail may remain in the target, not even in its statistics: the restore runs
ANALYZE on the build *before* the scrub rules, so pg_statistic (readable through pg_stats by any
role with SELECT on the column, e.g. the dev app's role) keeps the unscrubbed values as
most_common_vals / histogram_bounds. Acceptance 4: "no row of the target holds a production
e-mail"; issue 9: real customer data should not sit in dev at all."""
from __future__ import annotations

import subprocess
import sys

import psycopg

from .conftest import create_db, ensure_roles

SRC = """CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO customers SELECT i, 'c' || i || '@prod.example.com' FROM generate_series(1, 2000) i;
GRANT SELECT ON customers TO r9_reader;"""


def test_no_production_email_left_in_statistics(pg, tmp_path):
    ensure_roles(pg, "r9_reader", options="LOGIN")
    src = create_db(pg, "r9src_stats", SRC)
    dev = "r9dev_stats"
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
    run = lambda *a: subprocess.run([sys.executable, "-m", "snapdb", "--config", str(cfg), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    assert run("snapshot", "src").returncode == 0
    r = run("restore", "--into", "dev", "--from", "src")
    assert r.returncode == 0, r.stderr
    with psycopg.connect(pg.url(dev, user="r9_reader")) as conn:
        assert conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%@prod.example.com'").fetchone()[0] == 0
        stats = conn.execute("SELECT coalesce(most_common_vals::text, '') || coalesce(histogram_bounds::text, '') "
                             "FROM pg_stats WHERE tablename = 'customers' AND attname = 'email'").fetchone()
    leaked = stats[0].count("@prod.example.com") if stats else 0
    assert leaked == 0, f"pg_stats of the scrubbed dev copy shows {leaked} production e-mails: {stats[0][:160]}"
