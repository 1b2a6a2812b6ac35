"""The checks a restore makes before it builds anything, and what they need (`snapdb.restore`
calls them from `Build.prepare`; nothing here changes a database).

- `check_not_source`: the target is not the snapshot's own source database (by server
  identity), so a restore never replaces what it copies.
- `restore_tool` / `extract_archive`: the pg_restore for this server; the schema archive
  decompressed into the run's scratch directory, its sha256 checked.
- `check_roles`: every role the archive and the database properties name exists on the target
  server and the restoring role may give ownership and settings to it (`roles`), and every
  setting the build will get can be set (`check_settings`); one `TargetError` lists every problem.
- `mapped_props`: the database properties with the role map and ``--no-owner`` /
  ``--no-privileges`` applied.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import zstandard

from . import manifest as mf, pgtools, pipes, roles, scrub
from .compression import open_zstd
from .config import Endpoint, ScrubConfig
from .errors import ConfigError, IntegrityError, RefusedError, TargetError
from .postgres import DatabaseProps, first_line, setting_problems, system_identifier
from .store import Store

@dataclass
class RestoreOptions:
    """How ownership, privileges and what the target carries are handled.

    `no_owner` / `no_privileges`: as pg_restore's ``--no-owner`` / ``--no-privileges`` (objects
    and the database owned by the restoring role; no grants, on objects or the database).
    `role_map`: source role -> target role. `drop_slots` / `detach_subscriptions`: replace a
    target that has logical slots (dropped with the old copy) or subscriptions (disabled and
    detached in the copy set aside) instead of refusing. `protected`: databases that must never
    be replaced (production services), each ``{"name", "dbname", "servers", "system_identifier"}``.
    """

    no_owner: bool = False
    no_privileges: bool = False
    role_map: dict[str, str] = field(default_factory=dict)
    drop_slots: bool = False
    detach_subscriptions: bool = False
    protected: list[dict] = field(default_factory=list)
    scrub: ScrubConfig | None = None  # [services.X.scrub] of a non-production target (scrub.py)
    service: str | None = None  # the target's service name, for messages


def check_not_source(maint: psycopg.Connection, manifest: mf.Manifest, server: Endpoint, target: str) -> None:
    src = manifest.server
    if target != src.get("dbname"):
        return
    src_server = Endpoint(params={"host": str(src.get("host")), "port": str(src.get("port"))})
    same = server.server_key() == src_server.server_key()
    sysid = src.get("system_identifier")
    if sysid and not same:
        same = system_identifier(maint) == sysid
    if same:
        raise RefusedError(
            f"{target!r} on this server is the snapshot's own source; refusing to replace it",
            hint="restore into another database, e.g. --into " + target + "-dev",
        )


def restore_tool(manifest: mf.Manifest, maint: psycopg.Connection) -> str:
    """The pg_restore for this snapshot and target server (docs/postgres-versions.md); refuses
    a target older than the snapshot's source or its archive before anything is built."""
    return pgtools.choose_pg_restore(manifest.server["version_num"] // 10000,
                                     int(manifest.pg_dump_version.split(".")[0]), maint.info.server_version // 10000)


def extract_archive(store: Store, manifest: mf.Manifest, workdir: Path) -> Path:
    """Decompress the schema archive into `workdir` (pg_restore needs a seekable local file)."""
    archive = workdir / "schema.dump"
    try:
        with open_zstd(store, mf.key(manifest.id, manifest.schema_file)) as src, open(archive, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"schema archive of snapshot {manifest.id} is damaged ({exc})",
                             hint="the target was not touched; restore another snapshot") from None
    except OSError as exc:
        raise TargetError(
            f"cannot write the schema archive to {workdir}: {exc.strerror or exc}",
            hint="free space there or set TMPDIR to a roomier directory; the target is unchanged",
        ) from None
    return archive


def schema_entries(tool: str, archive: Path) -> Path:
    """A ``-L`` list of every archive entry but table and large-object contents."""
    toc = list(pipes.lines_of([tool, "-l", str(archive)], TargetError, "listing the schema archive"))
    path = archive.with_name("schema.list")
    path.write_text("".join(roles.schema_list(toc)), encoding="utf-8", errors="surrogateescape")
    return path


def check_roles(maint: psycopg.Connection, archive: Path, props: DatabaseProps, opts: RestoreOptions,
                 tool: str, overrides: dict[str, list[str]]) -> str | None:
    """Check every role the restore needs (see `roles`); return the build's owner (None: the
    restoring role). Raises `TargetError` listing every missing role and every ownership or
    setting the restoring role cannot give, the scrub's `overrides` ({role: settings},
    `scrub.role_overrides`) included."""
    entries = schema_entries(tool, archive)
    refs = roles.scan(pipes.lines_of([tool, "-L", str(entries), "-f", "-", str(archive)],
                                     TargetError, "reading the schema archive"))
    needs: dict[str, set[str]] = {}
    for role, uses in refs.uses.items():
        keep = set(uses)
        if opts.no_owner:
            keep.discard("owner")
        if opts.no_privileges:
            keep -= {"grantee", "grantor", "default privileges"}
        if keep:
            needs[role] = keep
    if props.owner and not opts.no_owner:
        needs.setdefault(props.owner, set()).add("database owner")
    if props.acl and not opts.no_privileges:
        for g in props.acl:
            if g["grantee"] != "PUBLIC":
                needs.setdefault(g["grantee"], set()).add("database privilege")
    for role in props.role_settings:
        needs.setdefault(role, set()).add("database settings")
    mapped: dict[str, set[str]] = {}
    for r, uses in needs.items():
        mapped.setdefault(opts.role_map.get(r, r), set()).update(uses)
    tr = roles.target_roles(maint)
    missing = sorted(r for r in mapped if r not in tr.existing)
    problems = []
    if missing:
        problems.append("missing role(s) " + ", ".join(f"{r} ({', '.join(sorted(mapped[r]))})" for r in missing))
    owners = sorted(r for r, u in mapped.items() if r in tr.existing and u & {"owner", "database owner"})
    cannot = [r for r in owners if not tr.can_set(r)]
    if cannot:
        problems.append(f"role {tr.current} cannot give ownership to {', '.join(cannot)} (it is not a member)")
    unsettable = [r for r in sorted({opts.role_map.get(x, x) for x in props.role_settings} | set(overrides))
                  if r in tr.existing and not tr.can_alter(r)]
    if unsettable:
        problems.append(f"role {tr.current} cannot set per-role settings for {', '.join(unsettable)} in the database "
                        + ("(needs CREATEROLE and ADMIN OPTION on them)" if maint.info.server_version >= 160000
                           else "(needs CREATEROLE)"))
        scrubbed = [f"{r} ({', '.join(overrides[r])})" for r in unsettable if r in overrides]
        if scrubbed:
            problems.append("the scrub settings must outrank these roles' own settings of the same name: "
                            + ", ".join(scrubbed))
    hints = ["create the roles there, map them in snapdb.toml ([services.NAME.roles] app = \"app_dev\"), "
             "GRANT the owner roles to the restoring role, or restore with --no-owner / --no-privileges"] if problems else []
    denied, rejected = check_settings(maint, props, opts)
    if denied:
        problems.append(f"role {tr.current} may not set parameter(s) {', '.join(denied)}, which the build's "
                        "database settings need")
        def q(name: str) -> str:  # as the server quotes identifiers: only when needed
            return maint.execute("SELECT pg_catalog.quote_ident(%s)", (name,)).fetchone()[0]
        grant = ", ".join(".".join(q(p) for p in d.split(".")) for d in denied)
        hints.append(f"as a superuser: GRANT SET ON PARAMETER {grant} TO {q(tr.current)}"
                     if maint.info.server_version >= 150000 else "before PostgreSQL 15 only a superuser may set them")
    if rejected:
        problems.append("the server does not take setting(s) " + ", ".join(text for text, _ in rejected))
        if any(ours for _, ours in rejected):
            hints.append(f"fix the settings of [services.{opts.service or 'NAME'}.scrub]")
        if not all(ours for _, ours in rejected):
            hints.append("a setting of the source database (ALTER DATABASE … SET, ALTER ROLE … IN DATABASE … SET) "
                         "that this server does not take must go at the source, or the restore onto another server")
    if len(problems) == 1 and rejected and all(ours for _, ours in rejected):  # all in snapdb.toml: exit 3
        raise ConfigError(f"[services.{opts.service or 'NAME'}.scrub] settings: the target server does not take "
                          + ", ".join(text for text, _ in rejected), hint="fix them; nothing was changed")
    if problems:
        raise TargetError("the target server is not ready for this snapshot: " + "; ".join(problems),
                          hint="; ".join(hints) + "; nothing was changed")
    if opts.no_owner or not props.owner:
        return None
    return opts.role_map.get(props.owner, props.owner)


def check_settings(maint: psycopg.Connection, props: DatabaseProps,
                    opts: RestoreOptions) -> tuple[list[str], list[tuple[str, bool]]]:
    """Check every database-level and role-in-database setting the build will get (the
    snapshot's `props`, after the role map, with the scrub's, as `build` applies them) with the
    server (`postgres.setting_problems`), before anything exists. Returns the parameters the
    restoring role may not set (sorted, in lower case) and the entries the server refuses
    otherwise (invalid value or name, not settable per database), each as
    ("name = 'value' (where: why)", whether it is the scrub's own)."""
    final = mapped_props(props, opts, None)
    ours: set[str] = set()
    if opts.scrub is not None and opts.scrub.settings:
        final = scrub.with_settings(final, opts.scrub.settings, scrub.server_role_settings(maint))
        ours = {f"{k}={v}" for k, v in opts.scrub.settings.items()}
    items = list(final.settings) + [i for r in sorted(final.role_settings) for i in final.role_settings[r]]
    denied: set[str] = set()
    rejected = []
    for item, exc in setting_problems(maint, items):
        name, _, value = item.partition("=")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            denied.add(name.lower())
        else:
            rejected.append((f"{name} = {value!r} ({'scrub' if item in ours else 'snapshot'}: {first_line(exc)})",
                             item in ours))
    return sorted(denied), rejected


def mapped_props(props: DatabaseProps, opts: RestoreOptions, owner: str | None) -> DatabaseProps:
    """The database-level properties to apply, after the role map and the options."""
    m = opts.role_map
    acl = None if opts.no_privileges or props.acl is None else [
        {**g, "grantee": m.get(g["grantee"], g["grantee"])} for g in props.acl]
    return DatabaseProps(
        encoding=props.encoding, collate=props.collate, ctype=props.ctype, locale_provider=props.locale_provider,
        icu_locale=props.icu_locale, icu_rules=props.icu_rules, owner=owner or "", comment=props.comment,
        connection_limit=props.connection_limit, acl=acl, settings=list(props.settings),
        role_settings={m.get(r, r): list(v) for r, v in props.role_settings.items()},
    )
