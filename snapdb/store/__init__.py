"""The snapshot store: one small interface, one class per backend, chosen by URL scheme.

Keys are ``/``-separated relative paths such as ``snapshots/<id>/manifest.json``. Every backend
(`LocalStore` in ``local``, `S3Store` in ``s3``) implements `Store`; the one contract suite in
``tests/test_store.py`` runs against each of them. May import only ``errors`` (and its own
backends' libraries), never the PostgreSQL modules.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol

from ..errors import ConfigError, StoreError


class MissingError(StoreError):
    """The requested key does not exist in the store."""


class Store(Protocol):
    """Contract every backend keeps.

    - `writer(key, sync=True)`: a context manager yielding a binary file to write. The object
      becomes visible under `key` only when the block exits without an exception (atomic
      publish); otherwise nothing is left behind. Overwrites an existing key. With `sync` the
      object is durable on return; without it, only after the next `sync()`.
    - `sync()`: make every object published so far durable.
    - `reader(key)`: a binary file positioned at the start; raises `MissingError` if absent.
    - `list(prefix)`: every key starting with `prefix`, sorted; an empty list when none.
    - `size(key)`: the object's size in bytes; `MissingError` if absent.
    - `delete(key)`: remove the object; idempotent (no error if absent).
    - `exists(key)`: whether the object is present.
    - `discard_incomplete(prefix)`: remove what writes under `prefix` that never completed left
      behind where `list` does not show it (a killed writer's temporary files, incomplete
      multipart uploads); returns how many. Only for a prefix no live writer uses (prune calls
      it for debris whose writer is provably gone). Best effort where the backend may lack the
      permission: then nothing is removed and 0 returned.
    - `describe()`: a credential-free description for messages.
    - `check()`: raise `StoreError` (with a hint) when the store cannot be read at all: a
      missing directory or bucket, a path that is not a directory, no access. Commands that
      read the store call it first, so a typo is an error, not an empty listing. Writing needs
      no check: the first write creates what is missing.
    """

    def writer(self, key: str, sync: bool = True) -> AbstractContextManager[BinaryIO]: ...
    def sync(self) -> None: ...
    def reader(self, key: str) -> BinaryIO: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def discard_incomplete(self, prefix: str) -> int: ...
    def describe(self) -> str: ...
    def check(self) -> None: ...


def _local(url: str, path: str, **_s3_options: str | None) -> Store:
    from .local import LocalStore

    return LocalStore(path)  # endpoint_url / region are S3 settings; a directory ignores them


def _s3(url: str, path: str, **options: str | None) -> Store:
    from .s3 import S3Store

    return S3Store(url, **options)


#: URL scheme -> backend factory(url, rest of the URL after "scheme://", **options)
BACKENDS = {"file": _local, "s3": _s3}


def open_store(url: str, *, endpoint_url: str | None = None, region: str | None = None) -> Store:
    """Return the backend for `url`: a directory path, ``file:///path`` or ``s3://bucket/prefix``.

    `endpoint_url` and `region` (``[store]`` keys) apply to S3 stores only. Raises `ConfigError`
    for an unknown scheme or a URL the backend refuses (e.g. one carrying credentials).
    """
    if "://" in url:
        scheme, _, rest = url.partition("://")
    else:
        scheme, rest = "file", url
    factory = BACKENDS.get(scheme)
    if factory is None:
        raise ConfigError(
            f"unsupported store URL scheme {scheme[:20]!r}",
            hint="use a directory path, file:///path or s3://bucket/prefix",
        )
    return factory(url, rest, endpoint_url=endpoint_url, region=region)
