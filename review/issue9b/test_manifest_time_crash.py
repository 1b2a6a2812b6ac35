"""Review item 6 (round 1) made catalog records that are not what this snapdb writes readable-or-
skipped instead of crashing prune/history/status. Manifests got no such check: `created_at` is
taken as it is (`Manifest.from_json` validates nothing about it), so one manifest with a time
without a zone (written by hand, by a script, or an old tool) or a malformed time makes
`snapdb prune` -- for every source, not just that one -- and `snapdb status --check` die with an
internal error (exit 1, "report the traceback"), while `snapdb snapshots` and `history` carry on.
The cron line then neither prunes nor monitors. Expected: the manifest counts as unreadable
(`left alone: manifest unreadable …`, as a newer format is), and the others are judged."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from snapdb import manifest as mf
from snapdb.store import open_store

from tests.conftest import run_cli
from tests.test_retention import _id, fake_snapshot

T = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _store(tmp_path, created_at: str):
    st = open_store(str(tmp_path / "store"))
    for n in range(3):
        fake_snapshot(st, _id(T + timedelta(days=n), n + 1), T + timedelta(days=n), "prod")
    odd = _id(T + timedelta(days=3), 9)
    fake_snapshot(st, odd, T + timedelta(days=3), "prod")
    path = tmp_path / "store" / mf.key(odd, mf.MANIFEST)
    doc = json.loads(path.read_text())
    doc["created_at"] = created_at
    path.write_text(json.dumps(doc))
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[store.retention]\nlast = 1\n'
                   '[services.prod]\nurl = "postgresql://u@127.0.0.1:1/prod"\nrole = "production"\n'
                   'snapshot_max_age = "26h"\n')
    return ("--config", str(cfg))


@pytest.mark.parametrize("created_at", ["2026-11-04T00:00:00", "yesterday"])
@pytest.mark.parametrize("cmd", [("prune", "--dry-run"), ("status", "--check")])
def test_one_odd_manifest_time_does_not_crash_prune_or_status(tmp_path, created_at, cmd):
    c = _store(tmp_path, created_at)
    r = run_cli(*c, *cmd)
    assert r.returncode != 1 and "internal error" not in r.stderr, (r.returncode, r.stderr)
