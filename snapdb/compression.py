"""zstd streams over store objects, with sha256 and sizes computed on the fly.

Contract: `ZstdSink` compresses whatever is written into one store object in bounded memory (a
fixed write buffer plus zstd's window) and reports the stored object's sha256 and size and the
uncompressed size. `open_zstd` returns a streaming decompressor over a stored object.
`digest` re-reads an object and returns its sha256 and size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from .store import Store

LEVEL = 1
WRITE_BUFFER = 1 << 20
READ_CHUNK = 1 << 20


@dataclass
class FileEntry:
    """One stored file as the manifest records it."""

    path: str
    sha256: str
    size: int
    raw_size: int

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "raw_size": self.raw_size}


class _Hashing:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class ZstdSink:
    """Compress a stream into `store` under `key`; use as a context manager.

    The object is published only if the block exits cleanly. `entry` holds the result after exit.
    """

    def __init__(self, store: Store, key: str, path: str, level: int = LEVEL, sync: bool = True) -> None:
        self.store, self.key, self.path = store, key, path
        self.level, self.sync = level, sync
        self.raw_size = 0
        self._buf = bytearray()
        self.entry: FileEntry | None = None

    def __enter__(self) -> ZstdSink:
        self._cm = self.store.writer(self.key, sync=self.sync)
        f = self._cm.__enter__()
        self._hashing = _Hashing(f)
        self._z = _compressor(self.level).stream_writer(self._hashing, closefd=False)
        return self

    @property
    def position(self) -> int:
        """Uncompressed bytes written so far."""
        return self.raw_size + len(self._buf)

    def write(self, data: bytes | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= WRITE_BUFFER:
            self._drain()

    def _drain(self) -> None:
        if self._buf:
            self.raw_size += len(self._buf)
            self._z.write(self._buf)
            self._buf = bytearray()

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._drain()
                self._z.close()  # ends the frame; the underlying store file stays open
        finally:
            self._cm.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.entry = FileEntry(self.path, self._hashing.sha.hexdigest(), self._hashing.size, self.raw_size)
        return False


_compressors: dict[int, zstandard.ZstdCompressor] = {}


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per level and process (creating one per file costs more than small files)."""
    if level not in _compressors:
        _compressors[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return _compressors[level]


def open_zstd(store: Store, key: str) -> BinaryIO:
    """Return a streaming decompressor reading the stored object `key`."""
    raw = store.reader(key)
    return zstandard.ZstdDecompressor().stream_reader(raw, read_size=READ_CHUNK, closefd=True)


def digest(store: Store, key: str) -> tuple[str, int]:
    """Return (sha256 hex, size) of the stored object `key`, reading it in chunks."""
    sha = hashlib.sha256()
    size = 0
    with store.reader(key) as f:
        while chunk := f.read(READ_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size
