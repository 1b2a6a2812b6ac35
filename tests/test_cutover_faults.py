"""Issue 7, acceptance 3 and the journal: SIGKILL at each step boundary, then --resume or --abort,
under writers. Afterwards exactly one database named SERVICE accepts connections, every
acknowledged write is in it exactly once, and nothing was acknowledged by the old database
after the freeze point. Also: a second cutover while one is unfinished, status, --timeout."""

from __future__ import annotations

import json
import signal
from datetime import datetime

import pytest

from .conftest import pause_env, popen_cli, wait_for
from .cutoverenv import make_env
from .dbcompare import database_props
from .loadharness import Harness, check, read_logs

V10, V20 = "3f1c0a9e5b10", "c94a06f3e872"
# "freeze-applied" (inside the freeze step: A frozen, the step not yet recorded) and "closed"
# (inside the swap: A closed to connections, not yet swapped) are inside steps
STEPS = ["preflight", "freeze-applied", "freeze", "snapshot", "build", "upgrade", "prove", "closed",
         "swapped-unrecorded", "swap", "compare"]
AFTER_SWAP = {"swapped-unrecorded", "swap", "compare"}


def _serving(env) -> list[str]:
    """Databases of the service accepting connections under the service's own name."""
    return [d for d, ok in env.databases().items() if d == env.prod and ok]


def _slots(pg) -> list[str]:
    with pg.connect() as conn:
        return [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'snapdb%'")]


@pytest.mark.parametrize("then", ["resume", "abort"])
@pytest.mark.parametrize("step", STEPS)
def test_killed_cutover_then_resume_or_abort(pg, tmp_path, dbname, step, then):
    env = make_env(pg, tmp_path, dbname)
    a_oid = env.oid(env.prod)
    props = database_props(pg, env.prod)
    h = Harness(env.app(), ["normal"] * 3, tmp_path / "load", pause=0.002)
    try:
        h.wait_for_acks(60)
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--drain-timeout", "0.5",
                    env={"SNAPDB_KILL_AT": f"cutover:{step}"})
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert env.journal()["state"] == "running"
        r = env.cli("cutover", "prod", f"--{then}", "--json")
        if then == "abort" and step in AFTER_SWAP:
            # the new release serves and took the writers' writes: undoing it would lose them
            assert r.returncode == 8 and "took writes since the cutover" in r.stderr, r.stderr
            r = env.cli("cutover", "prod", "--resume", "--json")
            outcome = "done"
        else:
            outcome = "done" if then == "resume" else "aborted"
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["outcome"] == outcome
        h.wait_for_acks(read_logs(h.logs).total + 30)
    finally:
        acks = h.stop()
    assert _serving(env) == [env.prod]  # exactly one database named SERVICE accepts connections
    others = {d: ok for d, ok in env.databases().items() if d not in (env.prod, env.dev) and not d.startswith(env.dev)}
    assert not any(others.values()), others  # the set-aside copy (if any) stays closed
    assert _slots(pg) == []  # no proof slot left behind
    j = env.journal()
    point = j["facts"].get("freeze_point")
    freeze_at = datetime.fromisoformat(point["at"]).timestamp() if point and outcome == "done" else None
    with pg.connect(env.prod) as conn:
        problems = check(acks, conn, a_oid if outcome == "done" else None, freeze_at)
    assert not problems, problems
    if outcome == "done":
        assert env.revision() == V20 and env.oid(env.prod) != a_oid
        assert database_props(pg, env.prod) == props  # A's properties, not its frozen state
    else:
        assert env.revision() == V10 and env.oid(env.prod) == a_oid
        assert database_props(pg, env.prod) == props  # unfrozen exactly as it was


def test_second_cutover_refused_while_one_is_unfinished_and_status_shows_it(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", env={"SNAPDB_KILL_AT": "cutover:snapshot"})
    assert r.returncode == -signal.SIGKILL
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
    assert r.returncode == 9 and "is unfinished" in r.stderr and "--resume" in r.stderr, r.stderr
    r = env.cli("status", "prod", "--json")
    assert r.returncode == 0, r.stderr
    [s] = json.loads(r.stdout)["services"]
    assert s["cutover"]["state"] == "running" and s["frozen"]["by"].startswith("cutover")
    r = env.cli("status", "prod")
    assert "FROZEN" in r.stdout and "cutover" in r.stdout
    assert env.cli("cutover", "prod", "--abort").returncode == 0
    [s] = json.loads(env.cli("status", "prod", "--json").stdout)["services"]
    assert s["frozen"] is None and s["cutover"]["state"] == "aborted"


def test_timeout_before_the_swap_aborts(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname)
    props = database_props(pg, env.prod)
    faults, penv = pause_env(tmp_path, "cutover:snapshot")
    proc = popen_cli("--config", env.cfg, "cutover", "prod", "--to", "v2.0", "--freeze", "--timeout", "2", env=penv)
    try:
        wait_for(faults / "cutover:snapshot.reached", proc)
        import time

        time.sleep(2.5)
        (faults / "cutover:snapshot.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 12 and "--timeout" in err, err
    assert env.revision() == V10 and database_props(pg, env.prod) == props
    assert set(env.databases()) == {env.prod, env.dev}
