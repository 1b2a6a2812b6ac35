"""Cutover catalog files that are JSON but not objects (or not JSON, or of unknown fields): the
readers raise `IntegrityError` (exit 7, one line naming the file) or skip them in listings, never
an internal error; a manual-freeze record that cannot be read still refuses a restore or an
upgrade (the freeze it records may be in place). Found beside review item 6 of issue 9 (the
same crash, in `snapdb status`, `freeze`, `unfreeze`, `rollback`)."""
from __future__ import annotations

import pytest

from snapdb.cutover import api, journal
from snapdb.errors import IntegrityError, RefusedError
from snapdb.store import open_store

from .conftest import run_cli

BAD = {"not an object": b"[]", "not JSON": b"{\"format\": ", "not UTF-8": b"\xff\xfe",
       "unknown fields": b'{"format": "snapdb-cutover/1", "colour": "blue"}',
       "a step not an object": b'{"format": "snapdb-cutover/1", "steps": [1]}'}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_unreadable_journal_is_an_integrity_error(tmp_path, kind):
    st = open_store(str(tmp_path / "store"))
    with st.writer(journal.Journal.key("dev")) as f:
        f.write(BAD[kind])
    with st.writer(f"{journal.PREFIX}{journal.service_key('dev')}/old.json") as f:
        f.write(BAD[kind])
    with pytest.raises(IntegrityError, match="the cutover journal of 'dev'") as exc:
        journal.Journal.load(st, "dev")
    assert journal.Journal.key("dev") in exc.value.hint
    assert journal.finished(st, "dev") == [] and journal.all_journals(st) == []


@pytest.mark.parametrize("kind", ["not an object", "not JSON", "unknown fields"])
def test_unreadable_manual_freeze_record_still_refuses(tmp_path, kind):
    st = open_store(str(tmp_path / "store"))
    with st.writer(journal.freeze_key("dev")) as f:
        f.write(BAD[kind])
    with pytest.raises(RefusedError, match="frozen by `snapdb freeze`"):
        journal.refuse_while_busy(st, "dev", "restore into 'dev'")
    with pytest.raises(IntegrityError, match="manual freeze record of 'dev' cannot be read") as exc:
        api.refuse_manual_freeze(st, "dev", "cut over")
    assert journal.freeze_key("dev") in exc.value.hint


def test_cli_reports_them_in_one_line(tmp_path):
    st = open_store(str(tmp_path / "store"))
    with st.writer(journal.freeze_key("dev")) as f:
        f.write(b"[]")
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[services.dev]\nurl = "postgresql://u@127.0.0.1:1/dev"\n')
    r = run_cli("--config", str(cfg), "unfreeze", "dev")
    assert r.returncode == 7 and r.stderr.startswith("error: the manual freeze record of 'dev' cannot be read"), \
        (r.returncode, r.stderr)
    with st.writer(journal.Journal.key("dev")) as f:
        f.write(b"[]")
    for args in (("status",), ("status", "--check"), ("rollback", "dev")):
        r = run_cli("--config", str(cfg), *args)
        assert r.returncode == 7 and "internal error" not in r.stderr, (args, r.returncode, r.stderr)
        assert "is not a JSON object but list" in r.stderr, r.stderr
