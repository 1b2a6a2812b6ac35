"""Progress is drawn on a terminal only: never with --quiet or --json, never into a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from .conftest import create_db


def _run_on_tty(args: list[str]) -> tuple[int, str, str]:
    """Run snapdb with stderr on a pseudo-terminal; return (code, stdout, terminal text)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "snapdb", *args], stdout=subprocess.PIPE,
                            stderr=slave, env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    proc.wait()
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_on_terminal_only(pg, tmp_path):
    create_db(pg, "progress_src", "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 50000) g;"
                                  "CREATE TABLE u AS SELECT g FROM generate_series(1, 10) g")
    store = str(tmp_path / "store")
    code, out, tty = _run_on_tty(["snapshot", pg.url("progress_src"), "--store", store])
    assert code == 0, tty
    assert "copying tables" in tty and "2/2" in tty and "MB" in tty  # tables done, bytes
    code, out, tty = _run_on_tty(["restore", "--into", "progress_dst", "--server", pg.url(), "--store", store])
    assert code == 0, tty
    assert "loading tables" in tty and "verifying tables" in tty
    for quiet in (["--quiet", "snapshot", pg.url("progress_src"), "--store", store],
                  ["snapshot", pg.url("progress_src"), "--store", store, "--json"]):
        code, out, tty = _run_on_tty(quiet)
        assert code == 0 and tty.strip() == "", tty
    r = subprocess.run([sys.executable, "-m", "snapdb", "snapshot", pg.url("progress_src"), "--store", store],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ""  # a pipe (cron) gets no progress
