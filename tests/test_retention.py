"""Acceptance 3 (retention) and the delete/prune rules, against real stores (a directory and the
S3 server on loopback): a catalog of snapshots generated over 120 simulated days, pruned every
simulated day with an injected clock, keeps exactly what an independent brute-force reading of
the policy keeps, and never a protected snapshot. Plus: references from the catalog refuse
`delete` (exit 8) unless --force, which never overrides an unfinished cutover; writer leases.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from snapdb import commands, history, manifest as mf
from snapdb.config import load_config
from snapdb.errors import ConfigError, RefusedError
from snapdb.ops import prune as pr
from snapdb.store import lease, open_store
from snapdb.store.retention import Candidate, Policy, plan

from .conftest import run_cli, write_config

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)  # a Sunday: weeks and months both roll over inside the run
POLICY = Policy(last=7, daily=7, weekly=4, monthly=6)


def _id(t: datetime, n: int) -> str:
    return t.strftime("%Y%m%dT%H%M%S") + f".{t.microsecond // 1000:03d}Z-{n:04x}"


def fake_snapshot(st, sid: str, created: datetime, source: str, verified: bool = True) -> None:
    """A snapshot as the store sees it: one data file and the manifest (written last)."""
    data = b"rows of " + sid.encode()
    with st.writer(mf.key(sid, "data/00001.copy.zst")) as f:
        f.write(data)
    files = [{"path": "data/00001.copy.zst", "sha256": "0" * 64, "size": len(data), "raw_size": len(data)}]
    if not verified:  # the manifest lists a file that is not (any more) in the store
        files.append({"path": "data/00002.copy.zst", "sha256": "0" * 64, "size": 5, "raw_size": 5})
    doc = {"format": mf.FORMAT, "id": sid, "source": source, "created_at": created.isoformat(), "label": None,
           "server": {"host": "h", "port": "5432", "dbname": source}, "pg_dump_version": "15.0",
           "database": {"encoding": "UTF8", "collate": "C", "ctype": "C"}, "schema_file": mf.SCHEMA_FILE,
           "files": files, "tables": [], "sequences": [], "large_objects": 0}
    with st.writer(mf.key(sid, mf.MANIFEST)) as f:
        f.write(json.dumps(doc).encode())


def reference_keep(snaps: list[Candidate], policy: Policy, now: datetime, protected: set[str]) -> set[str]:
    """The policy read independently: for each snapshot, does some rule want it? (Set-based,
    no shared code with snapdb.store.retention.)"""
    keep = set(protected) & {c.id for c in snaps}
    for source in {c.source for c in snaps}:
        own = [c for c in snaps if c.source == source]
        keep |= {c.id for c in own if c.created > now}
        ver = sorted((c for c in own if c.verified and c.created <= now), key=lambda c: (c.created, c.id))
        if not ver:
            continue
        keep.add(ver[-1].id)
        keep |= {c.id for c in ver[-policy.last:]} if policy.last else set()
        for count, bucket in ((policy.daily, lambda t: t.date()),
                              (policy.weekly, lambda t: tuple(t.isocalendar())[:2]),
                              (policy.monthly, lambda t: (t.year, t.month))):
            buckets = sorted({bucket(c.created) for c in ver}, reverse=True)[:count]
            for b in buckets:
                keep.add(max((c for c in ver if bucket(c.created) == b), key=lambda c: (c.created, c.id)).id)
    return keep


def test_policy_function_matches_reference_over_120_days():
    """The pure function, 3 seeds, two sources, irregular schedules with gaps, some unverified."""
    for seed in (1, 2, 3):
        rnd = random.Random(seed)
        alive: list[Candidate] = []
        protected: set[str] = set()
        n = 0
        for day in range(120):
            for source in ("prod", "other"):
                if rnd.random() < 0.15:
                    continue  # a night without a snapshot
                for _ in range(rnd.choice((1, 1, 1, 2, 3))):
                    n += 1
                    t = T0 + timedelta(days=day, seconds=rnd.randrange(86400), milliseconds=rnd.randrange(1000))
                    alive.append(Candidate(_id(t, n), t, source, verified=rnd.random() > 0.1))
                    if rnd.random() < 0.03:
                        protected.add(alive[-1].id)
            now = T0 + timedelta(days=day + 1)
            decisions = plan(alive, POLICY, now, {p: "protected" for p in protected})
            kept = {d.id for d in decisions if d.keep}
            assert kept == reference_keep(alive, POLICY, now, protected), (seed, day)
            assert protected & {c.id for c in alive} <= kept
            alive = [c for c in alive if c.id in kept]
        assert len({c.source for c in alive}) == 2 and len(alive) < 60


def protect(st, kind: str, sid: str, ended: datetime) -> None:
    """Make the catalog refer to `sid` as a rehearsal, a cutover receipt or an unfinished cutover."""
    from snapdb.config import Endpoint

    if kind == "rehearsal":
        ep = Endpoint(params={"host": "h", "port": "5432", "dbname": "dev"}, name="dev")
        rec = history.new_record("upgrade", ep, tag="v2.0", restored_from=sid, restored_from_source="prod",
                                 outcome="succeeded")
        rec.ended_at = ended.isoformat()
        history.write_catalog(st, rec)
    elif kind == "receipt":
        with st.writer(f"catalog/receipts/c-{sid}.json") as f:
            f.write(json.dumps({"id": "c1", "snapshot_id": sid}).encode())
    else:
        with st.writer(f"catalog/cutovers/k-{sid}/journal.json") as f:
            f.write(json.dumps({"id": "c2", "state": "running", "facts": {"snapshot": sid}}).encode())


KINDS = ("rehearsal", "receipt", "journal")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_prune_over_120_simulated_days_keeps_exactly_the_policy(kind, tmp_path, request):
    """Acceptance 3 through the store: snapshots written over 120 days, pruned every day."""
    if kind == "s3":
        s3 = request.getfixturevalue("s3")
        st = s3.store()
    else:
        st = open_store(str(tmp_path / "store"))
    rnd = random.Random(7)
    created: dict[str, Candidate] = {}
    n = 0
    protected_ids: list[str] = []
    for day in range(120):
        for _ in range(rnd.choice((0, 1, 1, 1, 2))):
            n += 1
            t = T0 + timedelta(days=day, seconds=rnd.randrange(86400))
            c = Candidate(_id(t, n), t, "prod", verified=rnd.random() > 0.08)
            fake_snapshot(st, c.id, c.created, c.source, c.verified)
            created[c.id] = c
            if day in (3, 40, 41) and len(protected_ids) < 3 and c.verified:
                # the rehearsal "ends" on day 115: within rehearsal_max_age of every prune below
                protect(st, KINDS[len(protected_ids)], c.id, T0 + timedelta(days=115))
                protected_ids.append(c.id)
        every = 10 if kind == "local" else 60  # each prune reads every manifest: fewer over HTTP
        if day % every == every - 1:
            now = T0 + timedelta(days=day + 1)
            before = {sid for sid, e in pr.scan(st).items() if e.complete}
            protected = set(protected_ids)
            expect = reference_keep([created[s] for s in before], POLICY, now, protected)
            dry = pr.prune(st, POLICY, now, rehearsal_max_age=timedelta(days=7), dry_run=True)
            assert {d["id"] for d in dry.deleted} == before - expect
            assert {sid for sid, e in pr.scan(st).items() if e.complete} == before  # a dry run deletes nothing
            res = pr.prune(st, POLICY, now, rehearsal_max_age=timedelta(days=7))
            after = {sid for sid, e in pr.scan(st).items() if e.complete}
            assert after == expect, day
            assert {d["id"] for d in res.deleted} == before - expect
            assert protected <= after
    assert len(protected_ids) == 3 and set(protected_ids) <= {m.id for m in mf.list_manifests(st)}
    assert not [k for k in st.list("snapshots/") if k.split("/")[1] not in after]  # no debris left


def test_delete_refuses_references_unless_forced(tmp_path):
    st_path = tmp_path / "store"
    st = open_store(str(st_path))
    now = datetime.now(timezone.utc)
    ids = [_id(now - timedelta(days=d), d) for d in (5, 4, 3, 2)]
    for d, sid in zip((5, 4, 3, 2), ids):
        fake_snapshot(st, sid, now - timedelta(days=d), "prod")
    for kind, sid in zip(KINDS, ids):
        protect(st, kind, sid, now)
    cfg = write_config(tmp_path / "snapdb.toml", st_path, {})
    c = ["--config", str(cfg)]

    r = run_cli(*c, "delete", ids[3], "no-such-id")  # all or nothing: the unknown id refuses both
    assert r.returncode == 6 and "no-such-id" in r.stderr and st.exists(mf.key(ids[3], mf.MANIFEST))
    r = run_cli(*c, "delete", ids[0])
    assert r.returncode == 8 and r.stderr.count("error:") == 1, r.stderr
    assert "rehearsal" in r.stderr and "--force" in r.stderr and st.exists(mf.key(ids[0], mf.MANIFEST))
    cfgobj = load_config(cfg)
    with pytest.raises(RefusedError, match="receipt"):
        commands.delete(cfgobj, [ids[3], ids[1]])
    assert st.exists(mf.key(ids[3], mf.MANIFEST))  # checked before the first deletion
    with pytest.raises(RefusedError, match="unfinished cutover"):  # its resume needs it: not even --force
        commands.delete(cfgobj, [ids[2]], force=True)
    res = commands.delete(cfgobj, [ids[0], ids[1]], force=True)
    assert [f["id"] for f in res.forced] == ids[:2]
    assert not st.list(mf.key(ids[0], "")) and not st.list(mf.key(ids[1], ""))
    r = run_cli(*c, "--json", "delete", ids[3])
    assert r.returncode == 0 and json.loads(r.stdout)["deleted"][0]["id"] == ids[3]
    assert not st.list(mf.key(ids[3], ""))
    with pytest.raises(ConfigError, match="retention"):  # no policy configured: refused
        commands.prune(cfgobj)
    assert st.exists(mf.key(ids[2], mf.MANIFEST))


def test_writer_state_needs_proof(tmp_path):
    me = lease.Lease.mine("x", "prod")
    assert lease.writer_state(me) == "alive"
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = lease.Lease.mine("x", "prod")
    dead.pid = p.pid
    assert lease.writer_state(dead) == "dead"
    reused = lease.Lease.mine("x", "prod")
    reused.pid_start = str(int(me.pid_start) - 1)  # our pid, but another process's start time
    assert lease.writer_state(reused) == "dead"
    for field, value in (("host", "another-host"), ("machine_id", "0" * 32), ("pid_ns", "pid:[1]")):
        other = lease.Lease.mine("x", "prod")
        setattr(other, field, value)
        other.pid = p.pid  # even a dead pid proves nothing about another machine or namespace
        assert lease.writer_state(other) == "unknown", field
    rebooted = lease.Lease.mine("x", "prod")
    rebooted.boot_id = "00000000-0000-0000-0000-000000000000"
    assert lease.writer_state(rebooted) == "dead"


def test_prune_leaves_unknown_writers_and_finishes_cut_short_deletions(tmp_path):
    st = open_store(str(tmp_path / "store"))
    now = datetime.now(timezone.utc)
    fake_snapshot(st, _id(now, 1), now - timedelta(hours=1), "prod")
    foreign = lease.Lease.mine(_id(now, 2), "prod")
    foreign.host = "elsewhere"
    lease.publish(st, foreign)
    with st.writer(mf.key(foreign.snapshot_id, "data/00001.copy.zst")) as f:
        f.write(b"x")
    half = _id(now, 3)  # a deletion killed after the manifest went
    lease.publish(st, lease.Lease.mine(half, "prod", "delete"), lease.DELETING)
    with st.writer(mf.key(half, "data/00001.copy.zst")) as f:
        f.write(b"x")
    legacy = _id(now, 4)  # no lease at all
    with st.writer(mf.key(legacy, "data/00001.copy.zst")) as f:
        f.write(b"x")
    res = pr.prune(st, Policy(last=1), now, rehearsal_max_age=timedelta(days=7))
    assert [d["id"] for d in res.deleted] == [half] and not st.list(mf.key(half, ""))
    assert {d["id"] for d in res.left_alone} == {foreign.snapshot_id, legacy}
    assert st.list(mf.key(foreign.snapshot_id, "")) and st.list(mf.key(legacy, ""))
    assert os.environ.get("SNAPDB_PAUSE_AT") is None


def test_killed_upload_is_never_listable_and_pruned_only_once_its_writer_is_gone(s3, pg, dbname, tmp_path):
    """Acceptance 2: a snapshot to the S3 endpoint, killed (SIGKILL) after its table files were
    uploaded: no listable snapshot; prune and delete leave the debris alone while the writer
    runs; the next prune once the writer is dead removes every object of it."""
    import signal

    from .conftest import create_db, pause_env, popen_cli, wait_for

    create_db(pg, dbname, "CREATE TABLE t (id int PRIMARY KEY, v text); "
                          "INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i")
    url = s3.fresh_url("kill")
    prefix = url.split("/", 3)[3]
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{url}"\nendpoint_url = "{s3.endpoint}"\n\n[store.retention]\nlast = 1\n\n'
                   f'[services.src]\nurl = "{pg.url(dbname)}"\nrole = "production"\n')
    c = ["--config", str(cfg)]
    faults, env = pause_env(tmp_path, "snapshot:dumped")
    proc = popen_cli(*c, "snapshot", "src", env=env)
    try:
        wait_for(faults / "snapshot:dumped.reached", proc)
        keys = s3.object_keys(prefix + "/snapshots/")
        sid = keys[0].split("/")[2]
        assert any(k.endswith("/data/00001.copy.zst") for k in keys) and any(k.endswith("/writer.json") for k in keys)
        r = run_cli(*c, "--json", "snapshots")
        assert r.returncode == 0 and json.loads(r.stdout) == []  # half-uploaded: it does not exist
        r = run_cli(*c, "--json", "prune")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["deleted"] == [] and [d["id"] for d in out["left_alone"]] == [sid]
        assert "running" in out["left_alone"][0]["why"]
        r = run_cli(*c, "delete", sid, "--force")  # not even --force deletes a running writer's files
        assert r.returncode == 9 and "still being written" in r.stderr
        assert s3.object_keys(prefix + "/snapshots/") == keys
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    r = run_cli(*c, "--json", "snapshots")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert s3.object_keys(prefix + "/snapshots/") == keys  # nothing cleaned up its debris on the way down
    r = run_cli(*c, "--json", "prune")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(d["id"], d["kind"]) for d in out["deleted"]] == [(sid, "unfinished, writer gone")]
    assert s3.object_keys(prefix + "/snapshots/") == [] and s3.incomplete_uploads(prefix) == []


def test_snapshot_prune_after_a_successful_snapshot(pg, dbname, tmp_path):
    from .conftest import create_db

    create_db(pg, dbname, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
    cfg = tmp_path / "snapdb.toml"
    base = f'[store]\nurl = "{tmp_path / "store"}"\n\n[services.src]\nurl = "{pg.url(dbname)}"\nrole = "production"\n'
    cfg.write_text(base)
    c = ["--config", str(cfg)]
    r = run_cli(*c, "snapshot", "src", "--prune")  # no policy: refused before any snapshot is taken
    assert r.returncode == 3 and "retention" in r.stderr and not (tmp_path / "store").exists()
    first = run_cli(*c, "snapshot", "src")
    assert first.returncode == 0, first.stderr
    cfg.write_text(base.replace("\n\n[services", "\n\n[store.retention]\nlast = 1\n\n[services"))
    r = run_cli(*c, "--json", "snapshot", "src", "--prune")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [d["id"] for d in out["pruned"]["deleted"]] == [first.stdout.strip()]
    assert [m.id for m in mf.list_manifests(open_store(str(tmp_path / "store")))] == [out["id"]]


@pytest.mark.parametrize("body, message", [
    ("[store.retention]\n", "at least one"),
    ("[store.retention]\nlast = -1\n", "0 or more"),
    ("[store.retention]\ndaily = true\n", "whole number"),
    ("[store.retention]\nhourly = 3\n", "unknown key 'hourly'"),
    ("[store.retention]\nlast = 0\n", "all 0"),
    ("[store.retention]\nlast = 0\ndaily = 0\nweekly = 0\nmonthly = 0\n", "all 0"),
])
def test_bad_retention_config_is_refused(tmp_path, body, message):
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path}"\n\n{body}')
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)


def test_retention_with_every_rule_off_is_refused(tmp_path):
    """Every rule 0 would keep only each source's newest snapshot: refused like an empty table
    (review/issue9b finding 5), and prune deletes nothing."""
    t = datetime(2026, 11, 1, tzinfo=timezone.utc)
    st = open_store(str(tmp_path / "store"))
    for n in range(5):
        fake_snapshot(st, _id(t + timedelta(days=n), n + 1), t + timedelta(days=n), "prod")
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[store.retention]\nlast = 0\ndaily = 0\n')
    r = run_cli("--config", str(cfg), "prune")
    left = [k for k in st.list("snapshots/") if k.endswith("manifest.json")]
    assert r.returncode == 3 and len(left) == 5, (r.returncode, r.stderr, f"{len(left)} of 5 snapshots left")
    assert "all 0" in r.stderr and r.stderr.count("\n") <= 2, r.stderr


def test_killed_multipart_upload_is_aborted_once_its_writer_is_gone(s3):
    """A writer SIGKILLed inside a multipart upload leaves invisible parts: prune leaves them
    while it runs and aborts the upload (and removes the lease) once it is dead."""
    import signal

    url = s3.fresh_url("mpu-kill")
    prefix = url.split("/", 3)[3]
    sid = "20260101T000000.000Z-dead"
    script = (
        "import os, time\n"
        "from snapdb.store import lease\nfrom snapdb.store.s3 import S3Store\n"
        f"st = S3Store({url!r}, endpoint_url={s3.endpoint!r})\n"
        f"lease.publish(st, lease.Lease.mine({sid!r}, 'prod'))\n"
        f"w = st.writer('snapshots/{sid}/data/00001.copy.zst')\n"
        "w.__enter__().write(os.urandom(6 << 20))\n"
        "print('ready', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert s3.incomplete_uploads(prefix) == [f"{prefix}/snapshots/{sid}/data/00001.copy.zst"]
        st = s3.store(url)
        res = pr.prune(st, Policy(last=1), datetime.now(timezone.utc), rehearsal_max_age=timedelta(days=7))
        assert res.deleted == [] and [d["id"] for d in res.left_alone] == [sid]
        assert len(s3.incomplete_uploads(prefix)) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    res = pr.prune(st, Policy(last=1), datetime.now(timezone.utc), rehearsal_max_age=timedelta(days=7))
    assert [(d["id"], d["incomplete_writes"]) for d in res.deleted] == [(sid, 1)]
    assert s3.incomplete_uploads(prefix) == [] and s3.object_keys(prefix) == []
