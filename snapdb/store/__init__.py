"""The snapshot store: one small interface, one class per backend, chosen by URL scheme.

Keys are ``/``-separated relative paths such as ``snapshots/<id>/manifest.json``. Every backend
implements `Store`; the contract tests in ``tests/test_store.py`` run against each of them.
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
    def describe(self) -> str: ...
    def check(self) -> None: ...


def open_store(url: str) -> Store:
    """Return the backend for `url` (a directory path or ``file://`` URL)."""
    from .local import LocalStore

    backends = {"file": LocalStore}
    if "://" in url:
        scheme, _, rest = url.partition("://")
    else:
        scheme, rest = "file", url
    cls = backends.get(scheme)
    if cls is None:
        raise ConfigError(
            f"unsupported store URL scheme {scheme!r}",
            hint="use a directory path or file:///path (s3:// is not supported yet)",
        )
    return cls(rest if scheme == "file" else url)
