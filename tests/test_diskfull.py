"""Disk full: a snapshot whose store fills up, and a restore whose scratch space fills up, fail
with one clear line and leave nothing half-done (no manifest, the target unchanged).

A real ENOSPC comes from small tmpfs mounts, which needs root (the suite runs as root in CI).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import create_db, run_cli
from .dbcompare import table_fingerprints


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MB tmpfs; unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs to simulate a full disk (needs root): {r.stderr.strip()}",
                    pytrace=False)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


DATA = "CREATE TABLE t AS SELECT g, md5(g::text) || md5((g * 3)::text) AS v FROM generate_series(1, 100000) g"


def test_snapshot_into_a_full_store(pg, small_fs):
    create_db(pg, "diskfull_src", DATA)
    store = small_fs / "store"
    r = run_cli("snapshot", pg.url("diskfull_src"), "--store", str(store))
    assert r.returncode == 6, r.stderr
    assert r.stderr.startswith("error: ") and "No space left on device" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
    left = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert left == [], left  # the partial snapshot was removed


def test_restore_with_full_scratch_space(pg, tmp_path, small_fs):
    src = create_db(pg, "diskfull_src2", DATA)
    target = create_db(pg, "diskfull_dev", "CREATE TABLE keep (id int); INSERT INTO keep VALUES (1)")
    store = str(tmp_path / "store")
    # the decompressed schema archive (large objects and sequence values included) goes to TMPDIR
    with pg.connect(src) as conn:
        conn.execute("SELECT lo_from_bytea(0, decode(repeat(md5(g::text), 2000), 'hex')) FROM generate_series(1, 80) g")
    assert run_cli("snapshot", pg.url(src), "--store", store).returncode == 0
    before = table_fingerprints(pg, target)
    r = run_cli("restore", "--into", target, "--server", pg.url(), "--store", store,
                env={"TMPDIR": str(small_fs)})
    assert r.returncode == 5, r.stderr
    assert r.stderr.startswith("error: ") and "No space left on device" in r.stderr
    assert table_fingerprints(pg, target) == before
    with pg.connect() as conn:
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert not any(n.startswith(target + "__") for n in names)
    assert not [p for p in Path(small_fs).iterdir()]  # scratch files removed
