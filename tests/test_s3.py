"""S3 specifics that the shared contract (test_store.py) does not see: multipart uploads as S3
lists them, the server-side GET byte counter, a broken download resumed, and the errors a
missing bucket, an unreachable endpoint, missing credentials or a credential-bearing URL give
through the real command line. All against moto's server on loopback (tests/s3harness.py).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time

import pytest

from snapdb.errors import ConfigError, StoreError
from snapdb.store import s3 as s3mod

from .conftest import run_cli, write_config
from .s3harness import FAKE_KEY_ID, FAKE_SECRET, UNSET, start_server


def _prefix_of(url: str) -> str:
    return url.split("/", 3)[3]


def test_multipart_upload_is_invisible_until_complete(s3):
    url = s3.fresh_url("mpu")
    st, prefix = s3.store(url), _prefix_of(url)
    data = os.urandom(s3mod.PART_SIZE * 2 + 12345)
    with st.writer("big") as f:
        f.write(data[: s3mod.PART_SIZE + 1])  # one part sent: the upload exists, the object not
        assert s3.incomplete_uploads(prefix) == [f"{prefix}/big"]
        assert s3.object_keys(prefix) == [] and not st.exists("big") and st.list("") == []
        f.write(data[s3mod.PART_SIZE + 1:])
    assert s3.incomplete_uploads(prefix) == [] and st.reader("big").read() == data
    etag = s3.client().head_object(Bucket=s3.bucket, Key=f"{prefix}/big")["ETag"]
    assert etag.strip('"').endswith("-3")  # two whole parts and the rest

    with pytest.raises(RuntimeError):
        with st.writer("big") as f:
            f.write(os.urandom(s3mod.PART_SIZE * 2))
            raise RuntimeError("boom")
    assert s3.incomplete_uploads(prefix) == []  # aborted, not left for the lifecycle rule
    assert st.reader("big").read() == data  # the old object is untouched

    with st.writer("small") as f:  # under one part: one PUT, no multipart upload at all
        f.write(b"x" * 1000)
    assert s3.client().head_object(Bucket=s3.bucket, Key=f"{prefix}/small")["ETag"].count("-") == 0


def test_part_sizes_grow_to_fit_s3_part_limit():
    p = s3mod.PART_SIZE
    assert p >= 5 << 20  # S3's minimum for every part but the last
    assert [s3mod.part_size(n) for n in (1, 2000, 2001, 10_000)] == [p, p, 2 * p, 5 * p]
    assert sum(s3mod.part_size(n) for n in range(1, s3mod.MAX_PARTS + 1)) > 140 << 30


def test_get_byte_counter(s3):
    """The helper counts what the server sent for object GETs under a prefix, and nothing else."""
    url = s3.fresh_url("count")
    st, prefix = s3.store(url), _prefix_of(url)
    data = os.urandom(3_000_001)
    with st.writer("snapshots/1/data/a") as f:
        f.write(data)
    with st.writer("snapshots/1/manifest.json") as f:
        f.write(b"{}")
    s3.reset_counters()
    assert s3.get_bytes(prefix) == 0
    st.list("")
    st.size("snapshots/1/data/a")
    assert s3.get_bytes(prefix) == 0 and s3.get_requests(prefix) == 0  # listings and HEADs are not reads
    for _ in range(2):
        with st.reader("snapshots/1/data/a") as r:
            assert hashlib.sha256(r.read()).digest() == hashlib.sha256(data).digest()
    st.reader("snapshots/1/manifest.json").read()
    assert s3.get_bytes(f"{prefix}/snapshots/1/data/") == 2 * len(data)
    assert s3.get_requests(f"{prefix}/snapshots/1/data/") == 2
    assert s3.get_bytes(prefix) == 2 * len(data) + 2 and s3.get_bytes(f"{prefix}/other") == 0
    s3.reset_counters()
    assert s3.get_bytes(prefix) == 0


def test_broken_download_resumes_where_it_stopped(s3):
    url = s3.fresh_url("resume")
    st, prefix = s3.store(url), _prefix_of(url)
    data = os.urandom(5_000_000)
    with st.writer("f") as f:
        f.write(data)
    s3.reset_counters()
    s3.break_next_get(f"{prefix}/f", after=1_234_567)
    with st.reader("f") as r:
        got = b"".join(iter(lambda: r.read(1 << 20), b""))
    assert got == data
    # the first GET stopped at the break; the second (a ranged GET) sent only the rest
    assert s3.get_requests(f"{prefix}/f") == 2 and s3.get_bytes(f"{prefix}/f") == len(data)


def test_overwrite_during_download_is_an_error_not_spliced_data(s3):
    st = s3.store()
    with st.writer("f") as f:
        f.write(os.urandom(4_000_000))
    prefix = st.prefix
    s3.break_next_get(f"{prefix}/f", after=1_000_000)
    r = st.reader("f")
    first = r.read(500_000)
    with st.writer("f") as f:  # replaced while the first GET is still open
        f.write(os.urandom(4_000_000))
    with pytest.raises(StoreError, match="changed while being read"):
        first += r.read()
    r.close()


def test_harness_fails_clearly_when_the_server_does_not_come_up():
    with pytest.raises(RuntimeError, match="moto S3 server did not start within"):
        start_server(timeout=0.01)  # not even the interpreter starts that fast


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_missing_bucket_is_a_store_error(s3, tmp_path):
    started = time.monotonic()
    r = run_cli("snapshots", "--store", "s3://no-such-bucket-snapdb/p",
                env={"AWS_ENDPOINT_URL": s3.endpoint})  # boto3's own variable: no [store] endpoint_url
    assert r.returncode == StoreError.exit_code, r.stderr
    assert "error: S3 bucket 'no-such-bucket-snapdb' does not exist" in r.stderr and "hint:" in r.stderr
    assert time.monotonic() - started < 20
    # restore names the bucket too (a HEAD only says 404; the store tells bucket from key)
    cfg = write_config(tmp_path / "snapdb.toml", "s3://no-such-bucket-snapdb/p", {},
                       store_options={"endpoint_url": s3.endpoint})
    r = run_cli("--config", str(cfg), "verify", "20260101T000000.000Z-abcd")
    assert r.returncode == StoreError.exit_code and "does not exist" in r.stderr, r.stderr


def test_unreachable_endpoint_fails_fast(tmp_path):
    cfg = write_config(tmp_path / "snapdb.toml", "s3://bucket/p", {},
                       store_options={"endpoint_url": f"http://127.0.0.1:{_closed_port()}"})
    started = time.monotonic()
    r = run_cli("--config", str(cfg), "snapshots", env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                                                         "AWS_EC2_METADATA_DISABLED": "true"})
    elapsed = time.monotonic() - started
    assert r.returncode == StoreError.exit_code, r.stderr
    assert "error: cannot reach the S3 endpoint 127.0.0.1:" in r.stderr and "hint:" in r.stderr
    assert elapsed < 20, elapsed


def test_no_credentials_is_a_store_error(s3, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in UNSET and k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    cfg = write_config(tmp_path / "snapdb.toml", s3.url("p"), {}, store_options={"endpoint_url": s3.endpoint})
    r = subprocess.run([sys.executable, "-m", "snapdb", "--config", str(cfg), "snapshots"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == StoreError.exit_code, r.stderr
    assert "error: no usable AWS credentials" in r.stderr and "AWS_PROFILE" in r.stderr


def test_credentials_in_store_url_refused_without_echo(s3, tmp_path):
    secret = "Wj4lrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE"
    r = run_cli("snapshots", "--store", f"s3://AKIAIOSFODNN7EXAMPLE:{secret}@{s3.bucket}/p")
    assert r.returncode == ConfigError.exit_code and "refuses to hold credentials" in r.stderr
    cfg = write_config(tmp_path / "snapdb.toml", s3.url("p"), {},
                       store_options={"endpoint_url": f"http://minio:{secret}@127.0.0.1:9"})
    r2 = run_cli("--config", str(cfg), "snapshots")
    assert r2.returncode == ConfigError.exit_code and "refuses to hold credentials" in r2.stderr
    for out in (r.stdout, r.stderr, r2.stdout, r2.stderr):
        assert secret not in out and "AKIAIOSFODNN7EXAMPLE" not in out


def test_store_errors_never_show_the_credentials(s3, tmp_path):
    """--debug tracebacks included: the fake key id and secret appear in no output."""
    outs = []
    for store in ("s3://no-such-bucket-snapdb/p", s3.url("empty")):
        r = run_cli("--debug", "snapshots", "--store", store, "--json", env={"AWS_ENDPOINT_URL_S3": s3.endpoint})
        outs += [r.stdout, r.stderr]
    assert outs[1] and outs[2].strip() == "[]"
    for out in outs:
        assert FAKE_SECRET not in out and FAKE_KEY_ID not in out


def test_store_config_keys(tmp_path):
    from snapdb.config import load_config
    from snapdb.store import open_store

    p = tmp_path / "snapdb.toml"
    p.write_text('[store]\nurl = "s3://bkt/p"\nendpoint_url = "http://127.0.0.1:9000"\nregion = "eu-west-1"\n')
    cfg = load_config(p)
    assert cfg.store() == "s3://bkt/p"
    assert cfg.store_options == {"endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1"}
    st = open_store(cfg.store(), **cfg.store_options)  # what commands do
    assert (st.endpoint_url, st.client.meta.region_name) == ("http://127.0.0.1:9000", "eu-west-1")
    with pytest.raises(StoreError, match="cannot set up the S3 client") as info:
        open_store("s3://bkt/p", region="not a region!")
    assert "region" in info.value.hint
    p.write_text('[store]\nurl = "s3://bkt/p"\naccess_key = "AKIA"\n')
    with pytest.raises(ConfigError, match="unknown key 'access_key'"):
        load_config(p)
