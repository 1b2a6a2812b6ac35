"""Acceptance 5: `status --check` turns non-zero (exit 13, one line per problem) when the newest
verified snapshot of a source is too old or last night's refresh did not happen, and the
metrics file parses as Prometheus text format (prometheus_client's own parser)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

from prometheus_client.parser import text_string_to_metric_families

from snapdb import history
from snapdb.config import Endpoint
from snapdb.errors import CheckFailed
from snapdb.store import open_store

from .conftest import create_db, run_cli
from .test_retention import _id, fake_snapshot


def _restore_record(st, service: str, dbname: str, snapshot_id: str, ended: datetime) -> None:
    ep = Endpoint(params={"host": "127.0.0.1", "port": "5432", "dbname": dbname}, name=service)
    rec = history.new_record("restore", ep, restored_from=snapshot_id, restored_from_source="prod", outcome="succeeded")
    rec.record_id = ended.strftime("%Y%m%dT%H%M%S") + ".000000Z-abcdef"
    rec.started_at = rec.ended_at = ended.isoformat()
    rec.seconds = 12.5
    history.write_catalog(st, rec)


def test_status_check_and_metrics(pg, dbname, tmp_path):
    create_db(pg, dbname)
    now = datetime.now(timezone.utc)
    st_path = tmp_path / "store"
    st = open_store(str(st_path))
    old_ok = now - timedelta(hours=30)
    fake_snapshot(st, _id(old_ok, 1), old_ok, "prod")
    fake_snapshot(st, _id(now - timedelta(hours=1), 2), now - timedelta(hours=1), "prod", verified=False)  # files missing
    weird = 'we"ird\\src'
    fake_snapshot(st, _id(now, 3), now - timedelta(minutes=5), weird)
    _restore_record(st, "dev", dbname + "_dev", _id(old_ok, 1), now - timedelta(days=3))
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{st_path}"\n\n[services.prod]\nurl = "{pg.url(dbname)}"\nrole = "production"\n\n'
                   f'[services.dev]\nurl = "{pg.url(dbname)}"\nrole = "dev"\nrefresh_max_age = "2d"\n')
    c = ["--config", str(cfg)]
    metrics = tmp_path / "textfile" / "snapdb.prom"
    metrics.parent.mkdir()
    metrics.write_text("stale")

    r = run_cli(*c, "status", "--check", "--max-age", "26h", "--metrics", str(metrics))
    assert r.returncode == CheckFailed.exit_code == 13, r.stderr
    problems = [line for line in r.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2, r.stdout
    assert f"  dev: last restore {(now - timedelta(days=3)).isoformat()} from snapshot {_id(old_ok, 1)}" in r.stdout
    assert "store: 3 snapshot(s)" in r.stdout
    assert problems[0].startswith("problem: dev: last refresh 3d ago") and "limit 2d" in problems[0]
    assert problems[1] == f"problem: prod: newest verified snapshot {_id(old_ok, 1)} is 30h old (limit 26h)"

    fams = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    assert sorted(p.name for p in metrics.parent.iterdir()) == ["snapdb.prom"]  # renamed into place, no temp left
    assert all(f.type == "gauge" for f in fams.values())

    def value(name: str, **labels) -> float:
        found = [s.value for s in fams[name].samples if s.labels == labels]
        assert len(found) == 1, (name, labels, fams[name].samples)
        return found[0]

    assert math.isclose(value("snapdb_last_snapshot_timestamp_seconds", source="prod"), old_ok.timestamp(), abs_tol=0.01)
    assert math.isclose(value("snapdb_last_snapshot_timestamp_seconds", source=weird),
                        (now - timedelta(minutes=5)).timestamp(), abs_tol=0.01)  # label escaping round-trips
    assert value("snapdb_snapshots", source="prod") == 2 and value("snapdb_check_problems") == 2
    assert value("snapdb_last_snapshot_size_bytes", source="prod") > 0
    assert math.isclose(value("snapdb_last_restore_timestamp_seconds", service="dev"),
                        (now - timedelta(days=3)).timestamp(), abs_tol=1)
    assert value("snapdb_last_restore_duration_seconds", service="dev") == 12.5
    assert math.isclose(value("snapdb_restored_snapshot_timestamp_seconds", service="dev"), old_ok.timestamp(), abs_tol=0.01)
    assert value("snapdb_service_up", service="prod") == 1 and value("snapdb_service_frozen", service="prod") == 0

    _restore_record(st, "dev", dbname + "_dev", _id(old_ok, 1), now - timedelta(hours=20))  # last night's refresh
    r = run_cli(*c, "--json", "status", "--check", "--max-age", "31h")
    assert r.returncode == 0, r.stdout + r.stderr
    mon = json.loads(r.stdout)["monitor"]
    assert mon["problems"] == [] and {s["service"] for s in mon["services"]} == {"prod", "dev"}
    r = run_cli(*c, "status", "dev", "--check")  # its own threshold only: the refresh
    assert r.returncode == 0 and "check: ok" in r.stderr, r.stdout + r.stderr
    r = run_cli(*c, "status", "--max-age", "1h")
    assert r.returncode == 3 and "--max-age goes with --check" in r.stderr
    r = run_cli(*c, "status", "--check", "--max-age", "soon")
    assert r.returncode == 3 and r.stderr.count("error:") == 1
