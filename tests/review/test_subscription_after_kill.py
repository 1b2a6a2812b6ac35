"""Review: --detach-subscriptions acts only after the swap; a run killed right after the swap
commits leaves an enabled subscription in the copy set aside, and no later run looks at it."""

from __future__ import annotations

import time

from psycopg import sql


from ..conftest import create_db, run_cli, write_config

DATA = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)"


def test_killed_after_swap_leaves_a_consuming_subscription(pg, tmp_path, dbname):
    src = create_db(pg, dbname, DATA)
    target = create_db(pg, dbname + "-dev", "CREATE TABLE t (id int PRIMARY KEY)")
    pub = f"p_{dbname}"[:60]
    slot = f"sl_{dbname}"[:60]
    with pg.connect(src) as conn:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE t").format(sql.Identifier(pub)))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    with pg.connect(target) as conn:
        conn.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} "
                             "WITH (create_slot = false, slot_name = {}, copy_data = false)").format(
            sql.Identifier(pub), sql.Literal(pg.conninfo(src)), sql.Identifier(pub), sql.Literal(slot)))
    cfg = str(write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                           {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")}))
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    try:
        r = run_cli("--config", cfg, "restore", "--into", "dev", "--detach-subscriptions", "--keep-previous", "3",
                    env={"SNAPDB_KILL_AT": "restore:swapped"})
        assert r.returncode == -9
        # the next nightly runs succeed, and keep the older copies
        for _ in range(2):
            r = run_cli("--config", cfg, "restore", "--into", "dev", "--detach-subscriptions", "--keep-previous", "3")
            assert r.returncode == 0, r.stderr
        time.sleep(1)
        with pg.connect() as conn:
            subs = conn.execute("SELECT s.subname, s.subenabled, s.subslotname, d.datname FROM pg_subscription s "
                                "JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname = %s", (pub,)).fetchall()
            active = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        print(subs, active)
        assert all(not enabled and slotname is None for _, enabled, slotname, _ in subs), subs
    finally:
        with pg.connect() as conn:
            for (d,) in conn.execute("SELECT d.datname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid "
                                     "WHERE s.subname = %s", (pub,)).fetchall():
                with pg.connect(d) as c:
                    c.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(pub)))
                    c.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(sql.Identifier(pub)))
                    c.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(pub)))
            time.sleep(1)
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
