"""The copies cutovers and rollbacks set aside (``SERVICE__pre_<tag>_<time>``,
``SERVICE__rolledback_<time>``), and their rotation by the service's ``keep_set_aside``.

Contract: `copies(conn, target)` lists `target`'s set-aside copies on the server, newest first
(by the time in their names); `rotate(conn, target, keep, protect)` drops all but the newest
`keep`, never `protect` (the copy the caller just set aside: the way back), and returns (dropped,
warnings): a copy that cannot be dropped stays and is a warning. Callers rotate only once their
new state is in place and checked, under the service's lock.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from .. import names
from ..postgres import drop_database, first_line


def copies(conn: psycopg.Connection, target: str) -> list[tuple[str, datetime]]:
    out = []
    for (d,) in conn.execute("SELECT datname FROM pg_catalog.pg_database").fetchall():
        if names.is_pre_of(target, d) or names.is_rolledback_of(target, d):
            when = names.set_aside_time(d)
            if when is not None:
                out.append((d, when))
    return sorted(out, key=lambda x: (x[1], x[0]), reverse=True)


def rotate(conn: psycopg.Connection, target: str, keep: int | None, protect: str | None) -> tuple[list[str], list[str]]:
    if not keep:
        return [], []
    found = [d for d, _ in copies(conn, target)]
    kept = [protect] if protect in found else []
    dropped, warnings = [], []
    for d in found:
        if d in kept:
            continue
        if len(kept) < keep:
            kept.append(d)
            continue
        try:
            drop_database(conn, d)
            dropped.append(d)
        except psycopg.Error as exc:
            warnings.append(f"could not drop the set-aside copy {d!r} beyond keep_set_aside = {keep}: {first_line(exc)}")
    return dropped, warnings
