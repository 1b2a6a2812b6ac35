#!/usr/bin/env python3
"""Write unavailability of a cutover as the writers see it (issue 8, acceptance 2): replicate
mode against snapshot mode, on the same databases at two sizes, over several rounds each.

Run with ``make bench-replicate`` or ``.venv/bin/python bench/replicate_window.py --help``.

On one throwaway cluster (``wal_level = logical``) it builds a template database per size:
service0 at release v1.0, the load harness's tables and a filler table of random text (about
100 MB and 1 GB by default). Every round re-creates production from the template (``CREATE
DATABASE … TEMPLATE … STRATEGY FILE_COPY``), starts 8 writer processes (tests/loadharness.py,
the application's role: inserts with client ids, counter updates, sequence-backed inserts,
reconnecting after errors, every acknowledged commit logged), runs `snapdb cutover prod --to v1.1
--freeze --mode MODE`, lets the writers go on against the new database, stops them and checks
the round: every acknowledged write in the new database exactly once, none acknowledged by the
old one after the freeze. Release v1.1's revision (a nullable column and an index) is compatible
with replication, so in replicate mode nothing of the upgrade is inside the freeze.

Measured per round: the **unavailability** the writers saw (the longest time, over all writers,
from a refused write to the next acknowledged one: `loadharness.unavailability`), the freeze
window snapdb reports, its prediction, and the window's parts. Output: a Markdown section (median
and maximum per size and mode, and the rounds) printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cutover_soak import build_template, cli  # noqa: E402  (bench/, this script's folder)
from snapdb.cluster import Cluster  # noqa: E402
from tests.loadharness import Harness, check, read_logs, unavailability  # noqa: E402


def log(msg: str) -> None:
    print(f"[window {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_size(c: Cluster, work: Path, label: str, template: str, rounds: int, writers: int, modes: list[str]) -> list:
    prod = f"win_{label}"
    store = work / f"store-{label}"
    mig = work / f"migrations-{label}"
    shutil.copytree(ROOT / "migrations", mig, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = work / f"snapdb-{label}.toml"
    cfg.write_text(f'[store]\nurl = "{store}"\n\n[upgrade]\nmigrations = "{mig}"\n\n'
                   f'[services.prod]\nurl = "{c.url(prod)}"\nrole = "production"\n\n'
                   f'[services.dev]\nurl = "{c.url(prod + "_dev")}"\nrole = "dev"\n')
    out = []
    for rnd in range(rounds):
        for mode in modes:
            with c.connect() as conn:
                for (d,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s",
                                         (prod + "%", prod + "_dev")).fetchall():
                    conn.execute(f'DROP DATABASE "{d}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{prod}" TEMPLATE "{template}" STRATEGY FILE_COPY')
            if not out:  # the rehearsal, once per size: a copy of production upgraded to v1.1
                for args in (["snapshot", "prod"], ["restore", "--into", "dev", "--from", "prod"],
                             ["upgrade", "dev", "--to", "v1.1"]):
                    r = cli(cfg, *args)
                    if r.returncode != 0:
                        raise SystemExit(f"setup {args} failed: {r.stderr}")
            with c.connect() as conn:
                a_oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (prod,)).fetchone()[0]
            app = c.conninfo(prod).replace("user=postgres", "user=lh_app")
            h = Harness(app, ["normal"] * writers, work / f"load-{label}-{mode}-{rnd}", pause=0.002)
            problems, res = [], {}
            try:
                h.wait_for_acks(100)
                t = time.monotonic()
                r = cli(cfg, "cutover", "prod", "--to", "v1.1", "--freeze", "--mode", mode, "--drain-timeout", "1",
                        "--json")
                wall = time.monotonic() - t
                if r.returncode != 0:
                    problems.append(f"exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1]}")
                else:
                    res = json.loads(r.stdout)
                    h.wait_for_acks(read_logs(h.logs).total + 100)
            finally:
                acks = h.stop()
            if res:
                receipt = json.loads((store / "catalog" / "receipts" / f"{res['id']}.json").read_text())
                freeze_at = datetime.datetime.fromisoformat(receipt["freeze_point"]["at"]).timestamp()
                with c.connect(prod) as conn:
                    problems += check(acks, conn, a_oid, freeze_at)
                res["swap_parts"] = receipt.get("swap_parts") or {}
                if not (res.get("compare") or {}).get("matches"):
                    problems.append("set-aside database differs")
            if res and mode == "replicate":  # end the rollback window (reverse replication) before the next round
                r = cli(cfg, "cutover", "prod", "--finish")
                if r.returncode != 0:
                    problems.append(f"--finish failed: {(r.stderr.strip().splitlines() or [''])[-1]}")
            gap = unavailability(h.logs)
            steps = {s["name"]: s["seconds"] for s in res.get("steps", [])}
            out.append({"mode": mode, "round": rnd + 1, "unavailable": round(gap, 3),
                        "window": res.get("freeze_window_seconds"), "predicted": res.get("predicted_seconds"),
                        "wall": round(wall, 1), "acks": acks.total, "steps": steps,
                        "parts": (res.get("window_parts") or {}), "problems": problems})
            log(f"{label} {mode} round {rnd + 1}/{rounds}: unavailable {gap:.2f} s, window "
                f"{res.get('freeze_window_seconds')} s (predicted {res.get('predicted_seconds')}), wall {wall:.0f} s, "
                f"{acks.total} acks, problems {problems or 'none'}; swap: {(res or {}).get('swap_parts')}")
    return out


def render(results: dict, sizes: dict, args, started) -> str:
    lines = ["## Write unavailability: replicate mode against snapshot mode", "",
             f"Generated by `bench/replicate_window.py` ({' '.join(sys.argv[1:]) or 'defaults'}) on "
             f"{started:%Y-%m-%d %H:%M} UTC on this 2-core machine (throwaway cluster, fsync off, "
             f"`wal_level = logical`). Cutovers of `service0` v1.0 → v1.1 (a revision compatible with "
             f"replication: in replicate mode none of the upgrade is inside the freeze) under {args.writers} "
             "writer processes; every round checked for loss. *Unavailable* is what the writers saw: the longest "
             "time from a refused write to the next acknowledged one; *window* is what snapdb reports (freeze to "
             "the first moment the new database accepts writes).", "",
             "| size | mode | rounds | unavailable median (s) | unavailable max (s) | window median (s) | "
             "predicted median (s) | lost writes |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for label, rows in results.items():
        for mode in args.modes:
            r = [x for x in rows if x["mode"] == mode]
            ok = [x for x in r if x["window"] is not None]
            u = [x["unavailable"] for x in ok]
            w = [x["window"] for x in ok]
            p = [x["predicted"] for x in ok if x["predicted"] is not None]
            bad = [x for x in r if x["problems"]]
            lines.append(f"| {sizes[label] / 1e6:.0f} MB | {mode} | {len(r)} | "
                         f"{statistics.median(u):.2f} | {max(u):.2f} | {statistics.median(w):.2f} | "
                         f"{statistics.median(p) if p else float('nan'):.2f} | "
                         f"{'none' if not bad else [x['problems'] for x in bad]} |" if u else
                         f"| {sizes[label] / 1e6:.0f} MB | {mode} | {len(r)} | – | – | – | – | {[x['problems'] for x in bad]} |")
    rep = {label: [x["unavailable"] for x in rows if x["mode"] == "replicate" and x["window"] is not None]
           for label, rows in results.items()}
    if len(rep) > 1 and all(rep.values()):
        (la, a), (lb, b) = list(rep.items())[0], list(rep.items())[-1]
        lines += ["", f"Replicate mode: median unavailability {statistics.median(a):.2f} s at {sizes[la] / 1e6:.0f} MB "
                      f"and {statistics.median(b):.2f} s at {sizes[lb] / 1e6:.0f} MB (difference "
                      f"{abs(statistics.median(b) - statistics.median(a)):.2f} s; target: at most 2 s, and the same "
                      "within 0.5 s at both sizes)."]
    lines += ["", "<details><summary>Every round</summary>", "",
              "| size | mode | round | unavailable (s) | window (s) | predicted (s) | cutover wall (s) | acks | steps (s) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for label, rows in results.items():
        for x in rows:
            st = ", ".join(f"{k} {v}" for k, v in x["steps"].items() if v is not None)
            lines.append(f"| {sizes[label] / 1e6:.0f} MB | {x['mode']} | {x['round']} | {x['unavailable']} | "
                         f"{x['window']} | {x['predicted']} | {x['wall']} | {x['acks']} | {st} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="100,1000", help="filler sizes in MB, comma-separated")
    ap.add_argument("--modes", default="replicate,snapshot")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "docs" / "replicate-window.md"))
    args = ap.parse_args()
    args.modes = args.modes.split(",")
    started = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="snapdb-window-"))
    c = Cluster("window", settings={"wal_level": "logical", "max_wal_size": "8GB", "autovacuum": "off",
                                    "wal_retrieve_retry_interval": "200ms"})
    try:
        c.start()
        c.psql("CREATE ROLE lh_app LOGIN")
        sizes, results = {}, {}
        for mb in [int(x) for x in args.sizes.split(",")]:
            label = f"{mb}mb"
            sizes[label] = build_template(c, f"tpl_{label}", mb)
            log(f"template {label}: {sizes[label] / 1e6:.0f} MB")
            results[label] = run_size(c, work, label, f"tpl_{label}", args.rounds, args.writers, args.modes)
        text = render(results, sizes, args, started)
        Path(args.out).write_text("# Cutover windows by mode and size\n\n" + text)
        print(text)
        return 1 if any(x["problems"] for rows in results.values() for x in rows) else 0
    finally:
        c.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
