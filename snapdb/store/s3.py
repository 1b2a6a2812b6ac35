"""`S3Store`: the store as objects under a prefix of an S3 (or S3-compatible) bucket.

URL: ``s3://bucket/prefix``; every store key is an object key under ``prefix/``. Options:
`endpoint_url` (MinIO, Ceph, moto, ...; path-style addressing is used with one) and `region`.
Credentials come only from boto3's default chain (environment, shared config and credentials
files, container or instance role); a URL or endpoint that carries anything credential-like
(userinfo, a query string) is refused with `ConfigError`, and no message ever names a key.

Contract points specific to S3 (the `Store` protocol is in ``store/__init__.py``):

- `writer` streams a multipart upload, one part buffered at a time (`PART_SIZE`, growing only
  past 2,000 parts so that S3's 10,000-part limit is far away); the upload is completed only
  when the block exits cleanly and aborted otherwise, so nothing is ever visible under the key
  before that, and an object already there stays until the new one replaces it. An object
  smaller than one part is sent with a single PUT on exit. A killed process leaves at most an
  incomplete multipart upload, which is invisible to `list`/`reader` (a lifecycle rule,
  ``AbortIncompleteMultipartUpload``, reclaims its parts; see docs/s3.md).
- `sync` has nothing to do: S3 acknowledges a PUT or a completed upload only once it is durable.
- `reader` streams the GET body; if the connection breaks midway it resumes with a ranged GET
  pinned to the object's ETag (so a concurrent overwrite is an error, not spliced data).
- Failures become `StoreError` (exit 6) with a one-line message naming the store and key, never
  the server's message text or credentials, and a hint; missing objects become `MissingError`.
  botocore's timeouts and retries are bounded (`CONNECT_TIMEOUT`, `READ_TIMEOUT`,
  `MAX_ATTEMPTS`), so an unreachable endpoint fails within seconds.

A store object is pickled into the worker processes; the boto3 client is not part of its state.
The parent makes its client at construction; a forked worker adopts it with the inherited
connections dropped (`_after_fork_in_child`), other processes make their own on first use.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO
from urllib.parse import urlsplit

from ..errors import ConfigError, StoreError
from . import MissingError

PART_SIZE = 5 << 20  # S3's minimum part (MiB-exact); a writer holds one part, so this is its memory
PART_GROWTH_EVERY = 2000  # parts; then each part is one PART_SIZE bigger: 10,000 parts hold ~146 GiB
MAX_PARTS = 10_000
SMALL_BUFFER = 1 << 20  # a writer's buffer grows up to this; a bigger object gets a whole part at once
CONNECT_TIMEOUT = 5  # seconds
READ_TIMEOUT = 60
MAX_ATTEMPTS = 3  # botocore "standard" retry mode, first try included
READ_RESUMES = 3

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "AllAccessDisabled", "AccountProblem"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_POLICY_HINT = "snapdb needs s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and s3:AbortMultipartUpload (docs/s3.md)"
_CREDENTIALS_HINT = ("boto3 looks in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE with ~/.aws/credentials "
                     "and ~/.aws/config, then a container or instance role (docs/s3.md)")


def part_size(number: int) -> int:
    """Size of part `number` (1-based): `PART_SIZE`, one `PART_SIZE` more every 2,000 parts."""
    return PART_SIZE * (1 + (number - 1) // PART_GROWTH_EVERY)


def parse_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into (bucket, prefix without slashes at either end).

    Refuses userinfo (``s3://key:secret@bucket``), query strings and fragments without
    repeating the URL, since they may hold credentials.
    """
    if not url.startswith("s3://"):
        raise ConfigError("an S3 store URL starts with s3://", hint='e.g. url = "s3://my-bucket/snapdb"')
    rest = url[len("s3://"):]
    # "@" anywhere (a secret key may contain "/"), ":" in the bucket part, "?" or "#": refuse
    if "@" in rest or ":" in rest.split("/", 1)[0] or "?" in rest or "#" in rest:
        raise ConfigError(
            "the S3 store URL carries credentials or parameters; snapdb refuses to hold credentials",
            hint="use s3://bucket/prefix and give credentials through the AWS environment, "
                 "~/.aws/credentials or an instance role (docs/s3.md)",
        )
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ConfigError("invalid S3 bucket name in the store URL",  # not echoed: it may be a mistyped secret
                          hint='use s3://bucket/prefix, e.g. "s3://my-bucket/snapdb"')
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigError("the S3 store URL's prefix may not contain '.' or '..' segments")
    return bucket, "/".join(parts)


