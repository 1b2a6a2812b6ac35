"""Derive the names of snapdb's side databases (temporary build, previous copies).

PostgreSQL silently truncates identifiers to 63 bytes, so every derived name is built to fit:
when ``target + suffix`` would be too long, the target part is cut on a UTF-8 character boundary
and a short hash of the full target name is added, so two long targets never share names.
The functions are pure and deterministic: the next run derives the same temporary name and can
remove a build that a killed run left behind.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

MAX_IDENT_BYTES = 63
TMP_SUFFIX = "__snapdb_new"
PREV_MARK = "__prev_"


def _fit(target: str, suffix: str) -> str:
    """Return ``target + suffix`` if it fits in 63 bytes, else a hashed, truncated form."""
    full = target + suffix
    if len(full.encode("utf-8")) <= MAX_IDENT_BYTES:
        return full
    tag = "~" + hashlib.sha256(target.encode("utf-8")).hexdigest()[:8]
    room = MAX_IDENT_BYTES - len((tag + suffix).encode("utf-8"))
    return truncate_bytes(target, room) + tag + suffix


def truncate_bytes(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")[: max(limit, 0)]
    return data.decode("utf-8", errors="ignore")


def tmp_name(target: str) -> str:
    """Name of the database a restore into `target` is built in."""
    return _fit(target, TMP_SUFFIX)


def prev_prefix(target: str) -> str:
    """Common prefix of the previous copies of `target`."""
    return _fit(target, PREV_MARK + "00000000T000000")[: -len("00000000T000000")]


def prev_name(target: str, when: datetime) -> str:
    """Name for the copy of `target` set aside at `when` (UTC, second resolution)."""
    return prev_prefix(target) + when.strftime("%Y%m%dT%H%M%S")


def is_prev_of(target: str, dbname: str) -> bool:
    """Tell whether `dbname` is a previous copy of `target` (exactly the name `prev_name` gives
    for some time, truncated and hashed forms included)."""
    when = _stamp(dbname[-15:]) if dbname.endswith(tuple("0123456789")) else None
    return when is not None and prev_name(target, when) == dbname


STAMP = "%Y%m%dT%H%M%S"


def _stamp(text: str) -> datetime | None:
    """The time in a name's ``YYYYmmddTHHMMSS`` suffix, or None."""
    if len(text) != 15 or text[8] != "T" or not (text[:8] + text[9:]).isdigit():
        return None
    try:
        return datetime.strptime(text, STAMP)
    except ValueError:
        return None


PRE_MARK = "__pre_"


def pre_name(target: str, tag: str, when: datetime) -> str:
    """Name for `target` set aside by a cutover to release `tag` at `when` (UTC)."""
    return _fit(target, f"{PRE_MARK}{tag}_{when.strftime('%Y%m%dT%H%M%S')}")


def is_pre_of(target: str, dbname: str) -> bool:
    """Tell whether `dbname` is a copy of `target` set aside by a cutover: exactly the name
    `pre_name` gives for some tag and time (so the truncated, hashed forms of a long target are
    recognised, and another target sharing their truncated prefix is not)."""
    when = _stamp(dbname[-15:])
    if when is None or dbname[-16:-15] != "_":
        return False
    start = dbname.find(PRE_MARK)
    while start >= 0:
        tag = dbname[start + len(PRE_MARK):-16]
        if tag and pre_name(target, tag, when) == dbname:
            return True
        start = dbname.find(PRE_MARK, start + 1)
    return False


ROLLEDBACK_MARK = "__rolledback_"


def rolledback_name(target: str, when: datetime) -> str:
    """Name for the release `target` held when a rollback set it aside at `when` (UTC)."""
    return _fit(target, ROLLEDBACK_MARK + when.strftime("%Y%m%dT%H%M%S"))


def set_aside_time(dbname: str) -> datetime | None:
    """When a set-aside copy (`pre_name`, `rolledback_name`) was set aside, from its name."""
    return _stamp(dbname[-15:])


def is_rolledback_of(target: str, dbname: str) -> bool:
    """Tell whether `dbname` is a release of `target` set aside by a rollback (exactly the name
    `rolledback_name` gives for some time)."""
    when = _stamp(dbname[-15:])
    return when is not None and rolledback_name(target, when) == dbname


def looks_like_prev(dbname: str) -> bool:
    """Tell whether `dbname` has the shape of a previous copy's name (``…__prev_YYYYmmddTHHMMSS``),
    of any target: a later run for that target would take it for its own and drop it."""
    stamp = dbname[-15:]
    return (len(dbname) > len(PREV_MARK) + 15 and dbname[:-15].endswith(PREV_MARK) and stamp[8] == "T"
            and (stamp[:8] + stamp[9:]).isdigit())


def looks_like_set_aside(dbname: str) -> bool:
    """Tell whether `dbname` has the shape of a copy a cutover or a rollback set aside
    (``…__pre_<tag>_<time>``, ``…__rolledback_<time>``): the way back, never a restore target."""
    import re

    return bool(re.search(r"(__pre_.+_|__rolledback_)\d{8}T\d{6}$", dbname))


def quote_ident(name: str) -> str:
    """`name` as a double-quoted SQL identifier (for hints and messages)."""
    return '"' + name.replace('"', '""') + '"'


def valid_dbname(name: str) -> bool:
    """Tell whether `name` can be a database name (non-empty, no NUL, at most 63 bytes)."""
    return bool(name) and "\x00" not in name and len(name.encode("utf-8")) <= MAX_IDENT_BYTES
