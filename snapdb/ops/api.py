"""The operations verbs behind `snapdb.commands`: `prune`, `delete`, `monitor` and `history`.

Each takes a `Config` first, returns a result object, raises `SnapdbError` subclasses and never
prints; `snapdb.commands` re-exports them (``commands.prune(load_config(), dry_run=True)``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from .. import manifest as mf, sources
from ..config import Config, is_url, parse_duration
from ..errors import ConfigError
from ..store import Store, open_store
from ..store.retention import Policy
from . import history_view as hv, monitor as mon, prune as pr


def _open(cfg: Config, store: str | None) -> Store:
    st = open_store(cfg.store(store), **cfg.store_options)
    st.check()
    return st


def policy(cfg: Config) -> Policy:
    """The configured ``[store.retention]`` policy; `ConfigError` when there is none."""
    if cfg.retention is None:
        raise ConfigError("no retention policy configured: prune would not know what to keep",
                          hint="add [store.retention] to snapdb.toml, e.g. last = 7, daily = 7, weekly = 4, monthly = 6")
    return Policy(**cfg.retention)


def prune(cfg: Config, *, dry_run: bool = False, source: str | None = None, store: str | None = None,
          now: datetime | None = None) -> pr.PruneResult:
    """Delete the snapshots the retention policy does not keep, and unfinished snapshots whose
    writer is provably gone; never a protected one (docs/operations.md#retention).

    Example: ``prune(cfg, dry_run=True)``
    """
    pol = policy(cfg)
    if source is not None and not source:
        raise ConfigError("empty source name")
    st = _open(cfg, store)
    return pr.prune(st, pol, now or mf.utcnow(), rehearsal_max_age=cfg.rehearsal_max_age, dry_run=dry_run,
                    sources={cfg.endpoint(source).source_name} if source else None)


def delete(cfg: Config, ids: list[str], *, force: bool = False, store: str | None = None,
           now: datetime | None = None) -> pr.DeleteResult:
    """Delete snapshots by id, all or none; a snapshot a rehearsal, cutover or rollback refers
    to only with `force` (never one an unfinished cutover needs).

    Example: ``delete(cfg, ["20261127T171505.093Z-5541"])``
    """
    st = _open(cfg, store)
    return pr.delete(st, list(ids), now or mf.utcnow(), rehearsal_max_age=cfg.rehearsal_max_age, force=force)


def monitor(cfg: Config, service: str | None = None, *, status: list[dict] | None = None, check: bool = False,
            max_age: str | None = None, metrics: str | None = None, store: str | None = None,
            now: datetime | None = None) -> mon.MonitorResult:
    """Check the monitoring thresholds (``snapshot_max_age``, ``refresh_max_age``, `max_age`) of
    SERVICE (default: every service) and, with `metrics`, write the facts as a Prometheus text
    file, atomically. `status` is `commands.status`'s per-service entries (reachability, freeze).

    Example: ``monitor(cfg, check=True, metrics="/var/lib/node_exporter/snapdb.prom")``
    """
    limit = parse_duration(max_age, "--max-age") if max_age is not None else None
    if limit is not None and limit <= timedelta(0):
        raise ConfigError("--max-age must be positive")
    names = [service] if service else sorted(cfg.services)
    for n in names:
        if n not in cfg.services:
            raise ConfigError(f"unknown service {n!r} (services: {', '.join(sorted(cfg.services)) or 'none'})")
    st = _open(cfg, store)
    res = mon.evaluate(cfg, st, names, now or mf.utcnow(), status=status, max_age=limit, named=service is not None)
    if metrics:
        res.metrics_file = mon.write_metrics(metrics, mon.render_metrics(res))
    return res


def history(cfg: Config, service: str | None = None, *, limit: int | None = None,
            store: str | None = None) -> hv.HistoryResult:
    """List every snapshot, restore, upgrade, cutover and rollback on record, newest first, with
    outcome, duration, who and where (of SERVICE only, if given: its own snapshots, and the
    operations on it or its database).

    Example: ``history(cfg, "service0-dev", limit=20)``
    """
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be 1 or more")
    st = _open(cfg, store)
    if service is None:
        manifests = mf.list_manifests(st)
    elif service in cfg.services or is_url(service):
        manifests = sources.of_source(cfg, service, st)[1]
    else:  # a name no longer configured: what is filed or recorded under it
        manifests = mf.list_manifests(st, service)
    res = hv.collect(st, manifests, cfg=cfg, service=service, limit=limit)
    if service is not None and not res.entries and service not in cfg.services and not is_url(service):
        raise ConfigError(f"unknown service {service!r}: not configured, and nothing on record under that name",
                          hint=f"services: {', '.join(sorted(cfg.services)) or 'none configured'}")
    return res
