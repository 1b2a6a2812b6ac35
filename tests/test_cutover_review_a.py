"""Issue 7, hostile review A of `snapdb cutover SERVICE --to TAG --freeze` (snapshot mode): each
defect found, reproduced on a real server. Every test here failed before its fix."""

from __future__ import annotations

import json
import shlex
import sys
import time

import psycopg

from .cutoverenv import make_env
from .dbcompare import database_props

V10, V20 = "3f1c0a9e5b10", "c94a06f3e872"


def _py_hook(code: str) -> str:
    """A hook command running Python `code` (with psycopg) in this interpreter."""
    return f"{sys.executable} -c {shlex.quote(code)}"


def _hooks(**points: str) -> str:
    lines = ["[services.prod.hooks]", 'timeout = "30s"']
    lines += [f"{p} = {json.dumps(cmd)}" for p, cmd in points.items()]
    return "\n".join(lines) + "\n"


def _rollback_prepared(pg, dbname: str, gid: str) -> None:
    with pg.connect(dbname) as conn:
        if conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone():
            conn.execute(f"ROLLBACK PREPARED '{gid}'")


def _cutovers(env) -> bool:
    return (env.store / "catalog" / "cutovers").exists()


# -- 6. a prepared transaction created between preflight and the freeze -------------------------------
def test_prepared_transaction_before_the_freeze_fails_fast(pg, tmp_path, dbname):
    app = pg.conninfo(dbname).replace("user=postgres", "user=lh_app")
    code = (f"import psycopg\nc = psycopg.connect({app!r})\n"
            "c.execute(\"INSERT INTO lh.events VALUES (gen_random_uuid(), 77, 1)\")\n"
            "c.execute(\"PREPARE TRANSACTION 'lh_between'\")\nc.close()\n")
    env = make_env(pg, tmp_path, dbname, hooks=_hooks(before_freeze=_py_hook(code)))
    props = database_props(pg, env.prod)
    try:
        started = time.monotonic()
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--drain-timeout", "1")
        took = time.monotonic() - started
        assert r.returncode == 12, r.stderr
        assert "prepared transaction lh_between" in r.stderr and "hook" not in r.stderr, r.stderr
        assert took < 25, f"took {took:.0f} s: it waited for the table locks instead of failing fast"
        assert database_props(pg, env.prod) == props and env.revision() == V10
        assert set(env.databases()) == {env.prod, env.dev}  # B not built
    finally:
        _rollback_prepared(pg, dbname, "lh_between")


