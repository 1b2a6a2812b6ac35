"""The benchmark report: machine description, targets of issue 3 (checked, not asserted), tables."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Issue 3's targets, as (label, peer tool, figure, limit): met when snapdb ÷ peer <= limit.
TARGETS = [
    ("`snapdb snapshot` ≥ 4× faster than `pg_dump -Fc`", "snapshot", "pg_dump -Fc", "wall", 0.25),
    ("`snapdb snapshot` output no larger than `pg_dump -Fc`", "snapshot", "pg_dump -Fc", "size_mb", 1.0),
    ("aim: `snapdb snapshot` within 1.5× of `pg_dump -Fc -Z0` (read ceiling)", "snapshot",
     "pg_dump -Fc -Z0 (read ceiling)", "wall", 1.5),
    ("`snapdb restore` no slower than `pg_restore -j{j}` of `-Fd`", "restore", "pg_restore -j{j} (-Fd)", "wall", 1.0),
    ("aim: `snapdb restore` at 0.8× of `pg_restore -j{j}`", "restore", "pg_restore -j{j} (-Fd)", "wall", 0.8),
    ("`snapdb restore --verify quick` no slower than `pg_restore -j{j}`", "restore", "pg_restore -j{j} (-Fd)",
     "wall", 1.0, "snapdb restore --verify quick"),
    ("aim: `snapdb restore --verify quick` at 0.8× of `pg_restore -j{j}`", "restore", "pg_restore -j{j} (-Fd)",
     "wall", 0.8, "snapdb restore --verify quick"),
]
RSS_CAP_MB = 300
FLAT_LIMIT = 1.25  # RSS at the largest scale ÷ RSS at the smallest scale


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def machine_info(cluster, zstd: str) -> dict[str, str]:
    """Describe the machine and the software versions (needs the cluster running)."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
    with cluster.connect() as conn:
        server = conn.execute("SELECT version()").fetchone()[0]
    commit = _cmd(["git", "rev-parse", "--short", "HEAD"])
    dirty = " (with uncommitted changes)" if _cmd(["git", "status", "--porcelain", "--", "snapdb"]) else ""
    try:
        version = metadata.version("snapdb")
    except metadata.PackageNotFoundError:
        version = "?"
    return {
        "CPU": f"{cpu}, {os.cpu_count()} logical CPUs (nproc {len(os.sched_getaffinity(0))})",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "PostgreSQL": server.split(" on ")[0] + f" (binaries in {cluster.bindir})",
        "Python": platform.python_version(),
        "zstd": _cmd([zstd, "--version"]).split(",")[0].replace("*** ", ""),
        "snapdb": f"{version}, git {commit or '?'}{dirty}",
    }


def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "–"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return out + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def _name(tool: str, j: str) -> str:
    """A tool's label as markdown: the command as code, a trailing "(note)" as text."""
    cmd, _, note = tool.format(j=j).partition(" (")
    return f"`{cmd}`" + (f" ({note}" if note else "")


def _section(res: dict, tools: list[str], side: str, j: str) -> list[str]:
    """The figures of one side (snapshot or restore) of one database, and snapdb ÷ each peer."""
    med = res["medians"]
    size_col = "output MB" if side == "snapshot" else "restored DB MB"
    rows = [[_name(t, j), _f(m.wall), _f(m.cpu), _f(m.server_cpu), _f(m.rss_mb, 0), _f(m.pss_mb, 0), _f(m.size_mb, 1)]
            for t in tools for m in [med[t]]]
    out = _table(["tool", "wall s", "client CPU s", "server CPU s", "peak RSS MB (largest process)",
                  "peak memory MB (sum, Pss)", size_col], rows) + [""]
    me = med[tools[0]]
    peers = [t for t in tools[1:] if not t.startswith("snapdb")]
    ratios = [[_name(t, j), _ratio(me.wall, m.wall), _ratio(me.cpu, m.cpu),
               _ratio(me.server_cpu, m.server_cpu), _ratio(me.pss_mb, m.pss_mb), _ratio(me.size_mb, m.size_mb)]
              for t in peers for m in [med[t]]]
    return out + _table([f"`{tools[0]}` ÷ peer", "wall", "client CPU", "server CPU", "peak memory (sum)",
                         size_col.split()[0]], ratios) + [""]


def _verdict(ok: bool, detail: str) -> str:
    return f"{'met' if ok else '**not met**'} ({detail})"


def _targets(pgb: list[dict], j: str, tools: dict[str, list[str]]) -> list[str]:
    """The targets table: one column per pgbench scale, plus the RSS flatness across scales."""
    head = ["target"] + [f"scale {r['scale']} ({r['db_mb']:,.0f} MB)" for r in pgb]
    rows = []
    for label, side, peer, fig, limit, *tool in TARGETS:
        row = [label.format(j=j)]
        mine = tool[0] if tool else tools[side][0]
        for r in pgb:
            me, other = getattr(r["medians"][mine], fig), getattr(r["medians"][peer], fig)
            q = me / other if other else float("inf")
            detail = f"{q:.2f}×" + (f", {1 / q:.1f}× faster" if fig == "wall" and q < 1 else "")
            row.append(_verdict(q <= limit, detail))
        rows.append(row)
    row = [f"peak memory of snapshot and restore under {RSS_CAP_MB} MB (summed Pss of all processes)"]
    for r in pgb:
        peak = max(r["medians"][tools["snapshot"][0]].pss_mb, r["medians"][tools["restore"][0]].pss_mb)
        row.append(_verdict(peak < RSS_CAP_MB, f"{peak:.0f} MB"))
    rows.append(row)
    out = _table(head, rows) + [""]
    if len(pgb) > 1:
        lo, hi = pgb[0], pgb[-1]
        for side in ("snapshot", "restore"):
            a, b = lo["medians"][tools[side][0]].pss_mb, hi["medians"][tools[side][0]].pss_mb
            out.append(f"- peak memory (summed Pss) of `{tools[side][0]}` flat as the database grows (scale {lo['scale']} → "
                       f"{hi['scale']}, at most {FLAT_LIMIT}×): "
                       + _verdict(b <= FLAT_LIMIT * a, f"{a:.0f} MB → {b:.0f} MB, {b / a:.2f}×"))
    else:
        out.append("- peak RSS flat as the database grows: not assessed (one scale; run with `--scales 50,200`)")
    if not any(45 <= r["scale"] <= 90 for r in pgb):
        out.append("- The targets are defined on the 1 GB database (scale 67); at the scales measured here "
                   "the verdicts are indicative only.")
    return out + [""]


