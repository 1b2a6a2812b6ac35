"""The snapshot manifest: what a snapshot contains, and the rule that makes it exist.

A snapshot is the set of objects under ``snapshots/<id>/`` in the store; it exists only once
``snapshots/<id>/manifest.json`` is present, and that file is written last, atomically. The
manifest never holds a password, a user name or a full URL: only host, port and database name.
The format is described for humans in ``docs/snapshot-format.md``.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .compression import FileEntry
from .config import Endpoint
from .errors import IntegrityError, StoreError
from .postgres import DatabaseProps, SequenceValue, TableRef
from .store import MissingError, Store
from .tabledata import CHECKSUM, LEGACY_CHECKSUM

log = logging.getLogger(__name__)

#: the format snapdb writes; `READABLE` are the formats it restores and verifies (every earlier
#: one: a snapshot written by an earlier release stays restorable)
#: (format 3 adds packed files: small tables share a data file, their parts carry ``offset`` and
#: ``length`` in its decompressed stream; format 2 snapshots are format 3 without packs)
FORMAT = "snapdb-snapshot/3"
FORMAT_1 = "snapdb-snapshot/1"
FORMAT_2 = "snapdb-snapshot/2"
READABLE = (FORMAT_1, FORMAT_2, FORMAT)
PREFIX = "snapshots/"
MANIFEST = "manifest.json"
SCHEMA_FILE = "schema.dump.zst"


def new_id(now: datetime) -> str:
    """Return a fresh snapshot id: UTC time plus a random suffix, sortable by time."""
    return now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z-" + secrets.token_hex(2)


def key(snapshot_id: str, path: str) -> str:
    return f"{PREFIX}{snapshot_id}/{path}"


@dataclass
class TableEntry:
    """One table: its copied columns, totals, and the files (parts) holding its rows.

    Each part is ``{"file": path, "rows": n, "checksum": hex}``, plus ``offset`` and ``length``
    (bytes of the decompressed stream) when the file is a pack of several tables (format 3); the table's rows and checksum
    are the sums of its parts' (see `snapdb.tabledata`). `load_via` ([schema, name], format 2)
    names the partition root its rows are loaded through, for partitions of a tree whose hash
    partitioning depends on enum OIDs: a restore may place such rows in other partitions, so
    the rows of all tables with the same `load_via` are compared as one group.
    """

    schema: str
    name: str
    columns: list[str]
    rows: int
    checksum: str
    parts: list[dict]
    load_via: list[str] | None = None

    def ref(self) -> TableRef:
        return TableRef(self.schema, self.name, list(self.columns))

    def load_ref(self) -> TableRef:
        """The table COPY loads into: the partition root of `load_via`, else this table."""
        if self.load_via:
            return TableRef(self.load_via[0], self.load_via[1], list(self.columns))
        return self.ref()

    def group(self) -> tuple[str, str]:
        """What verification compares this table's rows as: itself, or its `load_via` group."""
        return tuple(self.load_via) if self.load_via else (self.schema, self.name)


