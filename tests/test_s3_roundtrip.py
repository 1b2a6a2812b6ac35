"""Snapshots through the S3 store, end to end with the real command line: a round trip onto a
second PostgreSQL server, the GET bytes a restore costs, and a snapshot killed midway.

The S3 server is moto's, on loopback (tests/s3harness.py); the endpoint reaches snapdb through
``[store] endpoint_url`` in snapdb.toml, the credentials through the environment.
"""

from __future__ import annotations

import json
import signal

from snapdb import manifest as mf

from .conftest import create_db, run_cli, sample_sql, write_config
from .dbcompare import assert_same_database

#: GETs of every snapshot file per restore: restore checks each file's sha256 first, then loads
#: it. Reading each object once is the planned change; that change sets this to 1.
RESTORE_READS_PER_FILE = 2

THREE_TABLES = """
CREATE TABLE big (id int PRIMARY KEY, pad text);
INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
CREATE TABLE small (id int);
INSERT INTO small SELECT generate_series(1, 10);
CREATE TABLE third (id int);
INSERT INTO third SELECT generate_series(1, 30);
"""


def _s3_config(tmp_path, s3, url, services):
    return str(write_config(tmp_path / "snapdb.toml", url, services, store_options={"endpoint_url": s3.endpoint}))


def test_s3_roundtrip_onto_second_server(pg, pg2, s3, tmp_path, dbname):
    create_db(pg, dbname, sample_sql())
    url = s3.fresh_url("rt")
    prefix = url.split("/", 3)[3]
    cfg = _s3_config(tmp_path, s3, url, {"src": (pg.url(dbname), "production")})
    r = run_cli("--config", cfg, "snapshot", "src", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    sid = info["id"]
    keys = s3.object_keys(f"{prefix}/snapshots/{sid}/")
    assert f"{prefix}/snapshots/{sid}/manifest.json" in keys and f"{prefix}/snapshots/{sid}/schema.dump.zst" in keys

    r = run_cli("--config", cfg, "snapshots", "--json")
    assert r.returncode == 0 and [s["id"] for s in json.loads(r.stdout)] == [sid]

    s3.reset_counters()
    r = run_cli("--config", cfg, "restore", "--into", dbname, "--server", pg2.url(), "--snapshot", sid, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["server"] == f"127.0.0.1:{pg2.port}"
    assert_same_database(pg, dbname, dbname, dst_pg=pg2)  # independent comparison across servers

    manifest = mf.read_manifest(s3.store(url), sid)
    assert manifest.stored_bytes == info["stored_bytes"] and len(manifest.files) >= 3  # schema + packs (format 3)
    for f in manifest.files:  # every file read, each exactly RESTORE_READS_PER_FILE times
        key = f"{prefix}/{mf.key(sid, f.path)}"
        assert s3.get_bytes(key) == RESTORE_READS_PER_FILE * f.size, f.path
        assert s3.get_requests(key) == RESTORE_READS_PER_FILE, f.path
    data_bytes = s3.get_bytes(f"{prefix}/snapshots/{sid}/") - s3.get_bytes(f"{prefix}/snapshots/{sid}/{mf.MANIFEST}")
    assert data_bytes == RESTORE_READS_PER_FILE * manifest.stored_bytes
    print(f"restore GETs: {data_bytes} bytes of files for {manifest.stored_bytes} stored in {len(manifest.files)} files")

    r = run_cli("--config", cfg, "verify", sid, "--against", f"{pg2.url(dbname)}")
    assert r.returncode == 0, r.stderr


def test_killed_snapshot_leaves_no_listable_snapshot(pg, s3, tmp_path, dbname):
    create_db(pg, dbname, THREE_TABLES)
    url = s3.fresh_url("kill")
    prefix = url.split("/", 3)[3]
    cfg = _s3_config(tmp_path, s3, url, {"src": (pg.url(dbname), "production")})
    r = run_cli("--config", cfg, "snapshot", "src", "--jobs", "1", env={"SNAPDB_KILL_AT": "snapshot:table-copied"})
    assert r.returncode == -signal.SIGKILL, r.stderr

    keys = s3.object_keys(f"{prefix}/")
    assert any("/data/" in k for k in keys), keys  # killed midway: a table's file was already uploaded
    assert not any(k.endswith("/" + mf.MANIFEST) or k.endswith("/" + mf.SCHEMA_FILE) for k in keys), keys
    r = run_cli("--config", cfg, "snapshots", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout + r.stderr

    r = run_cli("--config", cfg, "snapshot", "src", "--json")  # the next run is unaffected
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["id"]
    r = run_cli("--config", cfg, "snapshots", "--json")
    assert [s["id"] for s in json.loads(r.stdout)] == [sid]
    manifests = [k for k in s3.object_keys(f"{prefix}/") if k.endswith("/" + mf.MANIFEST)]
    assert manifests == [f"{prefix}/snapshots/{sid}/{mf.MANIFEST}"]
