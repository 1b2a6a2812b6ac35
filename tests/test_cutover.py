"""Issue 7: the A/B cutover inside a write-freeze window, under load (acceptance 1, 2, 4, 5, 6).

Writers (tests/loadharness.py) run through every cutover and log each commit acknowledged to
them; afterwards every acknowledged write must be in the new database exactly once, the old one
must have acknowledged nothing after the freeze point, and the set-aside database must equal the
snapshot taken at the freeze (compared without snapdb's checksums).
"""

from __future__ import annotations

import json
from datetime import datetime

import psycopg
import pytest

from .cutoverenv import make_env
from .dbcompare import database_props, table_fingerprints
from .loadharness import Harness, check


def _freeze_point(env) -> float:
    j = env.journal()
    return datetime.fromisoformat(j["facts"]["freeze_point"]["at"]).timestamp()


def _assert_set_aside_is_the_snapshot(env, res: dict) -> None:
    copy = env.prod + "_snap"
    r = env.cli("restore", "--snapshot", res["snapshot_id"], "--into", copy, "--server", env.pg.url())
    assert r.returncode == 0, r.stderr
    aside = res["set_aside"]
    env.pg.psql(f'ALTER DATABASE "{aside}" ALLOW_CONNECTIONS true')
    try:
        def user_tables(db):  # a restore of a managed snapshot adds its own row to snapdb.history
            return {k: v for k, v in table_fingerprints(env.pg, db).items() if not k.startswith("snapdb.")}

        assert user_tables(aside) == user_tables(copy)
    finally:
        env.pg.psql(f'ALTER DATABASE "{aside}" ALLOW_CONNECTIONS false')


@pytest.mark.parametrize("freeze_mode,drain,pause", [("read-only", "1", 0.0), ("offline", "0", 0.002),
                                                     ("read-only", "3", 0.005)])
def test_cutover_under_load(pg, tmp_path, dbname, freeze_mode, drain, pause):
    env = make_env(pg, tmp_path, dbname)
    a_oid = env.oid(env.prod)
    h = Harness(env.app(), ["normal"] * 8, tmp_path / "load", pause=pause)
    try:
        h.wait_for_acks(200)
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--freeze-mode", freeze_mode,
                    "--drain-timeout", drain, "--json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        before = sum(1 for _ in h.logs)
        h.wait_for_acks(read_total(h) + 150)  # the writers go on, on the new database
    finally:
        acks = h.stop()
    assert before
    assert res["outcome"] == "done" and res["freeze_window_seconds"] is not None
    assert res["plan"]["prediction"]["parts"] and "predicted_seconds" in res
    assert res["proof"]["unchanged"] and res["compare"]["matches"]
    assert env.revision() == "c94a06f3e872" and env.oid(env.prod) != a_oid
    with pg.connect(env.prod) as conn:
        problems = check(acks, conn, a_oid, _freeze_point(env))
    assert not problems, problems
    assert any(x[3] == a_oid for x in acks.on) and any(x[3] != a_oid for x in acks.on)  # both databases took writes
    assert env.databases()[res["set_aside"]] is False  # the set-aside database stays closed
    _assert_set_aside_is_the_snapshot(env, res)
    receipt = json.loads((env.store / "catalog" / "receipts" / f"{res['id']}.json").read_text())
    assert receipt["tag"] == "v2.0" and receipt["snapshot_id"] == res["snapshot_id"] and receipt["tables"]
    assert receipt["freeze_point"]["lsn"] and receipt["proof"]["unchanged"] and receipt["os_user"]


def read_total(h) -> int:
    from .loadharness import read_logs

    return read_logs(h.logs).total


def test_adversarial_writers(pg, tmp_path, dbname):
    """Acceptance 2: writers that bypass the read-only default, the tables' owner, and a
    transaction opened before the freeze that commits after it: none of their writes is
    acknowledged by the old database after the freeze point, none is lost."""
    env = make_env(pg, tmp_path, dbname)
    pg.psql("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lh_owner') THEN "
            "CREATE ROLE lh_owner LOGIN; END IF; END$$")
    pg.psql("ALTER SCHEMA lh OWNER TO lh_owner; ALTER TABLE lh.events OWNER TO lh_owner; "
            "ALTER TABLE lh.counters OWNER TO lh_owner; ALTER TABLE lh.items OWNER TO lh_owner", dbname=env.prod)
    a_oid = env.oid(env.prod)
    owner = pg.conninfo(env.prod).replace("user=postgres", "user=lh_owner")
    kinds = ["normal", "normal", "set-off", "set-off", "begin-rw", "owner", "long", "long"]
    h = Harness(env.app(), kinds, tmp_path / "load", hold=1.5, conninfos={"owner": owner})
    try:
        h.wait_for_acks(100)
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--drain-timeout", "0.5", "--json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        h.wait_for_acks(read_total(h) + 60)
    finally:
        acks = h.stop()
    with pg.connect(env.prod) as conn:
        problems = check(acks, conn, a_oid, _freeze_point(env))
    assert not problems, problems
    assert res["compare"]["matches"]
    # the bypassing writers did try during the freeze: their writes waited and were cut off
    assert acks.errors, acks.errors


