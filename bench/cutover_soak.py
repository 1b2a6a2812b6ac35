#!/usr/bin/env python3
"""Cutover soak (issue 7): many snapshot-mode cutovers under writers, each checked for loss, and
the freeze window's distribution at two database sizes, beside the prediction.

Run with ``make bench-cutover`` or ``.venv/bin/python bench/cutover_soak.py --help``.

On one throwaway cluster (``wal_level = logical``, so the proof decodes WAL) it builds a template
database per size: service0 at release v1.0, the load harness's tables, and at the larger size a
filler table with random text. For every round, production is re-created from the template
(``CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY``), 8 writer processes start
(tests/loadharness.py, the application's role), `snapdb cutover prod --to v2.0 --freeze` runs,
the writers go on against the new database and stop, and the round is checked: every
acknowledged write in the new database exactly once, none acknowledged by the old one after the
freeze point, the proof and the set-aside comparison both clean. The rehearsal (a copy of the
first production upgraded to v2.0) is made once per size; it counts for every round, as the same
database on the same server.

Output: a table per size (freeze window, prediction, steps), the distribution (min, median, 90th
percentile, max), failures if any, written to ``--out`` (default docs/cutover-soak.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from snapdb.cluster import Cluster  # noqa: E402
from tests.loadharness import SCHEMA, Harness, check, read_logs  # noqa: E402


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapdb", "--config", str(cfg), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=1800)


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100 * (len(v) - 1)))))
    return v[k]


def build_template(c: Cluster, name: str, filler_mb: int) -> int:
    c.psql(f'CREATE DATABASE "{name}"')
    with c.connect(name) as conn:
        conn.execute((ROOT / "fixtures" / "service0.sql").read_text())
        conn.execute(SCHEMA)
        conn.execute("GRANT USAGE ON SCHEMA lh TO lh_app; GRANT ALL ON ALL TABLES IN SCHEMA lh TO lh_app; "
                     "GRANT ALL ON ALL SEQUENCES IN SCHEMA lh TO lh_app")
        if filler_mb:
            rows = filler_mb * 1024 * 1024 // 180
            conn.execute("CREATE TABLE app.filler (id int PRIMARY KEY, pad text)")
            conn.execute("INSERT INTO app.filler SELECT g, md5(random()::text) || md5(random()::text) || "
                         "md5(random()::text) || md5(random()::text) FROM generate_series(1, %s) g", (rows,))
            conn.execute("ANALYZE")
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def soak(c: Cluster, work: Path, label: str, template: str, rounds: int, writers: int) -> dict:
    prod = f"soak_{label}"
    store = work / f"store-{label}"
    mig = work / f"migrations-{label}"
    shutil.copytree(ROOT / "migrations", mig, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = work / f"snapdb-{label}.toml"
    cfg.write_text(f'[store]\nurl = "{store}"\n\n[upgrade]\nmigrations = "{mig}"\n\n'
                   f'[services.prod]\nurl = "{c.url(prod)}"\nrole = "production"\n\n'
                   f'[services.dev]\nurl = "{c.url(prod + "_dev")}"\nrole = "dev"\n')
    results = []
    for rnd in range(rounds):
        with c.connect() as conn:
            for (d,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s",
                                     (prod + "%", prod + "_dev")).fetchall():
                conn.execute(f'DROP DATABASE "{d}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{prod}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        if rnd == 0:
            for args in (["snapshot", "prod"], ["restore", "--into", "dev", "--from", "prod"],
                         ["upgrade", "dev", "--to", "v2.0"]):
                r = cli(cfg, *args)
                if r.returncode != 0:
                    raise SystemExit(f"setup {args} failed: {r.stderr}")
        with c.connect() as conn:
            a_oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (prod,)).fetchone()[0]
        app = c.conninfo(prod).replace("user=postgres", "user=lh_app")
        h = Harness(app, ["normal"] * writers, work / f"load-{label}-{rnd}", pause=0.002)
        problems = []
        try:
            h.wait_for_acks(100)
            t = time.monotonic()
            r = cli(cfg, "cutover", "prod", "--to", "v2.0", "--freeze", "--drain-timeout", "1", "--json")
            wall = time.monotonic() - t
            if r.returncode != 0:
                problems.append(f"exit {r.returncode}: {r.stderr.strip().splitlines()[0] if r.stderr.strip() else ''}")
                res = {}
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
            if not (res.get("proof") or {}).get("unchanged"):
                problems.append("proof not clean")
            if not (res.get("compare") or {}).get("matches"):
                problems.append("set-aside database differs from the snapshot")
        steps = {s["name"]: s["seconds"] for s in res.get("steps", [])}
        results.append({"round": rnd + 1, "window": res.get("freeze_window_seconds"),
                        "predicted": res.get("predicted_seconds"), "wall": round(wall, 2), "acks": acks.total,
                        "refused": sum(acks.errors.values()), "steps": steps, "problems": problems})
        log(f"{label} round {rnd + 1}/{rounds}: window {res.get('freeze_window_seconds')} s, predicted "
            f"{res.get('predicted_seconds')} s, {acks.total} acks, problems {problems or 'none'}")
    return {"label": label, "rounds": results}


def render(out: list[dict], sizes: dict, args, started) -> str:
    lines = ["# Cutover soak", "",
             f"Generated by `bench/cutover_soak.py` ({' '.join(sys.argv[1:]) or 'defaults'}) on "
             f"{started:%Y-%m-%d %H:%M} UTC, on this 2-core machine, PostgreSQL from the throwaway cluster "
             "(fsync off, `wal_level = logical`). Snapshot-mode cutovers of `service0` (v1.0 → v2.0) under "
             f"{args.writers} writer processes each; every round checked for loss.", ""]
    for s in out:
        r = [x for x in s["rounds"] if x["window"] is not None]
        w = [x["window"] for x in r]
        bad = [x for x in s["rounds"] if x["problems"]]
        lines += [f"## {s['label']} ({sizes[s['label']] / 1e6:.0f} MB)", "",
                  f"- rounds: {len(s['rounds'])}, clean: {len(s['rounds']) - len(bad)}, with problems: {len(bad)}",
                  f"- acknowledged writes checked: {sum(x['acks'] for x in s['rounds'])}; none lost" if not bad else
                  f"- PROBLEMS: {[x['problems'] for x in bad]}"]
        if w:
            errs = [x["window"] / x["predicted"] for x in r if x["predicted"]]
            lines += [f"- freeze window (s): min {min(w):.2f}, median {statistics.median(w):.2f}, "
                      f"90th percentile {pct(w, 90):.2f}, max {max(w):.2f}",
                      f"- window ÷ prediction: median {statistics.median(errs):.2f}, min {min(errs):.2f}, "
                      f"max {max(errs):.2f}" if errs else "- no prediction (no earlier measurements)"]
            steps = sorted({k for x in r for k in x["steps"]})
            med = {k: statistics.median([x["steps"].get(k) or 0 for x in r]) for k in steps}
            lines += ["- median step durations (s): " + ", ".join(f"{k} {v:.2f}" for k, v in med.items())]
        lines += ["", "| round | window (s) | predicted (s) | command wall (s) | acks | refused writes | problems |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        for x in s["rounds"]:
            lines.append(f"| {x['round']} | {x['window']} | {x['predicted']} | {x['wall']} | {x['acks']} | "
                         f"{x['refused']} | {'; '.join(x['problems']) or '–'} |")
        lines.append("")
    if len(out) > 1:
        a, b = out[0], out[-1]
        wa = statistics.median([x["window"] for x in a["rounds"] if x["window"]])
        wb = statistics.median([x["window"] for x in b["rounds"] if x["window"]])
        lines += ["## How the window grows", "",
                  f"Median window {wa:.2f} s at {sizes[a['label']] / 1e6:.0f} MB and {wb:.2f} s at "
                  f"{sizes[b['label']] / 1e6:.0f} MB: ×{wb / wa:.1f} for ×{sizes[b['label']] / sizes[a['label']]:.1f} "
                  "the data. In snapshot mode the window holds the copy, the restore with its verification and the "
                  "upgrade, so it grows with the database.", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-rounds", type=int, default=50)
    ap.add_argument("--large-rounds", type=int, default=10)
    ap.add_argument("--large-mb", type=int, default=200, help="filler of the larger database, MB")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "docs" / "cutover-soak.md"))
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="snapdb-soak-"))
    c = Cluster("soak", settings={"wal_level": "logical", "max_wal_size": "4GB", "autovacuum": "off"})
    try:
        c.start()
        c.psql("CREATE ROLE lh_app LOGIN")
        sizes = {"small": build_template(c, "tpl_small", 0)}
        out = [soak(c, work, "small", "tpl_small", args.small_rounds, args.writers)]
        if args.large_rounds:
            sizes["large"] = build_template(c, "tpl_large", args.large_mb)
            out.append(soak(c, work, "large", "tpl_large", args.large_rounds, args.writers))
        text = render(out, sizes, args, started)
        Path(args.out).write_text(text)
        print(text)
        return 1 if any(x["problems"] for s in out for x in s["rounds"]) else 0
    finally:
        c.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
