"""Monitoring: the thresholds of ``snapdb status --check`` and the Prometheus metrics file.

Facts come from the store (`prune.scan`: complete, verified and unfinished snapshots; the
catalog's restore records) and from `commands.status`'s per-service entries (reachable, frozen),
which the caller passes in. Thresholds (``[services.X]``):

- ``snapshot_max_age = "26h"``: X's newest *verified* snapshot (filed under X's name) must be
  younger than this; ``--max-age`` overrides it, and applies to the production services (or to
  SERVICE when one is named) that have none;
- ``refresh_max_age = "2d"``: the newest successful restore into X's database (the catalog's
  record of it, whether the restore named X, its URL or its database with ``--server``) must be
  younger than this: last night's refresh happened.

A service with a threshold that cannot be reached is a problem too, and so is, threshold or not,
a service with scrub rules whose temporary build an interrupted restore left (``status`` found it
and no run holds the database's lock): it holds the snapshot's rows, unscrubbed when the run died
before its scrub committed. `evaluate` lists one line per
problem; `write_metrics` writes the Prometheus text exposition format (version 0.0.4, for
node_exporter's textfile collector) to a temporary file beside the target, fsyncs it and
renames it into place, so a scraper never reads half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from .. import history
from ..config import Config, Endpoint, format_duration
from ..errors import ConfigError
from ..store import Store
from . import prune as pr


@dataclass
class MonitorResult:
    """What `status --check` / `--metrics` found; `problems` empty means all thresholds hold."""

    now: str
    sources: list[dict] = field(default_factory=list)
    services: list[dict] = field(default_factory=list)
    store: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    metrics_file: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _age(now: datetime, t: datetime) -> str:
    """An age rounded down to its largest sensible unit: 3d, 30h, 45m, 20s."""
    secs = max(0, int((now - t).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= 2 * size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _last_restore(restores: list[history.Record], name: str, svc: Endpoint) -> history.Record | None:
    """The newest of `restores` (successful ones, newest first) into service `name`'s database,
    whether it named the service or its database (by URL, by ``--server``): `history.concerns`,
    so `status --check` counts what `snapdb history NAME` lists."""
    return next((rec for rec in restores if history.concerns(rec, name, svc)), None)


def evaluate(cfg: Config, store: Store, names: list[str], now: datetime, *, status: list[dict] | None = None,
             max_age: timedelta | None = None, named: bool = False) -> MonitorResult:
    """Gather the facts and check the thresholds of services `names` (see module docstring)."""
    out = MonitorResult(now=now.isoformat())
    entries = pr.scan(store)
    complete = [e for e in entries.values() if e.complete]
    by_source: dict[str, list] = {}
    for e in complete:
        by_source.setdefault(e.manifest.source, []).append(e)
    for source, es in sorted(by_source.items()):
        ver = sorted((e for e in es if e.verified), key=lambda e: (e.manifest.created_at, e.id), reverse=True)
        newest = ver[0].manifest if ver else None
        out.sources.append({
            "source": source, "snapshots": len(es), "verified": len(ver),
            "bytes": sum(e.manifest.stored_bytes for e in es),
            "newest": None if newest is None else {
                "id": newest.id, "created_at": newest.created_at, "bytes": newest.stored_bytes,
                "seconds": newest.seconds, "age_seconds": round((now - newest.created()).total_seconds(), 3)},
        })
    out.store = {"snapshots": len(complete), "bytes": sum(e.manifest.stored_bytes for e in complete),
                 "unfinished": sum(1 for e in entries.values() if not e.complete)}
    restores = [rec for rec in history.list_catalog(store) if rec.operation == "restore" and rec.outcome == "succeeded"]
    live = {e["service"]: e for e in status or []}
    newest_of = {s["source"]: s["newest"] for s in out.sources}
    for n in names:
        svc = cfg.services[n]
        limits = dict(cfg.monitor.get(n, {}))
        if max_age is not None and ("snapshot_max_age" in limits or named or svc.role == "production"):
            limits["snapshot_max_age"] = max_age
        info: dict = {"service": n, "role": svc.role, "thresholds": {k: format_duration(v) for k, v in limits.items()},
                      "reachable": "error" not in live.get(n, {}) if n in live else None,
                      "frozen": bool(live.get(n, {}).get("frozen")), "last_restore": None}
        rec = _last_restore(restores, n, svc)
        if rec is not None:
            ended = rec.ended() or datetime.fromisoformat(rec.started_at)
            e = entries.get(rec.restored_from or "")  # the snapshot the copy holds, if still in the store
            held = e.manifest.created_at if e is not None and e.complete else None
            info["last_restore"] = {"at": ended.isoformat(), "snapshot": rec.restored_from,
                                    "snapshot_created_at": held, "seconds": rec.seconds,
                                    "age_seconds": round((now - ended).total_seconds(), 3)}
        out.services.append(info)
        left = live.get(n, {}).get("leftover_build")
        if left and not left.get("busy") and n in cfg.scrub:
            out.problems.append(f"{n}: temporary build {left['name']} left by an interrupted restore (unscrubbed rows, "
                                "perhaps); the next restore, --if-newer too, drops it")
        if not limits:
            continue
        if info["reachable"] is False:
            out.problems.append(f"{n}: unreachable: {live[n]['error']}")
        if "snapshot_max_age" in limits:
            newest = newest_of.get(svc.source_name)
            limit = limits["snapshot_max_age"]
            if newest is None:
                out.problems.append(f"{n}: no verified snapshot in the store (limit {format_duration(limit)})")
            elif now - datetime.fromisoformat(newest["created_at"]) > limit:
                out.problems.append(f"{n}: newest verified snapshot {newest['id']} is "
                                    f"{_age(now, datetime.fromisoformat(newest['created_at']))} old "
                                    f"(limit {format_duration(limit)})")
        if "refresh_max_age" in limits:
            limit = limits["refresh_max_age"]
            last = info["last_restore"]
            if last is None:
                out.problems.append(f"{n}: never restored (refresh limit {format_duration(limit)})")
            elif now - datetime.fromisoformat(last["at"]) > limit:
                out.problems.append(f"{n}: last refresh {_age(now, datetime.fromisoformat(last['at']))} ago, at "
                                    f"{last['at']} (limit {format_duration(limit)})")
    return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def render_metrics(res: MonitorResult) -> str:
    """The facts of `res` in Prometheus text format."""
    families: list[tuple[str, str, list[tuple[dict, float]]]] = []

    def fam(name: str, help_: str, samples: list[tuple[dict, float | None]]) -> None:
        families.append((name, help_, [(lab, v) for lab, v in samples if v is not None]))

    src = res.sources
    fam("snapdb_last_snapshot_timestamp_seconds", "Creation time of the newest verified snapshot of a source (Unix time).",
        [({"source": s["source"]}, _ts(s["newest"]["created_at"]) if s["newest"] else None) for s in src])
    fam("snapdb_last_snapshot_size_bytes", "Stored size of the newest verified snapshot of a source.",
        [({"source": s["source"]}, s["newest"]["bytes"] if s["newest"] else None) for s in src])
    fam("snapdb_last_snapshot_duration_seconds", "How long taking the newest verified snapshot of a source took.",
        [({"source": s["source"]}, s["newest"]["seconds"] if s["newest"] else None) for s in src])
    fam("snapdb_snapshots", "Complete snapshots of a source in the store.",
        [({"source": s["source"]}, s["snapshots"]) for s in src])
    fam("snapdb_snapshot_bytes", "Stored bytes of a source's complete snapshots.",
        [({"source": s["source"]}, s["bytes"]) for s in src])
    fam("snapdb_store_bytes", "Stored bytes of every complete snapshot in the store.", [({}, res.store.get("bytes"))])
    fam("snapdb_unfinished_snapshots", "Snapshot ids in the store without a manifest (being written, or debris).",
        [({}, res.store.get("unfinished"))])
    sv = res.services
    fam("snapdb_last_restore_timestamp_seconds", "End of the newest successful restore into a service (Unix time).",
        [({"service": s["service"]}, _ts(s["last_restore"]["at"]) if s["last_restore"] else None) for s in sv])
    fam("snapdb_last_restore_duration_seconds", "How long the newest successful restore into a service took.",
        [({"service": s["service"]}, s["last_restore"]["seconds"] if s["last_restore"] else None) for s in sv])
    fam("snapdb_restored_snapshot_timestamp_seconds", "Creation time of the snapshot a service was last restored "
        "from: the age of a copy's data (Unix time).",
        [({"service": s["service"]}, _ts(s["last_restore"]["snapshot_created_at"]) if s["last_restore"] else None)
         for s in sv])
    fam("snapdb_service_up", "Whether snapdb could connect to the service's database.",
        [({"service": s["service"]}, None if s["reachable"] is None else float(s["reachable"])) for s in sv])
    fam("snapdb_service_frozen", "Whether the service is frozen (a cutover or a manual freeze).",
        [({"service": s["service"]}, float(s["frozen"])) for s in sv])
    fam("snapdb_check_problems", "Thresholds crossed (status --check lists them).", [({}, len(res.problems))])
    fam("snapdb_status_timestamp_seconds", "When these facts were gathered (Unix time).", [({}, _ts(res.now))])
    lines = []
    for name, help_, samples in families:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {float(value)!r}" if lab else f"{name} {float(value)!r}")
    return "\n".join(lines) + "\n"


def write_metrics(path: str, text: str) -> str:
    """Write `text` to `path` atomically (temporary file beside it, fsync, rename); return the path."""
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise ConfigError(f"--metrics: directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # node_exporter runs as its own user
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"--metrics: cannot write {target}: {exc.strerror or exc}") from None
    return str(target)
