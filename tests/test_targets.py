"""Issue 12, points 9, 10, 11 and 18: what a target carries, typo'd and system targets, peak disk."""

from __future__ import annotations

import json

import psycopg
from psycopg import sql

from snapdb import names

from .conftest import create_db, databases, pause_env, popen_cli, run_cli, wait_for, write_config
from .dbcompare import table_fingerprints

DATA = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)"


def _setup(pg, tmp_path, dbname, target_sql="CREATE TABLE old_dev (id int); INSERT INTO old_dev VALUES (42)"):
    src = create_db(pg, dbname, DATA)
    target = create_db(pg, dbname + "-dev", target_sql)
    cfg = write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                       {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")})
    assert run_cli("--config", str(cfg), "snapshot", "src").returncode == 0
    return src, target, str(cfg)


# -- point 9 ---------------------------------------------------------------------------------
def test_logical_slot_on_the_target(pg, tmp_path, dbname):
    src, target, cfg = _setup(pg, tmp_path, dbname)
    slot = f"slot_{dbname}"[:60]
    with pg.connect(target) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    before = table_fingerprints(pg, target)
    r = run_cli("--config", cfg, "restore", "--into", "dev")
    assert r.returncode == 8, r.stderr
    assert slot in r.stderr and "--drop-slots" in r.stderr
    assert table_fingerprints(pg, target) == before and names.tmp_name(target) not in databases(pg)
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--drop-slots", "--json")
    assert r.returncode == 0, r.stderr
    assert any(slot in w for w in json.loads(r.stdout)["warnings"])
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()[0] == 0
    assert table_fingerprints(pg, target) == table_fingerprints(pg, src)


def test_subscription_on_the_target(pg, tmp_path, dbname):
    src, target, cfg = _setup(pg, tmp_path, dbname)
    sub = f"sub_{dbname}"[:60]
    with pg.connect(src) as conn:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE t").format(sql.Identifier(sub)))
    with pg.connect(target) as conn:
        conn.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (connect = false)").format(
            sql.Identifier(sub), sql.Literal(pg.conninfo(src)), sql.Identifier(sub)))
    r = run_cli("--config", cfg, "restore", "--into", "dev")
    assert r.returncode == 8 and sub in r.stderr and "--detach-subscriptions" in r.stderr, r.stderr
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--detach-subscriptions", "--json")
    assert r.returncode == 0, r.stderr
    prev = json.loads(r.stdout)["previous"]
    with pg.connect() as conn:
        row = conn.execute("SELECT s.subenabled, s.subslotname, d.datname FROM pg_subscription s "
                           "JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname = %s", (sub,)).fetchone()
    assert row == (False, None, prev)  # disabled and detached, in the copy set aside
    # the copy set aside can still be rotated out (a database with a subscription cannot be dropped)
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--keep-previous", "0")
    assert r.returncode == 0, r.stderr
    assert prev not in databases(pg)
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_subscription WHERE subname = %s", (sub,)).fetchone()[0] == 0


def test_target_closed_to_connections_stays_closed(pg, tmp_path, dbname):
    src, target, cfg = _setup(pg, tmp_path, dbname)
    pg.psql(f'ALTER DATABASE "{target}" ALLOW_CONNECTIONS false')
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--json")
    assert r.returncode == 0, r.stderr
    assert any("ALLOW_CONNECTIONS" in w for w in json.loads(r.stdout)["warnings"])
    with pg.connect() as conn:
        assert conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (target,)).fetchone()[0] is False
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(target)))
    assert table_fingerprints(pg, target) == table_fingerprints(pg, src)


# -- points 10 and 11 -----------------------------------------------------------------------------
def test_typo_in_the_target_builds_nothing(pg, tmp_path, dbname):
    src, target, cfg = _setup(pg, tmp_path, dbname)
    before = databases(pg)
    r = run_cli("--config", cfg, "restore", "--into", "devv", "--from", "src")
    assert r.returncode == 3, r.stderr
    assert "unknown target 'devv'" in r.stderr and "did you mean 'dev'" in r.stderr and "--server" in r.stderr
    assert databases(pg) == before


