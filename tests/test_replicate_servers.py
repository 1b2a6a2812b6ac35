"""Issue 8, acceptance 5: a replicate-mode cutover to another server, PostgreSQL 15 to 18
(``--to-server``), under 8 writers. There is no rename across servers: the ``after_swap`` hook
repoints the clients (here: it writes the conninfo the writers reconnect with, as a PgBouncer or
DNS change would) while B is still closed, A is set aside frozen on its own server, and B takes
the service's name on the new one.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime

import pytest
from psycopg import sql

from .conftest import ensure_roles
from .cutoverenv import make_env
from .loadharness import Harness, check, read_logs
from .test_replicate_faults import leftovers, origins

V20 = "c94a06f3e872"


def _env_file(path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def _allows(cluster, dbname: str) -> bool | None:
    with cluster.connect() as conn:
        row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    return row[0] if row else None


def _sequences(cluster, dbname: str) -> dict:
    with cluster.connect(dbname) as conn:
        return {f"{s}.{n}": (v, c) for s, n, v, c in conn.execute(
            "SELECT schemaname, sequencename, last_value, last_value IS NOT NULL FROM pg_sequences")}


@pytest.mark.parametrize("kill", [None, "a-closed", "a-set-aside"])
def test_replicate_cutover_from_15_to_18_on_another_server(pg, pg18, tmp_path, dbname, kill):
    """Also killed inside the swap, then resumed: after the hook ran with A closed (the swap is
    done again from the proof on), and between the two servers' renames (A set aside already:
    the swap is finished forward on B's server)."""
    facts, target = tmp_path / "after_swap.env", tmp_path / "conninfo"
    hook = (f"env | grep ^SNAPDB_ | sort > {facts} && printf 'host=%s port=%s dbname=%s user=lh_app' "
            f"\"$SNAPDB_NEW_HOST\" \"$SNAPDB_NEW_PORT\" \"$SNAPDB_NEW_DATABASE\" > {target}.tmp && mv {target}.tmp {target}")
    env = make_env(pg, tmp_path, dbname, hooks=f"[services.prod.hooks]\nafter_swap = {json.dumps(hook)}\n")
    ensure_roles(pg18, "lh_app", options="LOGIN")
    a_oid = env.oid(env.prod)
    before_a, before_b = origins(pg), origins(pg18)
    h = Harness(env.app(), ["normal"] * 8, tmp_path / "load", pause=0.002, conninfo_file=target)
    try:
        h.wait_for_acks(200)
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--to-server", pg18.url(),
                    "--drain-timeout", "1", "--json", timeout=600,
                    env={"SNAPDB_KILL_AT": f"cutover:{kill}"} if kill else None)
        if kill:
            assert r.returncode == -signal.SIGKILL, r.stderr
            if kill == "a-set-aside":  # the swap counts as committed: an abort is a rollback, refused
                r = env.cli("cutover", "prod", "--abort", timeout=600)
                assert r.returncode == 8 and "another server" in r.stderr and "--resume" in r.stderr, r.stderr
            r = env.cli("cutover", "prod", "--resume", "--json", timeout=600)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        h.wait_for_acks(read_logs(h.logs).total + 200)
    finally:
        acks = h.stop()
    assert res["outcome"] == "done", res
    assert not res["plan"]["replicate"]["reverse"]
    # B serves on the 18 server under the service's name; A is set aside, closed, on the 15 server
    with pg18.connect(env.prod) as conn:
        assert conn.info.server_version // 10000 == 18
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchone()[0] == V20
        b_oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    assert b_oid != a_oid  # the writers' logs tell the two databases apart by OID
    assert env.oid(env.prod) is None
    aside = res["set_aside"]
    assert _allows(pg, aside) is False
    # every acknowledged write is on B exactly once; nothing acknowledged by A after the freeze
    receipt = json.loads((env.store / "catalog" / "receipts" / f"{res['id']}.json").read_text())
    freeze_at = datetime.fromisoformat(receipt["freeze_point"]["at"]).timestamp()
    with pg18.connect(env.prod) as conn:
        problems = check(acks, conn, a_oid, freeze_at)
    assert not problems, problems
    assert any(x[3] == a_oid for x in acks.on) and any(x[3] == b_oid for x in acks.on)
    assert res["proof"]["unchanged"], res["proof"]
    if kill == "a-set-aside":  # the --abort opened B (it serves) and its snapshot ended with that run
        assert res["compare"]["matches"] is None and "no snapshot" in res["compare"]["note"], res["compare"]
    else:
        assert res["compare"]["matches"], res["compare"]
    # every sequence of B starts at or after frozen A's (B's writers moved lh.items on)
    with pg.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(aside)))
    try:
        seq_a = _sequences(pg, aside)
    finally:
        with pg.connect() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(aside)))
    seq_b = _sequences(pg18, env.prod)
    assert seq_a and set(seq_a) <= set(seq_b)
    assert all(seq_b[s][0] is not None and seq_b[s][0] >= (seq_a[s][0] or 0) for s in seq_a), (seq_a, seq_b)
    assert receipt["sequences"]["set"] == len(seq_a)
    # the hook was told where the service lives now, and where it lived
    f = _env_file(facts)
    assert (f["SNAPDB_NEW_HOST"], f["SNAPDB_NEW_PORT"], f["SNAPDB_NEW_DATABASE"]) == ("127.0.0.1", str(pg18.port), env.prod)
    assert (f["SNAPDB_HOST"], f["SNAPDB_PORT"], f["SNAPDB_HOOK"]) == ("127.0.0.1", str(pg.port), "after_swap")
    assert (receipt["to_server"]["host"], str(receipt["to_server"]["port"])) == ("127.0.0.1", str(pg18.port))
    # nothing of the replication is left on either server
    assert leftovers(pg, env.prod, before_a) == [] and leftovers(pg18, env.prod, before_b) == []
    # a rollback across servers is refused, changing nothing: it is a repointing back to A
    r = env.cli("rollback", "prod")
    assert r.returncode == 8 and "another server" in r.stderr, r.stderr
    assert _allows(pg, aside) is False and env.oid(env.prod) is None


