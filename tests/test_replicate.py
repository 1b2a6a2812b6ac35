"""Issue 8: the replicate-mode cutover (B built and upgraded while A is live; only the fence, the
in-freeze revisions and the swap inside the freeze), under the load harness (acceptance 1, 2, 3, 6).
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import psycopg

from .cutoverenv import make_env
from .loadharness import Harness, check, read_logs, unavailability


def _receipt(env, res: dict) -> dict:
    return json.loads((env.store / "catalog" / "receipts" / f"{res['id']}.json").read_text())


def _slots_and_subs(pg, dbname: str | None = None) -> tuple[list, list]:
    """Slots and subscriptions on the server, and publications in `dbname` (the new SERVICE:
    it was copied from A after A's publication was made, and must not keep it)."""
    with pg.connect() as conn:
        slots = [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")]
        subs = [r[0] for r in conn.execute("SELECT subname FROM pg_subscription")]
    if dbname:
        with pg.connect(dbname) as conn:
            subs += [f"publication {r[0]}" for r in conn.execute("SELECT pubname FROM pg_publication")]
    return slots, subs


def test_replicate_cutover_under_load(pg, tmp_path, dbname):
    """Acceptance 1 and 3: 8 writers through a replicate-mode cutover from v1.0 to v2.0, whose
    v1.1 revision runs before the freeze and v2.0's split of a column inside it."""
    env = make_env(pg, tmp_path, dbname)
    a_oid = env.oid(env.prod)
    h = Harness(env.app(), ["normal"] * 8, tmp_path / "load", pause=0.002)
    try:
        h.wait_for_acks(200)
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--drain-timeout", "1",
                    "--json", timeout=600)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        h.wait_for_acks(read_logs(h.logs).total + 150)
    finally:
        acks = h.stop()
    assert res["outcome"] == "done", res
    plan = res["plan"]["replicate"]
    assert plan["before"] == ["7d2e4b8c1a21"] and plan["during"] == ["c94a06f3e872"]
    assert not plan["reverse"]
    assert env.revision() == "c94a06f3e872" and env.oid(env.prod) != a_oid
    receipt = _receipt(env, res)
    freeze_at = datetime.fromisoformat(receipt["freeze_point"]["at"]).timestamp()
    with pg.connect(env.prod) as conn:
        problems = check(acks, conn, a_oid, freeze_at)
        names = conn.execute("SELECT count(*) FROM app.customers WHERE first_name = '' AND last_name = ''").fetchone()[0]
    assert not problems, problems
    assert names == 0  # the in-freeze revision ran on B's final rows
    assert any(x[3] == a_oid for x in acks.on) and any(x[3] != a_oid for x in acks.on)
    assert res["proof"]["unchanged"] and res["proof"]["counts"]["tables"] > 0
    # the proof decoded A's WAL from the freeze point with a slot of its own (the replication slot's
    # LSN once took its place in the journal, and the WAL check was skipped without a word)
    assert receipt["proof_slot"] and receipt["slot_lsn"] and receipt["rep_slot_lsn"], receipt
    assert res["proof"]["by"] == "decoded WAL and catalog fingerprint", res["proof"]
    assert res["compare"]["matches"], res["compare"]
    assert receipt["fence"]["lsn"] and receipt["sequences"]["set"] >= 3
    assert receipt["upgrade_before_freeze"]["revisions"] == ["7d2e4b8c1a21"]
    assert receipt["upgrade_during_freeze"]["revisions"] == ["c94a06f3e872"]
    slots, subs = _slots_and_subs(pg, env.prod)
    assert not [s for s in slots if "snapdb" in s] and not [s for s in subs if "snapdb" in s]
    gap = unavailability(h.logs)
    assert gap > 0 and res["freeze_window_seconds"] < 10
    # the lag was reported while waiting
    assert "following A" in r.stderr


def test_replicate_release_before_the_freeze_and_rollback_keeps_writes(pg, tmp_path, dbname):
    """Acceptance 6: a release whose revisions all run before the freeze (v1.1); the set-aside A
    follows B afterwards, and a rollback within the window keeps what B took."""
    env = make_env(pg, tmp_path, dbname, rehearse=False)
    r = env.cli("upgrade", "dev", "--to", "v1.1")
    assert r.returncode == 0, r.stderr
    a_oid = env.oid(env.prod)
    h = Harness(env.app(), ["normal"] * 4, tmp_path / "load", pause=0.002)
    try:
        h.wait_for_acks(100)
        r = env.cli("cutover", "prod", "--to", "v1.1", "--freeze", "--mode", "replicate", "--drain-timeout", "1",
                    "--json", timeout=600)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["plan"]["replicate"]["during"] == [] and res["plan"]["replicate"]["reverse"]
        h.wait_for_acks(read_logs(h.logs).total + 200)
    finally:
        acks = h.stop()
    assert res["compare"]["matches"], res["compare"]
    with pg.connect(env.prod) as conn:
        assert not check(acks, conn, a_oid, None)
    r = env.cli("rollback", "prod", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    assert env.oid(env.prod) == a_oid and env.revision() == "3f1c0a9e5b10"
    with pg.connect(env.prod) as conn:  # every write acknowledged by B is on A now
        problems = check(acks, conn, None, None)
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "off"
    assert not problems, problems
    with psycopg.connect(env.app(), autocommit=True) as conn:  # A's sequences moved past B's ids
        conn.execute("INSERT INTO lh.items (worker, n) VALUES (99, 1)")
    slots, subs = _slots_and_subs(pg)
    assert not [s for s in slots if "snapdb" in s] and not [s for s in subs if "snapdb" in s]


def test_max_freeze_below_the_prediction_refuses_before_freezing(pg, tmp_path, dbname):
    """Acceptance 3: --max-freeze below the predicted window refuses in preflight, changing nothing."""
    from .dbcompare import database_props

    env = make_env(pg, tmp_path, dbname)
    props = database_props(pg, env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    predicted = json.loads(r.stdout)["predicted_seconds"]
    assert predicted > 0
    # the preflight measures the window's constant part anew on every run, so the refusing run
    # states a prediction of its own: it must be the one that exceeds the limit
    limit = round(predicted * 0.3, 3)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--max-freeze", f"{limit}")
    m = re.search(r"the predicted freeze window \((\d+\.\d+) s\) exceeds --max-freeze ([\d.]+) s", r.stderr)
    assert r.returncode == 8 and m, r.stderr
    assert float(m.group(1)) > limit and float(m.group(2)) == limit
    assert not (env.store / "catalog" / "cutovers").exists() or not list((env.store / "catalog" / "cutovers").glob("*/journal.json"))
    assert database_props(pg, env.prod) == props and set(env.databases()) == {env.prod, env.dev}
    slots, subs = _slots_and_subs(pg, env.prod)
    assert not [s for s in slots if "snapdb" in s] and not [s for s in subs if "snapdb" in s]


def test_first_prediction_is_measured_in_the_preflight(pg, tmp_path, dbname):
    """Acceptance 3, before any replicate-mode cutover of the service: the window's constant part
    is predicted from what the preflight timed on A (sessions, fingerprint, locks, counts, ...),
    not assumed, and measuring changed nothing."""
    from .dbcompare import database_props

    env = make_env(pg, tmp_path, dbname)
    props = database_props(pg, env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)["plan"]["prediction"]
    assert pred["basis"]["overhead"].startswith("measured in the preflight"), pred["basis"]
    measured = pred["measured"]
    assert not measured["unmeasured"], measured["unmeasured"]
    secs = measured["seconds"]
    for part in ("connect_a", "connect_b", "statement", "fingerprint", "lock", "count", "capture", "journal", "scripts"):
        assert 0 < secs[part] < 2, (part, secs)
    assert measured["settings"]["synchronous_commit"] == "off"  # the test cluster's (the window forces its flushes)
    assert 0 < measured["parts"]["wal_flush"] < 0.1
    constant = pred["parts"]["freeze, fence, proof and swap"]
    assert constant == measured["estimate_seconds"] and abs(constant - sum(measured["parts"].values())) < 0.002
    assert 0.05 < constant < 10 and measured["took_seconds"] < 3
    assert pred["seconds"] == round(constant + pred["parts"]["revisions inside the freeze"], 3)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--mode", "replicate", "--dry-run")
    assert r.returncode == 0 and "measured in the preflight" in r.stdout, r.stdout
    assert database_props(pg, env.prod) == props and set(env.databases()) == {env.prod, env.dev}
    assert not (env.store / "catalog" / "cutovers").exists()
    slots, subs = _slots_and_subs(pg, env.prod)
    assert not [s for s in slots if "snapdb" in s] and not [s for s in subs if "snapdb" in s]