def check_endpoint(endpoint_url: str) -> str:
    """Return `endpoint_url` (``http(s)://host[:port][/path]``) or refuse it with `ConfigError`."""
    if "@" in endpoint_url:  # userinfo, even one whose secret holds a "/"
        raise ConfigError(
            "the S3 endpoint_url carries credentials; snapdb refuses to hold credentials",
            hint="use http(s)://host:port and give credentials through the AWS environment or files (docs/s3.md)",
        )
    try:
        parts = urlsplit(endpoint_url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise ConfigError("malformed S3 endpoint_url", hint="e.g. endpoint_url = \"https://minio.example.com:9000\"") from None
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigError(
            "the S3 endpoint_url carries credentials or parameters; snapdb refuses to hold credentials",
            hint="use http(s)://host:port and give credentials through the AWS environment or files (docs/s3.md)",
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("the S3 endpoint_url must be http://host[:port] or https://host[:port]")
    return endpoint_url


_inheritable: dict[tuple, object] = {}  # (endpoint_url, region) -> the newest client made here
_adoptable: dict[tuple, object] = {}  # the same, inherited from the parent, connections dropped


def _after_fork_in_child() -> None:
    """In a forked worker: keep the parent's clients for adoption, minus their connections.

    A botocore client is mostly parsed service model (~8 MB a process); a worker adopting its
    parent's shares those pages copy-on-write instead of building its own. What must not cross
    a fork, the pooled keep-alive connections, is dropped here with botocore's own close() (in
    the child: only its copies of the sockets close). If that is not possible, nothing is
    adopted and the worker builds its own clients."""
    global _adoptable
    adoptable = {}
    for key, client in _inheritable.items():
        try:
            client._endpoint.http_session.close()
        except Exception:  # noqa: BLE001  another botocore layout: build new clients instead
            adoptable = {}
            break
        adoptable[key] = client
    _inheritable.clear()
    _adoptable = adoptable


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _quiet_wire_logs() -> None:
    """Keep botocore's and urllib3's DEBUG records (signed headers, session tokens, bodies) out of
    ``--debug`` output: loggers nobody configured get the root's level, but never below INFO
    (a logger's own level is what filters its records; an explicit level is left alone)."""
    level = max(logging.INFO, logging.getLogger().getEffectiveLevel())
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(level)


class S3Store:
    """A store under ``s3://bucket/prefix`` (see module docstring)."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.endpoint_url = check_endpoint(endpoint_url) if endpoint_url else None
        self.region = region
        self._client = None
        self._pid = None
        self.client  # noqa: B018  made now, before snapdb forks its workers (see _after_fork_in_child)

    def __getstate__(self) -> dict:
        return {"bucket": self.bucket, "prefix": self.prefix, "endpoint_url": self.endpoint_url,
                "region": self.region}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _client=None, _pid=None)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- keys and the client -------------------------------------------------------------------
    def _key(self, key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise StoreError(f"invalid store key {key!r}")
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def _list_prefix(self, prefix: str) -> str:
        base = self.prefix + "/" if self.prefix else ""
        return base + prefix.lstrip("/")

    @property
    def client(self):
        """This process's boto3 client: made here, or adopted from the parent that forked us."""
        if self._client is None or self._pid != os.getpid():
            key = (self.endpoint_url, self.region)
            client = _adoptable.get(key) or self._make_client()
            _inheritable[key] = client
            self._client, self._pid = client, os.getpid()
        return self._client

    def _make_client(self):
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError

        _quiet_wire_logs()
        config = BotoConfig(
            connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            # snapdb hashes every object itself (sha256, read back after writing); CRC trailers
            # (aws-chunked uploads) are not understood by every S3-compatible server
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        try:
            client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)
        except BotoCoreError as exc:  # a broken ~/.aws/config, an unknown profile, an invalid region
            raise StoreError(f"cannot set up the S3 client for {self.describe()}: {type(exc).__name__}",
                             hint="check [store] region, AWS_PROFILE and ~/.aws/config (docs/s3.md)") from None
        except ValueError:  # an invalid endpoint from AWS_ENDPOINT_URL or the AWS config file
            raise StoreError(f"invalid S3 endpoint for {self.describe()}",
                             hint="check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 or [store] endpoint_url") from None
        if not self.endpoint_url:  # one from AWS_ENDPOINT_URL(_S3) or the AWS config file
            endpoint = client.meta.endpoint_url
            if "@" in urlsplit(endpoint).netloc:
                raise ConfigError("the S3 endpoint from the AWS environment or config carries userinfo; refusing it")
        return client

    def _where(self) -> str:
        """The endpoint as host[:port], for messages about reaching it."""
        try:
            return urlsplit(self.client.meta.endpoint_url).netloc or "S3"
        except Exception:
            return "S3"

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> StoreError:
        """Map a botocore failure to a one-line, credential-free `StoreError`."""
        from botocore.exceptions import (
            ClientError, ConnectionError as BotoConnectionError, CredentialRetrievalError, NoCredentialsError,
            PartialCredentialsError, ReadTimeoutError,
        )

        what = f"{self.describe()}/{key}" if key else self.describe()
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
            if code in _NOT_FOUND and key is not None:
                return MissingError(f"not in store: {key}")
            if code == "NoSuchBucket":
                return StoreError(f"S3 bucket {self.bucket!r} does not exist ({action} {what})",
                                  hint="create it, or fix [store] url / --store (docs/s3.md)")
            if code == "PreconditionFailed":  # a resumed read pinned to an ETag: the object was replaced
                return StoreError(f"{what} changed while being read", hint="read it again")
            if code in _DENIED:
                return StoreError(f"access denied: {action} {what} ({code})", hint=_POLICY_HINT)
            if code in _BAD_CREDENTIALS:
                return StoreError(f"S3 rejected the credentials: {action} {what} ({code})", hint=_CREDENTIALS_HINT)
            return StoreError(f"S3 error: {action} {what} failed ({code})",
                              hint="run with --debug for the traceback; check the bucket and the endpoint")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return StoreError(f"no usable AWS credentials for {self.describe()} ({type(exc).__name__})",
                              hint=_CREDENTIALS_HINT)
        if isinstance(exc, (BotoConnectionError, ReadTimeoutError)):
            return StoreError(f"cannot reach the S3 endpoint {self._where()}: {action} {what} ({type(exc).__name__})",
                              hint="check [store] endpoint_url / AWS_ENDPOINT_URL and the network")
        return StoreError(f"S3 error: {action} {what} failed ({type(exc).__name__})",
                          hint="run with --debug for the traceback")

    def _call(self, action: str, key: str | None, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            err = self._error(exc, action, key)
        if isinstance(err, MissingError):
            self._check_bucket()  # HEAD says only "404": tell a missing bucket from a missing key
        raise err

    def _check_bucket(self, action: str = "checking") -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # a one-key listing, not HeadBucket: s3:ListBucket is needed anyway, and a GET names the error
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._list_prefix(""), MaxKeys=1)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(f"S3 bucket {self.bucket!r} does not exist ({self.describe()})",
                                 hint="create it, or fix [store] url / --store (docs/s3.md)") from None
            raise self._error(exc, action) from None
        except BotoCoreError as exc:
            raise self._error(exc, action) from None

    # -- the Store protocol --------------------------------------------------------------------
    @contextmanager
    def writer(self, key: str, sync: bool = True) -> Iterator[BinaryIO]:
        """Yield a file whose bytes become the object `key` when the block exits cleanly.

        `sync` is accepted for the protocol: an S3 object is durable once it is visible.
        """
        upload = _Upload(self, self._key(key), key)
        try:
            yield upload
            upload.complete()
        except BaseException:
            upload.abort()
            raise

    def sync(self) -> None:
        """Nothing to do: S3 acknowledges a PUT or a completed multipart upload once durable."""

    def check(self) -> None:
        """The bucket must exist and be listable (a prefix with no objects yet is fine)."""
        self._check_bucket("listing")

    def reader(self, key: str) -> BinaryIO:
        """Return a streaming reader of `key` (`MissingError` if absent)."""
        full = self._key(key)
        resp = self._call("reading", key, self.client.get_object, Bucket=self.bucket, Key=full)
        return io.BufferedReader(_Download(self, full, key, resp), buffer_size=1 << 16)

    def list(self, prefix: str = "") -> list[str]:
        base = self._list_prefix("")
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._list_prefix(prefix))

        def collect() -> None:
            for page in pages:
                out.extend(o["Key"][len(base):] for o in page.get("Contents", ()))

        self._call("listing", None, collect)
        return sorted(out)

    def size(self, key: str) -> int:
        resp = self._call("reading", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(resp["ContentLength"])

    def delete(self, key: str) -> None:
        """Remove `key`; S3's DeleteObject already succeeds for an absent key."""
        self._call("deleting", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except MissingError:
            return False
        return True

    def discard_incomplete(self, prefix: str) -> int:
        """Abort the incomplete multipart uploads under `prefix` (a killed writer's invisible
        parts). Needs s3:ListBucketMultipartUploads; without it nothing is aborted (0), and the
        bucket's lifecycle rule reclaims them (docs/s3.md)."""
        from botocore.exceptions import BotoCoreError, ClientError

        done, markers = 0, {}
        try:
            while True:
                resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self._list_prefix(prefix),
                                                          **markers)
                for u in resp.get("Uploads", ()):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
                    done += 1
                if not resp.get("IsTruncated"):
                    return done
                markers = {"KeyMarker": resp.get("NextKeyMarker", ""),
                           "UploadIdMarker": resp.get("NextUploadIdMarker", "")}
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _DENIED | {"NoSuchUpload"}:
                return done
            raise self._error(exc, "aborting uploads under", prefix) from None
        except BotoCoreError as exc:
            raise self._error(exc, "aborting uploads under", prefix) from None


class _Upload(io.RawIOBase):
    """Write side of `S3Store.writer`: one part buffered; a multipart upload once past one part."""

    def __init__(self, store: S3Store, full_key: str, key: str) -> None:
        self.store, self.full_key, self.key = store, full_key, key
        self._buf = bytearray()  # the part being filled: grows up to SMALL_BUFFER, then is preallocated
        self._pos = 0  # bytes of _buf in use
        self._upload_id: str | None = None
        self._parts: list[dict] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            size = part_size(len(self._parts) + 1)
            if len(self._buf) != size and self._pos + len(view) > SMALL_BUFFER:
                # past a small object: one part allocated once and filled in place, because a
                # growing buffer is copied on regrowth (twice the memory for a moment)
                part = bytearray(size)
                part[:self._pos] = self._buf[:self._pos]
                self._buf = part
            if len(self._buf) == size:
                take = min(size - self._pos, len(view))
                self._buf[self._pos:self._pos + take] = view[:take]
            else:
                take = len(view)
                self._buf += view
            self._pos += take
            view = view[take:]
            if self._pos == size:
                self._send_part()
        return n

    def _take(self) -> bytearray:
        """Hand over the filled part (the buffer itself, not a copy) and start an empty one."""
        body = self._buf
        del body[self._pos:]
        self._buf, self._pos = bytearray(), 0
        return body

    def _send_part(self) -> None:
        s = self.store
        if self._upload_id is None:
            resp = s._call("writing", self.key, s.client.create_multipart_upload, Bucket=s.bucket, Key=self.full_key)
            self._upload_id = resp["UploadId"]
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StoreError(f"object {self.key} is too large for one S3 multipart upload ({MAX_PARTS} parts)")
        resp = s._call("writing", self.key, s.client.upload_part, Bucket=s.bucket, Key=self.full_key,
                       UploadId=self._upload_id, PartNumber=number, Body=self._take())
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def complete(self) -> None:
        s = self.store
        if self._upload_id is None:  # smaller than one part: a single PUT, visible on success
            s._call("writing", self.key, s.client.put_object, Bucket=s.bucket, Key=self.full_key, Body=self._take())
            return
        if self._pos:
            self._send_part()
        s._call("writing", self.key, s.client.complete_multipart_upload, Bucket=s.bucket, Key=self.full_key,
                UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})
        self._upload_id = None

    def abort(self) -> None:
        """Drop the buffered bytes and abort the upload (best effort: a lifecycle rule reclaims
        the parts of an upload that cannot be aborted now; it is never visible either way)."""
        self._buf, self._pos = bytearray(), 0
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.full_key,
                                                         UploadId=upload_id)
            except Exception:  # noqa: BLE001  the original failure is what the caller must see
                pass


