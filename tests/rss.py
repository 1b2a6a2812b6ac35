"""Peak memory of a process tree, sampled from /proc: the sum over snapdb, its workers and its
pg_dump / pg_restore children, which ru_maxrss (a per-process maximum) does not give.

Each process counts its proportional set size (Pss, /proc/PID/smaps_rollup): pages shared by the
forked workers are split between them rather than counted once per process.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pss_kb(pid: int) -> int | None:
    """Summed Pss of `pid` and its descendants in kB; None once `pid` itself is gone. A process
    whose memory cannot be read raises (a silent 0 would pass any cap)."""
    kids, total, todo = _children(), 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                found = False
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        found = True
                if not found:
                    raise RuntimeError(f"/proc/{p}/smaps_rollup has no Pss line")
        except (FileNotFoundError, ProcessLookupError):  # the process ended meanwhile
            if p == pid:
                return None  # ended between two samples
        except PermissionError as exc:
            raise RuntimeError(f"cannot read the memory of process {p}: {exc}") from None
    return total


def run_measured(argv: list[str], env: dict | None = None, interval: float = 0.02) -> tuple[int, int, str]:
    """Run `argv`; return (exit code, peak summed Pss of its process tree in kB, stderr)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = 0
    done = threading.Event()

    samples = 0

    def sample() -> None:
        nonlocal peak, samples
        while not done.is_set():
            kb = tree_pss_kb(proc.pid)
            if kb is not None:
                peak, samples = max(peak, kb), samples + 1
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    done.set()
    t.join()
    if samples < 5 or peak < 10 * 1024:  # a Python process alone is over 10 MB: a lower peak was not measured
        raise RuntimeError(f"memory was not measured ({samples} samples, peak {peak} kB)")
    return proc.returncode, peak, err.decode(errors="replace")
