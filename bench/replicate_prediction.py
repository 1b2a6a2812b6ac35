#!/usr/bin/env python3
"""Replicate-mode freeze window against its prediction (issue 8, acceptance 3).

On one throwaway cluster (``wal_level = logical``) it builds the cutover test's service
(tests/cutoverenv.py: service0 at v1.0, the load harness's tables, a dev copy upgraded to v2.0
as the rehearsal) and then, ``--rounds`` times: 8 writers start, ``snapdb cutover prod --to v2.0
--freeze --mode replicate`` runs (v2.0's split of a column runs inside the freeze), the writers
stop, the round is checked for loss, and ``snapdb rollback prod --discard-writes`` returns to v1.0
for the next round. The first round's prediction has no earlier replicate cutover to learn from
(it assumes ``rplan.DEFAULT_OVERHEAD``); from the second on, the prediction is the median
overhead of the earlier rounds plus the rehearsal's in-freeze revision time.

Output: one line per round (window, prediction, error, the writers' longest gap, the steps
inside the window), and the median and worst error of the rounds with a learnt prediction. Exit
status 1 when a round lost a write or that median error exceeds 25% (issue 8, acceptance 3). Usage: ``.venv/bin/python bench/replicate_prediction.py --rounds 6``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapdb.cluster import Cluster  # noqa: E402
from tests.cutoverenv import make_env  # noqa: E402
from tests.loadharness import Harness, check, read_logs, unavailability  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--writers", type=int, default=8)
    a = ap.parse_args()
    c = Cluster("rwindow", settings={"wal_level": "logical", "wal_retrieve_retry_interval": "200ms"}).start()
    rows = []
    try:
        tmp = Path(tempfile.mkdtemp(prefix="snapdb-rwindow-"))
        env = make_env(c, tmp, "rwindow")
        for i in range(a.rounds):
            with c.connect(env.prod) as conn:  # a rollback --discard-writes kept the earlier rounds' increments
                conn.execute("UPDATE lh.counters SET n = 0")
            h = Harness(env.app(), ["normal"] * a.writers, tmp / f"load{i}", pause=0.002)
            try:
                h.wait_for_acks(100)
                a_oid = env.oid(env.prod)
                r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--drain-timeout", "1",
                            "--json", timeout=600)
                if r.returncode != 0:
                    print(r.stderr, file=sys.stderr)
                    return 1
                res = json.loads(r.stdout)
                h.wait_for_acks(read_logs(h.logs).total + 100)
            finally:
                acks = h.stop()
            receipt = json.loads((env.store / "catalog" / "receipts" / f"{res['id']}.json").read_text())
            freeze_at = datetime.fromisoformat(receipt["freeze_point"]["at"]).timestamp()
            with c.connect(env.prod) as conn:
                problems = check(acks, conn, a_oid, freeze_at)
            w, p = res["freeze_window_seconds"], res["predicted_seconds"]
            during = (receipt.get("upgrade_during_freeze") or {}).get("seconds")
            steps = {x["name"]: x["seconds"] for x in res["steps"]}
            inside = ", ".join(f"{k} {steps.get(k) or 0:.2f}" for k in ("freeze", "fence", "finalize", "prove", "swap"))
            rows.append((i + 1, w, p, (w - p) / p, during, unavailability(h.logs), len(problems)))
            print(f"round {i + 1}: window {w:.3f} s, predicted {p:.3f} s, error {100 * (w - p) / p:+.0f}%, "
                  f"in-freeze revisions {during:.3f} s, writers' longest gap {rows[-1][5]:.3f} s, "
                  f"problems {problems or 'none'}; steps inside: {inside}", flush=True)
            r = env.cli("rollback", "prod", "--discard-writes", "--json", timeout=600)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
    finally:
        c.stop()
    learnt = [abs(r[3]) for r in rows[1:]]
    if learnt:
        print(f"rounds 2-{len(rows)} (prediction learnt from earlier rounds): median |error| "
              f"{100 * statistics.median(learnt):.0f}%, worst {100 * max(learnt):.0f}%; "
              f"windows median {statistics.median(r[1] for r in rows):.3f} s, max {max(r[1] for r in rows):.3f} s")
        if statistics.median(learnt) > 0.25:
            print("FAILED: the median error of the learnt predictions exceeds 25% (acceptance 3)")
            return 1
    if any(r[6] for r in rows):
        print("FAILED: a round lost or duplicated an acknowledged write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
