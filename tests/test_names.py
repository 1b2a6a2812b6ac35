"""Acceptance 4: hyphens, double quotes, non-ASCII letters and 63-byte names, end to end."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from snapdb import names

from .conftest import create_db, run_cli, write_config
from .dbcompare import table_fingerprints

LONG = "é" * 30 + "-dev" + "x"  # 60 + 4 + 1 = 65 bytes: too long, must be rejected
LONG63 = "ü" * 29 + "-dev-"  # 58 + 5 = 63 bytes exactly


def test_derived_names_fit_and_are_distinct():
    assert len(LONG63.encode()) == 63
    for target in ["service0-dev", 'we"ird', LONG63, "a" * 63, "a" * 62 + "b"]:
        for derived in (names.tmp_name(target), names.prev_name(target, datetime(2026, 1, 2, 3, 4, 5))):
            assert len(derived.encode()) <= 63
            derived.encode().decode()  # whole characters only
        assert names.is_prev_of(target, names.prev_name(target, datetime(2026, 1, 2)))
    # two long names sharing their first 40 bytes still get different side databases
    assert names.tmp_name("a" * 62 + "b") != names.tmp_name("a" * 62 + "c")
    assert not names.is_prev_of("svc", "svc-other__prev_20260101T000000")
    assert not names.is_prev_of("svc", "svc__prev_garbage")


@pytest.mark.parametrize("src_name,target", [
    ('prod-ü "quoted" db', 'dev-ü "quoted" db'),
    ("ünïcødé-prod", LONG63),
])
def test_odd_names_end_to_end(pg, tmp_path, store, src_name, target):
    src = create_db(pg, src_name, 'CREATE TABLE "Tab-ü ""x""" (v text); INSERT INTO "Tab-ü ""x""" VALUES (\'a\'), (\'b\')')
    cfg = write_config(tmp_path / "snapdb.toml", store, {"src": (pg.url(src), "production")})
    r = run_cli("--config", str(cfg), "snapshot", "src")
    assert r.returncode == 0, r.stderr
    for round_ in range(2):  # second round sets the first copy aside under a derived name
        r = run_cli("--config", str(cfg), "restore", "--into", target, "--server", pg.url(), "--json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["target"] == target
        assert table_fingerprints(pg, target) == table_fingerprints(pg, src)
        time.sleep(1.05)
    assert res["previous"] and names.is_prev_of(target, res["previous"])
    with pg.connect() as conn:
        dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert res["previous"] in dbs and names.tmp_name(target) not in dbs


def test_too_long_target_rejected(pg, tmp_path, store):
    src = create_db(pg, "short_src_for_long", "CREATE TABLE t (id int)")
    cfg = write_config(tmp_path / "snapdb.toml", store, {"src": (pg.url(src), "dev")})
    assert run_cli("--config", str(cfg), "snapshot", "src").returncode == 0
    r = run_cli("--config", str(cfg), "restore", "--into", LONG, "--server", pg.url())
    assert r.returncode == 3 and "63 bytes" in r.stderr
