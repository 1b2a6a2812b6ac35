"""Throwaway PostgreSQL clusters (initdb + pg_ctl on a free port) for tests, the demo and bench.

Not used by snapdb's commands. `Cluster.start()` finds ``initdb``/``pg_ctl`` (``$SNAPDB_PG_BINDIR``,
``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``, PATH; the newest major wins unless
``$SNAPDB_TEST_PG_MAJOR`` picks one), creates a data directory, and starts the server on a free
TCP port of 127.0.0.1 with its socket in the cluster's own directory. When running as root the
server runs as an unprivileged OS user (``$SNAPDB_TEST_OS_USER``, else ``postgres``, else
``nobody``). Authentication: trust, except TCP logins of members of role ``snapdb_pw``, which
need a password (for tests of password handling). Failure raises `ClusterError` with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from .pgtools import candidate_dirs, tool_version


class ClusterError(RuntimeError):
    """A throwaway cluster could not be created or started."""


_NEEDED = ("initdb", "pg_ctl", "postgres", "psql", "pg_dump", "pg_restore")


def find_server_bindir() -> str:
    """Return a directory holding initdb, pg_ctl and postgres (see module docstring)."""
    want = os.environ.get("SNAPDB_TEST_PG_MAJOR")
    found = []
    for d in candidate_dirs(int(want) if want else None) + sorted(glob.glob("/usr/lib/postgresql/*/bin")):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            d = os.path.dirname(os.path.realpath(os.path.join(d, "initdb")))
        if all(os.access(os.path.join(d, t), os.X_OK) for t in _NEEDED):
            major = tool_version(os.path.join(d, "initdb"))[0]
            if want and major != int(want):
                continue
            found.append((major, d))
    if not found:
        raise ClusterError(
            "cannot start a throwaway PostgreSQL: no directory with initdb, pg_ctl, postgres, psql, pg_dump "
            "and pg_restore found "
            "(install the postgresql server package, or set SNAPDB_PG_BINDIR)"
        )
    return sorted(found)[-1][1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One throwaway PostgreSQL server; `start()` it, `stop()` it (removes its files)."""

    superuser = "postgres"

    def __init__(self, name: str = "pg", base: str | None = None) -> None:
        self.name = name
        self.base = Path(tempfile.mkdtemp(prefix=f"snapdb-{name}-", dir=base))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "server.log"
        self.port = 0
        self.bindir = ""
        self._run_as: tuple[int, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Cluster:
        self.bindir = find_server_bindir()
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
        self._pg("initdb", "-D", str(self.data), "-U", self.superuser, "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all +snapdb_pw 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
            "host all all ::1/128 trust\n"
        )
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sock}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 60\nshared_buffers = 64MB\n"
                "max_prepared_transactions = 5\nlog_min_messages = warning\n"
            )
        for attempt in range(5):
            self.port = free_port()
            _set_port(self.data / "postgresql.conf", self.port)
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
                break
            except ClusterError:
                if attempt == 4:
                    raise
        self.psql("CREATE ROLE snapdb_pw NOLOGIN")
        return self

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except ClusterError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    def restart(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "60", "restart")

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
        return os.path.join(self.bindir, name)

    def _pg(self, tool: str, *args: str) -> None:
        kwargs = {}
        if self._run_as:
            kwargs = {"user": self._run_as[0], "group": self._run_as[1], "extra_groups": []}
        proc = subprocess.run([self.tool(tool), *args], capture_output=True, text=True,
                              cwd=self.base, timeout=180, **kwargs)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ClusterError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}\n{log}")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _set_port(conf: Path, port: int) -> None:
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith("port = ")]
    conf.write_text("\n".join(lines) + f"\nport = {port}\n")