def test_prepared_transaction_during_the_freeze_aborts(pg, tmp_path, dbname):
    """A prepared transaction created once the freeze holds could still commit on the old
    database: the proof refuses it, the cutover aborts, A serves again unfrozen."""
    from .conftest import pause_env, popen_cli, wait_for

    env = make_env(pg, tmp_path, dbname)
    props = database_props(pg, env.prod)
    faults, penv = pause_env(tmp_path, "cutover:upgrade")
    proc = popen_cli("--config", env.cfg, "cutover", "prod", "--to", "v2.0", "--freeze", env=penv)
    try:
        wait_for(faults / "cutover:upgrade.reached", proc)
        with psycopg.connect(env.app()) as x:
            x.execute("BEGIN READ WRITE")
            x.execute("SELECT pg_current_xact_id()")
            x.execute("PREPARE TRANSACTION 'lh_sneaky'")
        (faults / "cutover:upgrade.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 12, err
        assert "prepared transaction lh_sneaky" in err and "nothing was lost" in err
        assert database_props(pg, env.prod) == props  # unfrozen, exactly as before
        assert env.revision() == "3f1c0a9e5b10"
        assert set(env.databases()) == {env.prod, env.dev}
    finally:
        pg.psql("ROLLBACK PREPARED 'lh_sneaky'", dbname=env.prod)


def test_preflight_refuses_and_changes_nothing(pg, tmp_path, dbname):
    """Acceptance 4: a superuser application session, a prepared transaction, an unrehearsed tag,
    a modified script: each refused before anything changes."""
    env = make_env(pg, tmp_path, dbname)
    props = database_props(pg, env.prod)

    def refused(args, code, text):
        r = env.cli(*args)
        assert r.returncode == code and text in r.stderr, (args, r.returncode, r.stderr)
        assert database_props(pg, env.prod) == props and env.revision() == "3f1c0a9e5b10"
        assert not (env.store / "catalog" / "cutovers").exists()

    su = psycopg.connect(pg.conninfo(env.prod), autocommit=True)  # an application connected as a superuser
    su.execute("SET application_name = 'the-app'")
    try:
        refused(["cutover", "prod", "--to", "v2.0", "--freeze"], 8, "connected as a superuser")
    finally:
        su.close()
    with psycopg.connect(env.app()) as x:
        x.execute("INSERT INTO lh.events VALUES (gen_random_uuid(), 99, 1)")
        x.execute("PREPARE TRANSACTION 'lh_pending'")
    try:
        refused(["cutover", "prod", "--to", "v2.0", "--freeze"], 8, "prepared transaction")
    finally:
        pg.psql("ROLLBACK PREPARED 'lh_pending'", dbname=env.prod)
    refused(["cutover", "prod", "--to", "v1.1", "--freeze"], 8, "no rehearsal of v1.1")
    f = env.dir / "migrations" / "versions" / "c94a06f3e872_split_customer_names.py"
    f.write_text(f.read_text() + "\n# an edit\n")
    refused(["cutover", "prod", "--to", "v2.0", "--freeze"], 7, "c94a06f3e872_split_customer_names.py")
    refused(["cutover", "prod", "--to", "v2.0"], 8, "without --freeze would lose")


def test_rollback(pg, tmp_path, dbname):
    """Acceptance 5: with no writes since the cutover a rollback succeeds; with writes it refuses;
    with --discard-writes it keeps them in a snapshot that restores."""
    env = make_env(pg, tmp_path, dbname)
    a_oid = env.oid(env.prod)
    assert env.cli("cutover", "prod", "--to", "v2.0", "--freeze").returncode == 0
    b_oid = env.oid(env.prod)
    r = env.cli("rollback", "prod", "--json")
    assert r.returncode == 0, r.stderr
    rb = json.loads(r.stdout)
    assert env.oid(env.prod) == a_oid and env.revision() == "3f1c0a9e5b10"
    assert env.databases()[env.prod] is True and env.databases()[rb["set_aside"]] is False
    with pg.connect(env.prod) as conn:  # A serves again, writable
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "off"
        conn.execute("INSERT INTO lh.events VALUES (gen_random_uuid(), 1, 1)")
    assert env.oid(rb["set_aside"]) == b_oid

    # a second cutover, then writes on the new release: the rollback refuses, then keeps them
    env.pg.psql(f'DROP DATABASE "{rb["set_aside"]}"')
    r = env.cli("restore", "--into", "dev", "--from", "prod")
    assert r.returncode == 0, r.stderr
    assert env.cli("upgrade", "dev", "--to", "v2.0").returncode == 0
    assert env.cli("cutover", "prod", "--to", "v2.0", "--freeze").returncode == 0
    with pg.connect(env.prod) as conn:
        conn.execute("INSERT INTO lh.events VALUES ('00000000-0000-0000-0000-00000000beef', 7, 7)")
    r = env.cli("rollback", "prod")
    assert r.returncode == 8 and "took writes since the cutover" in r.stderr and "--discard-writes" in r.stderr, r.stderr
    assert env.revision() == "c94a06f3e872"
    with pg.connect(env.prod) as conn:  # refused: the new release serves on, unfrozen
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "off"
    r = env.cli("rollback", "prod", "--discard-writes", "--json")
    assert r.returncode == 0, r.stderr
    rb = json.loads(r.stdout)
    assert rb["writes_snapshot"] and env.revision() == "3f1c0a9e5b10"
    r = env.cli("restore", "--snapshot", rb["writes_snapshot"], "--into", env.prod + "_kept", "--server", pg.url())
    assert r.returncode == 0, r.stderr
    with pg.connect(env.prod + "_kept") as conn:
        assert conn.execute("SELECT n FROM lh.events WHERE id = '00000000-0000-0000-0000-00000000beef'").fetchone()[0] == 7


def test_plan_and_window_reported(pg, tmp_path, dbname):
    """Acceptance 6: the prediction in --dry-run, and the window with the prediction on every run."""
    env = make_env(pg, tmp_path, dbname)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "predicted freeze window:" in r.stdout and "snapshot" in r.stdout and "rehearsal:" in r.stdout
    assert not (env.store / "catalog" / "cutovers").exists()  # a dry run writes nothing
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
    assert r.returncode == 0, r.stderr
    assert "freeze window" in r.stderr and "predicted" in r.stderr and "zero-loss check" in r.stderr
