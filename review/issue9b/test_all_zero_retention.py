"""`[store.retention]` refuses an empty table ("give at least one of last, daily, weekly,
monthly": without rules prune would delete everything but each source's newest snapshot), but
accepts a table whose every rule is 0 (all off), which does exactly that: `last = 0` (e.g. a
templated `last = ${KEEP:-0}`) makes `snapdb prune` / `snapshot --prune` delete every snapshot
but the newest of each source. restic, whose reading of these keys the docs cite, refuses to
forget anything when no rule is set. Expected: refused like an empty table (exit 3), nothing
deleted."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from snapdb.store import open_store

from tests.conftest import run_cli
from tests.test_retention import _id, fake_snapshot

T = datetime(2026, 11, 1, tzinfo=timezone.utc)


def test_retention_with_every_rule_off_is_refused(tmp_path):
    st = open_store(str(tmp_path / "store"))
    for n in range(5):
        fake_snapshot(st, _id(T + timedelta(days=n), n + 1), T + timedelta(days=n), "prod")
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[store.retention]\nlast = 0\ndaily = 0\n')
    r = run_cli("--config", str(cfg), "prune")
    left = [k for k in st.list("snapshots/") if k.endswith("manifest.json")]
    assert r.returncode == 3 and len(left) == 5, (r.returncode, r.stderr, f"{len(left)} of 5 snapshots left")
