"""Issue 7, the hostile review's findings on the cutover's own steps (second batch), each shown
by what it let through before the fix:

- the new database (B) reachable by applications before the swap, and changed after its
  upgrade unnoticed;
- a write that needs no table lock (``nextval`` by a session that sets the read-only default
  off) between the proof and the swap;
- SIGINT right after the swap committed ran the abort over the new release; SIGTERM had no
  handler;
- the receipt lost failed hooks and warnings; a failed comparison of the set-aside database
  still exited 0 under a "zero-loss" line;
- an unlogged table written while the cutover was killed (WAL decoding cannot see it);
- rollback: sequence-only writes unnoticed, no way on after a kill, the proof slot left by
  ``--abort`` after the swap, and a look-alike set-aside database swapped in.
"""

from __future__ import annotations

import json
import signal

import psycopg
import pytest
from psycopg import sql

from .conftest import pause_env, popen_cli, wait_for
from .cutoverenv import make_env
from .dbcompare import database_props

V10, V20 = "3f1c0a9e5b10", "c94a06f3e872"


def _slots(pg, env) -> list[str]:
    """The replication slots of the service's last cutover (its proof slot)."""
    from snapdb.cutover.proof import slot_name

    with pg.connect() as conn:
        return [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s",
                                           (slot_name(env.journal()["id"]),))]


def _paused(env, tmp_path, step: str, *args: str):
    """A cutover paused at `step`: (process, go file)."""
    tmp_path.mkdir(exist_ok=True)
    d, fenv = pause_env(tmp_path, f"cutover:{step}")
    proc = popen_cli("--config", env.cfg, "cutover", "prod", "--to", "v2.0", "--freeze", "--drain-timeout", "0.5",
                     *args, env=fenv)
    wait_for(d / f"cutover:{step}.reached", proc)
    return proc, d / f"cutover:{step}.go"


def _write_behind_snapdbs_back(pg, dbname: str, statement: str) -> None:
    """A write into a closed, read-only set-aside database, as a superuser could make it."""
    with pg.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))
    with pg.connect(dbname) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute(statement)
    with pg.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(dbname)))


