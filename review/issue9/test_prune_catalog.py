"""Prune's protection reads the catalog fail-open: a rollback record that this snapdb cannot
parse (written by a newer snapdb: another history format) protects nothing, so prune deletes the
snapshot the rollback refers to -- while a manifest of a newer format is left alone
("never one referenced by ... a rollback"). And one catalog file that is valid JSON but not an
object makes prune (and status, history, restore --if-newer) die with an internal error."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from snapdb import history
from snapdb.config import Endpoint
from snapdb.ops import prune as pr
from snapdb.store import open_store
from snapdb.store.retention import Policy

from tests.test_retention import T0, _id, fake_snapshot


def _two(st):
    old, new = _id(T0, 1), _id(T0 + timedelta(days=1), 2)
    fake_snapshot(st, old, T0, "prod")
    fake_snapshot(st, new, T0 + timedelta(days=1), "prod")
    return old, new


def _rollback(st, sid, fmt):
    ep = Endpoint(params={"host": "h", "port": "5432", "dbname": "prod"}, name="prod")
    rec = history.new_record("rollback", ep, tag="v2", restored_from=sid, outcome="succeeded")
    rec.ended_at = rec.started_at
    data = rec.to_json()
    data["format"] = fmt
    with st.writer(f"{history.CATALOG_PREFIX}{rec.record_id}.json") as f:
        f.write(json.dumps(data).encode())


@pytest.mark.parametrize("fmt", [history.FORMAT, "snapdb-history/2"])
def test_rollback_reference_protects_whatever_its_format(tmp_path, fmt):
    st = open_store(str(tmp_path / "store"))
    old, new = _two(st)
    _rollback(st, old, fmt)
    res = pr.prune(st, Policy(last=1), T0 + timedelta(days=2), rehearsal_max_age=timedelta(days=7))
    assert old not in {d["id"] for d in res.deleted}, f"prune deleted {old}, referenced by a rollback record ({fmt})"


def test_non_object_catalog_file_does_not_crash_prune(tmp_path):
    st = open_store(str(tmp_path / "store"))
    _two(st)
    with st.writer(f"{history.CATALOG_PREFIX}20260101T000000.000000Z-abcdef.json") as f:
        f.write(b"[]")
    try:
        pr.prune(st, Policy(last=1), T0 + timedelta(days=2), rehearsal_max_age=timedelta(days=7), dry_run=True)
    except Exception as exc:  # a SnapdbError (documented exit code) would be acceptable; a crash is not
        from snapdb.errors import SnapdbError
        assert isinstance(exc, SnapdbError), f"internal error: {type(exc).__name__}: {exc}"
