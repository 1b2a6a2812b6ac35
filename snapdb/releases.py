"""Migration scripts as a release sees them: read from a git tag or the working tree, checked
against the ledger, and recorded as new releases.

`open_scripts(dir, tag)` copies the scripts into a private temporary directory and opens them
with alembic's `ScriptDirectory`: from the tag's tree when ``dir`` is in a git work tree that
has tag ``tag`` (uncommitted edits cannot leak into a release), else from the working tree.
Everything snapdb checksums, plans and runs is that private copy, so what runs is byte for byte
what was checked (no stale ``__pycache__``, no edit between check and run).

`check_release` raises `IntegrityError` naming the first file whose digest differs from the
ledger (both digests in the message); `add_release` records the single head as a new release.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError

from . import gitsource
from .errors import ConfigError, IntegrityError, RefusedError
from .ledger import Ledger, Release, check_tag, checksum, file_digest
from .manifest import utcnow

log = logging.getLogger(__name__)

ENV_FILE = "env.py"


@dataclass
class FileDiff:
    """One script whose digest differs from the ledger (`actual` None: the file is missing)."""

    path: str
    expected: str | None
    actual: str | None

    def __str__(self) -> str:
        if self.actual is None:
            return f"{self.path}: missing (ledger sha256 {self.expected})"
        if self.expected is None:
            return f"{self.path}: not in the ledger (sha256 {self.actual})"
        return f"{self.path}: ledger sha256 {self.expected}, scripts sha256 {self.actual}"

    def to_json(self) -> dict:
        return {"file": self.path, "expected": self.expected, "actual": self.actual}


@dataclass
class Scripts:
    """A private copy of a migrations directory, opened with alembic."""

    dir: Path
    origin: str  # "git tag v2.0 (commit 1a2b3c4d5e6f)" or "working tree /path/migrations"
    commit: str | None
    script: ScriptDirectory
    _digests: dict[str, str] = field(default_factory=dict)

    def knows(self, revision: str) -> bool:
        try:
            return self.script.get_revision(revision) is not None
        except CommandError:
            return False

    def heads(self) -> list[str]:
        return sorted(self.script.get_heads())

    def path_to(self, revision: str) -> list[Script]:
        """The revisions from base to `revision` inclusive, in upgrade order."""
        try:
            return list(reversed(list(self.script.iterate_revisions(revision, "base"))))
        except CommandError as exc:
            raise IntegrityError(f"revision {revision} is not in the scripts of {self.origin}: {exc}") from None

    def relpath(self, sc: Script) -> str:
        return Path(os.path.realpath(sc.path)).relative_to(os.path.realpath(self.dir)).as_posix()

    def files_for(self, revision: str) -> dict[str, str]:
        """{relative path: sha256} of the files a release of `revision` covers, in rule order."""
        paths = ([ENV_FILE] if (self.dir / ENV_FILE).is_file() else []) + [self.relpath(s) for s in self.path_to(revision)]
        out = {}
        for p in paths:
            if p not in self._digests:
                self._digests[p] = file_digest((self.dir / p).read_bytes())
            out[p] = self._digests[p]
        return out

    def compare(self, release: Release) -> list[FileDiff]:
        """Differences between `release`'s ledger entry and these scripts (empty: identical)."""
        if not self.knows(release.revision):  # e.g. the revision's file was deleted or renumbered
            out = []
            for p, d in release.files.items():
                f = self.dir / p
                actual = file_digest(f.read_bytes()) if f.is_file() else None
                if actual != d:
                    out.append(FileDiff(p, d, actual))
            return out or [FileDiff(f"revision {release.revision}", release.checksum, None)]
        have = self.files_for(release.revision)
        out = [FileDiff(p, d, have.get(p)) for p, d in release.files.items() if have.get(p) != d]
        out += [FileDiff(p, None, d) for p, d in have.items() if p not in release.files]
        return out


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


@contextlib.contextmanager
def open_scripts(migrations_dir: Path, tag: str | None = None) -> Iterator[Scripts]:
    """Yield the scripts of `migrations_dir` as of git tag `tag` if it exists, else the working tree."""
    migrations_dir = Path(migrations_dir).resolve()
    if not migrations_dir.is_dir():
        raise ConfigError(f"migrations directory not found: {migrations_dir}")
    tmp = Path(tempfile.mkdtemp(prefix="snapdb-scripts-"))
    try:
        commit = None
        gd = gitsource.locate(migrations_dir) if tag else None
        if gd is not None and (commit := gitsource.tag_commit(gd, tag)):
            gitsource.export(gd, tag, tmp)
            origin = f"git tag {tag} (commit {commit[:12]})"
        else:
            _copy_tree(migrations_dir, tmp)
            origin = f"working tree {migrations_dir}"
        if not (tmp / "versions").is_dir():
            raise ConfigError(f"no versions/ directory in the migrations of {origin}",
                              hint="a migrations directory is an alembic script directory: env.py and versions/")
        try:
            script = ScriptDirectory(str(tmp))
            script.get_heads()  # loads every revision now: errors surface here, named
        except Exception as exc:  # a script that does not import, duplicate ids, cycles ...
            raise ConfigError(f"cannot read the migration scripts of {origin}: {type(exc).__name__}: {exc}") from None
        yield Scripts(dir=tmp, origin=origin, commit=commit, script=script)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_release(release: Release, scripts: Scripts) -> None:
    """Raise `IntegrityError` unless `scripts` match `release`'s ledger entry byte for byte."""
    diffs = scripts.compare(release)
    if diffs:
        d = diffs[0]
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise IntegrityError(
            f"release {release.tag}: script {d}{more} in {scripts.origin}",
            hint="a released script must never change: restore it, and put the change in a new revision and release",
        )


def add_release(migrations_dir: Path, tag: str) -> tuple[Release, str]:
    """Record the single head of `migrations_dir` as release `tag`; return it and the scripts' origin.

    Reads the tag's tree when git has tag `tag`, else the working tree. Refuses when the tag is
    already recorded, when there is not exactly one head, or when a release already recorded on
    the head's path no longer matches its scripts (a released script was edited).
    """
    check_tag(tag)
    ledger = Ledger.load(migrations_dir)
    if tag in ledger.releases:
        r = ledger.releases[tag]
        raise RefusedError(
            f"release {tag} is already recorded (revision {r.revision}); recorded releases never change",
            hint="record the new head under a new tag",
        )
    with open_scripts(migrations_dir, tag) as scripts:
        heads = scripts.heads()
        if len(heads) != 1:
            raise RefusedError(
                f"the scripts of {scripts.origin} have {len(heads)} heads ({', '.join(heads) or 'no revisions'}); "
                "a release is one head",
                hint="merge the heads first (alembic merge), or add a first revision",
            )
        head = heads[0]
        on_path = {s.revision for s in scripts.path_to(head)}
        for old in ledger.releases.values():
            if old.revision in on_path:
                check_release(old, scripts)
        files = scripts.files_for(head)
        release = Release(tag=tag, revision=head, checksum=checksum(files), files=files,
                          recorded_at=utcnow().isoformat(timespec="seconds"))
        ledger.add(release)
        return release, scripts.origin
