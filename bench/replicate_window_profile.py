#!/usr/bin/env python3
"""Where a replicate-mode freeze window's time goes: the profile behind `snapdb.cutover.rwindow`.

On a throwaway cluster it builds the cutover test's service (tests/cutoverenv.py) and runs
``--rounds`` cutovers to v2.0 in this process (`snapdb.commands.cutover`, then a rollback with
``--discard-writes``) under ``--writers`` writers, with timing wrappers around the steps inside
the window, the functions they call, every new session and every statement. It prints, per
round: the window beside the preflight's prediction, each timed call inside the window (offset
from the freeze, duration, nesting), and the totals by kind: sessions opened, statements, journal
rewrites, fingerprints, the WAL flush. Those counts are `rwindow.COUNTS`; count again with this
after changing what the window does. The wrappers add their own cost (a few tenths of a
millisecond per statement), so the windows are a little longer than unprofiled ones.

Usage: ``.venv/bin/python bench/replicate_window_profile.py --writers 8 --rounds 2 [--quiet]``
(``--quiet``: the totals only).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import snapdb.cutover.freeze as freeze  # noqa: E402
import snapdb.cutover.journal as journal  # noqa: E402
import snapdb.cutover.proof as proof  # noqa: E402
import snapdb.cutover.replicate as replicate  # noqa: E402
import snapdb.cutover.rswap as rswap  # noqa: E402
import snapdb.cutover.run as run  # noqa: E402
import snapdb.migrate as migrate  # noqa: E402
import snapdb.replication.follow as follow  # noqa: E402
import snapdb.swap as swapping  # noqa: E402
from snapdb import commands  # noqa: E402
from snapdb.cluster import Cluster  # noqa: E402
from snapdb.config import load_config  # noqa: E402
from tests.cutoverenv import make_env  # noqa: E402
from tests.loadharness import Harness  # noqa: E402

CALLS: list[tuple[float, float, int, str]] = []  # (start, end, depth, name), main thread only
IO: list[tuple[str, float, float]] = []  # ("connect" | "statement", start, end), any thread
_depth = threading.local()

WRAPPED = [
    (freeze, ["apply", "drain", "probe", "terminate_others"]),
    (run, ["_freeze", "_freeze_point", "_changes_since_freeze", "close_and_prove", "_end_sessions", "_accepts_writes"]),
    (proof, ["fingerprint", "wait_flushed", "writes_after"]),
    (replicate, ["_fence", "_finalize", "_prove", "_swap", "_steps", "_apply", "count_tables", "replicated_tables"]),
    (rswap, ["_hold_b_snapshot", "_place_reverse_slot", "_ungate", "_close_and_prove"]),
    (follow, ["wait_for", "stop", "copy_sequences"]),
    (swapping, ["swap_in", "close_build"]),
    (journal.Journal, ["save"]),
    (migrate.UpgradeSession, ["apply"]),
    (freeze.Hold, ["__init__"]),
]


def _wrap(owner, name: str) -> None:
    f = getattr(owner, name)
    label = f"{getattr(owner, '__name__', '?').split('.')[-1]}.{name}"

    @functools.wraps(f)
    def timed(*a, **k):
        if threading.current_thread() is not threading.main_thread():
            return f(*a, **k)
        d = getattr(_depth, "d", 0)
        _depth.d = d + 1
        t0 = time.time()
        try:
            return f(*a, **k)
        finally:
            _depth.d = d
            CALLS.append((t0, time.time(), d, label))
    setattr(owner, name, timed)


def _instrument() -> None:
    for owner, names in WRAPPED:
        for n in names:
            _wrap(owner, n)
    connect = psycopg.Connection.connect.__func__
    execute = psycopg.Cursor.execute

    def timed_connect(cls, *a, **k):
        t0 = time.time()
        try:
            return connect(cls, *a, **k)
        finally:
            IO.append(("connect", t0, time.time()))

    def timed_execute(self, *a, **k):
        t0 = time.time()
        try:
            return execute(self, *a, **k)
        finally:
            IO.append(("statement", t0, time.time()))
    psycopg.Connection.connect = classmethod(timed_connect)
    psycopg.connect = psycopg.Connection.connect
    psycopg.Cursor.execute = timed_execute


def report(res, quiet: bool) -> None:
    started = min(e for s, e, d, n in CALLS if n == "freeze.apply")  # the freeze's own, the first
    ended = started + res.freeze_window_seconds
    inside = lambda s, e: s >= started - 0.0005 and e <= ended + 0.0005  # noqa: E731
    pred = res.plan["prediction"]
    print(f"== window {res.freeze_window_seconds:.3f} s, predicted {pred['seconds']:.3f} s ({pred['basis']['overhead'][:40]}…)")
    for kind in ("connect", "statement"):
        xs = [e - s for k, s, e in IO if k == kind and inside(s, e)]
        print(f"  {kind}: {len(xs)}, {sum(xs):.3f} s (median {statistics.median(xs) if xs else 0:.4f} s)")
    for name in ("Journal.save", "proof.fingerprint", "proof.wait_flushed", "Hold.__init__", "replicate.count_tables"):
        xs = [e - s for s, e, d, n in CALLS if n == name and inside(s, e)]
        print(f"  {name}: {len(xs)}, {sum(xs):.3f} s")
    if not quiet:
        for s, e, d, n in sorted(CALLS):
            if inside(s, e) or n in ("run._freeze", "replicate._swap"):  # they begin before or end after it
                print(f"  {'  ' * d}{s - started:7.3f} {e - s:7.3f} {n}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    _instrument()
    c = Cluster("rprofile", settings={"wal_level": "logical", "wal_retrieve_retry_interval": "200ms"}).start()
    try:
        tmp = Path(tempfile.mkdtemp(prefix="snapdb-rprofile-"))
        env = make_env(c, tmp, "rprofile")
        cfg = load_config(env.cfg)
        for i in range(a.rounds):
            CALLS.clear()
            IO.clear()
            h = Harness(env.app(), ["normal"] * a.writers, tmp / f"load{i}", pause=0.002) if a.writers else None
            try:
                if h:
                    h.wait_for_acks(100)
                res = commands.cutover(cfg, "prod", to="v2.0", freeze=True, mode="replicate", drain_timeout=1.0)
            finally:
                if h:
                    h.stop()
            report(res, a.quiet)
            commands.rollback(cfg, "prod", discard_writes=True)
    finally:
        c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