def _finish(proc, go) -> tuple[int, str, str]:
    go.touch()
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_build_closed_to_apps_and_proved_again_after_close(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname)
    a_oid = env.oid(env.prod)
    # 1. between the upgrade and the swap: the application's role cannot reach B at all; a
    # superuser who changes B anyway makes the cutover abort
    proc, go = _paused(env, tmp_path, "upgrade")
    build = env.journal()["facts"]["build"]["name"]
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(env.app(build)).close()
    with pg.connect(build) as conn:
        conn.execute("CREATE TABLE public.sneaked_in (x int)")
    code, _, err = _finish(proc, go)
    assert code == 12 and "changed after its upgrade" in err and "sneaked_in" in err, err
    assert env.oid(env.prod) == a_oid and env.revision() == V10 and build not in env.databases()

    # 2. after the first proof, before the swap: a sequence moved by a session that bypasses the
    # read-only default (sequences take no table lock) is caught by the proof made once A is closed
    proc, go = _paused(env, tmp_path, "prove")
    with psycopg.connect(env.app(), autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("SELECT nextval('lh.items_id_seq')")
    code, _, err = _finish(proc, go)
    assert code == 12 and "lh.items_id_seq" in err, err
    assert env.oid(env.prod) == a_oid and env.revision() == V10


def test_failed_comparison_exits_nonzero_and_receipt_keeps_failed_hooks(pg, tmp_path, dbname):
    hooks = '[services.prod.hooks]\ntimeout = "10s"\nafter_swap = "echo repointing failed; exit 4"\n'
    env = make_env(pg, tmp_path, dbname, hooks=hooks)
    proc, go = _paused(env, tmp_path, "swap", "--json")
    aside = env.journal()["facts"]["set_aside"]
    _write_behind_snapdbs_back(pg, aside, "INSERT INTO lh.counters VALUES (999, 1)")
    code, out, err = _finish(proc, go)
    assert code == 7, err  # IntegrityError's code: the new release serves, but a write may be missing
    res = json.loads(out)
    assert res["outcome"] == "done" and res["compare"]["matches"] is False
    assert env.revision() == V20
    receipt = json.loads((env.store / res["receipt"]).read_text())
    [hook] = [h for h in receipt["hooks"] if h["point"] == "after_swap"]
    assert hook["failed"] and hook["exit_code"] == 4 and "repointing failed" in hook["output"]
    assert any("hook after_swap failed" in w for w in receipt["warnings"]), receipt["warnings"]
    assert any("differs from the snapshot" in w for w in receipt["warnings"]), receipt["warnings"]
    # back to the old release (it took no write since), and again in text: the output says the
    # check failed, and never claims zero loss
    r = env.cli("rollback", "prod")
    assert r.returncode == 0, r.stderr
    proc, go = _paused(env, tmp_path / "again", "swap")
    aside = env.journal()["facts"]["set_aside"]
    _write_behind_snapdbs_back(pg, aside, "DELETE FROM lh.counters")
    code, _, err = _finish(proc, go)
    assert code == 7 and "zero-loss check FAILED" in err and "zero-loss check: no write" not in err, err


def test_signals_before_and_after_the_swap(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname)
    a_oid = env.oid(env.prod)
    props = database_props(pg, env.prod)
    # SIGTERM before the swap: a clean abort, A unfrozen exactly as it was
    proc, _go = _paused(env, tmp_path, "build")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 12 and "aborted" in err, (proc.returncode, err)
    assert env.oid(env.prod) == a_oid and database_props(pg, env.prod) == props and env.journal()["state"] == "aborted"
    # SIGINT right after the swap committed: nothing is undone; --resume finishes it
    proc, _go = _paused(env, tmp_path, "swapped-unrecorded")
    build_oid = env.journal()["facts"]["build"]["oid"]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "after its swap" in err and "--resume" in err, (proc.returncode, err)
    assert env.oid(env.prod) == build_oid and env.revision() == V20
    r = env.cli("cutover", "prod", "--resume", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["outcome"] == "done" and res["compare"]["matches"] is True
    assert env.oid(env.prod) == build_oid and database_props(pg, env.prod) == props
    assert _slots(pg, env) == []


def test_unlogged_table_written_while_killed_is_caught(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname)
    with pg.connect(env.prod) as conn:
        conn.execute("CREATE UNLOGGED TABLE lh.cache (k int PRIMARY KEY, v text); INSERT INTO lh.cache VALUES (1, 'a'); "
                     "GRANT ALL ON lh.cache TO lh_app")
    a_oid = env.oid(env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", env={"SNAPDB_KILL_AT": "cutover:build"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    with psycopg.connect(env.app(), autocommit=True) as conn:  # the locks died with snapdb
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("INSERT INTO lh.cache VALUES (2, 'written while snapdb was down')")
    r = env.cli("cutover", "prod", "--resume")
    assert r.returncode == 12 and "unlogged table lh.cache" in r.stderr, r.stderr
    assert env.oid(env.prod) == a_oid
    with pg.connect(env.prod) as conn:
        assert conn.execute("SELECT count(*) FROM lh.cache").fetchone()[0] == 2


def test_rollback_after_abort_sequences_kills_and_impostors(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname)
    a_oid = env.oid(env.prod)
    props = database_props(pg, env.prod)
    # 1. --abort after the swap is a rollback: it drops the proof slot the unfinished run left
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", env={"SNAPDB_KILL_AT": "cutover:swap"})
    assert r.returncode == -signal.SIGKILL
    assert _slots(pg, env)  # the proof slot, until the compare step would have dropped it
    r = env.cli("cutover", "prod", "--abort")
    assert r.returncode == 0, r.stderr
    assert env.oid(env.prod) == a_oid and _slots(pg, env) == [] and database_props(pg, env.prod) == props

    # 2. a sequence moved on the new release (no row written) is a write: refused
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
    assert r.returncode == 0, r.stderr
    b_oid = env.oid(env.prod)
    with psycopg.connect(env.app(), autocommit=True) as conn:
        conn.execute("SELECT nextval('lh.items_id_seq')")
    r = env.cli("rollback", "prod")
    assert r.returncode == 8 and "sequences moved: lh.items_id_seq" in r.stderr, r.stderr
    assert env.oid(env.prod) == b_oid and database_props(pg, env.prod) == props  # unfrozen again

    # 3. a rollback killed after freezing B, then after its swap: run again, it finishes, and
    # nothing stays frozen that should not
    for point in ("rollback:frozen", "rollback:swapped-unrecorded"):
        r = env.cli("rollback", "prod", "--discard-writes", env={"SNAPDB_KILL_AT": point})
        assert r.returncode == -signal.SIGKILL, (point, r.stderr)
    r = env.cli("rollback", "prod", "--discard-writes", "--json")
    assert r.returncode == 0, r.stderr
    assert env.oid(env.prod) == a_oid and env.revision() == V10 and database_props(pg, env.prod) == props
    gone = json.loads(r.stdout)["set_aside"]
    with pg.connect() as conn:
        assert conn.execute("SELECT oid, datallowconn FROM pg_database WHERE datname = %s",
                            (gone,)).fetchone() == (b_oid, False)

    # 4. a set-aside database replaced by another of the same name is never swapped in
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--json")
    assert r.returncode == 0, r.stderr
    aside = json.loads(r.stdout)["set_aside"]
    b_oid = env.oid(env.prod)
    with pg.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(aside)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(aside)))
    r = env.cli("rollback", "prod", "--discard-writes")
    assert r.returncode == 8 and "is not the database cutover" in r.stderr, r.stderr
    assert env.oid(env.prod) == b_oid and env.revision() == V20


def test_replicate_sigint_after_the_swap_does_not_abort(pg, tmp_path, dbname):
    """The replicate mode's swap, interrupted right after it committed: nothing is undone (before:
    the abort ran over the new release), and --resume finishes it."""
    env = make_env(pg, tmp_path, dbname)
    d, fenv = pause_env(tmp_path, "cutover:swapped-unrecorded")
    proc = popen_cli("--config", env.cfg, "cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate",
                     "--drain-timeout", "0.5", env=fenv)
    wait_for(d / "cutover:swapped-unrecorded.reached", proc, timeout=240)
    build_oid = env.journal()["facts"]["build"]["oid"]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5 and "after its swap" in err, (proc.returncode, err)
    assert env.oid(env.prod) == build_oid
    r = env.cli("cutover", "prod", "--resume", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outcome"] == "done" and env.oid(env.prod) == build_oid and env.revision() == V20
