#!/usr/bin/env python3
"""snapdb benchmark (issue 3): `snapdb snapshot`/`restore` against pg_dump/pg_restore, side by side.

Run with ``make bench BENCH_ARGS='--scale 67'`` or ``.venv/bin/python bench/bench.py --help``.

What it does, in one run and on one throwaway cluster (`snapdb.cluster.Cluster`, never the server on
port 5432):

1. builds the benchmark databases: a pgbench database per ``--scales`` entry (logged tables, the
   ``pgbench_accounts.filler`` column filled with random hex text, primary keys, VACUUM ANALYZE)
   and, unless ``--skip-regression``, the realdb ``pg_regression15`` database;
2. measures snapshots (`snapdb snapshot` and four pg_dump variants) and restores (`snapdb restore`,
   ``pg_restore -j`` of the ``-Fd`` dump, ``zstd -dc | pg_restore``), ``--repeat`` times each,
   interleaved, and takes medians of wall time, client CPU, server CPU, peak RSS and output size;
3. prints the tables, with every figure also as a ratio snapdb ÷ peer, checks issue 3's targets,
   and writes it all to ``--out`` (default docs/benchmarks.md).

The cluster and the work directory are removed at the end, also on errors and Ctrl-C.
Measurement details are in `measure.py`; the report is built by `report.py`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

from measure import Meter, Run, tree_size  # noqa: E402
from report import machine_info, render  # noqa: E402

from snapdb.cluster import Cluster  # noqa: E402

#: Appended to the throwaway cluster's postgresql.conf (Cluster already sets fsync = off etc.).
#: autovacuum is off so that no background vacuum/analyze lands in another command's measurement.
CLUSTER_SETTINGS = {"max_wal_size": "'4GB'", "checkpoint_timeout": "'30min'", "autovacuum": "off"}

#: Random, half-compressible filler of pgbench's char(84) column: hex digits of md5 of random().
FILLER_SQL = "substr(md5(random()::text) || md5(random()::text) || md5(random()::text), 1, 84)"

SNAPSHOT_TOOLS = ["snapdb snapshot", "pg_dump -Fc", "pg_dump -Fc -Z0 | zstd -3 -T{j}",
                  "pg_dump -Fd -j{j}", "pg_dump -Fc -Z0 (read ceiling)"]
RESTORE_TOOLS = ["snapdb restore", "snapdb restore --verify quick", "pg_restore -j{j} (-Fd)", "zstd -dc | pg_restore"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=67, help="pgbench scale (default 67, about 1 GB)")
    p.add_argument("--scales", help="several scales, comma-separated (e.g. 50,200); overrides --scale")
    p.add_argument("--jobs", type=int, default=2, help="parallel jobs for every tool (default 2)")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians are reported")
    p.add_argument("--skip-regression", action="store_true", help="do not benchmark pg_regression15")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown report path")
    p.add_argument("--workdir", help="directory for the cluster and dumps (default: system temp dir)")
    a = p.parse_args(argv)
    a.scales = [int(s) for s in a.scales.split(",")] if a.scales else [a.scale]
    if a.jobs < 1 or a.repeat < 1 or min(a.scales) < 1:
        p.error("--jobs, --repeat and scales must be at least 1")
    return a


class Bench:
    """One benchmark run: the cluster, the work directory, the tools and the collected runs."""

    def __init__(self, args: argparse.Namespace, cluster: Cluster, work: Path) -> None:
        self.args, self.cluster, self.work, self.jobs = args, cluster, work, args.jobs
        self.meter = Meter(cluster.data / "postmaster.pid")
        self.zstd = shutil.which("zstd") or sys.exit("bench: the zstd command is needed")
        # PYTHONDONTWRITEBYTECODE would make every snapdb start compile snapdb again (0.3 s, not what
        # an installed snapdb costs): measured starts use the compiled modules, as the peers' binaries do
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PG", "SNAPDB_CONFIG", "SNAPDB_STORE")) and k != "PYTHONDONTWRITEBYTECODE"}
        self.env["SNAPDB_MAINTENANCE_DB"] = "postgres"
        self.env.setdefault("SNAPDB_PG_BINDIR", cluster.bindir)  # the same pg_dump as the peers
        self.problems: list[str] = []
        self._seq = 0
        self.snap_id = ""

    # -- helpers -----------------------------------------------------------------------------
    def q(self, sql: str, db: str = "postgres", params=None) -> list[tuple]:
        with self.cluster.connect(db) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def t(self, name: str) -> str:
        return self.cluster.tool(name)

    def run(self, cmd: list[str], env: dict | None = None) -> None:
        """Run an untimed helper command; fail loudly."""
        p = subprocess.run(cmd, env=env or self.env, cwd=self.work, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")

    def quiesce(self) -> None:
        """Flush dirty buffers so one command's checkpoint I/O does not land in the next one."""
        self.q("CHECKPOINT")

    def timed(self, label: str, cmd: list[str] | str) -> Run:
        """Measure one command (a string runs under bash with pipefail); fail loudly on errors."""
        if isinstance(cmd, str):
            cmd = ["bash", "-c", "set -euo pipefail; " + cmd]
        self.quiesce()
        self._seq += 1
        logbase = self.work / f"log-{self._seq:03d}"
        run = self.meter.run(cmd, env=self.env, cwd=self.work, logbase=logbase)
        if run.rc != 0:
            err = logbase.with_suffix(".err").read_text(errors="replace").strip()[-2000:]
            raise RuntimeError(f"{label} failed (exit {run.rc}):\n{err}")
        log(f"  {label}: {run.wall:.2f} s wall, {run.cpu:.2f} s cpu, {run.server_cpu:.2f} s server cpu, "
            f"{run.rss_mb:.0f} MB rss")
        return run

    # -- databases ---------------------------------------------------------------------------
    def build_pgbench(self, scale: int) -> str:
        """Create pgbench_s<scale>: pgbench's tables and rows, random filler, keys, VACUUM ANALYZE."""
        db = f"pgbench_s{scale}"
        t0 = time.monotonic()
        self.q(f'CREATE DATABASE "{db}"')
        url = self.cluster.url(db)
        self.run([self.t("pgbench"), "-i", "-q", "-I", "dt", "-s", str(scale), url])
        self.q(f"INSERT INTO pgbench_branches (bid, bbalance) SELECT g, 0 FROM generate_series(1, {scale}) g", db)
        self.q("INSERT INTO pgbench_tellers (tid, bid, tbalance) "
               f"SELECT g, (g - 1) / 10 + 1, 0 FROM generate_series(1, {10 * scale}) g", db)
        n, parts = 100_000 * scale, max(1, self.jobs)
        bounds = [(i * n // parts + 1, (i + 1) * n // parts) for i in range(parts)]
        sql = ("INSERT INTO pgbench_accounts (aid, bid, abalance, filler) SELECT g, (g - 1) / 100000 + 1, 0, "
               f"{FILLER_SQL} FROM generate_series(%s, %s) g")
        with ThreadPoolExecutor(parts) as pool:  # one session per job: generation is CPU-bound
            list(pool.map(lambda b: self.q(sql, db, b), bounds))
        self.run([self.t("pgbench"), "-i", "-q", "-I", "vp", url])
        log(f"built {db} ({self.db_mb(db):.0f} MB) in {time.monotonic() - t0:.0f} s")
        return db

    def build_regression(self) -> str:
        """Create pg_regression15 from realdb with its load.sh."""
        realdb = Path(os.environ.get("SNAPDB_REALDB", ROOT / "fixtures" / "realdb"))
        if not (realdb / "load.sh").is_file():
            sys.exit(f"bench: realdb not found at {realdb} (set SNAPDB_REALDB, or use --skip-regression)")
        db = "pg_regression15"
        self.q(f'CREATE DATABASE "{db}"')
        self.run(["bash", str(realdb / "load.sh"), self.cluster.url(db), db],
                 env={**self.env, "PSQL": self.t("psql")})
        self.q("VACUUM ANALYZE", db)
        log(f"built {db} ({self.db_mb(db):.0f} MB)")
        return db

    def db_mb(self, db: str) -> float:
        return self.q("SELECT pg_database_size(%s)", params=(db,))[0][0] / 1e6

    def fingerprint(self, db: str) -> dict:
        """Relation counts by kind and exact row counts of ordinary tables: a cheap restore check."""
        where = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
        rels = self.q("SELECT c.relkind::text, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      f"WHERE {where} GROUP BY 1 ORDER BY 1", db)
        tables = self.q("SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
                        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND {where}", db)
        counts = {}
        with self.cluster.connect(db) as conn:
            for (t,) in tables:
                counts[t] = conn.execute(f"SELECT count(*) FROM ONLY {t}").fetchone()[0]
        return {"relations": dict(rels), "rows": counts}

    # -- measurements ------------------------------------------------------------------------
    def bench_database(self, db: str) -> dict:
        """Snapshot and restore `db` with every tool, --repeat times; return sizes and medians."""
        out = self.work / db
        out.mkdir()
        runs = self.snapshots(db, out)
        source = self.fingerprint(db)
        runs.update(self.restores(db, out, source))
        shutil.rmtree(out)
        return {"db": db, "db_mb": self.db_mb(db), "tables": len(source["rows"]),
                "rows": sum(source["rows"].values()), "medians": medians(runs)}

    def snapshots(self, db: str, out: Path) -> dict[str, list[Run]]:
        """Measure SNAPSHOT_TOOLS on `db`; leave the last outputs in `out` for the restores."""
        j, url, pg_dump, store = str(self.jobs), self.cluster.url(db), self.t("pg_dump"), out / "store"
        fc, z0, zst, fd = out / "fc.dump", out / "z0.dump", out / "z0.dump.zst", out / "fd"
        todo = {  # name: (command, output)
            "snapdb snapshot": ([sys.executable, "-m", "snapdb", "snapshot", url, "--store", str(store), "--jobs", j],
                                store / "snapshots"),
            "pg_dump -Fc": ([pg_dump, "-Fc", "-f", str(fc), "-d", url], fc),
            "pg_dump -Fc -Z0 | zstd -3 -T{j}": (f"{shlex.quote(pg_dump)} -Fc -Z0 -d {shlex.quote(url)} "
                                                f"| {self.zstd} -q -3 -T{j} -f -o {zst}", zst),
            "pg_dump -Fd -j{j}": ([pg_dump, "-Fd", "-j", j, "-f", str(fd), "-d", url], fd),
            "pg_dump -Fc -Z0 (read ceiling)": ([pg_dump, "-Fc", "-Z0", "-f", str(z0), "-d", url], z0),
        }
        runs: dict[str, list[Run]] = {}
        for r in range(1, self.args.repeat + 1):
            log(f"{db}: snapshots, run {r}/{self.args.repeat}")
            for name in SNAPSHOT_TOOLS:
                cmd, output = todo[name]
                remove(output)  # one output at a time: disk space
                run = self.timed(name.format(j=j), cmd)
                if name == "snapdb snapshot":
                    self.snap_id = only_snapshot(store)
                run.size_mb = tree_size(output) / 1e6
                runs.setdefault(name, []).append(run)
        return runs

    def restores(self, db: str, out: Path, source: dict) -> dict[str, list[Run]]:
        """Measure RESTORE_TOOLS from the outputs in `out`, each into a fresh database; check it."""
        j, server = str(self.jobs), self.cluster.url()
        pg_restore, createdb = shlex.quote(self.t("pg_restore")), shlex.quote(self.t("createdb"))
        baseline = {name for (name,) in self.q("SELECT datname FROM pg_database")}
        runs: dict[str, list[Run]] = {}
        for r in range(1, self.args.repeat + 1):
            log(f"{db}: restores, run {r}/{self.args.repeat}")
            for i, name in enumerate(RESTORE_TOOLS):
                target = f"bench_{db}_{i}_r{r}"
                url = shlex.quote(self.cluster.url(target))
                mk = f"{createdb} --maintenance-db={shlex.quote(server)} {target}"
                cmd = [
                    [sys.executable, "-m", "snapdb", "restore", "--into", target, "--server", server,
                     "--store", str(out / "store"), "--snapshot", self.snap_id, "--jobs", j],
                    [sys.executable, "-m", "snapdb", "restore", "--into", target, "--server", server,
                     "--store", str(out / "store"), "--snapshot", self.snap_id, "--jobs", j, "--verify", "quick"],
                    f"{mk} && {pg_restore} -j {j} -d {url} {out / 'fd'}",
                    f"{mk} && {self.zstd} -dc {out / 'z0.dump.zst'} | {pg_restore} -d {url}",
                ][i]
                runs.setdefault(name, []).append(self.restored(f"{name.format(j=j)} of {db} (run {r})", cmd, target,
                                                               source, baseline))
        return runs

    def restored(self, label: str, cmd, target: str, source: dict, baseline: set[str]) -> Run:
        """Measure one restore command into `target`, check the result against the `source`
        fingerprint (a problem if it differs), and drop the target and anything else it left."""
        run = self.timed(label.split(" of ")[0], cmd)
        run.size_mb = self.db_mb(target)
        got = self.fingerprint(target)
        if got != source:
            self.problems.append(f"{label}: the restored database differs from the source: {diff(source, got)}")
            log("  PROBLEM: " + self.problems[-1])
        for (extra,) in self.q("SELECT datname FROM pg_database"):  # the target and any leftovers
            if extra not in baseline:
                if extra != target:
                    self.problems.append(f"{label} left database {extra!r}")
                self.q(f'DROP DATABASE "{extra}" WITH (FORCE)')
        return run


def remove(path: Path) -> None:
    """Remove a file or a directory tree, if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def only_snapshot(store: Path) -> str:
    """The id of the complete snapshot in `store` (the bench keeps only one at a time)."""
    done = [d.name for d in (store / "snapshots").iterdir() if (d / "manifest.json").is_file()]
    if len(done) != 1:
        raise RuntimeError(f"expected one complete snapshot in {store}, found {sorted(done)}")
    return done[0]


def diff(a: dict, b: dict) -> str:
    """A short description of how two fingerprints differ."""
    parts = []
    for key in ("relations", "rows"):
        for k in sorted(set(a[key]) | set(b[key])):
            if a[key].get(k) != b[key].get(k):
                parts.append(f"{key[:-1]} {k}: {a[key].get(k)} vs {b[key].get(k)}")
    return "; ".join(parts[:8]) + (f" (+{len(parts) - 8} more)" if len(parts) > 8 else "")


def medians(runs: dict[str, list[Run]]) -> dict[str, Run]:
    """Per tool, a Run holding the median of each figure over the repeats."""
    return {name: Run(rc=0, stdout="", **{f: statistics.median(getattr(r, f) for r in rs)
                                          for f in ("wall", "cpu", "server_cpu", "rss_mb", "pss_mb", "size_mb")})
            for name, rs in runs.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="snapdb-bench-", dir=args.workdir))
    os.chmod(work, 0o755)  # the cluster below lives here and may run as another OS user
    cluster = Cluster("bench", base=str(work))
    started = datetime.datetime.now(datetime.timezone.utc)
    results = []
    try:
        cluster.start()
        with open(cluster.data / "postgresql.conf", "a") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in CLUSTER_SETTINGS.items()))
        cluster.restart()
        b = Bench(args, cluster, work)
        log(f"cluster on port {cluster.port}, work directory {work}")
        for scale in args.scales:
            db = b.build_pgbench(scale)
            results.append({"scale": scale, **b.bench_database(db)})
            b.q(f'DROP DATABASE "{db}"')
        if not args.skip_regression:
            results.append({"scale": None, **b.bench_database(b.build_regression())})
        machine = machine_info(cluster, b.zstd)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    cmdline = shlex.join(["bench/bench.py", *(sys.argv[1:] if argv is None else argv)])
    text = render(results, machine=machine, args=args, cmdline=cmdline, started=started,
                  settings=CLUSTER_SETTINGS, problems=b.problems,
                  snapshot_tools=SNAPSHOT_TOOLS, restore_tools=RESTORE_TOOLS)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    log(f"wrote {args.out}")
    return 1 if b.problems else 0


if __name__ == "__main__":
    sys.exit(main())
