"""The store contract (``snapdb/store/__init__.py``), one suite run against every backend.

``local`` is a directory under tmp_path; ``s3`` is a fresh prefix in the bucket of the moto S3
server the harness runs on loopback (tests/s3harness.py), reached over HTTP through boto3.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing as mp
import os
import pickle

import pytest

from snapdb.errors import ConfigError, SnapdbError
from snapdb.store import MissingError, open_store

from .s3harness import FAKE_KEY_ID, FAKE_SECRET

BIG = 21 << 20  # 21 MiB: five parts of an S3 multipart upload (4 × 5 MiB + 1 MiB)


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "s"))
    s3 = request.getfixturevalue("s3")
    return open_store(s3.fresh_url(request.node.name.split("[")[0][5:25]), endpoint_url=s3.endpoint)


def _pattern(n: int, seed: int = 0) -> bytes:
    """`n` bytes that differ everywhere (a repeated block would hide an out-of-order part)."""
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest() * 1024
        i += 1
    return bytes(out[:n])


def test_store_contract(any_store):
    s = any_store
    assert s.list("") == [] and not s.exists("a/b")
    with s.writer("a/b") as f:
        f.write(b"hello")
    assert s.exists("a/b") and s.size("a/b") == 5 and s.reader("a/b").read() == b"hello"
    with pytest.raises(RuntimeError):  # a failed write publishes nothing, keeps the old object
        with s.writer("a/b") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert s.reader("a/b").read() == b"hello"
    with s.writer("a/c") as f:
        f.write(b"x")
    assert s.list("a/") == ["a/b", "a/c"] and s.list("z") == []
    with s.writer("a/d", sync=False) as f:  # published at once, durable after sync()
        f.write(b"later")
    assert s.reader("a/d").read() == b"later"
    s.sync()
    with s.writer("a/empty") as f:
        pass
    assert s.size("a/empty") == 0 and s.reader("a/empty").read() == b""
    s.delete("a/d")
    s.delete("a/b")
    s.delete("a/b")  # idempotent
    assert s.list("a/") == ["a/c", "a/empty"]
    with pytest.raises(MissingError):
        s.reader("a/b")
    with pytest.raises(MissingError):
        s.size("a/b")
    with pytest.raises(SnapdbError):
        s.reader("../etc/passwd")


def test_large_object_streams(any_store):
    """An object of several S3 parts, written in 1 MiB writes, reads back byte for byte."""
    s = any_store
    data = _pattern(BIG)
    with s.writer("snapshots/x/data/00001.copy.zst") as f:
        for i in range(0, BIG, 1 << 20):
            f.write(data[i:i + (1 << 20)])
    assert s.size("snapshots/x/data/00001.copy.zst") == BIG
    sha, n = hashlib.sha256(), 0
    with s.reader("snapshots/x/data/00001.copy.zst") as r:
        while chunk := r.read(1 << 20):
            sha.update(chunk)
            n += len(chunk)
    assert (n, sha.hexdigest()) == (BIG, hashlib.sha256(data).hexdigest())


def test_failed_large_write_leaves_nothing_and_keeps_old(any_store):
    s = any_store
    with pytest.raises(RuntimeError):  # fails after four full parts were sent
        with s.writer("k/new") as f:
            f.write(_pattern(BIG))
            raise RuntimeError("boom")
    assert not s.exists("k/new") and s.list("k/") == []
    old = _pattern(100_000, seed=1)
    with s.writer("k/old") as f:
        f.write(old)
    with pytest.raises(KeyboardInterrupt):  # any exception, also BaseException
        with s.writer("k/old") as f:
            f.write(_pattern(BIG, seed=2))
            raise KeyboardInterrupt
    assert s.reader("k/old").read() == old and s.list("k/") == ["k/old"]


def test_list_pages_and_sorts(any_store):
    """More keys than one listing page (the S3 server pages every 100 keys), sorted as strings,
    only under the prefix asked for."""
    s = any_store
    names = [f"snapshots/{i:04d}/manifest.json" for i in range(0, 250)]
    names += ["snapshots/a-b", "snapshots/a/b", "snapshots/A", "snapshotsX"]
    for name in reversed(names):
        with s.writer(name) as f:
            f.write(b"m")
    got = s.list("snapshots/")
    assert got == sorted(n for n in names if n.startswith("snapshots/")) and len(got) == 253
    assert s.list("snapshots/01") == [f"snapshots/{i:04d}/manifest.json" for i in range(100, 200)]
    assert len(s.list("")) == 254


def test_missing_keys(any_store):
    s = any_store
    with pytest.raises(MissingError):
        s.reader("snapshots/none/manifest.json")
    with pytest.raises(MissingError):
        s.size("nothing")
    assert not s.exists("nothing") and s.list("nothing") == []
    s.delete("nothing")


def _read_in_child(store, key: str) -> bytes:
    with store.writer(key + ".child") as f:
        f.write(b"from child")
    return store.reader(key).read()


def test_store_works_in_worker_processes(any_store):
    """Stores travel to the worker processes by pickle (forked, as snapdb's pool does) and work
    there; the parent's own client is not shared with the child."""
    s = any_store
    with s.writer("w/k") as f:
        f.write(b"parent")
    s.list("")  # the parent has used its connection before the fork
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
        assert ex.submit(_read_in_child, s, "w/k").result(timeout=60) == b"parent"
    assert s.reader("w/k.child").read() == b"from child"
    assert pickle.loads(pickle.dumps(s)).reader("w/k").read() == b"parent"


def test_describe_has_no_secret(any_store):
    text = any_store.describe()
    assert text and FAKE_SECRET not in text and FAKE_KEY_ID not in text and "@" not in text
    if text.startswith("s3://"):
        assert text.startswith("s3://snapdb-test/") and "127.0.0.1" not in text


def test_local_store_is_private(tmp_path):
    s = open_store("file://" + str(tmp_path / "priv"))
    with s.writer("snapshots/x/f") as f:
        f.write(b"secret data")
    for p in (tmp_path / "priv").rglob("*"):
        assert p.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("url,endpoint", [
    ("s3://AKIAEXAMPLE:Sup3rSecret@bucket/prefix", None),
    ("s3://bucket/prefix?secret_key=Sup3rSecret", None),
    ("s3://AKIAEXAMPLE:Sup3r/Secret@bucket/prefix", None),  # a secret with a slash
    ("s3://AKIAEXAMPLE:Sup3rSecret/prefix", None),  # no "@": still not a bucket name
    ("s3://bucket/prefix", "http://user:Sup3r/Secret@127.0.0.1:9000"),
    ("s3://bucket/prefix", "http://user:Sup3rSecret@127.0.0.1:9000"),
    ("s3://bucket/prefix", "http://127.0.0.1:9000/?X-Amz-Credential=Sup3rSecret"),
])
def test_s3_refuses_credentials_in_url_or_endpoint(url, endpoint):
    with pytest.raises(ConfigError, match="refuses to hold credentials") as info:
        open_store(url, endpoint_url=endpoint)
    text = info.value.message + (info.value.hint or "")
    assert "Sup3r" not in text and "AKIAEXAMPLE" not in text and "\n" not in info.value.message


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "s3://b/../x", "s3://bad bucket/x", "s3://Sup3rSecretBucketTypo!/x"])
def test_s3_malformed_urls(url):
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert "Sup3r" not in info.value.message + (info.value.hint or "")


