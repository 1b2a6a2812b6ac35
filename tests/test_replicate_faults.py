"""Issue 8, acceptance 4: SIGKILL of snapdb at each step boundary of a replicate-mode cutover,
then ``--abort`` and, in the same service afterwards, ``--resume``, under writers.

The suite runs five representative kill points (`STEPS`, about 20 s each); every one of the 13
runs with ``SNAPDB_ALL_KILL_POINTS=1`` (``bench/replicate_faults.py``, about 4–6 minutes).
Each step gets one service (release v1.1, whose revision runs before the freeze, so the set-aside
database follows the new one afterwards). First a run killed at the step is aborted: before the
swap A serves again, unfrozen, exactly as it was; after the swap an abort is a rollback, which
keeps B's writes once the reverse replication runs and otherwise refuses, changing nothing.
Then a second run killed at the same step is resumed to the end and its rollback window
finished. After each: exactly one database named SERVICE accepts connections, every acknowledged
write is there exactly once, no sequence collides, and no replication slot, subscription,
publication or replication origin of the cutover is left on the server.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime

import pytest
from psycopg import sql

from .cutoverenv import make_env
from .dbcompare import database_props
from .loadharness import Harness, check, read_logs

V10, V11 = "3f1c0a9e5b10", "7d2e4b8c1a21"
ALL_STEPS = ["preflight", "build", "follow", "upgrade", "freeze", "fence", "finalize", "prove", "a-closed",
             "swapped-unrecorded", "swap", "compare", "reverse"]
#: the suite's kill points, one of each kind: B being built (A live), A frozen with B following,
#: inside the swap with A and B closed, the swap committed but not journaled (B still gated),
#: after the reverse step (abort = rollback through the window); every step with
#: SNAPDB_ALL_KILL_POINTS=1 (bench/replicate_faults.py)
STEPS = ALL_STEPS if os.environ.get("SNAPDB_ALL_KILL_POINTS") else ["build", "fence", "a-closed", "swapped-unrecorded",
                                                                     "reverse"]
AFTER_SWAP = {"swapped-unrecorded", "swap", "compare", "reverse"}


def _serving(env) -> list[str]:
    return [d for d, ok in env.databases().items() if d == env.prod and ok]


def leftovers(pg, prefix: str, origins_before: set[str]) -> list[str]:
    """Replication objects on `pg`'s server in databases named `prefix…` (slots, subscriptions,
    publications in each of them, closed ones included) and replication origins not in
    `origins_before`."""
    out = []
    with pg.connect() as conn:
        dbs = conn.execute("SELECT datname, datallowconn FROM pg_database WHERE starts_with(datname, %s)",
                           (prefix,)).fetchall()
        out += [f"slot {s} in {d}" for s, d in conn.execute(
            "SELECT slot_name, database FROM pg_replication_slots WHERE starts_with(database, %s)", (prefix,))]
        out += [f"subscription {s} in {d}" for s, d in conn.execute(
            "SELECT s.subname, d.datname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid "
            "WHERE starts_with(d.datname, %s)", (prefix,))]
        out += [f"origin {o}" for (o,) in conn.execute("SELECT roname FROM pg_replication_origin")
                if o not in origins_before]
        for d, ok in dbs:
            if not ok:
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(d)))
            try:
                with pg.connect(d) as c:
                    out += [f"publication {p} in {d}" for (p,) in c.execute("SELECT pubname FROM pg_publication")]
            finally:
                if not ok:
                    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(d)))
    return out


def origins(pg) -> set[str]:
    with pg.connect() as conn:
        return {r[0] for r in conn.execute("SELECT roname FROM pg_replication_origin")}


def _cutover_killed_at(env, step: str) -> None:
    r = env.cli("cutover", "prod", "--to", "v1.1", "--freeze", "--mode", "replicate", "--drain-timeout", "0.5",
                env={"SNAPDB_KILL_AT": f"cutover:{step}"}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert env.journal()["state"] == "running"


def _assert_consistent(env, pg, logs, a_oid, freeze_at, origins_before) -> None:
    """The invariants, with the writers of `logs` stopped (their acknowledgements complete)."""
    assert _serving(env) == [env.prod]  # exactly one database named SERVICE accepts connections
    others = {d: ok for d, ok in env.databases().items() if d not in (env.prod, env.dev)}
    assert not any(others.values()), others  # set-aside copies stay closed
    with pg.connect(env.prod) as conn:
        problems = check(read_logs(logs), conn, a_oid, freeze_at)
    assert not problems, problems
    assert leftovers(pg, env.prod, origins_before) == []


def _writers(env, where):
    h = Harness(env.app(), ["normal"] * 3, where, pause=0.002)
    h.wait_for_acks(40)
    return h


def _after(h) -> None:
    """Let the writers go on a little against whatever serves now, then stop them."""
    try:
        h.wait_for_acks(read_logs(h.logs).total + 20)
    finally:
        h.stop()


@pytest.mark.parametrize("step", STEPS)
def test_killed_replicate_cutover_then_abort_then_resume(pg, tmp_path, dbname, step):
    env = make_env(pg, tmp_path, dbname, rehearse=False)
    assert env.cli("upgrade", "dev", "--to", "v1.1").returncode == 0
    a_oid = env.oid(env.prod)
    props = database_props(pg, env.prod)
    before = origins(pg)
    # 1. killed, then --abort
    h1 = _writers(env, tmp_path / "load1")
    try:
        _cutover_killed_at(env, step)
        r = env.cli("cutover", "prod", "--abort", "--json")
        refused = step in AFTER_SWAP and step != "reverse"
        if refused:
            # the new release serves, took writes, and the old one does not follow it yet: an abort
            # would lose them; it refuses, changing nothing, and --resume finishes the cutover
            assert r.returncode == 8 and "took writes since the cutover" in r.stderr, r.stderr
            r = env.cli("cutover", "prod", "--resume", "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["outcome"] == "done"
            assert env.revision() == V11
            r = env.cli("rollback", "prod", "--json")  # within the window: B's writes go back to A
        assert r.returncode == 0, r.stderr
    finally:
        _after(h1)
    if not refused:
        assert json.loads(r.stdout)["outcome"] == "aborted"
    assert env.journal()["state"] in ("aborted", "done")
    _assert_consistent(env, pg, h1.logs, None, None, before)
    assert env.oid(env.prod) == a_oid and env.revision() == V10
    if step not in AFTER_SWAP:
        assert database_props(pg, env.prod) == props  # unfrozen exactly as it was
    # 2. killed again, then --resume
    h2 = _writers(env, tmp_path / "load2")
    try:
        _cutover_killed_at(env, step)
        r = env.cli("cutover", "prod", "--resume", "--json")
        assert r.returncode == 0, r.stderr
    finally:
        _after(h2)
    res = json.loads(r.stdout)
    assert res["outcome"] == "done", res
    assert env.revision() == V11 and env.oid(env.prod) != a_oid
    j = env.journal()
    freeze_at = datetime.fromisoformat(j["facts"]["freeze_point"]["at"]).timestamp()
    with pg.connect(env.prod) as conn:
        problems = check(read_logs(h1.logs + h2.logs), conn, a_oid, freeze_at)
    assert not problems, problems
    assert (j["facts"].get("reverse") or {}).get("active")
    r = env.cli("cutover", "prod", "--finish", "--json")
    assert r.returncode == 0, r.stderr
    _assert_consistent(env, pg, h1.logs + h2.logs, a_oid, freeze_at, before)