# -- 7. a cutover while a manual freeze is in place --------------------------------------------------------
def test_cutover_refused_while_manually_frozen(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname)
    r = env.cli("freeze", "prod", "--drain-timeout", "0")
    assert r.returncode == 0, r.stderr
    frozen = database_props(pg, env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
    assert r.returncode == 8, r.stderr
    assert "unfreeze" in r.stderr and len([x for x in r.stderr.splitlines() if x.startswith("error:")]) == 1, r.stderr
    assert database_props(pg, env.prod) == frozen and env.revision() == V10
    assert set(env.databases()) == {env.prod, env.dev} and not _cutovers(env)
    assert env.cli("unfreeze", "prod").returncode == 0


# -- 3. database names near the 63-byte limit ----------------------------------------------------------
LONG = "sérvice_" + "é" * 22 + "x" * 7  # 60 bytes, multibyte


def test_side_names_of_a_long_name_fit_and_are_recognised():
    from datetime import datetime, timezone

    from snapdb import names

    assert len(LONG.encode()) == 60
    when = datetime(2026, 12, 1, 13, 40, 5, tzinfo=timezone.utc)
    other = names.truncate_bytes(LONG, 50) + "yyyyyy"  # shares a 50-byte prefix
    for target in (LONG, "short", "a" * 63):
        pre, rb, tmp, prev = (names.pre_name(target, "v2.0", when), names.rolledback_name(target, when),
                              names.tmp_name(target), names.prev_name(target, when))
        for n in (pre, rb, tmp, prev):
            assert len(n.encode()) <= 63 and n.encode().decode() == n, n
        assert names.is_pre_of(target, pre) and names.is_rolledback_of(target, rb) and names.is_prev_of(target, prev)
        assert names.looks_like_set_aside(pre) and names.looks_like_set_aside(rb)
        assert not names.is_pre_of(target, rb) and not names.is_rolledback_of(target, pre)
        assert not names.is_pre_of(target, target) and not names.is_rolledback_of(target, target)
        if target != "short":
            assert not names.is_pre_of(other, pre) and not names.is_rolledback_of(other, rb)
            assert not names.is_prev_of(other, prev)
            po, ro = names.pre_name(other, "v2.0", when), names.rolledback_name(other, when)
            assert not names.is_pre_of(target, po) and not names.is_rolledback_of(target, ro)
        for tag in ("v1.0", "release-2026.12-hotfix_3"):
            assert names.is_pre_of(target, names.pre_name(target, tag, when))
    assert names.pre_name(LONG, "v2.0", when) != names.pre_name(other, "v2.0", when)


def test_cutover_and_rollback_of_a_60_byte_multibyte_name(pg, tmp_path):
    from snapdb import names

    from .cutoverenv import make_env_named

    prod = names.truncate_bytes(LONG, 56) + str(time.time_ns() % 10000).rjust(4, "0")
    prod = prod + "x" * (60 - len(prod.encode()))
    assert len(prod.encode()) == 60
    env = make_env_named(pg, tmp_path, prod, prod[:20] + "_dev")
    a_oid = env.oid(prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    aside = res["set_aside"]
    assert env.oid(aside) == a_oid and len(aside.encode()) <= 63 and names.is_pre_of(prod, aside)
    assert env.revision(prod) == V20
    [s] = json.loads(env.cli("status", "prod", "--json").stdout)["services"]
    assert [x["name"] for x in s["set_aside"]] == [aside], s
    r = env.cli("rollback", "prod", "--json")
    assert r.returncode == 0, r.stderr
    rb = json.loads(r.stdout)
    assert env.oid(prod) == a_oid and env.revision(prod) == V10
    assert len(rb["set_aside"].encode()) <= 63 and names.is_rolledback_of(prod, rb["set_aside"])
    [s] = json.loads(env.cli("status", "prod", "--json").stdout)["services"]
    assert [x["name"] for x in s["set_aside"]] == [rb["set_aside"]], s


# -- 1, 2. writes the table locks cannot stop: large objects, GRANTs, DDL ----------------------------------
def _su_hook(pg, dbname: str, statements: list[str]) -> str:
    """A hook that runs `statements` as a superuser on `dbname`, bypassing the read-only default."""
    code = (f"import psycopg\nc = psycopg.connect({pg.conninfo(dbname)!r}, autocommit=True, "
            "options='-c default_transaction_read_only=off')\n"
            + "".join(f"c.execute({q!r})\n" for q in statements))
    return _py_hook(code)


def _aborted_unchanged(env, r, props, text: str) -> None:
    assert r.returncode == 12, r.stderr
    assert "not unchanged since the freeze point" in r.stderr and text in r.stderr, r.stderr
    assert database_props(env.pg, env.prod) == props and env.revision() == V10  # A unfrozen, as it was
    assert set(env.databases()) == {env.prod, env.dev}  # B removed
    assert env.journal()["state"] == "aborted"


def test_large_object_written_during_the_freeze_aborts(pg, tmp_path, dbname):
    hooks = _hooks(after_freeze=_su_hook(pg, dbname, [
        "SELECT lo_put((SELECT max(oid) FROM pg_largeobject_metadata), 0, 'CHANGED!')"]))
    env = make_env(pg, tmp_path, dbname, hooks=hooks, rehearse=False)
    with pg.connect(dbname) as conn:
        lo = conn.execute("SELECT lo_from_bytea(0, 'original')").fetchone()[0]
    for args in (["snapshot", "prod"], ["restore", "--into", "dev", "--from", "prod"], ["upgrade", "dev", "--to", "v2.0"]):
        assert env.cli(*args).returncode == 0
    props = database_props(pg, env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
    _aborted_unchanged(env, r, props, "large-object contents")
    with pg.connect(dbname) as conn:  # the write stays where it was made: nothing lost
        assert bytes(conn.execute("SELECT lo_get(%s)", (lo,)).fetchone()[0]) == b"CHANGED!"


def test_grant_and_ddl_during_the_freeze_abort(pg, tmp_path, dbname):
    hooks = _hooks(after_freeze=_su_hook(pg, dbname, [
        "GRANT SELECT ON lh.items TO PUBLIC",
        "CREATE FUNCTION public.sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'"]))
    env = make_env(pg, tmp_path, dbname, hooks=hooks)
    props = database_props(pg, env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
    _aborted_unchanged(env, r, props, "relation lh.items")
    assert "sneaky" in r.stderr or "and 1 more" in r.stderr or "and 2 more" in r.stderr, r.stderr


def test_create_index_while_a_cutover_was_interrupted_aborts_the_resume(pg, tmp_path, dbname):
    """A CREATE INDEX waits for the freeze's table locks; once a killed run lost them, one can
    commit before --resume takes them again: the resume must see it."""
    import signal

    env = make_env(pg, tmp_path, dbname)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", env={"SNAPDB_KILL_AT": "cutover:snapshot"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    with psycopg.connect(pg.conninfo(dbname), autocommit=True, options="-c default_transaction_read_only=off") as c:
        c.execute("CREATE INDEX sneaky_idx ON lh.items (n)")
    r = env.cli("cutover", "prod", "--resume")
    assert r.returncode == 12, r.stderr
    assert "sneaky_idx" in r.stderr, r.stderr
    assert env.revision() == V10 and set(env.databases()) == {env.prod, env.dev}


# -- 5. no WAL decoding: the weaker proof is said, not silent ------------------------------------------------
def test_cutover_without_logical_wal_warns_in_json_and_receipt(pg2, tmp_path, dbname):
    with pg2.connect() as conn:
        assert conn.execute("SHOW wal_level").fetchone()[0] == "replica"
    env = make_env(pg2, tmp_path, dbname)
    text = "proof by counters and catalog fingerprint only: wal_level is replica"
    r = env.cli("cutover", "prod", "--to", "v2.0", "--dry-run", "--json")
    assert r.returncode == 0 and any(text in w for w in json.loads(r.stdout)["warnings"]), r.stdout
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["outcome"] == "done" and [w for w in res["warnings"] if text in w], res["warnings"]
    assert len([w for w in res["warnings"] if "proof by counters" in w]) == 1, res["warnings"]
    receipt = json.loads((env.store / "catalog" / "receipts" / f"{res['id']}.json").read_text())
    assert [w for w in receipt["warnings"] if text in w], receipt.get("warnings")
    r = env.cli("rollback", "prod")
    assert r.returncode == 0, r.stderr
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")  # the text output says it too
    assert r.returncode == 0 and f"warning: {text}" in r.stderr, r.stderr


# -- 9. two cutovers at once ---------------------------------------------------------------------------------
def test_concurrent_cutovers_one_proceeds(pg, tmp_path, dbname):
    from .conftest import pause_env, popen_cli, wait_for

    env = make_env(pg, tmp_path, dbname)
    faults, penv = pause_env(tmp_path, "cutover:preflighted")  # the first has passed preflight
    first = popen_cli("--config", env.cfg, "cutover", "prod", "--to", "v2.0", "--freeze", "--json", env=penv)
    try:
        wait_for(faults / "cutover:preflighted.reached", first)
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
        assert r.returncode == 9, r.stderr
        assert "holds the lock" in r.stderr and "nothing was changed" in r.stderr, r.stderr
        assert env.revision() == V10 and not _cutovers(env)
        (faults / "cutover:preflighted.go").touch()
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    res = json.loads(out)
    assert res["outcome"] == "done" and env.revision() == V20
    j = env.journal()
    assert j["id"] == res["id"] and j["state"] == "done"


def test_a_run_never_overwrites_another_runs_journal(tmp_path):
    import pytest

    from snapdb.cutover import journal
    from snapdb.errors import BusyError
    from snapdb.store import open_store

    st = open_store(str(tmp_path / "store"))
    mine = journal.Journal.start(st, "prod", "v2.0", "snapshot", "read-only")
    other = journal.Journal(id="20261201T000000Z-abcdef", service="prod", tag="v2.0", mode="snapshot",
                            freeze_mode="read-only", started_at=mine.started_at)
    with pytest.raises(BusyError, match="belongs to another cutover"):
        other.close(st, "aborted")
    assert journal.Journal.load(st, "prod").id == mine.id and journal.Journal.load(st, "prod").state == "running"
    mine.close(st, "done")


# -- 8. restore and upgrade of a database a cutover or a manual freeze holds -----------------------------------
def test_restore_and_upgrade_refused_while_a_cutover_is_unfinished_or_frozen(pg, tmp_path, dbname):
    import signal

    from snapdb import names

    env = make_env(pg, tmp_path, dbname, rehearse=False)  # dev stays at v1.0: it is the one cut over
    r = env.cli("cutover", "dev", "--to", "v2.0", "--freeze", env={"SNAPDB_KILL_AT": "cutover:build"})
    assert r.returncode == -signal.SIGKILL, r.stderr

    def refused(args, code, text):
        before = {d: env.oid(d) for d in env.databases()}
        r = env.cli(*args)
        assert r.returncode == code and text in r.stderr, (args, r.returncode, r.stderr)
        assert {d: env.oid(d) for d in env.databases()} == before and env.revision(env.dev) == V10

    # (--drop-slots: the cutover's proof slot on dev would refuse it for another reason)
    refused(["restore", "--into", "dev", "--from", "prod", "--drop-slots"], 9, "a cutover of 'dev' to v2.0")
    refused(["upgrade", "dev", "--to", "v2.0"], 9, "a cutover of 'dev' to v2.0")
    refused(["restore", "--into", names.tmp_name(env.dev), "--server", "dev", "--from", "prod"], 8, "side databases")
    assert env.cli("cutover", "dev", "--abort").returncode == 0

    assert env.cli("freeze", "dev", "--drain-timeout", "0").returncode == 0
    refused(["restore", "--into", "dev", "--from", "prod"], 8, "frozen by `snapdb freeze`")
    refused(["upgrade", "dev", "--to", "v2.0"], 8, "frozen by `snapdb freeze`")
    assert env.cli("unfreeze", "dev").returncode == 0
    assert env.cli("upgrade", "dev", "--to", "v2.0").returncode == 0  # free again

    # the production service: its own upgrade while its cutover is unfinished
    r = env.cli("restore", "--into", "dev", "--from", "prod")
    assert r.returncode == 0, r.stderr
    assert env.cli("upgrade", "dev", "--to", "v2.0").returncode == 0
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", env={"SNAPDB_KILL_AT": "cutover:snapshot"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = env.cli("upgrade", "prod", "--to", "v2.0")
    assert r.returncode == 9 and "a cutover of 'prod'" in r.stderr, r.stderr
    assert env.revision() == V10
    assert env.cli("cutover", "prod", "--abort").returncode == 0


# -- 4. an admin role that cannot see other roles' sessions ------------------------------------------------------
def test_preflight_refuses_an_admin_blind_to_other_sessions(pg, tmp_path, dbname):
    from snapdb.cutover import freeze
    from snapdb.errors import RefusedError

    from .conftest import ensure_roles
    from .cutoverenv import make_env_named

    ensure_roles(pg, "rva_admin", options="LOGIN CREATEDB")
    pg.psql("GRANT pg_signal_backend TO rva_admin; REVOKE pg_read_all_stats FROM rva_admin")
    env = make_env_named(pg, tmp_path, dbname, dbname + "_dev", admin_user="rva_admin")
    props = database_props(pg, env.prod)
    for args in (["cutover", "prod", "--to", "v2.0", "--freeze"], ["freeze", "prod"]):
        r = env.cli(*args)
        assert r.returncode == 8, (args, r.stderr)
        assert "cannot see other roles' sessions" in r.stderr and "GRANT pg_read_all_stats" in r.stderr, r.stderr
        assert database_props(pg, env.prod) == props and env.revision() == V10 and not _cutovers(env)
    conninfo = pg.conninfo(dbname).replace("user=postgres", "user=rva_admin")
    with psycopg.connect(env.app()) as app, psycopg.connect(conninfo, autocommit=True) as conn:
        app.execute("INSERT INTO lh.items (worker, n) VALUES (1, 1)")  # holds a transaction ID, uncommitted
        pid = app.info.backend_pid
        # why: as this role the drain cannot tell a session inside a transaction (xact_start and state
        # are hidden); backend_xid stays visible to every role, so the xid probe itself is not blind
        assert conn.execute("SELECT backend_xid IS NOT NULL, xact_start IS NOT NULL, state FROM pg_stat_activity "
                            "WHERE pid = %s", (pid,)).fetchone() == (True, False, None)
        app.rollback()
        try:
            freeze.require_session_visibility(conn)
            raise AssertionError("not refused")
        except RefusedError:
            pass
        pg.psql("GRANT pg_read_all_stats TO rva_admin")
        try:
            freeze.require_session_visibility(conn)  # with the grant it can see them
        finally:
            pg.psql("REVOKE pg_read_all_stats FROM rva_admin")


# -- 10. status after a rollback ------------------------------------------------------------------------------------
def test_status_after_a_rollback_shows_it(pg, tmp_path, dbname):
    from datetime import datetime

    env = make_env(pg, tmp_path, dbname)
    a_oid = env.oid(env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    r = env.cli("rollback", "prod", "--json")
    assert r.returncode == 0, r.stderr
    rb = json.loads(r.stdout)
    [s] = json.loads(env.cli("status", "prod", "--json").stdout)["services"]
    assert s["revision"] == V10 and env.oid(env.prod) == a_oid
    assert s["cutover"]["state"] == "rolled back" and s["cutover"]["set_aside"] == rb["set_aside"], s["cutover"]
    got = s["rollback"]
    assert got["cutover_id"] == res["id"] and got["live"] == env.prod and got["was_set_aside_as"] == res["set_aside"]
    assert got["release_set_aside_as"] == rb["set_aside"] and datetime.fromisoformat(got["at"])
    assert [x["name"] for x in s["set_aside"]] == [rb["set_aside"]]  # the cutover's copy is live, not set aside
    out = env.cli("status", "prod").stdout
    assert "rolled back at" in out and rb["set_aside"] in out and res["set_aside"] in out, out


def test_cutovers_and_rollbacks_keep_set_aside_copies_by_the_rule(pg, tmp_path, dbname):
    from snapdb import names

    env = make_env(pg, tmp_path, dbname, hooks="keep_set_aside = 1\n")

    def set_aside() -> list[str]:
        with pg.connect() as conn:
            every = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
        return sorted(d for d in every if names.is_pre_of(env.prod, d) or names.is_rolledback_of(env.prod, d))

    rounds = []
    for _ in range(2):
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert set_aside() == [res["set_aside"]]  # the way back, and nothing older
        r = env.cli("rollback", "prod", "--json")
        assert r.returncode == 0, r.stderr
        rb = json.loads(r.stdout)
        assert set_aside() == [rb["set_aside"]] and env.revision() == V10
        rounds.append((res, rb))
        time.sleep(1.1)  # names carry the second
    assert rounds[1][0]["dropped_set_aside"] == [rounds[0][1]["set_aside"]]
    # no rule: every copy is kept, as before
    cfg = env.dir / "snapdb.toml"
    cfg.write_text(cfg.read_text().replace("keep_set_aside = 1\n", ""))
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--json")
    assert r.returncode == 0, r.stderr
    assert len(set_aside()) == 2 and json.loads(r.stdout)["dropped_set_aside"] == []


def test_fingerprint_of_a_role_that_cannot_read_large_objects_says_so(pg, dbname):
    from snapdb import fingerprint

    from .conftest import create_db, ensure_roles

    ensure_roles(pg, "rva_reader", options="LOGIN")
    create_db(pg, dbname, "SELECT lo_from_bytea(0, 'abc'); CREATE TABLE t (id int)")
    with psycopg.connect(pg.conninfo(dbname).replace("user=postgres", "user=rva_reader"), autocommit=True) as conn:
        before = fingerprint.fingerprint(conn, catalogs=True)
        assert fingerprint.unreadable(before) == ["pg_largeobject"]
        with pg.connect(dbname) as su:
            su.execute("SELECT lo_put((SELECT max(oid) FROM pg_largeobject_metadata), 0, 'xyz')")
            su.execute("GRANT SELECT ON t TO PUBLIC")
        after = fingerprint.fingerprint(conn, catalogs=True, since=before)
    assert fingerprint.diff(before, after) == ["catalog pg_class changed (DDL or a GRANT): relation t"]
