"""Acceptance 7: a snapshot (and a restore) of a database several times larger than an RSS cap
stays under the cap.

Cap: 100 MB peak RSS for the snapdb process, including its pg_dump / pg_restore children
(ru_maxrss of the waited process covers its waited-for descendants). The database is about
475 MB (2 million rows of 192 characters), checked to be at least 4x the cap. Measured on the
2-core development machine: about 55 MB for snapshot and restore alike.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import create_db

CAP_KB = 100 * 1024


def _peak_rss_kb(args: list[str]) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "snapdb", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.decode()
    return usage.ru_maxrss  # kilobytes on Linux


def test_memory_bounded(pg, tmp_path):
    create_db(pg, "memory_big", """
        CREATE TABLE t AS SELECT g AS id,
          md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) ||
          md5((g * 17)::text) || md5((g * 19)::text) || md5((g * 23)::text) AS pad
        FROM generate_series(1, 2000000) g""")
    with pg.connect() as conn:
        size = conn.execute("SELECT pg_database_size('memory_big')").fetchone()[0]
    assert size >= 4 * CAP_KB * 1024, size
    store = str(tmp_path / "store")
    snap = _peak_rss_kb(["snapshot", pg.url("memory_big"), "--store", store, "--jobs", "2"])
    rest = _peak_rss_kb(["restore", "--into", "memory_big_copy", "--server", pg.url(), "--store", store])
    print(f"database {size / 1e6:.0f} MB; peak RSS snapshot {snap / 1024:.0f} MB, restore {rest / 1024:.0f} MB")
    assert snap < CAP_KB, f"snapshot peak RSS {snap} kB over the {CAP_KB} kB cap"
    assert rest < CAP_KB, f"restore peak RSS {rest} kB over the {CAP_KB} kB cap"
    pg.psql("DROP DATABASE memory_big")
    pg.psql("DROP DATABASE memory_big_copy")
