"""status --check's refresh_max_age only counts restores recorded under the service's *name*:
a cron job that refreshes the dev copy by URL (or --into DB --server SVC) refreshes exactly the
service's database, `snapdb history dev` lists that restore for dev, yet `status --check`
reports "dev: never restored" and exits 13 (false alarm every night)."""
from __future__ import annotations

from tests.conftest import create_db, pg, run_cli  # noqa: F401  (pg is a fixture)


def test_refresh_by_url_counts_for_the_service(pg, tmp_path):
    src = create_db(pg, "r9src_mon", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
    dev = "r9dev_mon"
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'''[store]
url = "{tmp_path / 'store'}"

[services.src]
url = "{pg.url(src)}"
role = "production"

[services.dev]
url = "{pg.url(dev)}"
role = "dev"
refresh_max_age = "2d"
''')
    c = ("--config", str(cfg))
    assert run_cli(*c, "snapshot", "src").returncode == 0
    r = run_cli(*c, "restore", "--into", pg.url(dev), "--from", "src")
    assert r.returncode == 0, r.stderr
    h = run_cli(*c, "history", "dev")
    assert "restore" in h.stdout, h.stdout + h.stderr  # history attributes it to dev
    r = run_cli(*c, "status", "dev", "--check")
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout.strip()} {r.stderr.strip()}"
