"""Review: the build database is open to other sessions between verification and the swap."""

from __future__ import annotations


import psycopg

from snapdb import names

from ..conftest import create_db, pause_env, popen_cli, run_cli, wait_for, write_config
from ..dbcompare import table_fingerprints

DATA = "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g"


def _setup(pg, tmp_path, dbname):
    src = create_db(pg, dbname, DATA)
    target = create_db(pg, dbname + "-dev", "CREATE TABLE old_dev (id int)")
    cfg = write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                       {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")})
    assert run_cli("--config", str(cfg), "snapshot", "src").returncode == 0
    return src, target, str(cfg)


def test_build_cannot_be_changed_after_verification(pg, tmp_path, dbname):
    """Review defect 3: a session on the build after it was verified can neither write (the hold's
    SHARE locks) nor stay (it is ended before the swap), and after sealing nobody can connect."""
    src, target, cfg = _setup(pg, tmp_path, dbname)
    faults, env = pause_env(tmp_path, "restore:verified")
    proc = popen_cli("--config", cfg, "restore", "--into", "dev", "--json", env=env)
    try:
        wait_for(faults / "restore:verified.reached", proc)
        intruder = psycopg.connect(pg.conninfo(names.tmp_name(target)), autocommit=True)
        intruder.execute("SET lock_timeout = '300ms'")
        try:
            intruder.execute("UPDATE public.t SET v = 'tampered' WHERE id = 1")
            raise AssertionError("the verified build took a write")
        except psycopg.errors.LockNotAvailable:
            pass
        (faults / "restore:verified.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert table_fingerprints(pg, target) == table_fingerprints(pg, src)
    try:
        intruder.execute("SELECT 1")
        raise AssertionError("the intruder's session survived the swap")
    except psycopg.OperationalError:
        pass


def test_build_is_closed_between_seal_and_swap(pg, tmp_path, dbname):
    src, target, cfg = _setup(pg, tmp_path, dbname)
    faults, env = pause_env(tmp_path, "restore:before-swap")
    proc = popen_cli("--config", cfg, "restore", "--into", "dev", env=env)
    try:
        wait_for(faults / "restore:before-swap.reached", proc)
        try:
            psycopg.connect(pg.conninfo(names.tmp_name(target)), autocommit=True).close()
            raise AssertionError("the sealed build accepted a connection")
        except psycopg.OperationalError as exc:
            assert "not currently accepting connections" in str(exc)
        (faults / "restore:before-swap.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    with pg.connect() as conn:  # the swap opened it again, as the target it now is
        assert conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (target,)).fetchone()[0]
    assert table_fingerprints(pg, target) == table_fingerprints(pg, src)
