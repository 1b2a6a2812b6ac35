"""Issue 12, points 3 and 20: one server-wide lock per database, whatever maintenance database a
run uses, shared by restores and upgrades; and a restore swaps in only the build it verified."""

from __future__ import annotations

import shutil

from psycopg import sql

from snapdb import names

from .conftest import ROOT, create_db, databases, pause_env, popen_cli, run_cli, wait_for, write_config
from .dbcompare import table_fingerprints

DATA = "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g"


def _setup(pg, tmp_path, dbname):
    src = create_db(pg, dbname, DATA)
    target = create_db(pg, dbname + "-dev", "CREATE TABLE old_dev (id int); INSERT INTO old_dev VALUES (42)")
    cfg = write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                       {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")})
    assert run_cli("--config", str(cfg), "snapshot", "src").returncode == 0
    return src, target, str(cfg)


def test_runs_with_different_maintenance_databases_exclude_each_other(pg, tmp_path, dbname):
    src, target, cfg = _setup(pg, tmp_path, dbname)
    other_maint = create_db(pg, dbname + "_maint")
    faults, env = pause_env(tmp_path, "restore:created")
    first = popen_cli("--config", cfg, "restore", "--into", "dev", env=env)
    try:
        wait_for(faults / "restore:created.reached", first)
        build_oid = _oid(pg, names.tmp_name(target))
        second = run_cli("--config", cfg, "restore", "--into", "dev", env={"SNAPDB_MAINTENANCE_DB": other_maint})
        assert second.returncode == 9, second.stderr
        assert "another snapdb restore" in second.stderr
        assert _oid(pg, names.tmp_name(target)) == build_oid  # the first run's build was not touched
        (faults / "restore:created.go").touch()
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert table_fingerprints(pg, target) == table_fingerprints(pg, src)


def _oid(pg, dbname: str) -> int | None:
    with pg.connect() as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    return row[0] if row else None


def test_only_the_verified_build_is_swapped_in(pg, tmp_path, dbname):
    """Something replaces the verified build under its name before the swap: the restore refuses
    (exit 7), the target is unchanged, and the impostor is not dropped either."""
    src, target, cfg = _setup(pg, tmp_path, dbname)
    before = table_fingerprints(pg, target)
    target_oid = _oid(pg, target)
    faults, env = pause_env(tmp_path, "restore:before-swap")
    proc = popen_cli("--config", cfg, "restore", "--into", "dev", env=env)
    try:
        wait_for(faults / "restore:before-swap.reached", proc)
        tmp = names.tmp_name(target)
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(tmp)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(tmp)))
        impostor = _oid(pg, tmp)
        (faults / "restore:before-swap.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 7, err
    assert "not the database this run built and verified" in err
    assert _oid(pg, target) == target_oid and table_fingerprints(pg, target) == before
    assert _oid(pg, tmp) == impostor  # not ours: left alone


def _migrations(tmp_path):
    dest = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_restore_and_upgrade_of_one_database_exclude_each_other(pg, tmp_path, dbname):
    src = create_db(pg, dbname)
    with pg.connect(src) as conn:
        conn.execute((ROOT / "fixtures" / "service0.sql").read_text())
    target = dbname + "_dev"
    cfg = write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                       {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")})
    with open(cfg, "a") as f:
        f.write(f'\n[upgrade]\nmigrations = "{_migrations(tmp_path)}"\n')
    cfg = str(cfg)
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    assert run_cli("--config", cfg, "restore", "--into", "dev").returncode == 0

    # an upgrade holds the lock: a restore into the same database is refused at once
    faults, env = pause_env(tmp_path, "upgrade:locked")
    up = popen_cli("--config", cfg, "upgrade", "dev", "--to", "v1.1", env=env)
    try:
        wait_for(faults / "upgrade:locked.reached", up)
        r = run_cli("--config", cfg, "restore", "--into", "dev")
        assert r.returncode == 9 and "another snapdb upgrade" in r.stderr, r.stderr
        (faults / "upgrade:locked.go").touch()
        out, err = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, err

    # a restore holds the lock: an upgrade of the same database is refused at once
    faults, env = pause_env(tmp_path, "restore:locked")
    rs = popen_cli("--config", cfg, "restore", "--into", "dev", env=env)
    try:
        wait_for(faults / "restore:locked.reached", rs)
        r = run_cli("--config", cfg, "upgrade", "dev", "--to", "v2.0")
        assert r.returncode == 9 and "another snapdb restore" in r.stderr, r.stderr
        (faults / "restore:locked.go").touch()
        out, err = rs.communicate(timeout=120)
    finally:
        if rs.poll() is None:
            rs.kill()
    assert rs.returncode == 0, err
    assert names.tmp_name(target) not in databases(pg)
