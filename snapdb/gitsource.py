"""Read a directory as of a git tag, through the ``git`` program (no shell, no working tree).

Contract: `locate(dir)` tells whether `dir` lies in a git work tree (None when it does not, or
when git is not installed and no ``.git`` is in sight); `tag_commit` resolves ``refs/tags/TAG``
to a commit id (None when there is no such tag); `export` writes the directory's files as
committed in that tag's tree into an empty directory, ignoring the working tree and the index.
Other git failures raise `ConfigError` with git's message; git missing beside a ``.git``
raises `ToolError`.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ToolError

_TIMEOUT = 120


@dataclass(frozen=True)
class GitDir:
    """A directory inside a git work tree: the repository root and the path below it."""

    root: Path
    prefix: str  # "/"-separated path of the directory inside the repository; "" for the root

    def describe(self) -> str:
        return f"{self.root}" + (f" ({self.prefix})" if self.prefix else "")


def _git(args: list[str], cwd: Path, binary: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, env=env,
                          timeout=_TIMEOUT, text=not binary, stdin=subprocess.DEVNULL)


def _first_error(stderr: str | bytes) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pick = next((ln for ln in lines if ln.lower().startswith(("fatal:", "error:"))), lines[0] if lines else "failed")
    return pick.removeprefix("fatal: ").removeprefix("error: ")


def locate(directory: Path) -> GitDir | None:
    """Return the git work tree holding `directory`, or None when it is not in one."""
    directory = Path(directory).resolve()
    try:
        proc = _git(["rev-parse", "--show-toplevel", "--show-prefix"], directory)
    except FileNotFoundError:
        if any((p / ".git").exists() for p in (directory, *directory.parents)):
            raise ToolError(
                f"{directory} is in a git repository but the git program was not found",
                hint="install git: release scripts are read from git tags when they exist",
            ) from None
        return None
    if proc.returncode != 0:
        if "not a git repository" in proc.stderr:
            return None
        raise ConfigError(f"git failed in {directory}: {_first_error(proc.stderr)}",
                          hint="if git reports dubious ownership: git config --global --add safe.directory DIR")
    lines = proc.stdout.splitlines()
    if not lines:
        return None
    prefix = lines[1].strip().rstrip("/") if len(lines) > 1 else ""
    return GitDir(root=Path(lines[0].strip()), prefix=prefix)


def tag_commit(gd: GitDir, tag: str) -> str | None:
    """Return the commit id tag `tag` points at, or None when the repository has no such tag."""
    proc = _git(["rev-parse", "-q", "--verify", f"refs/tags/{tag}^{{commit}}"], gd.root)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def export(gd: GitDir, tag: str, dest: Path) -> None:
    """Write the directory's files as of tag `tag` into `dest` (``git archive``, no working tree)."""
    proc = _git(["archive", "--format=tar", f"refs/tags/{tag}:{gd.prefix}"], gd.root, binary=True)
    if proc.returncode != 0:
        where = gd.prefix or "the repository root"
        raise ConfigError(
            f"cannot read {where} at git tag {tag!r}: {_first_error(proc.stderr)}",
            hint="the migrations directory must be committed in the tag's tree",
        )
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
        tar.extractall(dest, filter="data")
