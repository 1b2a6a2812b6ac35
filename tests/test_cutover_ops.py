"""Issue 7: hooks at fixed points, and the manual freeze (snapdb freeze / unfreeze)."""

from __future__ import annotations

import json

import psycopg
import pytest

from .cutoverenv import make_env
from .dbcompare import database_props


def _hooks(tmp_path, before: str | None = None, timeout: str = "10s") -> str:
    d = tmp_path / "hooks"
    d.mkdir()
    lines = ["[services.prod.hooks]", f'timeout = "{timeout}"']
    for point in ("before_freeze", "after_freeze", "after_swap", "on_abort"):
        cmd = f"env | grep ^SNAPDB_ | sort > {d}/{point}.env"
        if point == "before_freeze" and before:
            cmd = before
        lines.append(f"{point} = {json.dumps(cmd)}")
    return "\n".join(lines) + "\n"


def _env_file(path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_hooks_get_the_facts(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname, hooks=_hooks(tmp_path))
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    d = tmp_path / "hooks"
    before, after, swapped = (_env_file(d / f"{p}.env") for p in ("before_freeze", "after_freeze", "after_swap"))
    for e in (before, after, swapped):
        assert e["SNAPDB_SERVICE"] == "prod" and e["SNAPDB_TAG"] == "v2.0" and e["SNAPDB_DATABASE"] == env.prod
        assert e["SNAPDB_CUTOVER_ID"] == res["id"] and e["SNAPDB_PORT"] == str(pg.port)
    assert before["SNAPDB_HOOK"] == "before_freeze" and "SNAPDB_FREEZE_LSN" not in before
    assert after["SNAPDB_FREEZE_LSN"] and after["SNAPDB_FREEZE_MODE"] == "read-only"
    assert swapped["SNAPDB_SET_ASIDE"] == res["set_aside"] and swapped["SNAPDB_SNAPSHOT_ID"] == res["snapshot_id"]
    assert float(swapped["SNAPDB_FREEZE_SECONDS"]) > 0
    assert not (d / "on_abort.env").exists()
    assert [h["point"] for h in res["hooks"]] == ["before_freeze", "after_freeze", "after_swap"]


@pytest.mark.parametrize("failure", ["exit 3", "sleep 5"])
def test_failing_hook_aborts_safely(pg, tmp_path, dbname, failure):
    env = make_env(pg, tmp_path, dbname, hooks=_hooks(tmp_path, before=failure, timeout="1s"))
    props = database_props(pg, env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
    assert r.returncode == 12, r.stderr
    assert "hook before_freeze" in r.stderr and ("failed (exit 3)" in r.stderr or "within 1 s" in r.stderr)
    assert database_props(pg, env.prod) == props and env.revision() == "3f1c0a9e5b10"
    on_abort = _env_file(tmp_path / "hooks" / "on_abort.env")
    assert on_abort["SNAPDB_STEP"] == "freeze" and "hook before_freeze" in on_abort["SNAPDB_REASON"]


def test_manual_freeze_and_unfreeze(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname, rehearse=False)
    props = database_props(pg, env.prod)
    app = psycopg.connect(env.app(), autocommit=True)
    r = env.cli("freeze", "prod", "--drain-timeout", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["probes"]["probe_write"] == "refused: read-only"
    with pytest.raises(psycopg.OperationalError):  # the session opened before the freeze was ended
        app.execute("SELECT 1")
    with psycopg.connect(env.app(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM lh.items").fetchone()[0] == 500  # reads go on
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO lh.items (worker, n) VALUES (1, 1)")
    assert json.loads(env.cli("status", "prod", "--json").stdout)["services"][0]["frozen"]["by"] == "snapdb freeze"
    assert env.cli("freeze", "prod").returncode == 8  # already frozen
    r = env.cli("unfreeze", "prod")
    assert r.returncode == 0, r.stderr
    with psycopg.connect(env.app(), autocommit=True) as conn:
        conn.execute("INSERT INTO lh.items (worker, n) VALUES (1, 1)")
    assert database_props(pg, env.prod) == props  # exactly as before

    # offline: new sessions refused (the application's role; superusers are the documented limit)
    r = env.cli("freeze", "prod", "--mode", "offline", "--drain-timeout", "0")
    assert r.returncode == 0, r.stderr
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(env.app()).close()
    assert env.cli("unfreeze", "prod").returncode == 0
    psycopg.connect(env.app()).close()
    after = database_props(pg, env.prod)
    assert {k: v for k, v in after.items() if k != "acl"} == {k: v for k, v in props.items() if k != "acl"}
