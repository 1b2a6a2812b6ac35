"""The least-privilege IAM policy of docs/s3.md is enough, and what it leaves out is refused.

A dedicated moto server (tests/s3harness.py) with authorization turned on after setup: moto
then checks every request's signature against its IAM users and the action against their
policies, as AWS does. Snapshot, list, verify and restore run as a user holding exactly the
documented policy; a user without s3:GetObject gets a one-line access-denied error.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from snapdb.errors import StoreError

from .conftest import create_db, run_cli, write_config
from .s3harness import start_server, stop_server

BUCKET = "snapdb-iam"
PREFIX = "team/snapdb"


def policy(bucket: str, prefix: str, object_actions: list[str], list_bucket: bool = True) -> dict:
    """The policy of docs/s3.md (test_docs_show_this_policy keeps the two identical)."""
    statements = [
        {"Sid": "ListTheStorePrefix", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
        {"Sid": "ReadWriteSnapshots", "Effect": "Allow", "Action": object_actions,
         "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"},
    ]
    return {"Version": "2012-10-17", "Statement": statements if list_bucket else statements[1:]}


DOCUMENTED_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


@pytest.fixture
def iam_s3(s3):  # s3: for the session's fake-credential environment; this server is separate
    import boto3

    proc, port = start_server()  # raises (the test fails) if it cannot start
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", endpoint_url=endpoint)
        users = {}
        for name, doc in (("snapdb", policy(BUCKET, PREFIX, DOCUMENTED_ACTIONS)),
                          ("no-get", policy(BUCKET, PREFIX, [a for a in DOCUMENTED_ACTIONS if a != "s3:GetObject"])),
                          ("no-list", policy(BUCKET, PREFIX, DOCUMENTED_ACTIONS, list_bucket=False))):
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="snapdb-store", PolicyDocument=json.dumps(doc))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            users[name] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                           "AWS_ENDPOINT_URL": endpoint}
        req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "application/json"})  # a form body would be parsed away
        urllib.request.urlopen(req, timeout=10).read()  # from now on every request is authorized
        yield endpoint, users
    finally:
        stop_server(proc)


def test_documented_policy_is_enough(pg, iam_s3, tmp_path, dbname, monkeypatch):
    endpoint, users = iam_s3
    create_db(pg, dbname, "CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    cfg = str(write_config(tmp_path / "snapdb.toml", f"s3://{BUCKET}/{PREFIX}", {"src": (pg.url(dbname), "production")}))
    env = users["snapdb"]

    # authorization is really on: the harness's own fake key is unknown to this server
    r = run_cli("--config", cfg, "snapshots", env={"AWS_ENDPOINT_URL": endpoint})
    assert r.returncode == StoreError.exit_code and "S3 rejected the credentials" in r.stderr, r.stderr

    r = run_cli("--config", cfg, "snapshot", "src", "--json", env=env)
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["id"]
    r = run_cli("--config", cfg, "snapshots", "--json", env=env)
    assert r.returncode == 0 and [s["id"] for s in json.loads(r.stdout)] == [sid], r.stderr
    r = run_cli("--config", cfg, "verify", sid, env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("--config", cfg, "restore", "--into", dbname + "_copy", "--server", pg.url(), "--snapshot", sid, env=env)
    assert r.returncode == 0, r.stderr
    with pg.connect(dbname + "_copy") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 5000

    from snapdb.store import open_store  # the rest of the store contract, as the same user

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    st = open_store(f"s3://{BUCKET}/{PREFIX}")
    with pytest.raises(RuntimeError):  # aborting a multipart upload: s3:AbortMultipartUpload
        with st.writer("x/big") as f:
            f.write(os.urandom(6 << 20))
            raise RuntimeError("boom")
    assert not st.exists("x/big")
    with st.writer("x/small") as f:
        f.write(b"1")
    st.delete("x/small")
    st.delete("x/small")
    assert st.list("x/") == []


def test_missing_permission_is_a_clear_error(pg, iam_s3, tmp_path, dbname):
    endpoint, users = iam_s3
    create_db(pg, dbname, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    cfg = str(write_config(tmp_path / "snapdb.toml", f"s3://{BUCKET}/{PREFIX}", {"src": (pg.url(dbname), "production")}))
    r = run_cli("--config", cfg, "snapshot", "src", env=users["no-get"])  # reads each file back: GetObject
    assert r.returncode == StoreError.exit_code, r.stderr
    line = r.stderr.splitlines()[0]
    assert line.startswith("error: access denied: reading s3://snapdb-iam/team/snapdb/snapshots/") and "AccessDenied" in line
    assert "s3:GetObject" in r.stderr  # the hint lists what the policy needs
    assert users["no-get"]["AWS_SECRET_ACCESS_KEY"] not in r.stderr + r.stdout
    r = run_cli("--config", cfg, "snapshots", "--json", env=users["snapdb"])
    assert r.returncode == 0 and json.loads(r.stdout) == []  # the failed snapshot cleaned up after itself
    r = run_cli("--config", cfg, "snapshots", env=users["no-list"])
    assert r.returncode == StoreError.exit_code, r.stderr
    assert r.stderr.startswith("error: access denied: listing s3://snapdb-iam/team/snapdb (AccessDenied)")


def test_docs_show_this_policy():
    """docs/s3.md's first JSON block is the policy these tests grant (bucket my-bucket, prefix snapdb)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "s3.md").read_text()
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == policy("my-bucket", "snapdb", DOCUMENTED_ACTIONS)
