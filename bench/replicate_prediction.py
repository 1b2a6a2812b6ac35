#!/usr/bin/env python3
"""Replicate-mode freeze window against its prediction (issue 8, acceptance 3).

On one throwaway cluster (``wal_level = logical``) it builds ``--services`` fresh copies of the
cutover test's service (tests/cutoverenv.py: service0 at v1.0, the load harness's tables, a dev
copy upgraded to v2.0 as the rehearsal, each with a store of its own) and then, for each,
``--rounds`` times: ``--writers`` writers start (0: idle), ``snapdb cutover prod --to v2.0
--freeze --mode replicate`` runs (v2.0's split of a column runs inside the freeze), the writers
stop, the round is checked for loss, and ``snapdb rollback prod --discard-writes`` returns to
v1.0 for the next round. A service's first round has no earlier replicate cutover to learn from:
its prediction is measured by the preflight (`snapdb.cutover.rwindow`); from the second on, it
is the median overhead of the service's earlier rounds plus the rehearsal's in-freeze revision
time. Every round also shows the preflight's measured estimate beside the actual window.

Output: one line per round (window, prediction and its basis, error, the measured estimate and
its error, the WAL-flush wait of the fence, the writers' longest gap, the steps inside the
window); then the first rounds' errors and the learnt rounds' median and worst error. ``--out
FILE`` appends one JSON object per round (the preflight's measurements and the window's parts,
for calibrating `rwindow`). Exit status 1 when a round lost a write, a first round's error
exceeds 25%, or the learnt rounds' median error does (issue 8, acceptance 3). Usage:
``.venv/bin/python bench/replicate_prediction.py --services 3 --rounds 2 --writers 8``.
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
from tests.loadharness import Acks, Harness, check, read_logs, unavailability  # noqa: E402


def one_round(c, env, tmp: Path, label: str, writers: int) -> dict | None:
    with c.connect(env.prod) as conn:  # a rollback --discard-writes kept the earlier rounds' increments
        conn.execute("UPDATE lh.counters SET n = 0")
    h = Harness(env.app(), ["normal"] * writers, tmp / f"load-{label}", pause=0.002) if writers else None
    try:
        if h:
            h.wait_for_acks(100)
        a_oid = env.oid(env.prod)
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--drain-timeout", "1",
                    "--json", timeout=600)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return None
        res = json.loads(r.stdout)
        if h:
            h.wait_for_acks(read_logs(h.logs).total + 100)
    finally:
        acks = h.stop() if h else Acks()
    receipt = json.loads((env.store / "catalog" / "receipts" / f"{res['id']}.json").read_text())
    freeze_at = datetime.fromisoformat(receipt["freeze_point"]["at"]).timestamp()
    with c.connect(env.prod) as conn:
        problems = check(acks, conn, a_oid, freeze_at)
    pred = res["plan"]["prediction"]
    during = receipt.get("upgrade_during_freeze") or {}
    steps = {x["name"]: x["seconds"] for x in res["steps"]}
    row = {"label": label, "writers": writers, "window": res["freeze_window_seconds"], "predicted": pred["seconds"],
           "basis": pred["basis"]["overhead"], "measured": pred.get("measured"),
           "revisions_rehearsed": pred["parts"]["revisions inside the freeze"],
           "revisions_seconds": sum(m.get("seconds") or 0 for m in during.get("measured") or []),
           "upgrade_seconds": during.get("seconds"), "flush_seconds": (receipt.get("fence") or {}).get("flush_seconds"),
           "gap": unavailability(h.logs) if h else None, "problems": problems,
           "steps": {k: steps.get(k) for k in ("freeze", "fence", "finalize", "prove", "swap")}}
    r = env.cli("rollback", "prod", "--discard-writes", "--json", timeout=600)
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return None
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=1, help="fresh services, each with its first cutover")
    ap.add_argument("--rounds", type=int, default=6, help="cutovers per service")
    ap.add_argument("--writers", type=int, default=8, help="writer processes during each cutover (0: idle)")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON object per round to this file")
    a = ap.parse_args()
    c = Cluster("rwindow", settings={"wal_level": "logical", "wal_retrieve_retry_interval": "200ms"}).start()
    rows = []
    try:
        tmp = Path(tempfile.mkdtemp(prefix="snapdb-rwindow-"))
        for s in range(a.services):
            env = make_env(c, tmp / f"s{s}", f"rwindow{s}")
            for i in range(a.rounds):
                row = one_round(c, env, tmp, f"s{s}r{i + 1}", a.writers)
                if row is None:
                    return 1
                row.update(service=s + 1, round=i + 1)
                rows.append(row)
                if a.out:
                    with a.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                w, p = row["window"], row["predicted"]
                est = (row["measured"] or {}).get("estimate_seconds")
                est = est + row["revisions_rehearsed"] if est is not None else None
                inside = ", ".join(f"{k} {v or 0:.2f}" for k, v in row["steps"].items())
                print(f"service {s + 1} round {i + 1}: window {w:.3f} s, predicted {p:.3f} s "
                      f"({'measured' if row['basis'].startswith('measured') else 'learnt'}), error {100 * (w - p) / p:+.0f}%"
                      + (f"; measured estimate {est:.3f} s ({100 * (w - est) / est:+.0f}%)" if est else "")
                      + f"; fence's WAL flush {row['flush_seconds'] or 0:.3f} s, writers' longest gap "
                      f"{row['gap'] or 0:.3f} s, problems {row['problems'] or 'none'}; inside: {inside}", flush=True)
    finally:
        c.stop()
    failed = False
    first = [(r["window"] - r["predicted"]) / r["predicted"] for r in rows if r["round"] == 1]
    print(f"first cutovers ({a.writers} writers): errors " + ", ".join(f"{100 * e:+.0f}%" for e in first)
          + f"; worst {100 * max(map(abs, first)):.0f}%")
    if max(map(abs, first)) > 0.25:
        print("FAILED: a first cutover's window is more than 25% off its prediction (acceptance 3)")
        failed = True
    learnt = [abs(r["window"] - r["predicted"]) / r["predicted"] for r in rows if r["round"] > 1]
    if learnt:
        print(f"later rounds (prediction learnt from the service's earlier rounds): median |error| "
              f"{100 * statistics.median(learnt):.0f}%, worst {100 * max(learnt):.0f}%; "
              f"windows median {statistics.median(r['window'] for r in rows):.3f} s, max {max(r['window'] for r in rows):.3f} s")
        if statistics.median(learnt) > 0.25:
            print("FAILED: the median error of the learnt predictions exceeds 25% (acceptance 3)")
            failed = True
    if any(r["problems"] for r in rows):
        print("FAILED: a round lost or duplicated an acknowledged write")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
