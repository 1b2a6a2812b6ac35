"""The release ledger ``releases.toml``: each release tag → alembic revision and script checksums.

The ledger lives in the migrations directory and is only ever appended to (`Ledger.add`); a
recorded release never changes. Each entry holds the revision, the sha256 of every file on the
path from base to that revision, and the checksum over them (`checksum`, the byte rule below and
in ``docs/upgrades.md``). This module reads and writes the file and computes checksums; finding
the files (working tree or git tag) is `snapdb.releases`' job.

Checksum rule: the files are ``env.py`` (when present) followed by the revision files from base
to the release's revision in upgrade order, each named by its path relative to the migrations
directory with ``/`` separators. For each file take ``sha256(raw bytes)`` as 64 lowercase hex
digits; the release checksum is the sha256 (hex) of the concatenation, over the files in that
order, of ``path (UTF-8) + b"\\0" + file digest (ASCII) + b"\\n"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

LEDGER_FILE = "releases.toml"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9._+-]+)*$")

HEADER = """\
# snapdb release ledger: release tag -> alembic revision and the checksums of the scripts on the
# path from base to that revision. Written by `snapdb release add`; never edit a recorded release.
# Checksum rule: docs/upgrades.md.
"""


def file_digest(data: bytes) -> str:
    """sha256 of one script's raw bytes, as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def checksum(files: dict[str, str]) -> str:
    """Release checksum over `files` ({relative path: file digest}, in path order)."""
    h = hashlib.sha256()
    for path, digest in files.items():
        h.update(path.encode("utf-8") + b"\0" + digest.encode("ascii") + b"\n")
    return h.hexdigest()


def check_tag(tag: str) -> str:
    """Return `tag` if it is a usable release tag (git-style name), else raise `ConfigError`."""
    if not (0 < len(tag) <= 100 and _TAG.match(tag)) or ".." in tag or tag.endswith((".lock", ".")):
        raise ConfigError(
            f"invalid release tag {tag!r}",
            hint="use letters, digits and . _ + - / (like a git tag), e.g. v2.0",
        )
    return tag


@dataclass
class Release:
    """One recorded release."""

    tag: str
    revision: str
    checksum: str
    files: dict[str, str]
    recorded_at: str = ""

    def to_json(self) -> dict:
        return {"tag": self.tag, "revision": self.revision, "checksum": self.checksum,
                "recorded_at": self.recorded_at, "files": dict(self.files)}


@dataclass
class Ledger:
    """The releases recorded in ``<migrations>/releases.toml`` (in recording order)."""

    path: Path
    releases: dict[str, Release] = field(default_factory=dict)

    @classmethod
    def load(cls, migrations_dir: Path) -> Ledger:
        """Read the ledger of `migrations_dir`; a missing file is an empty ledger."""
        path = Path(migrations_dir) / LEDGER_FILE
        ledger = cls(path=path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ledger
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
        entries = data.get("releases", {})
        if set(data) - {"releases"} or not isinstance(entries, dict):
            raise ConfigError(f"{path}: only [releases.\"TAG\"] tables are allowed")
        for tag, e in entries.items():
            where = f"{path} [releases.{json.dumps(tag)}]"
            if not isinstance(e, dict):
                raise ConfigError(f"{where} must be a table")
            files = e.get("files")
            ok = (
                isinstance(e.get("revision"), str) and e["revision"]
                and isinstance(e.get("checksum"), str) and _HEX64.match(e["checksum"])
                and isinstance(files, dict) and files
                and all(isinstance(v, str) and _HEX64.match(v) for v in files.values())
            )
            if not ok:
                raise ConfigError(f"{where}: needs revision, checksum (64 hex digits) and files")
            if checksum(files) != e["checksum"]:
                raise ConfigError(f"{where}: checksum does not match its files; the ledger was edited by hand")
            ledger.releases[tag] = Release(tag, e["revision"], e["checksum"], dict(files),
                                           str(e.get("recorded_at", "")))
        return ledger

    def get(self, tag: str) -> Release:
        """Return the release `tag`; `ConfigError` (with the known tags) if there is none."""
        if tag not in self.releases:
            known = ", ".join(self.releases) or "none recorded"
            raise ConfigError(
                f"unknown release {tag!r} in {self.path} (releases: {known})",
                hint="record one with: snapdb release add TAG",
            )
        return self.releases[tag]

    def tag_for(self, revision: str | None) -> str | None:
        """The most recently recorded tag whose revision is `revision`, if any."""
        found = [r.tag for r in self.releases.values() if revision and r.revision == revision]
        return found[-1] if found else None

    def add(self, release: Release) -> None:
        """Append `release` and rewrite the file atomically (temporary file, fsync, rename)."""
        if release.tag in self.releases:
            raise ValueError(f"release {release.tag} already recorded")
        self.releases[release.tag] = release
        parts = [HEADER]
        for r in self.releases.values():
            t = _q(r.tag)
            parts.append(f"\n[releases.{t}]\nrevision = {_q(r.revision)}\nchecksum = {_q(r.checksum)}\n"
                         f"recorded_at = {_q(r.recorded_at)}\n\n[releases.{t}.files]\n")
            parts += [f"{_q(p)} = {_q(d)}\n" for p, d in r.files.items()]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(parts))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _q(text: str) -> str:
    # JSON string escapes are valid in TOML basic strings
    return json.dumps(text, ensure_ascii=False)
