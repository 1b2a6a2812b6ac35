"""Prune's protection read the catalog fail-open: a rollback record that this snapdb cannot
parse (written by a newer snapdb: another history format) protected nothing, so prune deleted
the snapshot the rollback refers to -- while a manifest of a newer format is left alone
("never one referenced by ... a rollback"). And one catalog file that is valid JSON but not an
object made prune (and status, history, restore --if-newer) die with an internal error.

(Review items 5 and 6 of issue 9; the first two tests are the review's reproductions.) A record
that cannot be read now protects every snapshot whose id occurs in its bytes, and every reader
of the catalog skips it (`history.read_catalog` says which it skipped)."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from snapdb import history
from snapdb.config import Endpoint
from snapdb.errors import IntegrityError
from snapdb.ops import prune as pr
from snapdb.store import open_store
from snapdb.store.retention import Policy

from .conftest import run_cli
from .test_retention import T0, _id, fake_snapshot


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


#: catalog records this snapdb cannot read, each naming the snapshot id {sid} somehow
UNREADABLE = {
    "a newer format": '{{"format": "snapdb-history/2", "operation": "restore", "restored_from": "{sid}"}}',
    "not an object": '["rollback", "{sid}"]',
    "not JSON": 'format: snapdb-history/3\nrollback of {sid}\n',
    "truncated": '{{"format": "snapdb-history/1", "operation": "rollback", "restored_from": "{sid}"',
    "escaped": '["\\u{hex}{rest}"]',
    "record_id not a string": '{{"format": "snapdb-history/1", "record_id": 5, "operation": "rollback", '
                              '"started_at": "2026-03-01T00:00:00+00:00", "os_user": "u", "client_host": "h", '
                              '"restored_from": "{sid}"}}',
    "naive time": '{{"format": "snapdb-history/1", "record_id": "20260301T000000.000000Z-aaaaaa", '
                  '"operation": "upgrade", "outcome": "succeeded", "started_at": "2026-03-01T00:00:00", '
                  '"ended_at": "2026-03-01T00:00:00", "os_user": "u", "client_host": "h", "restored_from": "{sid}"}}',
    "deeply nested": '[' * 100_000 + '"{sid}"' + ']' * 100_000,
}


def _body(kind: str, sid: str) -> bytes:
    return UNREADABLE[kind].format(sid=sid, hex=f"{ord(sid[0]):04x}", rest=sid[1:]).encode()


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_record_protects_the_ids_in_it(tmp_path, kind):
    """Whatever is wrong with a record, the snapshots it names stay, with a reason that says so;
    `delete` refuses them too (exit 8 unless --force, which a careful operator chooses)."""
    st = open_store(str(tmp_path / "store"))
    old, new = _two(st)
    with st.writer(f"{history.CATALOG_PREFIX}{kind.replace(' ', '_')}.json") as f:
        f.write(_body(kind, old))
    records, unreadable = history.read_catalog(st)
    assert records == [] and len(unreadable) == 1, (records, unreadable)
    res = pr.prune(st, Policy(last=1), T0 + timedelta(days=2), rehearsal_max_age=timedelta(days=7))
    assert res.deleted == []
    kept = {k["id"]: k["reasons"] for k in res.kept}
    assert "cannot read" in " ".join(kept[old]), kept
    ref = pr.references(st, {old, new}, T0 + timedelta(days=2), timedelta(days=7))
    assert set(ref) == {old} and not ref[old].hard


def test_unreadable_record_naming_no_snapshot_protects_nothing(tmp_path):
    st = open_store(str(tmp_path / "store"))
    old, _ = _two(st)
    with st.writer(f"{history.CATALOG_PREFIX}x.json") as f:
        f.write(b"[]")
    res = pr.prune(st, Policy(last=1), T0 + timedelta(days=2), rehearsal_max_age=timedelta(days=7))
    assert [d["id"] for d in res.deleted] == [old]


def test_cutover_record_that_is_not_json_protects_the_ids_in_it(tmp_path):
    """The same rule for the cutover journals, receipts and freeze records."""
    st = open_store(str(tmp_path / "store"))
    old, _ = _two(st)
    with st.writer(f"catalog/receipts/{old}-receipt.json") as f:  # the id is in the key too: not what counts
        f.write(f"receipt: snapshot {old}, not JSON".encode())
    res = pr.prune(st, Policy(last=1), T0 + timedelta(days=2), rehearsal_max_age=timedelta(days=7))
    assert res.deleted == [] and "not JSON" in " ".join(next(k for k in res.kept if k["id"] == old)["reasons"])


def test_readers_skip_unreadable_records(tmp_path):
    """prune, history and status --check over a catalog holding every kind of unreadable record
    next to a good restore record: no internal error, and the good record still counts."""
    st = open_store(str(tmp_path / "store"))
    old, _ = _two(st)
    for kind in UNREADABLE:
        with st.writer(f"{history.CATALOG_PREFIX}{kind.replace(' ', '_')}.json") as f:
            f.write(_body(kind, old))
    ep = Endpoint(params={"host": "127.0.0.1", "port": "1", "dbname": "dev"}, name="dev")
    rec = history.new_record("restore", ep, restored_from=old, outcome="succeeded")
    rec.ended_at = rec.started_at
    history.write_catalog(st, rec)
    assert [r.record_id for r in history.list_catalog(st)] == [rec.record_id]
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[store.retention]\nlast = 1\n[services.dev]\n'
                   'url = "postgresql://u@127.0.0.1:1/dev"\nrefresh_max_age = "2d"\n')
    for args in (("prune", "--dry-run"), ("history",), ("history", "dev"), ("status", "--check")):
        r = run_cli("--config", str(cfg), *args)
        assert "internal error" not in r.stderr and r.returncode in (0, 13), (args, r.returncode, r.stderr)
        if args == ("history", "dev"):
            assert "restore" in r.stdout, r.stdout
        if args[0] == "status":
            assert "never restored" not in r.stdout, r.stdout


def test_records_snapdb_writes_read_back():
    """`Record.from_json` checks every field's declared type: a record as snapdb writes it, every
    field set, reads back equal (and a field type it does not know would fail here, not in use)."""
    ep = Endpoint(params={"host": "h", "port": "5432", "dbname": "prod"}, name="prod")
    rec = history.new_record("upgrade", ep, tag="v2", from_revision="a", to_revision="b", reached_revision="b",
                             failed_revision="c", checksum="x", restored_from="s", restored_from_source="prod",
                             skip_rehearsal=True, rehearsal="r", scripts_origin="git", error="e",
                             restored_from_server={"host": "h"}, seconds=1.5, revisions=[{"revision": "b"}],
                             scrub={"columns": []}, outcome="succeeded")
    rec.ended_at = rec.started_at
    assert history.Record.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    data = rec.to_json()
    data["seconds"] = 2  # JSON has one number type
    assert history.Record.from_json(data).seconds == 2
    for key, bad in (("seconds", True), ("skip_rehearsal", 1), ("database", []), ("outcome", None)):
        with pytest.raises(IntegrityError, match=key):
            history.Record.from_json({**rec.to_json(), key: bad})
