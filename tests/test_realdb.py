"""Acceptance 1: the six real databases of fixtures/realdb round-trip faithfully."""

from __future__ import annotations

import os
import subprocess

import pytest

from snapdb import commands
from snapdb.config import load_config

from .conftest import REALDB, create_db, write_config
from .dbcompare import assert_same_database, baseline_copy

CASES = ["pagila", "chinook", "openacs_kernel", "osm_structure", "danbooru_structure", "pg_regression15"]
# PostgreSQL itself deparses some definitions differently after one reload (realdb README):
# compare those with a plain pg_dump | pg_restore copy of the source instead of the source.
REWRITTEN_ON_RELOAD = {"openacs_kernel"}


def load_case(pg, case: str, dbname: str) -> None:
    loader = REALDB / "load.sh"
    if not loader.is_file():
        pytest.fail(f"realdb cases not found at {REALDB} (set SNAPDB_REALDB)", pytrace=False)
    create_db(pg, dbname)
    env = {**os.environ, "PSQL": pg.tool("psql")}
    r = subprocess.run(["bash", str(loader), pg.url(dbname), case], capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"loading {case} failed: {r.stderr[-2000:]}"


@pytest.mark.parametrize("case", CASES)
def test_realdb_roundtrip(pg, tmp_path, store, case):
    src = f"real_{case}"
    load_case(pg, case, src)
    # database-level state that pg_dump alone would lose
    with pg.connect() as conn:
        conn.execute(f'ALTER DATABASE "{src}" SET work_mem = \'24MB\'')
        conn.execute(f"COMMENT ON DATABASE \"{src}\" IS 'realdb {case}'")
    cfg = load_config(write_config(tmp_path / "snapdb.toml", store, {"prod": (pg.url(src), "production")}))
    info = commands.snapshot(cfg, "prod", jobs=2)
    target = f"{src}-dev"
    res = commands.restore(cfg, into=target, from_="prod", server="prod", jobs=2)
    assert res.snapshot_id == info.id
    reference = baseline_copy(pg, src, f"{src}_plain") if case in REWRITTEN_ON_RELOAD else None
    assert_same_database(pg, src, target, schema_reference=reference)


def test_realdb_fixtures_are_the_upstream_files():
    """The copies in fixtures/realdb are byte for byte the files their SHA256SUMS lists."""
    import hashlib

    listed = {}
    for line in (REALDB / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    assert len(listed) == 33
    for name, digest in listed.items():
        assert hashlib.sha256((REALDB / name).read_bytes()).hexdigest() == digest, name
    for case in CASES:  # every case keeps its upstream licence beside its files
        assert any(p.name.lower().startswith(("licen", "copyright")) for p in (REALDB / case).iterdir()), case
