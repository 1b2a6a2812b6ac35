"""Regressions found in review: sequences that move during a snapshot, idle-session timeouts that
would release a run's lock, children that must die with snapdb, damaged data found by zstd."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time

import pytest

from snapdb import names
from snapdb.errors import BusyError, IntegrityError

from .conftest import create_db, popen_cli, run_cli
from .dbcompare import sequences, table_fingerprints
from .test_failures import _wait_for


def _pause(tmp_path, step):
    d = tmp_path / f"faults-{step.replace(':', '-')}"
    d.mkdir()
    return d, {"SNAPDB_PAUSE_AT": step, "SNAPDB_FAULT_DIR": str(d)}


def test_sequences_moving_during_a_snapshot(pg, tmp_path):
    """nextval() between the exported snapshot and pg_dump's start must not make the snapshot
    unrestorable: the manifest's values are the ones restored and verified."""
    src = create_db(pg, "seq_moving", "CREATE TABLE t (id serial PRIMARY KEY, v int); INSERT INTO t (v) SELECT generate_series(1, 100)")
    store = str(tmp_path / "store")
    faults, env = _pause(tmp_path, "snapshot:catalog-read")
    proc = popen_cli("snapshot", pg.url(src), "--store", store, env=env)
    _wait_for(faults / "snapshot:catalog-read.reached", proc)
    with pg.connect(src) as conn:
        conn.execute("INSERT INTO t (v) SELECT generate_series(1, 50)")  # the sequence moves on to 150
    (faults / "snapshot:catalog-read.go").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    r = run_cli("restore", "--into", "seq_moving_dev", "--server", pg.url(), "--store", store)
    assert r.returncode == 0, r.stderr
    restored = sequences(pg, "seq_moving_dev")["public.t_id_seq"]
    assert restored == (100, True)  # as of the snapshot, consistent with the 100 rows copied
    with pg.connect("seq_moving_dev") as conn:
        assert conn.execute("SELECT count(*), max(id) FROM t").fetchone() == (100, 100)


def test_lock_survives_idle_session_timeout(pg, tmp_path):
    """A server that ends idle sessions must not end the session holding a restore's lock."""
    create_db(pg, "idle_src", "CREATE TABLE t AS SELECT generate_series(1, 10) AS id")
    create_db(pg, "idle_maint")
    pg.psql("ALTER DATABASE idle_maint SET idle_session_timeout = '1s'")
    store = str(tmp_path / "store")
    assert run_cli("snapshot", pg.url("idle_src"), "--store", store).returncode == 0
    faults, env = _pause(tmp_path, "restore:created")
    env["SNAPDB_MAINTENANCE_DB"] = "idle_maint"
    args = ("restore", "--into", "idle_dev", "--server", pg.url(), "--store", store)
    first = popen_cli(*args, env=env)
    try:
        _wait_for(faults / "restore:created.reached", first)
        time.sleep(2.5)  # longer than idle_session_timeout
        second = run_cli(*args, env={"SNAPDB_MAINTENANCE_DB": "idle_maint"})
        assert second.returncode == BusyError.exit_code, second.stderr
        (faults / "restore:created.go").touch()
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert table_fingerprints(pg, "idle_dev") == table_fingerprints(pg, "idle_src")


def test_pg_dump_dies_with_a_killed_snapshot(pg, tmp_path):
    create_db(pg, "orphan_src", "CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "pg_dump-started"
    wrapper = bindir / "pg_dump"
    # a pg_dump that takes a minute: reports its pid, then becomes a long sleep (same process)
    wrapper.write_text("#!/bin/sh\n"
                       f'[ "$1" = "--version" ] && exec "{pg.tool("pg_dump")}" "$@"\n'
                       f'echo $$ > "{marker}"\n'
                       'exec sleep 60\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    (bindir / "pg_restore").symlink_to(pg.tool("pg_restore"))  # a snapshot lists its archive with it
    faults, env = _pause(tmp_path, "snapshot:table-copied")
    env["SNAPDB_PG_BINDIR"] = str(bindir)
    proc = popen_cli("snapshot", pg.url("orphan_src"), "--store", str(tmp_path / "store"), env=env)
    _wait_for(faults / "snapshot:table-copied.reached", proc)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(marker.read_text())
    os.kill(child, 0)  # running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        subprocess.run(["true"])  # let init reap
        time.sleep(0.1)
    else:
        pytest.fail(f"pg_dump (pid {child}) outlived the killed snapshot")


def test_damage_found_while_decompressing(pg, tmp_path):
    """A file damaged after the up-front check: zstd's checksum stops the load, exit 7."""
    create_db(pg, "zdamage_src", "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g")
    target = create_db(pg, "zdamage_dev", "CREATE TABLE keep (id int)")
    store = tmp_path / "store"
    r = run_cli("snapshot", pg.url("zdamage_src"), "--store", str(store))
    assert r.returncode == 0
    before = table_fingerprints(pg, target)
    faults, env = _pause(tmp_path, "restore:files-verified")
    proc = popen_cli("restore", "--into", target, "--server", pg.url(), "--store", str(store), "--verify", "quick", env=env)
    _wait_for(faults / "restore:files-verified.reached", proc)
    [victim] = list(store.glob("snapshots/*/data/*.copy.zst"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    (faults / "restore:files-verified.go").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == IntegrityError.exit_code, err
    assert "damaged" in err and "internal error" not in err
    assert table_fingerprints(pg, target) == before
    with pg.connect() as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (names.tmp_name(target),)).fetchone()


def test_pg_restore_dies_with_a_killed_restore(pg, tmp_path):
    """Point 21: a restore's pg_restore children die with snapdb too (a killed run must leave
    nothing writing into the build)."""
    create_db(pg, "orphan_rsrc", "CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
    store = str(tmp_path / "store")
    assert run_cli("snapshot", pg.url("orphan_rsrc"), "--store", store).returncode == 0
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "pg_restore-started"
    wrapper = bindir / "pg_restore"
    wrapper.write_text("#!/bin/sh\n"
                       f'[ "$1" = "--version" ] && exec "{pg.tool("pg_restore")}" "$@"\n'
                       f'echo $$ > "{marker}"\n'
                       'exec sleep 60\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    proc = popen_cli("restore", "--into", "orphan_rdst", "--server", pg.url(), "--store", store,
                     env={"SNAPDB_PG_BINDIR": str(bindir)})
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    child = int(marker.read_text())
    os.kill(child, 0)  # running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        subprocess.run(["true"])
        time.sleep(0.1)
    else:
        pytest.fail(f"pg_restore (pid {child}) outlived the killed restore")
