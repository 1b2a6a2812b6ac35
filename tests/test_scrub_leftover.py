"""A killed restore's unscrubbed build must not outlive the next `--if-newer` run (review/issue9b
finding 2). docs/cron.md: "a killed process leaves service0-dev untouched (and the next run drops the
half-built copy)". With the documented cron line (`restore --if-newer`) the next run does not:
when the target already holds the snapshot (a manual re-run of the same restore was killed, e.g.
by the OOM killer or a reboot), `--if-newer` skips before anything else, and the killed run's
build -- the snapshot's production rows, unscrubbed, since the scrub never committed -- stays on
the dev server night after night, and `snapdb status` does not mention it."""
from __future__ import annotations

import json

import psycopg

from snapdb import locks, names

from .conftest import databases, run_cli
from .test_scrub_owner import _setup


def test_if_newer_run_after_a_killed_restore_drops_the_unscrubbed_build(pg, tmp_path):
    c, dev, _app = _setup(pg, tmp_path, "c")
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src")
    assert r.returncode == 0, r.stderr
    # the same restore run again by hand, killed after the load (before the scrub commits)
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", env={"SNAPDB_KILL_AT": "restore:loaded"})
    assert r.returncode == -9
    assert names.tmp_name(dev) in databases(pg)
    with pg.connect(names.tmp_name(dev)) as conn:
        assert conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%@prod.example.com'").fetchone()[0] == 50
    # the nightly cron line
    r = run_cli(*c, "--json", "restore", "--into", "dev", "--from", "src", "--if-newer")
    assert r.returncode == 0 and json.loads(r.stdout)["outcome"] == "skipped", r.stderr
    st = run_cli(*c, "--json", "status", "dev")
    assert names.tmp_name(dev) not in databases(pg) or names.tmp_name(dev) in st.stdout, \
        "an unscrubbed build left by a killed restore stays after the next (--if-newer) run, and status does not say so"


def test_status_lists_a_leftover_build_and_check_fails_for_a_scrubbed_service_unless_a_run_holds_the_lock(pg, tmp_path):
    """`status` lists the build a killed restore left; `status --check` makes it a problem (exit
    13) for a service with scrub rules; while a run holds the target's lock the build is that
    run's: no problem, and `restore --if-newer` leaves it alone, saying so."""
    c, dev, _app = _setup(pg, tmp_path, "f")
    assert run_cli(*c, "restore", "--into", "dev", "--from", "src").returncode == 0
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", env={"SNAPDB_KILL_AT": "restore:scrubbed"})
    assert r.returncode == -9
    build = names.tmp_name(dev)
    st = run_cli(*c, "status", "dev")
    assert st.returncode == 0 and f"temporary build: {build}" in st.stdout and "interrupted" in st.stdout, st.stdout
    chk = run_cli(*c, "status", "--check")
    assert chk.returncode == 13 and f"problem: dev: temporary build {build}" in chk.stdout, (chk.stdout, chk.stderr)
    with psycopg.connect(pg.url("postgres"), autocommit=True) as holder:  # another run, as far as snapdb can tell
        locks.acquire(holder, dev, "restore", repr(dev))
        st = run_cli(*c, "--json", "status", "dev")
        left = json.loads(st.stdout)["services"][0]["leftover_build"]
        assert left["name"] == build and "snapdb restore" in left["busy"], left
        assert run_cli(*c, "status", "--check", "dev").returncode == 0
        r = run_cli(*c, "--json", "restore", "--into", "dev", "--from", "src", "--if-newer")
        out = json.loads(r.stdout)
        assert r.returncode == 0 and out["outcome"] == "skipped", r.stderr
        assert any(f"left the temporary build {build!r} alone" in w for w in out["warnings"]), out["warnings"]
        assert build in databases(pg)
    r = run_cli(*c, "--json", "restore", "--into", "dev", "--from", "src", "--if-newer")
    out = json.loads(r.stdout)
    assert out["outcome"] == "skipped" and any("dropped" in w for w in out["warnings"]), out
    assert build not in databases(pg)
    assert run_cli(*c, "status", "--check", "dev").returncode == 0
    r = run_cli(*c, "--json", "restore", "--into", "dev", "--from", "src", "--if-newer")
    assert json.loads(r.stdout)["warnings"] == []  # nothing left: nothing said