def test_s3_prefix_joining(s3):
    """Keys live under the URL's prefix, with exactly one slash between; a neighbour prefix
    that merely starts with the same letters is not listed."""
    base = s3.fresh_url("join")[len("s3://snapdb-test/"):]
    a = open_store(f"s3://snapdb-test/{base}/", endpoint_url=s3.endpoint)
    b = open_store(f"s3://snapdb-test/{base}x", endpoint_url=s3.endpoint)
    with a.writer("snapshots//1/manifest.json") as f:
        f.write(b"a")
    with b.writer("snapshots/2/manifest.json") as f:
        f.write(b"b")
    assert s3.object_keys(base) == [f"{base}/snapshots/1/manifest.json", f"{base}x/snapshots/2/manifest.json"]
    assert a.list("") == ["snapshots/1/manifest.json"] and b.list("") == ["snapshots/2/manifest.json"]
    assert a.describe() == f"s3://snapdb-test/{base}"
    root = open_store("s3://snapdb-test", endpoint_url=s3.endpoint)
    assert f"{base}/snapshots/1/manifest.json" in root.list(base) and root.describe() == "s3://snapdb-test"


def test_environment_has_fake_credentials_only(s3):
    """The harness isolates the tests from any real AWS setup on the machine."""
    assert os.environ["AWS_ACCESS_KEY_ID"] == FAKE_KEY_ID and "AWS_PROFILE" not in os.environ
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"


def test_discard_incomplete_removes_only_unfinished_writes_under_the_prefix(any_store):
    """What a killed writer leaves where `list` does not show it (a temporary file, an incomplete
    multipart upload) goes; completed objects and other prefixes' writes in progress stay."""
    s = any_store
    with s.writer("q/keep") as f:
        f.write(b"done")
    killed, other = s.writer("p/x"), s.writer("q/running")
    for cm in (killed, other):
        cm.__enter__().write(_pattern(6 << 20))  # past one S3 part: a multipart upload exists
    assert s.list("p/") == [] and s.list("q/") == ["q/keep"]
    assert s.discard_incomplete("p/") == 1
    assert s.discard_incomplete("p/") == 0
    other.__exit__(None, None, None)  # the write under q/ was untouched and still completes
    assert s.list("") == ["q/keep", "q/running"] and s.size("q/running") == 6 << 20
    assert s.discard_incomplete("q/") == 0
    killed.gen.close()  # the killed writer's own clean-up finds nothing left to remove
