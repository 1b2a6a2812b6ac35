"""`LocalStore`: the store as a directory tree on a local filesystem.

Objects are written to a hidden temporary name beside their final path, fsynced, renamed into
place and the directory fsynced, so a crash never leaves a half-written object under its real
name. A directory created for an object is made durable too (its parent is fsynced after the
``mkdir``): otherwise a power failure could lose ``snapshots/<id>/`` with everything in it,
manifest included, although each file was fsynced. Directories are created mode 0700 and files
0600: snapshots hold production data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .. import libc
from ..errors import StoreError
from . import MissingError


class LocalStore:
    """A store rooted at a directory (created on first write)."""

    def __init__(self, root: str) -> None:
        if not root:
            raise StoreError("empty store path")
        self.root = Path(root).expanduser()

    def describe(self) -> str:
        return str(self.root)

    def check(self) -> None:
        if not self.root.exists():
            raise StoreError(f"store not found: {self.root} does not exist",
                             hint="check [store] url, SNAPDB_STORE or --store (a snapshot creates it)")
        if not self.root.is_dir():
            raise StoreError(f"store {self.root} is not a directory", hint="check [store] url, SNAPDB_STORE or --store")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StoreError(f"store {self.root} is not readable by this user")

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise StoreError(f"invalid store key {key!r}")
        return self.root.joinpath(*parts)

    @contextmanager
    def writer(self, key: str, sync: bool = True) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            self._mkdirs(path.parent, sync)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror}") from None
        f = os.fdopen(fd, "wb")
        try:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
            f.close()
            os.replace(tmp, path)
            if sync:
                _fsync_dir(path.parent)
        except BaseException as exc:
            f.close()
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
            raise

    def _mkdirs(self, d: Path, sync: bool = True) -> None:
        """Create `d` and its missing parents; with `sync`, fsync the parent of each one created
        (also when a concurrent writer created it first: its entry must be durable before this
        writer's file is, and one fsync per new directory is cheap)."""
        missing = []
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            m.mkdir(mode=0o700, exist_ok=True)
            if sync:
                _fsync_dir(m.parent)

    def sync(self) -> None:
        """Flush the whole filesystem holding the store (syncfs), once for many objects."""
        if not self.root.is_dir():
            return
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def reader(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise MissingError(f"not in store: {key}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                key = (rel / name).as_posix() if str(rel) != "." else name
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise MissingError(f"not in store: {key}") from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def discard_incomplete(self, prefix: str) -> int:
        """Remove the hidden temporary files of writes that never completed under `prefix`."""
        if not self.root.is_dir():
            return 0
        done = 0
        for dirpath, _dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            for name in files:
                if not (name.startswith(".") and name.endswith(".tmp")):
                    continue
                real = name[1:].rsplit(".", 2)[0]  # ".<name>.<uuid>.tmp"
                key = (rel / real).as_posix() if str(rel) != "." else real
                if key.startswith(prefix):
                    (Path(dirpath) / name).unlink(missing_ok=True)
                    done += 1
                    self.delete(key)  # (absent) removes the directories left empty
        return done


_syncfs = libc.function("syncfs")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
