"""Issue 12, point 7: the content checksum must not miss ordinary edits.

Format 1's per-row value ``crc32 | adler32 << 32`` is nearly linear: two rows swapping
equal-length values (two e-mail addresses) leave the sum unchanged about once in 10,000 swaps.
The test searches such a swap (a fixed seed: the same one every run), shows that format 1's
checksum misses it, then makes that very edit in a real database and checks that `verify
--against` reports the table as changed.
"""

from __future__ import annotations

import json
import random

from psycopg import sql

from snapdb.tabledata import CHECKSUM, LEGACY_CHECKSUM, checksum_rows

from .conftest import create_db, run_cli

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "oscar", "peggy"]


def _legacy_collision() -> tuple[int, str, int, str]:
    """Two rows (id, email) whose emails, swapped, keep format 1's checksum."""
    rng = random.Random(20261201)
    for _ in range(2_000_000):
        i, j = rng.randint(1, 99999), rng.randint(1, 99999)
        a = f"{rng.choice(NAMES)}.{rng.randint(1000, 9999)}@example.com"
        b = f"{rng.choice(NAMES)}.{rng.randint(1000, 9999)}@example.com"
        if i == j or a == b or len(a) != len(b):
            continue
        before = [f"{i}\t{a}".encode(), f"{j}\t{b}".encode()]
        after = [f"{i}\t{b}".encode(), f"{j}\t{a}".encode()]
        if checksum_rows(before, LEGACY_CHECKSUM) == checksum_rows(after, LEGACY_CHECKSUM):
            return i, a, j, b
    raise AssertionError("no collision of the legacy checksum found")


def test_swapped_values_are_detected(pg, tmp_path, dbname):
    i, a, j, b = _legacy_collision()
    before = [f"{i}\t{a}".encode(), f"{j}\t{b}".encode()]
    after = [f"{i}\t{b}".encode(), f"{j}\t{a}".encode()]
    assert checksum_rows(before, CHECKSUM) != checksum_rows(after, CHECKSUM)

    src = create_db(pg, dbname, "CREATE TABLE users (id int PRIMARY KEY, email text)")
    with pg.connect(src) as conn:
        conn.execute("INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 500) g "
                     "WHERE g NOT IN (%s, %s)", (i, j))
        conn.execute("INSERT INTO users VALUES (%s, %s), (%s, %s)", (i, a, j, b))
    store = str(tmp_path / "store")
    r = run_cli("snapshot", pg.url(src), "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["id"]
    r = run_cli("verify", sid, "--against", pg.url(src), "--store", store)
    assert r.returncode == 0, r.stdout + r.stderr
    with pg.connect(src) as conn:  # the two addresses change places: same rows count, same bytes
        conn.execute(sql.SQL("UPDATE users SET email = CASE id WHEN %s THEN %s ELSE %s END WHERE id IN (%s, %s)"),
                     (i, b, a, i, j))
    r = run_cli("verify", sid, "--against", pg.url(src), "--store", store)
    assert r.returncode == 7, r.stdout + r.stderr
    assert "table public.users: expected checksum" in r.stdout
