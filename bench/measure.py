"""Measuring one command: wall time, client CPU, server CPU, peak RSS.

- **Client CPU** and **peak RSS** come from `os.wait4` on the command's process: its rusage covers
  the process and every descendant it waited for (so a ``bash -c 'a | b'`` pipeline counts both
  sides). CPU is user + system time summed over that tree; ``ru_maxrss`` is the largest RSS of any
  single process in it, **not** the sum of the processes' RSS.
- **Peak memory (sum)**: the largest sum of proportional set sizes (Pss) over the command's whole
  process tree (snapdb's worker processes, pg_dump, zstd, ...), sampled every 50 ms from /proc
  (`tests/rss.py`); pages shared by forked processes count once.
- **Server CPU** is the CPU time the PostgreSQL server spent meanwhile: the change in user + system
  time of the postmaster and all its children, where children that exited are counted through the
  postmaster's cutime/cstime (it reaps every backend). Read from /proc, so Linux only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.rss import tree_pss_kb  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One measured command (or, in `bench.medians`, the per-figure medians of several)."""

    rc: int
    stdout: str
    wall: float  # seconds
    cpu: float  # seconds, user + system, the command's process tree
    server_cpu: float  # seconds, user + system, the PostgreSQL server's processes
    rss_mb: float  # ru_maxrss in MB (10^6 bytes)
    pss_mb: float = 0.0  # peak summed Pss of the process tree in MB
    size_mb: float = 0.0  # output size in MB, filled in by the caller


def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state, 1 = ppid, 11 = utime …)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


class Meter:
    """Runs commands and measures them against the server whose postmaster.pid is given."""

    def __init__(self, postmaster_pid_file: Path) -> None:
        self.pid_file = postmaster_pid_file

    def _postmaster(self) -> int:
        return int(self.pid_file.read_text().split()[0])

    def _sample(self) -> tuple[int, frozenset[str]]:
        """(CPU ticks used so far by the server tree, pids of the postmaster's children)."""
        pm = str(self._postmaster())
        total, pids = 0, set()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                f = _stat(entry.name)
                if f and f[1] == pm:
                    total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
                    pids.add(entry.name)
        st = _stat(pm)  # after the children: one reaped meanwhile shows up as a changed sample
        return total + (sum(int(x) for x in st[11:15]) if st else 0), frozenset(pids)

    def server_ticks(self, timeout: float = 5.0) -> int:
        """CPU ticks used so far by the server, from two identical samples in a row.

        A backend that exits between reading its stat and the postmaster's would be counted
        twice or not at all; waiting for a stable sample also lets a finished command's
        backends exit.
        """
        prev, deadline = None, time.monotonic() + timeout
        while True:
            cur = self._sample()
            if cur == prev or time.monotonic() > deadline:
                return cur[0]
            prev = cur
            time.sleep(0.03)

    def run(self, cmd: list[str], *, env: dict, cwd: Path, logbase: Path) -> Run:
        """Run `cmd` with stdout/stderr in logbase.out/.err and measure it."""
        ticks0 = self.server_ticks()
        out, err = logbase.with_suffix(".out"), logbase.with_suffix(".err")
        with open(out, "wb") as fo, open(err, "wb") as fe:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
            peak, done = [0], threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], tree_pss_kb(proc.pid) or 0)  # None: the tree ended meanwhile
                    done.wait(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            done.set()
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        ticks1 = self.server_ticks()
        return Run(rc=proc.returncode, stdout=out.read_text(errors="replace"), wall=wall,
                   cpu=ru.ru_utime + ru.ru_stime, server_cpu=(ticks1 - ticks0) / _TICK,
                   rss_mb=ru.ru_maxrss * 1024 / 1e6, pss_mb=peak[0] * 1024 / 1e6)


def tree_size(path: Path) -> int:
    """Bytes in a file, or in all files under a directory (apparent sizes)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
