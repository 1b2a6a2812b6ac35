"""Review: 63-byte non-ASCII target names with quotes, restored three times (rotation)."""

from __future__ import annotations


from snapdb import names

from ..conftest import create_db, databases, run_cli, write_config
from ..dbcompare import table_fingerprints


def test_long_odd_target_name(pg, tmp_path, dbname):
    src = create_db(pg, dbname[:20] + "_src", 'CREATE TABLE "ta\'b""le" (id int); INSERT INTO "ta\'b""le" VALUES (1)')
    target = names.truncate_bytes('dév "q" \'s\' ' + "é" * 40, 63)
    assert len(target.encode()) in (62, 63)
    cfg = str(write_config(tmp_path / "snapdb.toml", tmp_path / "store", {"src": (pg.url(src), "production")}))
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    for i in range(3):
        r = run_cli("--config", cfg, "restore", "--into", target, "--server", "src", "--json")
        assert r.returncode == 0, r.stderr
    fam = sorted(d for d in databases(pg) if d == target or names.is_prev_of(target, d) or d == names.tmp_name(target))
    print(fam)
    assert len(fam) == 2
    assert table_fingerprints(pg, target) == table_fingerprints(pg, src)
