#!/usr/bin/env python3
"""snapdb on every shape of database (issue 10): snapshot and restore against their peers.

Run with ``make bench-matrix`` or ``.venv/bin/python bench/matrix.py --help``.

One throwaway cluster (never the server on port 5432) holds, one at a time, the shapes of issue 10:

- ``blank``: pgbench with its ordinary blank filler (very compressible), scale ``--scale``;
- ``random``: pgbench with random hex filler (about 2:1 compressible), scale ``--scale``;
- ``toast``: one table of large text / jsonb / bytea values (a few KB each, TOASTed), ``--toast-mb``;
- ``mixed``: realdb ``pagila`` plus a pgbench part with blank filler (scale ``--scale // 3``);
- ``tables3000`` / ``tables20000``: that many small tables (20 rows, a primary key and an index each);
- ``regression``: realdb ``pg_regression15`` (522 tables, many types).

Each is measured ``--repeat`` times, interleaved tool by tool, and medians are reported (wall,
client CPU, server CPU, peak summed Pss, output size):

- snapshot: ``snapdb snapshot``, ``pg_dump -Fc``, ``pg_dump -Fc -Z0 | zstd -3 -T{j}``, ``pg_dump -Fd -j{j}``;
- restore: ``snapdb restore`` (default verification: every row read back and checksummed),
  ``pg_restore -j{j}`` of the ``-Fd`` dump, and ``createdb -T … STRATEGY FILE_COPY`` (the physical
  floor of a same-server copy; no verification, no index builds).

``--jobs-sweep 1,2,4`` also measures snapdb alone on the ``random`` shape at those ``--jobs``.
The report (``--out``, default docs/benchmarks-matrix.md) marks each target of issue 10 met or
not met with its number. Every restored database is checked against its source (relations by
kind, exact row count of every table).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench as B  # noqa: E402
from measure import Run, tree_size  # noqa: E402
from report import machine_info  # noqa: E402

from snapdb.cluster import Cluster  # noqa: E402

SHAPES = ["blank", "random", "toast", "mixed", "tables3000", "tables20000", "regression"]
SMALL_TABLE_SHAPES = {"tables3000", "tables20000"}
SNAP = ["snapdb snapshot", "pg_dump -Fc", "pg_dump -Fc -Z0 | zstd -3 -T{j}", "pg_dump -Fd -j{j}"]
REST = ["snapdb restore", "pg_restore -j{j} (-Fd)", "createdb -T (FILE_COPY)"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--scale", type=int, default=50, help="pgbench scale of blank/random (default 50, about 800 MB)")
    p.add_argument("--toast-mb", type=int, default=500, help="size of the toast shape (default 500 MB)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--jobs-sweep", default="", help="e.g. 1,2,4: snapdb alone on the random shape at these --jobs")
    p.add_argument("--out", default=str(B.ROOT / "docs" / "benchmarks-matrix.md"))
    p.add_argument("--workdir")
    a = p.parse_args(argv)
    a.shapes = [s for s in a.shapes.split(",") if s]
    unknown = set(a.shapes) - set(SHAPES)
    if unknown:
        p.error(f"unknown shape(s): {', '.join(sorted(unknown))}")
    a.jobs_sweep = [int(j) for j in a.jobs_sweep.split(",") if j]
    a.skip_regression = "regression" not in a.shapes
    return a


class Matrix(B.Bench):
    """The shapes' builders and the matrix's measurements, on top of bench.Bench's helpers."""

    def build(self, shape: str) -> str:
        t0 = time.monotonic()
        if shape == "random":
            return self.build_pgbench(self.args.scale)
        if shape == "regression":
            return self.build_regression()
        db = f"m_{shape}"
        self.q(f'CREATE DATABASE "{db}"')
        url = self.cluster.url(db)
        if shape == "blank":
            self.run([self.t("pgbench"), "-i", "-q", "-s", str(self.args.scale), url])
        elif shape == "mixed":
            self._realdb(db, "pagila")
            self.run([self.t("pgbench"), "-i", "-q", "-s", str(max(1, self.args.scale // 3)), url])
        elif shape == "toast":
            rows = self.args.toast_mb * 1_000_000 // 4500
            self.q("CREATE TABLE docs (id bigint PRIMARY KEY, body text, meta jsonb, blob bytea)", db)
            step = 5000
            for lo in range(1, rows + 1, step):  # values of a few KB, half-compressible, TOASTed
                self.q("INSERT INTO docs SELECT g, (SELECT string_agg(md5((g * 31 + i)::text), ' ') FROM generate_series(1, 40) i), "
                       "jsonb_build_object('id', g, 'tags', (SELECT jsonb_agg(md5((g + i)::text)) FROM generate_series(1, 20) i)), "
                       "decode((SELECT string_agg(md5((g * 7 + i)::text), '') FROM generate_series(1, 30) i), 'hex') "
                       "FROM generate_series(%s::int, %s::int) g", db, (lo, min(rows, lo + step - 1)))
        elif shape.startswith("tables"):
            n = int(shape[len("tables"):])
            with self.cluster.connect(db) as conn:
                for lo in range(1, n + 1, 500):
                    conn.execute(f"""DO $$ BEGIN FOR i IN {lo}..{min(n, lo + 499)} LOOP
                      EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, name text, v numeric, ts timestamptz DEFAULT now())', i);
                      EXECUTE format('CREATE INDEX ON t%s (name)', i);
                      EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 20) g', i);
                    END LOOP; END $$""")
        self.q("VACUUM ANALYZE", db)
        B.log(f"built {db} ({self.db_mb(db):.0f} MB) in {time.monotonic() - t0:.0f} s")
        return db

    def _realdb(self, db: str, case: str) -> None:
        import os
        realdb = Path(os.environ.get("SNAPDB_REALDB", B.ROOT / "fixtures" / "realdb"))
        self.run(["bash", str(realdb / "load.sh"), self.cluster.url(db), case], env={**self.env, "PSQL": self.t("psql")})

    def measure(self, db: str) -> dict:
        out = self.work / db
        out.mkdir()
        j, url, pg_dump, store = str(self.jobs), self.cluster.url(db), self.t("pg_dump"), out / "store"
        fc, zst, fd = out / "fc.dump", out / "z0.dump.zst", out / "fd"
        snap = {
            "snapdb snapshot": ([sys.executable, "-m", "snapdb", "snapshot", url, "--store", str(store), "--jobs", j], store / "snapshots"),
            "pg_dump -Fc": ([pg_dump, "-Fc", "-f", str(fc), "-d", url], fc),
            "pg_dump -Fc -Z0 | zstd -3 -T{j}": (f"{shlex.quote(pg_dump)} -Fc -Z0 -d {shlex.quote(url)} | {self.zstd} -q -3 -T{j} -f -o {zst}", zst),
            "pg_dump -Fd -j{j}": ([pg_dump, "-Fd", "-j", j, "-f", str(fd), "-d", url], fd),
        }
        runs: dict[str, list[Run]] = {}
        for r in range(1, self.args.repeat + 1):
            B.log(f"{db}: snapshots, run {r}/{self.args.repeat}")
            for name in SNAP:
                cmd, output = snap[name]
                B.remove(output)
                run = self.timed(name.format(j=j), cmd)
                if name == "snapdb snapshot":
                    self.snap_id = B.only_snapshot(store)
                run.size_mb = tree_size(output) / 1e6
                runs.setdefault(name, []).append(run)
        source = self.fingerprint(db)
        server = self.cluster.url()
        pg_restore, createdb = shlex.quote(self.t("pg_restore")), shlex.quote(self.t("createdb"))
        psql = shlex.quote(self.t("psql"))
        baseline = {n for (n,) in self.q("SELECT datname FROM pg_database")}
        for r in range(1, self.args.repeat + 1):
            B.log(f"{db}: restores, run {r}/{self.args.repeat}")
            for i, name in enumerate(REST):
                target = f"mx_{db}_{i}_r{r}"
                turl = shlex.quote(self.cluster.url(target))
                cmd = [
                    [sys.executable, "-m", "snapdb", "restore", "--into", target, "--server", server, "--store", str(store),
                     "--snapshot", self.snap_id, "--jobs", j],
                    f"{createdb} --maintenance-db={shlex.quote(server)} {target} && {pg_restore} -j {j} -d {turl} {fd}",
                    f"{psql} -X -q -d {shlex.quote(server)} -c 'CREATE DATABASE \"{target}\" TEMPLATE \"{db}\" STRATEGY FILE_COPY'",
                ][i]
                runs.setdefault(name, []).append(self.restored(f"{name.format(j=j)} of {db} (run {r})", cmd, target,
                                                               source, baseline))
        shutil.rmtree(out)
        return {"db": db, "db_mb": self.db_mb(db), "tables": len(source["rows"]), "rows": sum(source["rows"].values()),
                "medians": B.medians(runs)}

    def sweep(self, db: str, jobs: list[int]) -> dict[int, dict[str, Run]]:
        """snapdb snapshot and restore alone at each --jobs (medians of --repeat)."""
        out = self.work / (db + "_sweep")
        out.mkdir()
        server, res = self.cluster.url(), {}
        for jj in jobs:
            runs: dict[str, list[Run]] = {}
            for r in range(self.args.repeat):
                store = out / f"s{jj}"
                B.remove(store)
                runs.setdefault("snapshot", []).append(self.timed(f"snapdb snapshot --jobs {jj}", [
                    sys.executable, "-m", "snapdb", "snapshot", self.cluster.url(db), "--store", str(store), "--jobs", str(jj)]))
                sid = B.only_snapshot(store)
                target = f"sw_{jj}_{r}"
                runs.setdefault("restore", []).append(self.timed(f"snapdb restore --jobs {jj}", [
                    sys.executable, "-m", "snapdb", "restore", "--into", target, "--server", server, "--store", str(store),
                    "--snapshot", sid, "--jobs", str(jj)]))
                self.q(f'DROP DATABASE "{target}" WITH (FORCE)')
            res[jj] = B.medians(runs)
        shutil.rmtree(out)
        return res


# -- report -------------------------------------------------------------------------------------
def _r(a: float, b: float) -> float:
    return a / b if b else float("inf")


def targets(res: dict) -> list[tuple[str, str, bool, str]]:
    """(shape, target, met, number) for every target of issue 10 that applies to a shape."""
    m, shape, big = res["medians"], res["shape"], res["db_mb"] >= 100
    snap, rest = m["snapdb snapshot"], m["snapdb restore"]
    out = []
    if big:
        x = _r(snap.wall, m["pg_dump -Fc -Z0 | zstd -3 -T{j}"].wall)
        out.append((shape, "snapshot ≤ 1.0× `pg_dump -Fc -Z0 | zstd -T2`", x <= 1.0, f"{x:.2f}×"))
        x = _r(snap.wall, m["pg_dump -Fc"].wall)
        out.append((shape, "snapshot ≤ 0.5× `pg_dump -Fc`", x <= 0.5, f"{x:.2f}×"))
    if shape in SMALL_TABLE_SHAPES or not big:
        x = _r(snap.wall, m["pg_dump -Fc"].wall)
        out.append((shape, "snapshot no slower than `pg_dump -Fc`", x <= 1.0, f"{x:.2f}×"))
    x = _r(snap.size_mb, m["pg_dump -Fc"].size_mb)
    out.append((shape, "snapshot output no larger than `pg_dump -Fc`", x <= 1.0, f"{x:.2f}×"))
    x = _r(rest.wall, m["pg_restore -j{j} (-Fd)"].wall)
    out.append((shape, "restore (default verification) ≤ 1.0× `pg_restore -j2`", x <= 1.0, f"{x:.2f}×"))
    out.append((shape, "aim: restore at 0.8× `pg_restore -j2`", x <= 0.8, f"{x:.2f}×"))
    peak = max(snap.pss_mb, rest.pss_mb)
    out.append((shape, "peak memory (summed Pss) under 300 MB", peak < 300, f"{peak:.0f} MB"))
    if shape == "tables20000":
        x = _r(snap.wall, m["pg_dump -Fc"].wall)
        out.append((shape, "20,000 tables: snapshot within 1.5× of `pg_dump -Fc`", x <= 1.5, f"{x:.2f}×"))
        out.append((shape, "20,000 tables: restore within 1.5× of `pg_restore -j2`",
                    _r(rest.wall, m["pg_restore -j{j} (-Fd)"].wall) <= 1.5, f"{_r(rest.wall, m['pg_restore -j{j} (-Fd)'].wall):.2f}×"))
    return out


def render(results: list[dict], sweep: dict, args, machine: dict, cmdline: str, started, problems: list[str]) -> str:
    j = args.jobs
    L = ["# Benchmarks: the shape matrix (issue 10)", "",
         "Generated by `bench/matrix.py` (`make bench-matrix`); do not edit by hand. Method at the end.", "",
         "## Run", "", f"- date: {started:%Y-%m-%d %H:%M} UTC", f"- command: `{cmdline}`",
         f"- jobs: {j}; repeats: {args.repeat} (figures are medians)", "", "## Machine", ""]
    L += [f"- {k}: {v}" for k, v in machine.items()]
    L += ["", "## Targets", "", "| shape | target | result | ratio |", "|---|---|---|---:|"]
    for res in results:
        for shape, what, met, num in targets(res):
            L.append(f"| {shape} | {what} | {'met' if met else '**not met**'} | {num} |")
    for res in results:
        m = res["medians"]
        L += ["", f"## {res['shape']}", "",
              f"Database `{res['db']}`: {res['db_mb']:,.0f} MB on disk, {res['tables']:,} tables, {res['rows']:,} rows.", "",
              "| tool | wall s | client CPU s | server CPU s | peak memory MB (sum, Pss) | output MB | snapdb ÷ tool (wall) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for name in SNAP + REST:
            r = m[name]
            base = m["snapdb snapshot"] if name in SNAP else m["snapdb restore"]
            L.append(f"| `{name.format(j=j)}` | {r.wall:.2f} | {r.cpu:.2f} | {r.server_cpu:.2f} | {r.pss_mb:.0f} | {r.size_mb:,.1f} | "
                     f"{_r(base.wall, r.wall):.2f}× |")
    if sweep:
        L += ["", "## `--jobs` on the random shape (snapdb alone)", "", "| jobs | snapshot wall s | snapshot memory MB | restore wall s | restore memory MB |",
              "|---:|---:|---:|---:|---:|"]
        for jj, m in sweep.items():
            L.append(f"| {jj} | {m['snapshot'].wall:.2f} | {m['snapshot'].pss_mb:.0f} | {m['restore'].wall:.2f} | {m['restore'].pss_mb:.0f} |")
    L += ["", "## Problems", ""] + ([f"- {p}" for p in problems] or ["none: every restored database matched its source"])
    L += ["", "## Method", "",
          "- One throwaway cluster (`snapdb.cluster.Cluster`: `fsync`, `synchronous_commit`, `full_page_writes` off; "
          + ", ".join(f"`{k} = {v}`" for k, v in B.CLUSTER_SETTINGS.items()) + "); every tool talks to it over TCP on 127.0.0.1 and "
          "the databases fit in RAM. A `CHECKPOINT` precedes every measured command.",
          "- wall, client CPU (the command's process tree, `wait4`), server CPU (the PostgreSQL processes, /proc), peak memory "
          "(summed Pss of the command's process tree) and output size are medians of the repeats, measured by `bench/measure.py`.",
          "- snapdb restore includes everything it does: file sha256 checks, building in a temporary database, the default "
          "verification (every row read back and checksummed, sequences, large objects), ANALYZE, and the swap. "
          "`pg_restore -j` runs into a fresh database made by `createdb`; `createdb -T … STRATEGY FILE_COPY` copies the source's "
          "files (a same-server copy only, and no check of anything).",
          "- The mixed shape is realdb `pagila` and a pgbench database (blank filler) in one database.",
          "- MB = 10^6 bytes. Ratios are snapdb ÷ peer: below 1× snapdb is faster or smaller."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="snapdb-matrix-", dir=args.workdir))
    work.chmod(0o755)
    cluster = Cluster("matrix", base=str(work), settings={**{k: v.strip("'") for k, v in B.CLUSTER_SETTINGS.items()},
                                                          "max_locks_per_transaction": 512})
    started = datetime.datetime.now(datetime.timezone.utc)
    results, sweep = [], {}
    try:
        cluster.start()
        m = Matrix(args, cluster, work)
        B.log(f"cluster on port {cluster.port}, work directory {work}")
        machine = machine_info(cluster, m.zstd)
        cmdline = shlex.join(["bench/matrix.py", *(sys.argv[1:] if argv is None else argv)])
        for shape in args.shapes:
            db = m.build(shape)
            results.append({"shape": shape, **m.measure(db)})
            if shape == "random" and args.jobs_sweep:
                sweep = m.sweep(db, args.jobs_sweep)
            m.q(f'DROP DATABASE "{db}"')
            Path(args.out).write_text(render(results, sweep, args, machine, cmdline, started, m.problems))  # so far

    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = render(results, sweep, args, machine, cmdline, started, m.problems)
    print(text)
    Path(args.out).write_text(text)
    B.log(f"wrote {args.out}")
    return 1 if m.problems else 0


if __name__ == "__main__":
    sys.exit(main())
