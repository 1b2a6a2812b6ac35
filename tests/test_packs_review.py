"""Findings 5-8 of the hostile review of snapshot format 3 (review/issue10): durability of new
directories, exclusion patterns in a non-UTF-8 database, TOAST-heavy tables and packs, and the
exit code of a pack whose segments do not tile its stream."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .conftest import create_db, run_cli

# -- 5. new directory entries are made durable ----------------------------------------------------
# Per-file fsync (commit 5a0deaf) replaced the syncfs before the manifest, but no new directory's
# entry was ever made durable: the store fsynced a file and the directory that holds it, never the
# parent of a directory it had just created. `snapshots/<id>/` is created by the snapshot's first
# file (its lease); its entry in `snapshots/` was never fsynced, so after a power failure the whole
# snapshot (manifest included) could be gone although `snapdb snapshot` reported it taken.
# The test traces the fsync calls of a real `snapdb snapshot` (the worker processes are forked, so
# they inherit the trace) and requires the directory holding the new snapshot's directory to have
# been fsynced (or the filesystem synced) before the manifest was published.
TRACE = textwrap.dedent("""
    import os, sys
    log = sys.argv.pop(1)
    def note(text):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (text + "\\n").encode()); os.close(fd)
    real_fsync = os.fsync
    def fsync(fd):
        note("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)
    os.fsync = fsync
    import snapdb.store.local as local
    real_sync = local.LocalStore.sync
    def sync(self):
        note("syncfs"); return real_sync(self)
    local.LocalStore.sync = sync
    import snapdb.manifest as mf
    real_write = mf.write_manifest
    def write_manifest(store, m):
        note("manifest"); return real_write(store, m)
    mf.write_manifest = write_manifest
    import snapdb.snapshot
    snapdb.snapshot.mf.write_manifest = write_manifest
    from snapdb.cli import main
    sys.argv[0] = "snapdb"
    main()
""")


def test_new_snapshot_directory_entry_is_made_durable_before_the_manifest(pg, tmp_path):
    src = create_db(pg, "r10_fsync", "CREATE TABLE a (id int); INSERT INTO a VALUES (1);"
                                      "CREATE TABLE b (id int); INSERT INTO b VALUES (2);")
    store = tmp_path / "store"
    (store / "snapshots").mkdir(parents=True, mode=0o700)  # an existing store
    log = tmp_path / "fsync.log"
    r = subprocess.run([sys.executable, "-c", TRACE, str(log), "snapshot", pg.url(src), "--store", str(store),
                        "--jobs", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = log.read_text().splitlines()
    assert "manifest" in lines, lines
    before = lines[:lines.index("manifest")]
    snapshots_dir = str((store / "snapshots").resolve())
    assert "syncfs" in before or f"fsync {snapshots_dir}" in before, \
        "the entry of the new snapshot directory in snapshots/ was never fsynced:\n" + "\n".join(lines)


def test_local_store_fsyncs_the_parent_of_every_directory_it_creates(tmp_path, monkeypatch):
    import os

    from snapdb.store.local import LocalStore

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    root = tmp_path / "store"
    with LocalStore(str(root)).writer("snapshots/x/data/f") as f:
        f.write(b"1")
    for d in (tmp_path, root, root / "snapshots", root / "snapshots" / "x", root / "snapshots" / "x" / "data"):
        assert str(d.resolve()) in synced, (d, synced)


# -- 7. packing counts TOAST ------------------------------------------------------------------------
# Packing decided by `pg_relation_size` (the main fork only): a table of a few large values has a
# heap of a few pages and everything in TOAST, so it was "small" and packed whatever its size; here
# three tables of 12 MB each shared one 36 MB pack, against "at most 256 tables and about 8 MB per
# pack" (and one worker copied it, one session restored it).
DOCS = ";".join(f"CREATE TABLE doc{i} (id int, body text); ALTER TABLE doc{i} ALTER COLUMN body SET STORAGE EXTERNAL;"
                f"INSERT INTO doc{i} SELECT g, repeat(md5(g::text || '{i}'), 32768) FROM generate_series(1, 12) g"
                for i in range(1, 4))


def test_toast_heavy_tables_do_not_make_oversized_packs(pg, tmp_path):
    src = create_db(pg, "r10_toast_packs", DOCS + ";CREATE TABLE tiny (id int); INSERT INTO tiny VALUES (1)")
    with pg.connect(src) as conn:
        heap, total = conn.execute("SELECT pg_relation_size('doc1'), pg_total_relation_size('doc1')").fetchone()
        assert heap < 1 << 20 <= total  # "under 1 MiB on disk" only if TOAST does not count
    store = tmp_path / "store"
    r = run_cli("snapshot", pg.url(src), "--store", str(store), "--jobs", "1")
    assert r.returncode == 0, r.stderr
    [d] = list((store / "snapshots").iterdir())
    doc = json.loads((d / "manifest.json").read_text())
    packs = {f["path"]: f["raw_size"] for f in doc["files"] if f["path"].startswith("data/pack-")}
    assert all(size <= 9 << 20 for size in packs.values()), packs  # failed: one pack of ~36 MB


def test_plan_files_counts_toast_when_packing():
    from snapdb.postgres import TableRef
    from snapdb.snapshot import plan_files

    docs = [TableRef("s", f"doc{i}", [], bytes=16384, toast_bytes=12 << 20) for i in range(3)]
    tiny = [TableRef("s", f"t{i}", [], bytes=8192, toast_bytes=8192) for i in range(4)]
    files = plan_files(docs + tiny, 1, 150000)
    assert [f for f in files if not f[0].startswith("data/pack-")] == [
        (f"data/{i + 1:05d}.copy.zst", [(i, None)]) for i in range(3)]
    assert [segs for p, segs in files if p.startswith("data/pack-")] == [[(i, None) for i in range(3, 7)]]
    assert TableRef("s", "x", [], bytes=1, toast_bytes=2).data_bytes == 3