def test_replicate_cutover_to_another_server_killed_then_aborted(pg, pg18, tmp_path, dbname):
    """A cross-server cutover killed with A frozen and B following, then --abort: A serves again,
    unfrozen, with every write; nothing of B or of the replication is left on either server."""
    from .dbcompare import database_props

    env = make_env(pg, tmp_path, dbname, hooks='[services.prod.hooks]\nafter_swap = "true"\n')
    ensure_roles(pg18, "lh_app", options="LOGIN")
    a_oid = env.oid(env.prod)
    props = database_props(pg, env.prod)
    before_a, before_b = origins(pg), origins(pg18)
    h = Harness(env.app(), ["normal"] * 4, tmp_path / "load", pause=0.002)
    try:
        h.wait_for_acks(100)
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--to-server", pg18.url(),
                    "--drain-timeout", "0.5", env={"SNAPDB_KILL_AT": "cutover:fence"}, timeout=600)
        assert r.returncode == -signal.SIGKILL, r.stderr
        r = env.cli("cutover", "prod", "--abort", "--json", timeout=600)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["outcome"] == "aborted"
        h.wait_for_acks(read_logs(h.logs).total + 50)
    finally:
        acks = h.stop()
    assert env.oid(env.prod) == a_oid and database_props(pg, env.prod) == props
    with pg.connect(env.prod) as conn:
        assert not check(acks, conn, None, None)
    with pg18.connect() as conn:
        assert not conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                (env.prod[:20],)).fetchall()
    assert leftovers(pg, env.prod, before_a) == [] and leftovers(pg18, env.prod[:20], before_b) == []
