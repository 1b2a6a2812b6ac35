"""The freeze's drain (layer 3) waits for the transactions that were open when the freeze was
applied, not for the new ones that sessions opened before it keep starting: writers in a retry
loop would otherwise hold every freeze (and a replicate-mode window) for the whole
--drain-timeout."""

from __future__ import annotations

import json
import threading
import time

import psycopg

from .cutoverenv import make_env
from .loadharness import Harness


def test_drain_does_not_wait_for_transactions_begun_after_the_freeze(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname, rehearse=False)
    h = Harness(env.app(), ["normal"] * 8, tmp_path / "load", pause=0.0)
    old = psycopg.connect(env.app(), autocommit=True)  # open before the freeze, committing after it
    old.execute("BEGIN")
    old.execute("INSERT INTO lh.items (worker, n) VALUES (-2, 1)")
    committed: list[bool] = []

    def commit_later() -> None:  # once the freeze is applied (new sessions read-only), 1 s later
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(env.app(), autocommit=True) as probe:
                if probe.execute("SHOW default_transaction_read_only").fetchone()[0] == "on":
                    break
            time.sleep(0.02)
        time.sleep(1.0)
        old.execute("COMMIT")
        committed.append(True)

    try:
        h.wait_for_acks(100)
        t = threading.Thread(target=commit_later)
        t.start()
        r = env.cli("freeze", "prod", "--drain-timeout", "20", "--json")
        t.join()
        assert r.returncode == 0, r.stderr
        drained = json.loads(r.stdout)["drained"]
    finally:
        h.stop()
        old.close()
        env.cli("unfreeze", "prod")
    assert committed == [True]  # the transaction open at the freeze was given its time
    assert drained["still_busy"] == 0 and drained["busy_at_start"] >= 1, drained
    assert drained["waited_seconds"] < 12, drained  # not the whole 20 s for the writers' new transactions
