"""Acceptance 3 and 6: damaged snapshots, killed runs, server restarts, concurrent restores.

In every case the target must stay exactly as it was, and the next run must succeed.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from snapdb import commands, names
from snapdb.config import load_config
from snapdb.errors import BusyError, IntegrityError, TargetError

from .conftest import create_db, pause_env, popen_cli, run_cli, wait_for, write_config
from .dbcompare import database_props, schema_dump, table_fingerprints

SETUP = """
CREATE TABLE big (id int PRIMARY KEY, pad text);
INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
CREATE TABLE small (id int);
INSERT INTO small SELECT generate_series(1, 10);
CREATE TABLE third (id int);
INSERT INTO third SELECT generate_series(1, 30);
"""


@pytest.fixture
def scenario(pg, tmp_path, store, dbname):
    """A source, a snapshot of it, and an existing dev target holding different data."""
    src = create_db(pg, dbname, SETUP)
    target = create_db(pg, dbname + "-dev", "CREATE TABLE old_dev (id int); INSERT INTO old_dev VALUES (42)")
    cfg_path = write_config(tmp_path / "snapdb.toml", store, {"src": (pg.url(src), "production"),
                                                             "dev": (pg.url(target), "dev")})
    sid = commands.snapshot(load_config(cfg_path), "src").id
    return {"cfg": str(cfg_path), "sid": sid, "src": src, "target": target,
            "before": _target_state(pg, target), "snapdir": store / "snapshots" / sid}


def _target_state(pg, target: str) -> tuple:
    """Everything "unchanged" means: the same database (OID), schema, properties and rows."""
    return database_props(pg, target), schema_dump(pg, target), table_fingerprints(pg, target)


def _databases(pg) -> set[str]:
    with pg.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def assert_target_unchanged(pg, s) -> None:
    assert _target_state(pg, s["target"]) == s["before"]


def assert_next_run_succeeds(pg, s) -> None:
    r = run_cli("--config", s["cfg"], "restore", "--into", "dev", "--json")
    assert r.returncode == 0, r.stderr
    assert table_fingerprints(pg, s["target"]) == table_fingerprints(pg, s["src"])
    assert names.tmp_name(s["target"]) not in _databases(pg)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_snapshot_detected_before_touching(pg, scenario, damage):
    s = scenario
    victim = sorted((s["snapdir"] / "data").iterdir())[0]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) - 7]))
    else:
        victim.unlink()
    before = _databases(pg)
    trace = s["snapdir"].parent.parent.parent / "trace"
    trace.mkdir()
    r = run_cli("--config", s["cfg"], "restore", "--into", "dev", env={"SNAPDB_TRACE_DIR": str(trace)})
    assert r.returncode == IntegrityError.exit_code, r.stderr
    assert "damaged" in r.stderr and victim.name in r.stderr
    assert _databases(pg) == before
    # refused before the server was touched: the run never got as far as the lock or a build
    assert not (trace / "restore:files-verified.passed").exists() and not (trace / "restore:locked.passed").exists()
    assert_target_unchanged(pg, s)
    r = run_cli("--config", s["cfg"], "verify", s["sid"])
    assert r.returncode == IntegrityError.exit_code


def test_damaged_schema_archive_detected(pg, scenario):
    s = scenario
    f = s["snapdir"] / "schema.dump.zst"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        commands.restore(load_config(s["cfg"]), into="dev")
    assert_target_unchanged(pg, s)


@pytest.mark.parametrize("step", ["restore:created", "restore:table-loaded", "restore:loaded", "restore:before-swap"])
def test_sigkill_midway_leaves_target_unchanged(pg, scenario, step):
    s = scenario
    r = run_cli("--config", s["cfg"], "restore", "--into", "dev", env={"SNAPDB_KILL_AT": step})
    assert r.returncode == -signal.SIGKILL
    assert_target_unchanged(pg, s)
    assert_next_run_succeeds(pg, s)


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)


def test_server_restart_midway_leaves_target_unchanged(pg, scenario, tmp_path):
    s = scenario
    faults = tmp_path / "faults"
    faults.mkdir()
    step = "restore:table-loaded"
    proc = popen_cli("--config", s["cfg"], "restore", "--into", "dev", "--jobs", "1",
                     env={"SNAPDB_PAUSE_AT": step, "SNAPDB_FAULT_DIR": str(faults)})
    try:
        _wait_for(faults / f"{step}.reached", proc)
        pg.restart()
        (faults / f"{step}.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == TargetError.exit_code, err
    assert err.startswith("error: "), err
    assert names.tmp_name(s["target"]) not in _databases(pg)  # removed by the failing run itself
    assert_target_unchanged(pg, s)
    assert_next_run_succeeds(pg, s)


def test_concurrent_restores_one_wins(pg, scenario, tmp_path):
    s = scenario
    faults = tmp_path / "faults"
    faults.mkdir()
    step = "restore:locked"
    first = popen_cli("--config", s["cfg"], "restore", "--into", "dev",
                      env={"SNAPDB_PAUSE_AT": step, "SNAPDB_FAULT_DIR": str(faults)})
    try:
        _wait_for(faults / f"{step}.reached", first)
        second = run_cli("--config", s["cfg"], "restore", "--into", "dev")
        assert second.returncode == BusyError.exit_code, second.stderr
        assert "another snapdb restore" in second.stderr and "holds the lock of" in second.stderr
        assert_target_unchanged(pg, s)  # the loser changed nothing
        (faults / f"{step}.go").touch()
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert table_fingerprints(pg, s["target"]) == table_fingerprints(pg, s["src"])
    # and a third run, once the first is done, takes the lock again
    assert_next_run_succeeds(pg, s)


def test_ctrl_c_midway_exits_130_and_leaves_target_unchanged(pg, scenario, tmp_path):
    s = scenario
    faults, env = pause_env(tmp_path, "restore:table-loaded")
    proc = popen_cli("--config", s["cfg"], "restore", "--into", "dev", "--jobs", "1", env=env)
    try:
        wait_for(faults / "restore:table-loaded.reached", proc)
        proc.send_signal(signal.SIGINT)
        (faults / "restore:table-loaded.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert names.tmp_name(s["target"]) not in _databases(pg)  # the build was dropped on the way out
    assert_target_unchanged(pg, s)
    assert_next_run_succeeds(pg, s)


def test_killed_snapshot_is_not_listed(pg, scenario):
    s = scenario
    r = run_cli("--config", s["cfg"], "snapshot", "src", env={"SNAPDB_KILL_AT": "snapshot:table-copied"})
    assert r.returncode == -signal.SIGKILL
    dirs = sorted(p.name for p in s["snapdir"].parent.iterdir())
    assert len(dirs) == 2  # the killed run left its files behind, without a manifest
    r = run_cli("--config", s["cfg"], "snapshots", "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [s["sid"]]
    r = run_cli("--config", s["cfg"], "restore", "--into", "dev", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["snapshot_id"] == s["sid"], r.stderr


def test_prepared_transaction_refused(pg, scenario):
    s = scenario
    import psycopg

    conn = psycopg.connect(pg.conninfo(s["target"]))
    conn.execute("INSERT INTO old_dev VALUES (1)")
    conn.execute("PREPARE TRANSACTION 'snapdb_test_gid'")
    conn.close()
    try:
        r = run_cli("--config", s["cfg"], "restore", "--into", "dev")
        assert r.returncode == 8 and "prepared transaction" in r.stderr
        assert_target_unchanged(pg, s)
    finally:
        pg.psql("ROLLBACK PREPARED 'snapdb_test_gid'", dbname=s["target"])


@pytest.mark.parametrize("mode", ["full", "quick"])
def test_verification_reads_what_the_server_stored(pg, scenario, tmp_path, mode):
    """A row changed in the temporary database after loading: the full verification (default)
    catches it and leaves the target alone; quick verification, which reads nothing back, does
    not (that is its documented trade-off)."""
    s = scenario
    faults = tmp_path / "faults"
    faults.mkdir()
    step = "restore:loaded"
    proc = popen_cli("--config", s["cfg"], "restore", "--into", "dev", "--verify", mode,
                     env={"SNAPDB_PAUSE_AT": step, "SNAPDB_FAULT_DIR": str(faults)})
    try:
        _wait_for(faults / f"{step}.reached", proc)
        with pg.connect(names.tmp_name(s["target"])) as conn:
            conn.execute("UPDATE big SET pad = 'tampered' WHERE id = 4242")
        (faults / f"{step}.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if mode == "full":
        assert proc.returncode == IntegrityError.exit_code, err
        assert "public.big" in err and "checksum" in err
        assert_target_unchanged(pg, s)
        assert names.tmp_name(s["target"]) not in _databases(pg)
    else:
        assert proc.returncode == 0, err
