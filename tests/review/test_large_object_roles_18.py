"""Review: with pg_dump 17+ (an 18 source), large-object owners and grants are in the archive's
*data* section, which roles.scan never reads and the role map never rewrites."""

from __future__ import annotations

import pytest

from snapdb.pgtools import embedded_bindir

from ..conftest import create_db, ensure_roles, run_cli, start_cluster


@pytest.fixture(scope="module")
def other18():
    c = start_cluster("rv18b", bindir=embedded_bindir(), major=18)
    yield c
    c.stop()


LO_SQL = ("SET ROLE rvlo_app; SELECT lo_from_bytea(0, 'a'), lo_from_bytea(0, 'b'); RESET ROLE;"
          "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")


def _cfg(tmp_path, src_url, dev_url, mapping=True):
    text = f"""[store]
url = "{tmp_path / 'store'}"

[services.prod]
url = "{src_url}"
role = "production"

[services.dev]
url = "{dev_url}"
role = "dev"
""" + ('\n[services.dev.roles]\nrvlo_app = "rvlo_app_dev"\n' if mapping else "")
    (tmp_path / "snapdb.toml").write_text(text)
    return str(tmp_path / "snapdb.toml")


def test_role_map_does_not_map_large_object_owners(pg18, tmp_path, dbname):
    ensure_roles(pg18, "rvlo_app", "rvlo_app_dev")
    src = create_db(pg18, dbname, LO_SQL)
    cfg = _cfg(tmp_path, pg18.url(src), pg18.url(dbname + "_dev"))
    assert run_cli("--config", cfg, "snapshot", "prod").returncode == 0
    r = run_cli("--config", cfg, "restore", "--into", "dev")
    assert r.returncode == 0, r.stderr
    with pg18.connect(dbname + "_dev") as conn:
        owners = {x[0] for x in conn.execute("SELECT pg_get_userbyid(lomowner) FROM pg_largeobject_metadata")}
    print("large object owners after the mapped restore:", owners)
    assert owners == {"rvlo_app_dev"}


def test_missing_large_object_owner_is_not_caught_before_building(pg18, other18, tmp_path, dbname):
    ensure_roles(pg18, "rvlo_app")
    src = create_db(pg18, dbname, LO_SQL)
    cfg = _cfg(tmp_path, pg18.url(src), other18.url(dbname + "_dev"), mapping=False)
    assert run_cli("--config", cfg, "snapshot", "prod").returncode == 0
    trace = tmp_path / "trace"
    trace.mkdir()
    r = run_cli("--config", cfg, "restore", "--into", "dev", env={"SNAPDB_TRACE_DIR": str(trace)})
    print(r.returncode, r.stderr, sorted(p.name for p in trace.iterdir()))
    assert r.returncode == 5
    assert "missing role(s) rvlo_app" in r.stderr, r.stderr  # the documented up-front check
    assert not (trace / "restore:created.passed").exists(), "a build was started before the role problem showed"
