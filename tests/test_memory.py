"""Acceptance 7: a snapshot (and a restore) of a database several times larger than a memory
cap stays under the cap.

Cap: 128 MB for the SUM over snapdb, its worker processes and its pg_dump / pg_restore children,
each counted by proportional set size (Pss, so pages the forked workers share count once),
sampled every 20 ms from /proc. The database is about 475 MB (2 million rows of 192 characters),
checked to be at least 3.5 times the cap. Measured on the 2-core development machine with
--jobs 2: about 94 MB for the snapshot and 61 MB for the restore (printed by the test).
"""

from __future__ import annotations

import sys

from .conftest import create_db
from .rss import run_measured

CAP_KB = 128 * 1024


def _peak_rss_kb(args: list[str]) -> int:
    code, peak, err = run_measured([sys.executable, "-m", "snapdb", *args])
    assert code == 0, err
    return peak


def test_memory_bounded(pg, tmp_path):
    create_db(pg, "memory_big", """
        CREATE TABLE t AS SELECT g AS id,
          md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) ||
          md5((g * 17)::text) || md5((g * 19)::text) || md5((g * 23)::text) AS pad
        FROM generate_series(1, 2000000) g""")
    with pg.connect() as conn:
        size = conn.execute("SELECT pg_database_size('memory_big')").fetchone()[0]
    assert size >= 3.5 * CAP_KB * 1024, size
    store = str(tmp_path / "store")
    snap = _peak_rss_kb(["snapshot", pg.url("memory_big"), "--store", store, "--jobs", "2"])
    rest = _peak_rss_kb(["restore", "--into", "memory_big_copy", "--server", pg.url(), "--store", store])
    print(f"database {size / 1e6:.0f} MB; peak memory (summed Pss) snapshot {snap / 1024:.0f} MB, restore {rest / 1024:.0f} MB")
    assert snap < CAP_KB, f"snapshot peak RSS {snap} kB over the {CAP_KB} kB cap"
    assert rest < CAP_KB, f"restore peak RSS {rest} kB over the {CAP_KB} kB cap"
    pg.psql("DROP DATABASE memory_big")
    pg.psql("DROP DATABASE memory_big_copy")
