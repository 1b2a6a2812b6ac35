"""Review: restores of one target started at the same instant, each with its own maintenance database."""

from __future__ import annotations

import subprocess
import sys
import os

from ..conftest import create_db, databases, run_cli, write_config
from ..dbcompare import table_fingerprints

DATA = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 20000)"


def test_simultaneous_restores(pg, tmp_path, dbname):
    src = create_db(pg, dbname, DATA)
    target = create_db(pg, dbname + "-dev", "CREATE TABLE old (id int)")
    cfg = str(write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                           {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")}))
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    maints = [create_db(pg, f"{dbname}_m{i}") for i in range(4)]
    for rnd in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "snapdb", "--config", cfg, "restore", "--into", "dev",
                                   "--keep-previous", "1", "--jobs", "1"],
                                  env={**os.environ, "SNAPDB_MAINTENANCE_DB": m}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for m in maints]
        res = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(rc for rc, _ in res)
        print(rnd, codes, [e.splitlines()[0] for rc, e in res if rc])
        assert all(rc in (0, 9) for rc, _ in res), res
        assert table_fingerprints(pg, target) == table_fingerprints(pg, src)
        fam = [d for d in databases(pg) if d.startswith(target)]
        print(sorted(fam))
