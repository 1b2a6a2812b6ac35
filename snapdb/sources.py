"""Which snapshots belong to a source, and which databases are production's: by identity
(server and database), not by name.

A snapshot is *of* a service when it is filed under the service's name and its recorded source
(`Manifest.server`) is the service's own database (`manifest.same_source`: the system
identifier when both are known, else host and port). A database is production's when it is a
production service's database on the server of its `url` or `admin_url`, or on a server with
the same system identifier (known from the service's own snapshots, or asked for a few seconds);
when that cannot be told, a database with the production database's name counts as production.
"""

from __future__ import annotations

import psycopg

from . import manifest as mf
from .config import Config, Endpoint, is_url
from .errors import ConfigError, SnapdbError, StoreError
from .postgres import connect, system_identifier
from .store import Store


def live_sysid(ep: Endpoint) -> str | None:
    """The system identifier of `ep`'s server, or None when it cannot be read (unreachable,
    or the role may not call pg_control_system)."""
    try:
        with connect(ep, SnapdbError, autocommit=True) as conn:
            return system_identifier(conn)
    except SnapdbError:
        return None


def of_source(cfg: Config, ref: str, st: Store) -> tuple[str, list[mf.Manifest], list[mf.Manifest]]:
    """Snapshots of source `ref` (a service, a URL, or a name snapshots are filed under):
    (the name, those taken of its own database, those filed under its name but taken of
    another server or database). Raises `ConfigError` for a source nothing is known about."""
    if ref in cfg.services or is_url(ref):
        ep = cfg.endpoint(ref)
        name = ep.source_name
        filed = mf.list_manifests(st, name if ref in cfg.services else None)
        if is_url(ref):
            filed = [m for m in filed if m.server.get("dbname") == ep.dbname]
        sysid: list[str | None] = []

        def matches(m: mf.Manifest) -> bool:
            if mf.same_source(m.server, ep):
                return True
            if m.server.get("system_identifier"):
                if not sysid:
                    sysid.append(live_sysid(ep))
                return bool(sysid[0]) and mf.same_source(m.server, ep, sysid[0])
            return False

        own = [m for m in filed if matches(m)]
        return name, own, [m for m in filed if m not in own]
    found = mf.list_manifests(st, ref)
    if found:
        return ref, found, []
    known = sorted(set(cfg.services) | {m.source for m in mf.list_manifests(st)})
    raise ConfigError(
        f"unknown source {ref!r}: not a service in the configuration, and no snapshot is filed under it",
        hint=f"known: {', '.join(known) if known else 'none'}" + (
            " (--json takes no value)" if ref.lower() in ("true", "false", "1", "0", "yes", "no") else ""),
    )


def pick_manifest(cfg: Config, st: Store, from_: str | None, snapshot_id: str | None) -> mf.Manifest:
    if from_ and snapshot_id:
        raise ConfigError("give either --from or --snapshot, not both")
    if snapshot_id:
        return mf.read_manifest(st, snapshot_id)
    if not from_:
        found = mf.list_manifests(st)
        if not found:
            raise StoreError(f"no snapshots in {st.describe()}", hint="take one with: snapdb snapshot SOURCE")
        return found[0]
    name, own, other = of_source(cfg, from_, st)
    if not own:
        extra = ""
        if other:
            o = other[0].server
            extra = (f"; {len(other)} snapshot(s) filed under {name!r} were taken of another server or database "
                     f"(e.g. {other[0].id} of {o.get('host')}:{o.get('port')}/{o.get('dbname')}) and are not used")
        raise StoreError(f"no snapshots of {name!r} in {st.describe()}{extra}",
                         hint=f"take one with: snapdb snapshot {from_}")
    return own[0]


def quick_sysid(ep: Endpoint) -> str | None:
    """The system identifier of `ep`'s server, trying for a few seconds only (None: unknown)."""
    try:
        with psycopg.connect(ep.conninfo(), autocommit=True, connect_timeout=5) as conn:
            return system_identifier(conn)
    except psycopg.Error:
        return None


def production_identities(cfg: Config, st: Store | None) -> list[dict]:
    """Who the production databases are, beyond the names in the configuration: database name,
    the servers of both `url` and `admin_url`, and the system identifier (from the service's own
    snapshots, else asked for a few seconds; None when unknown)."""
    out = []
    for name, svc in cfg.services.items():
        if svc.role != "production":
            continue
        sysid = None
        if st is not None:
            try:
                _n, own, _other = of_source(cfg, name, st)
                sysid = next((m.server.get("system_identifier") for m in own if m.server.get("system_identifier")), None)
            except SnapdbError:
                sysid = None
        sysid = sysid or quick_sysid(svc) or (quick_sysid(svc.admin()) if svc.admin_params else None)
        out.append({"name": name, "dbname": svc.dbname, "system_identifier": sysid,
                    "servers": sorted({svc.server_key(), svc.admin().server_key()})})
    return out


def production_by_identity(cfg: Config, st: Store | None, dbname: str, servers: set, sysid: str | None) -> str | None:
    """The production service whose database this is (by server address or system identifier)."""
    for p in production_identities(cfg, st):
        if p["dbname"] != dbname:
            continue
        if servers & {tuple(x) for x in p["servers"]}:
            return p["name"]
        if p["system_identifier"] and sysid and str(p["system_identifier"]) == str(sysid):
            return p["name"]
        if not p["system_identifier"]:
            return p["name"]  # cannot tell it from production's: treat it as production
    return None