@dataclass
class Manifest:
    id: str
    source: str
    created_at: str
    label: str | None
    server: dict  # version, version_num, host, port, dbname, system_identifier
    pg_dump_version: str
    database: DatabaseProps
    schema_file: str
    files: list[FileEntry]
    tables: list[TableEntry]
    sequences: list[SequenceValue]
    large_objects: int
    release: dict | None = None
    format: str = FORMAT
    checksum: str = CHECKSUM  # the content checksum algorithm of `tables` (tabledata.ALGORITHMS)
    skipped: list[dict] = field(default_factory=list)  # tables whose rows are not in the snapshot
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None  # how long taking it took (format 2)
    database_bytes: int | None = None  # pg_database_size of the source when it was taken (format 2)
    taken_by: dict | None = None  # {"os_user", "client_host"} of the snapdb run that took it (optional)
    extra: dict = field(default_factory=dict)

    @property
    def stored_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def raw_bytes(self) -> int:
        return sum(f.raw_size for f in self.files)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "id": self.id,
            "source": self.source,
            "created_at": self.created_at,
            "label": self.label,
            "release": self.release,
            "server": self.server,
            "pg_dump_version": self.pg_dump_version,
            "database": asdict(self.database),
            "schema_file": self.schema_file,
            "files": [f.to_json() for f in self.files],
            "tables": [asdict(t) for t in self.tables],
            "sequences": [asdict(s) for s in self.sequences],
            "large_objects": self.large_objects,
            "checksum": self.checksum,
            "skipped": self.skipped,
            "warnings": self.warnings,
            "seconds": self.seconds,
            "database_bytes": self.database_bytes,
            "taken_by": self.taken_by,
            "totals": {"stored_bytes": self.stored_bytes, "raw_bytes": self.raw_bytes, "rows": self.rows},
        }

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        fmt = data.get("format")
        if fmt not in READABLE:
            raise IntegrityError(
                f"unsupported snapshot format {fmt!r} (this snapdb reads {', '.join(READABLE)})",
                hint="a newer snapdb wrote it: restore it with that version or newer")
        try:
            return cls(
                id=data["id"], source=data["source"], created_at=_created_at(data["created_at"]),
                label=data.get("label"), server=data["server"],
                pg_dump_version=data["pg_dump_version"],
                database=DatabaseProps(**data["database"]),
                schema_file=data["schema_file"],
                files=[FileEntry(**f) for f in data["files"]],
                tables=[TableEntry(**t) for t in data["tables"]],
                sequences=[SequenceValue(**s) for s in data["sequences"]],
                large_objects=int(data["large_objects"]),
                release=data.get("release"),
                format=fmt,
                checksum=data.get("checksum", LEGACY_CHECKSUM) if fmt != FORMAT_1 else LEGACY_CHECKSUM,
                skipped=list(data.get("skipped") or []),
                warnings=list(data.get("warnings") or []),
                seconds=data.get("seconds"),
                database_bytes=data.get("database_bytes"),
                taken_by=data.get("taken_by") if isinstance(data.get("taken_by"), dict) else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed manifest: {exc}") from None


def _created_at(value) -> str:
    """`value` if it is an ISO 8601 time with a zone: prune, status and the listings compare it
    with aware times, so anything else makes the manifest unreadable (`IntegrityError`)."""
    try:
        t = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        t = None
    if t is None or t.utcoffset() is None:
        raise IntegrityError(f"malformed manifest: created_at {value!r} is not an ISO 8601 time with a zone "
                             f"(e.g. 2026-11-04T02:00:00+00:00)")
    return value


def layout_problems(manifest: Manifest) -> list[tuple[str, str, str, str]]:
    """How the manifest's parts fail to lay out its data files, as ``(kind, file, expected,
    found)``; empty when sound. Every part's file must be listed in ``files``; a file holding
    several parts (a pack), or parts with ``offset``, needs ``offset`` and ``length`` on each,
    following each other from byte 0 and ending at the file's ``raw_size`` (the decompressed
    stream), as docs/snapshot-format.md says. Read from the manifest alone: no file is opened."""
    raw = {f.path: f.raw_size for f in manifest.files}
    by_file: dict[str, list[tuple[str, dict]]] = {}
    for t in manifest.tables:
        for p in t.parts:
            by_file.setdefault(str(p.get("file")), []).append((f"{t.schema}.{t.name}", p))
    out = []
    for path, parts in by_file.items():
        if path not in raw:
            out.append(("file", path, "listed in files", f"not listed (it holds rows of {parts[0][0]})"))
            continue
        if len(parts) == 1 and "offset" not in parts[0][1] and "length" not in parts[0][1]:
            continue
        bad = [name for name, p in parts if not all(isinstance(p.get(k), int) and not isinstance(p.get(k), bool)
                                                     and p[k] >= 0 for k in ("offset", "length"))]
        if bad:
            out.append(("pack", path, f"an offset and a length (whole numbers) for each of its {len(parts)} tables",
                        f"none for {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")))
            continue
        at = 0
        for name, p in sorted(parts, key=lambda np: (np[1]["offset"], np[1]["length"])):
            if p["offset"] != at:
                out.append(("pack", path, f"{name} at byte {at}", f"byte {p['offset']} (a gap or an overlap)"))
                break
            at += p["length"]
        else:
            if at != raw[path]:
                out.append(("pack", path, f"its tables to end at byte {raw[path]} (its raw size)", f"byte {at}"))
    return out


def write_manifest(store: Store, manifest: Manifest) -> None:
    """Publish the manifest (atomically): from now on the snapshot exists."""
    data = json.dumps(manifest.to_json(), indent=1, ensure_ascii=False).encode("utf-8")
    with store.writer(key(manifest.id, MANIFEST)) as f:
        f.write(data)


def read_manifest(store: Store, snapshot_id: str) -> Manifest:
    """Read one snapshot's manifest; `StoreError` if there is no such snapshot."""
    if not snapshot_id or "/" in snapshot_id or snapshot_id.startswith("."):
        raise StoreError(f"invalid snapshot id {snapshot_id!r}")
    try:
        with store.reader(key(snapshot_id, MANIFEST)) as f:
            raw = f.read()
    except MissingError:
        raise StoreError(
            f"no snapshot {snapshot_id!r} in {store.describe()}", hint="list them with: snapdb snapshots"
        ) from None
    try:
        return Manifest.from_json(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"snapshot {snapshot_id}: manifest is not valid JSON ({exc.msg})") from None


def list_manifests(store: Store, source: str | None = None) -> list[Manifest]:
    """Return the store's snapshots (of `source` if given), newest first."""
    out = []
    for k in store.list(PREFIX):
        parts = k[len(PREFIX):].split("/")
        if len(parts) == 2 and parts[1] == MANIFEST:
            try:
                m = read_manifest(store, parts[0])
            except IntegrityError as exc:  # one unreadable manifest must not hide the others
                log.warning("skipping snapshot %s: %s", parts[0], exc.message)
                continue
            if source is None or m.source == source:
                out.append(m)
    out.sort(key=lambda m: (m.created_at, m.id), reverse=True)
    return out


def same_source(server: dict, ep: Endpoint, live_sysid: str | None = None) -> bool:
    """Tell whether a snapshot's recorded source `server` (manifest ``server``: host, port,
    dbname, system_identifier) is the database `ep` points at.

    The database name must match. When both system identifiers are known (the recorded one and
    `live_sysid`, read from `ep`'s server) they decide, so a server reached under a new host name
    still matches and an unrelated server on a reused address does not; otherwise the host
    (loopback addresses and socket directories count as one) and port must match.
    """
    if server.get("dbname") != ep.dbname:
        return False
    recorded = server.get("system_identifier")
    if recorded and live_sysid:
        return str(recorded) == str(live_sysid)
    rec = Endpoint(params={"host": str(server.get("host")), "port": str(server.get("port"))})
    return rec.server_key() == ep.server_key()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
