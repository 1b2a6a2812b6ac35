"""A restore with scrub rules of a build too large for the server's lock table fails: the
analyze-alone path (restore._analyze_alone_if_many, commit 7cc04d6) moves the first ANALYZE out of
the hold's transaction, but the ANALYZE after the scrub still runs inside it and locks every table
and index of the build again: "out of shared memory" -- exactly the failure that commit fixed, now
only for the dev copies that are scrubbed (the ones that matter most for issue 9)."""
from __future__ import annotations

from .conftest import create_db, default_major, run_cli, start_cluster


def test_scrubbed_restore_of_many_indexed_tables_within_a_small_lock_table(pg, tmp_path):
    body = ";".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, a int, b text, c text); "
                    f"CREATE INDEX ON t{i} (a); CREATE INDEX ON t{i} (b); CREATE INDEX ON t{i} (c); "
                    f"INSERT INTO t{i} SELECT g, g, 'b' || g, 'c' || g FROM generate_series(1, 30) g" for i in range(1, 401))
    body += ";CREATE TABLE customers (id int PRIMARY KEY, email text); " \
            "INSERT INTO customers SELECT g, 'c' || g || '@prod.example.com' FROM generate_series(1, 50) g"
    src = create_db(pg, "r10_scrub_locks", body)
    small = start_cluster("r10smalllocks", major=default_major(),
                          settings={"max_locks_per_transaction": 10, "max_connections": 20})
    try:
        cfg = tmp_path / "snapdb.toml"
        cfg.write_text(f'''[store]
url = "{tmp_path / 'store'}"

[services.src]
url = "{pg.url(src)}"
role = "production"

[services.dev]
url = "{small.url('copy')}"
role = "dev"

[services.dev.scrub]
columns = {{ "public.customers.email" = "'user' || id || '@example.invalid'" }}
''')
        c = ("--config", str(cfg))
        r = run_cli(*c, "snapshot", "src")
        assert r.returncode == 0, r.stderr
        r = run_cli(*c, "restore", "--into", "dev", "--from", "src", "--jobs", "2")
        assert r.returncode == 0, r.stderr  # fails: ANALYZE after the scrub: out of shared memory
        with small.connect("copy") as conn:
            assert conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%@example.invalid'").fetchone()[0] == 50
            assert conn.execute("SELECT count(*) FROM t400").fetchone()[0] == 30
    finally:
        small.stop()
