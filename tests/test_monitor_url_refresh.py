"""status --check's refresh_max_age counted only restores recorded under the service's *name*:
a cron job that refreshes the dev copy by URL (or --into DB --server SVC) refreshes exactly the
service's database, `snapdb history dev` lists that restore for dev, yet `status --check`
reported "dev: never restored" and exited 13 (false alarm every night). Review item 7 of issue
9; the first test is the review's reproduction. A restore now counts for the service whose
database it went into (`history.concerns`, what `snapdb history` uses), and only for it."""
from __future__ import annotations

from datetime import timedelta

from snapdb import history, manifest as mf
from snapdb.config import Endpoint, load_config
from snapdb.ops import monitor as mon
from snapdb.store import open_store

from .conftest import create_db, run_cli


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


def _restore_into(st, host: str, port: str, dbname: str, name: str | None, ago: timedelta, sid: str) -> None:
    ep = Endpoint(params={"host": host, "port": port, "dbname": dbname}, name=name)
    rec = history.new_record("restore", ep, restored_from=sid, outcome="succeeded")
    rec.record_id = (mf.utcnow() - ago).strftime("%Y%m%dT%H%M%S.%fZ-") + sid[-6:]
    rec.started_at = rec.ended_at = (mf.utcnow() - ago).isoformat()
    history.write_catalog(st, rec)


def test_refresh_counts_the_restores_into_the_services_database_only(tmp_path):
    """By URL on the same server (another spelling of it) counts; a database of the same name on
    another server, or another database on the same server, does not; the newest that counts
    is the one reported, whichever way it was named."""
    cfg_path = tmp_path / "snapdb.toml"
    cfg_path.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[services.dev]\n'
                        'url = "postgresql://u@127.0.0.1:6001/dev"\nrefresh_max_age = "2d"\n'
                        '[services.qa]\nurl = "postgresql://u@127.0.0.1:6001/qa"\nrefresh_max_age = "2d"\n')
    cfg = load_config(cfg_path)
    st = open_store(str(tmp_path / "store"))

    def check() -> dict:
        res = mon.evaluate(cfg, st, ["dev", "qa"], mf.utcnow())
        return {s["service"]: (s["last_restore"] or {}).get("snapshot") for s in res.services}

    _restore_into(st, "127.0.0.1", "6002", "dev", None, timedelta(hours=1), "other-server-aaaaaa")
    _restore_into(st, "127.0.0.1", "6001", "dev2", None, timedelta(hours=1), "other-db-bbbbbb")
    assert check() == {"dev": None, "qa": None}
    _restore_into(st, "127.0.0.1", "6001", "dev", "dev", timedelta(days=3), "by-name-cccccc")
    _restore_into(st, "localhost", "6001", "dev", None, timedelta(hours=2), "by-url-dddddd")
    assert check() == {"dev": "by-url-dddddd", "qa": None}
    _restore_into(st, "127.0.0.1", "6001", "dev", "dev", timedelta(minutes=5), "by-name-eeeeee")
    assert check() == {"dev": "by-name-eeeeee", "qa": None}