def render(results: list[dict], *, machine: dict, args, cmdline: str, started, settings: dict,
           problems: list[str], snapshot_tools: list[str], restore_tools: list[str]) -> str:
    """The whole markdown document."""
    j = str(args.jobs)
    tools = {"snapshot": snapshot_tools, "restore": restore_tools}
    pgb = sorted((r for r in results if r["scale"] is not None), key=lambda r: r["scale"])
    out = [
        "# Benchmarks", "",
        "Generated by `bench/bench.py` (`make bench`, options in `BENCH_ARGS`); do not edit by hand. "
        "The method is described at the end.", "",
        "## Run", "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- command: `{cmdline}`",
        f"- jobs: {j}; repeats: {args.repeat} (figures are medians)", "",
        "## Machine", "",
        *[f"- {k}: {v}" for k, v in machine.items()], "",
        "## Targets (issue 3)", "",
        "On the pgbench database with random filler, `--jobs 2`; ratios are snapdb ÷ peer.", "",
        *_targets(pgb, j, tools),
    ]
    if problems:
        out += ["## Problems", "", *[f"- {p}" for p in problems], ""]
    for r in pgb + [r for r in results if r["scale"] is None]:
        title = f"pgbench, scale {r['scale']}" if r["scale"] is not None else f"realdb `{r['db']}`"
        out += [f"## {title}", "",
                f"Database `{r['db']}`: {r['db_mb']:,.0f} MB on disk, {r['tables']} tables, {r['rows']:,} rows.", "",
                "### Snapshot", "", *_section(r, snapshot_tools, "snapshot", j),
                "### Restore", "", *_section(r, restore_tools, "restore", j)]
    if len(pgb) > 1:
        rows = [[str(r["scale"]), _f(r["db_mb"], 0), _f(r["medians"][snapshot_tools[0]].pss_mb, 0),
                 _f(r["medians"][restore_tools[0]].pss_mb, 0)] for r in pgb]
        out += ["## Peak memory as the database grows", "",
                *_table(["scale", "DB MB", "snapshot memory MB (sum, Pss)", "restore memory MB (sum, Pss)"], rows), ""]
    out += [
        "## Method", "",
        "- One throwaway cluster (`snapdb.cluster.Cluster`: `fsync`, `synchronous_commit` and "
        "`full_page_writes` off) with " + ", ".join(f"`{k} = {v}`" for k, v in settings.items())
        + ". All tools talk to it over TCP on 127.0.0.1; the database fits in RAM, so reads come from the "
        "OS page cache for every tool alike. A `CHECKPOINT` precedes every measured command.",
        "- pgbench database: `pgbench -i -I dt` (logged tables), rows generated in SQL as pgbench does, with "
        "`filler` = 84 random hex characters (md5 of `random()`, about 2:1 compressible), split over "
        f"{j} sessions; then `pgbench -i -I vp` (VACUUM ANALYZE, primary keys).",
        "- realdb `pg_regression15`: loaded with `realdb/load.sh`, then VACUUM ANALYZE.",
        "- Snapshot runs, all repeats interleaved tool by tool: `snapdb snapshot URL --store DIR --jobs J` "
        "(output = the `snapshots/<id>/` directory); `pg_dump -Fc` (default gzip); "
        "`pg_dump -Fc -Z0 | zstd -3 -T J`; `pg_dump -Fd -j J`; `pg_dump -Fc -Z0` to a file, the "
        "uncompressed read ceiling.",
        "- Restore runs, each into a fresh database that is dropped afterwards: `snapdb restore --into NAME "
        "--server URL --snapshot ID --jobs J` (everything it does, verification included); "
        "`createdb` + `pg_restore -j J` of the `-Fd` dump; `createdb` + `zstd -dc | pg_restore` of the "
        "zstd-compressed `-Fc -Z0` dump (one stream). Each restored database is checked against the source "
        "(relations by kind, exact row count of every table); mismatches are listed under Problems. "
        "“restored DB MB” is `pg_database_size` right after the restore.",
        "- wall: elapsed time of the command. client CPU: user + system time of the command's process "
        "tree, from `wait4` (pipelines run under `bash -c 'set -o pipefail; …'`, so both sides count). "
        "server CPU: user + system time the PostgreSQL server processes used meanwhile (from /proc). "
        "peak RSS: `ru_maxrss` from `wait4`, i.e. the largest RSS of any *single* process of the tree "
        "(for a pipeline the larger side, not the sum; server memory is not included).",
        "- MB = 10^6 bytes. Ratios are snapdb ÷ peer: below 1× snapdb is faster, smaller or leaner.",
        "",
    ]
    return "\n".join(out)
