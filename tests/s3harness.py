"""The S3 test server: moto in server mode on loopback, started once per session.

`s3` (session fixture, re-exported by conftest) starts ``tests/s3server.py`` as a subprocess
on an ephemeral 127.0.0.1 port, puts fake credentials into this process's environment (and so
into every snapdb subprocess the tests start), creates the bucket, and stops the server at the
end. It FAILS, never skips, when the server cannot start. The environment is isolated from the
machine's own AWS setup: no profile, no shared files, no instance-metadata look-ups.

Helpers on the returned `S3Server`:

- ``url(prefix)`` → ``s3://<bucket>/<prefix>``; ``fresh_url()`` a prefix no other test uses
- ``store(url)`` → an `S3Store` on the server
- ``get_bytes(prefix)`` / ``get_requests(prefix)``: response-body bytes the server sent, and how
  many object GETs it answered, for object keys starting with ``prefix`` (a full object key in
  the bucket: the store URL's prefix included); ``reset_counters()`` zeroes them
- ``break_next_get(prefix, after)``: the next GET under ``prefix`` breaks off after ``after`` bytes
- ``object_keys(prefix)``, ``incomplete_uploads(prefix)``: the bucket as S3 itself lists it
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BUCKET = "snapdb-test"
PAGE_SIZE = 100  # moto's ListObjects page size here (S3's is 1000): every listing of >100 keys pages
FAKE_KEY_ID = "AKIASNAPDBFAKEKEY123"
FAKE_SECRET = "fakeSecret/Snapdb+TestOnly0123456789abcd"
_prefixes = itertools.count(1)

ENV = {
    "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for a role
    "AWS_CONFIG_FILE": "/nonexistent/snapdb-test/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/snapdb-test/aws-credentials",
}
UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
         "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
         "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")


@dataclass
class S3Server:
    proc: subprocess.Popen
    port: int
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def fresh_url(self, name: str = "t") -> str:
        return self.url(f"{name}-{os.getpid()}-{next(_prefixes)}")

    def store(self, url: str | None = None):
        from snapdb.store.s3 import S3Store

        return S3Store(url or self.fresh_url(), endpoint_url=self.endpoint)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def _control(self, path: str, method: str = "GET") -> dict:
        req = urllib.request.Request(f"{self.endpoint}/_counters/{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def _counts(self, prefix: str) -> dict:
        from urllib.parse import quote

        return self._control("get-bytes?prefix=" + quote(f"{self.bucket}/{prefix}", safe=""))

    def get_bytes(self, prefix: str = "") -> int:
        """Response-body bytes sent for GETs of objects whose key starts with `prefix`."""
        return self._counts(prefix)["bytes"]

    def get_requests(self, prefix: str = "") -> int:
        return self._counts(prefix)["requests"]

    def reset_counters(self) -> None:
        self._control("reset", method="POST")

    def break_next_get(self, prefix: str, after: int) -> None:
        """Make the next GET of an object under `prefix` drop its connection after `after` bytes."""
        from urllib.parse import quote

        self._control(f"break?prefix={quote(f'{self.bucket}/{prefix}', safe='')}&after={after}", method="POST")

    def object_keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", ())]

    def incomplete_uploads(self, prefix: str = "") -> list[str]:
        resp = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [u["Key"] for u in resp.get("Uploads", ())]


def start_server(extra_env: dict | None = None, timeout: float = 60) -> tuple[subprocess.Popen, int]:
    """Start tests/s3server.py; return (process, port). Raises RuntimeError if it does not come up.

    Its stderr goes to a temporary file (a pipe nobody drains would block the server)."""
    import tempfile
    import threading

    env = {**os.environ, "MOTO_S3_DEFAULT_MAX_KEYS": str(PAGE_SIZE), **(extra_env or {})}
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, str(HERE / "s3server.py")], stdout=subprocess.PIPE,
                            stderr=log, text=True, env=env)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)  # the server prints "port N" once it is bound
    line = first[0] if first else ""
    if not line.startswith("port "):
        proc.kill()
        proc.wait()
        log.seek(0)
        tail = " | ".join(log.read().strip().splitlines()[-3:]) or f"exit code {proc.returncode}"
        raise RuntimeError(f"moto S3 server did not start within {timeout:.0f}s: {tail}")
    log.close()
    return proc, int(line.split()[1])


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on loopback with bucket `BUCKET` and fake credentials in the environment."""
    mp = pytest.MonkeyPatch()
    for name in UNSET:
        mp.delenv(name, raising=False)
    for name, value in ENV.items():
        mp.setenv(name, value)
    try:
        proc, port = start_server()
    except (RuntimeError, OSError) as exc:
        mp.undo()
        pytest.fail(f"cannot start the S3 test server (moto[server] is in the test extra): {exc}", pytrace=False)
    server = S3Server(proc, port)
    try:
        server.client().create_bucket(Bucket=BUCKET)
    except Exception as exc:
        stop_server(proc)
        mp.undo()
        pytest.fail(f"the S3 test server started but creating a bucket failed: {exc}", pytrace=False)
    yield server
    stop_server(proc)
    mp.undo()
