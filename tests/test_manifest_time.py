"""A manifest's `created_at` must be an ISO 8601 time with a zone (review/issue9b finding 4).

One manifest with a time without a zone (written by hand, by a script, an old tool) or a
malformed one made `snapdb prune` (every source) and `snapdb status --check` die with an
internal error (exit 1), and `snapdb history` print the garbage as a time. Such a manifest is
unreadable, like one of a newer format: prune leaves it alone and says so, the others are
judged, and the listings skip it."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from snapdb import manifest as mf
from snapdb.errors import IntegrityError
from snapdb.store import open_store

from .conftest import run_cli
from .test_retention import _id, fake_snapshot

T = datetime(2026, 11, 1, tzinfo=timezone.utc)
ODD_TIMES = ["2026-11-04T00:00:00", "yesterday", "2026-11-04", "", 1793750400]


def _store(tmp_path, created_at):
    st = open_store(str(tmp_path / "store"))
    ids = []
    for n in range(3):
        ids.append(_id(T + timedelta(days=n), n + 1))
        fake_snapshot(st, ids[-1], T + timedelta(days=n), "prod")
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
    return ("--config", str(cfg)), ids, odd


@pytest.mark.parametrize("created_at", ["2026-11-04T00:00:00", "yesterday"])
@pytest.mark.parametrize("cmd", [("prune", "--dry-run"), ("status", "--check")])
def test_one_odd_manifest_time_does_not_crash_prune_or_status(tmp_path, created_at, cmd):
    c, _, _ = _store(tmp_path, created_at)
    r = run_cli(*c, *cmd)
    assert r.returncode != 1 and "internal error" not in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("created_at", ["2026-11-04T00:00:00", "garbage"])
def test_odd_manifest_is_left_alone_and_the_others_judged(tmp_path, created_at):
    c, ids, odd = _store(tmp_path, created_at)
    r = run_cli(*c, "--json", "prune", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(d["id"] for d in out["deleted"]) == ids[:2]  # last = 1 among the readable ones
    assert [k["id"] for k in out["kept"]] == [ids[2]]
    assert [(a["id"], "manifest unreadable" in a["why"] and "created_at" in a["why"]) for a in out["left_alone"]] \
        == [(odd, True)], out["left_alone"]
    r = run_cli(*c, "prune")
    assert r.returncode == 0, r.stderr
    st = open_store(str(tmp_path / "store"))
    assert st.exists(mf.key(odd, mf.MANIFEST)) and st.exists(mf.key(ids[2], mf.MANIFEST))
    for cmd in (("snapshots",), ("history",)):
        r = run_cli(*c, "--json", *cmd)
        assert r.returncode == 0 and odd not in r.stdout and created_at not in r.stdout, (cmd, r.stdout)


@pytest.mark.parametrize("created_at", ODD_TIMES)
def test_from_json_refuses_a_time_without_zone_or_malformed(created_at):
    doc = {"format": mf.FORMAT, "id": "x", "source": "prod", "created_at": created_at, "label": None,
           "server": {}, "pg_dump_version": "15.0", "database": {"encoding": "UTF8", "collate": "C", "ctype": "C"},
           "schema_file": mf.SCHEMA_FILE, "files": [], "tables": [], "sequences": [], "large_objects": 0}
    with pytest.raises(IntegrityError, match="created_at"):
        mf.Manifest.from_json(doc)
    for good in ("2026-11-04T00:00:00+00:00", "2026-11-04T00:00:00.123456Z", "2026-11-04T02:00:00+02:00"):
        doc["created_at"] = good
        assert mf.Manifest.from_json(doc).created() == datetime(2026, 11, 4, tzinfo=timezone.utc) + \
            timedelta(microseconds=123456 if "." in good else 0)