class _Download(io.RawIOBase):
    """Read side of `S3Store.reader`: the GET body, resumed by a ranged GET after a broken read."""

    def __init__(self, store: S3Store, full_key: str, key: str, resp: dict) -> None:
        self.store, self.full_key, self.key = store, full_key, key
        self._body = resp["Body"]
        self._etag = resp.get("ETag")
        self._length = int(resp["ContentLength"])
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._pos >= self._length:
            return 0
        want = min(len(b), self._length - self._pos)
        for attempt in range(READ_RESUMES + 1):
            try:
                data = self._body.read(want)
                if not data:
                    raise EOFError("the connection closed early")
                break
            except Exception as exc:  # noqa: BLE001  urllib3 / botocore / socket errors mid-body
                if isinstance(exc, StoreError) or attempt == READ_RESUMES:
                    raise StoreError(
                        f"reading {self.store.describe()}/{self.key} broke off at byte {self._pos} "
                        f"({type(exc).__name__})", hint="check the network and the S3 endpoint; then retry",
                    ) from None
                self._resume()
        n = len(data)
        b[:n] = data
        self._pos += n
        return n

    def _resume(self) -> None:
        """Re-open the body at the current position, pinned to the same object version."""
        s = self.store
        try:
            self._body.close()
        except Exception:  # noqa: BLE001
            pass
        extra = {"IfMatch": self._etag} if self._etag else {}
        resp = s._call("reading", self.key, s.client.get_object, Bucket=s.bucket, Key=self.full_key,
                       Range=f"bytes={self._pos}-", **extra)
        self._body = resp["Body"]

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()