def test_system_databases_are_refused(pg, tmp_path, dbname):
    src, target, cfg = _setup(pg, tmp_path, dbname)
    maint = create_db(pg, dbname + "_maint")
    with pg.connect("template1") as conn:
        template1 = conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    before = databases(pg)
    for into, env in (("template1", {}), ("postgres", {}), ("template0", {}),
                      (maint, {"SNAPDB_MAINTENANCE_DB": maint})):
        trace = tmp_path / f"trace-{into}"
        trace.mkdir()
        r = run_cli("--config", cfg, "restore", "--into", into, "--server", "dev",
                    env={**env, "SNAPDB_TRACE_DIR": str(trace)})
        assert r.returncode == 8, (into, r.stderr)
        assert f"refusing to restore into {into!r}" in r.stderr
        assert list(trace.iterdir()) == []  # refused up front: not even the files were checked
    assert databases(pg) == before
    with pg.connect("template1") as conn:
        assert conn.execute("SELECT count(*) FROM pg_class").fetchone()[0] == template1


# -- point 18 ---------------------------------------------------------------------------------------
def test_peak_disk_is_target_kept_copies_and_build(pg, tmp_path, dbname):
    """Point 18: with --keep-previous N, the copies beyond N are dropped before the build, so the
    peak is the target, N previous copies and the build (no more, whatever was kept before);
    the N kept copies stay until the swap has committed."""
    src, target, cfg = _setup(pg, tmp_path, dbname)
    for _ in range(3):
        assert run_cli("--config", cfg, "restore", "--into", "dev", "--keep-previous", "3").returncode == 0
    family = lambda: sorted(d for d in databases(pg)  # noqa: E731
                            if d in (target, names.tmp_name(target)) or names.is_prev_of(target, d))
    prevs = sorted((d for d in family() if names.is_prev_of(target, d)), reverse=True)
    assert len(prevs) == 3  # the target existed before the first restore
    faults, env = pause_env(tmp_path, "restore:created")
    proc = popen_cli("--config", cfg, "restore", "--into", "dev", "--keep-previous", "1", env=env)
    try:
        wait_for(faults / "restore:created.reached", proc)
        assert family() == sorted([target, prevs[0], names.tmp_name(target)])  # the two older copies went first
        (faults / "restore:created.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    res = json.loads(run_cli("--config", cfg, "restore", "--into", "dev", "--keep-previous", "1", "--json").stdout)
    assert [d for d in family() if names.is_prev_of(target, d)] == [res["previous"]]


def test_a_failed_build_keeps_the_previous_copy(pg, tmp_path, dbname):
    """The copy --keep-previous keeps is not dropped before the new one is in place: a run killed
    while building leaves the target and its previous copy as they were."""
    src, target, cfg = _setup(pg, tmp_path, dbname)
    assert run_cli("--config", cfg, "restore", "--into", "dev").returncode == 0
    prev = json.loads(run_cli("--config", cfg, "restore", "--into", "dev", "--json").stdout)["previous"]
    for step in ("restore:created", "restore:loaded", "restore:before-swap"):
        r = run_cli("--config", cfg, "restore", "--into", "dev", env={"SNAPDB_KILL_AT": step})
        assert r.returncode == -9
        assert prev in databases(pg), step


def test_a_busy_target_is_swapped_while_clients_reconnect(pg, tmp_path, dbname):
    """Point 21: clients that keep reconnecting to the target while it is swapped: the swap's
    retries win, and the clients end up on the new copy."""
    import threading

    src, target, cfg = _setup(pg, tmp_path, dbname)
    stop = threading.Event()
    seen: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(pg.conninfo(target), connect_timeout=2) as conn:
                    seen.append("old" if conn.execute("SELECT to_regclass('old_dev')").fetchone()[0] else "new")
            except psycopg.Error:
                pass

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        r = run_cli("--config", cfg, "restore", "--into", "dev")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert r.returncode == 0, r.stderr
    assert "old" in seen and "new" in seen
    assert table_fingerprints(pg, target) == table_fingerprints(pg, src)


def test_two_swaps_within_one_second(pg, tmp_path, dbname):
    """Point 21: two restores in the same second get distinct previous-copy names."""
    src, target, cfg = _setup(pg, tmp_path, dbname)
    a = json.loads(run_cli("--config", cfg, "restore", "--into", "dev", "--keep-previous", "3", "--json").stdout)
    b = json.loads(run_cli("--config", cfg, "restore", "--into", "dev", "--keep-previous", "3", "--json").stdout)
    assert a["previous"] != b["previous"] and {a["previous"], b["previous"]} <= databases(pg)
