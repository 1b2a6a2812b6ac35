"""The ``snapdb`` command line: parse options, call `snapdb.commands`, render the result.

This is the only module that prints, draws progress or exits. Errors become one line
``error: …`` (plus ``hint: …``) on stderr and the exit code of their class (docs/exit-codes.md);
``--debug`` adds the traceback. Progress bars appear only when stderr is a terminal and neither
``--quiet`` nor ``--json`` is given.
"""

from __future__ import annotations

import enum
import json
import logging
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from . import __version__, commands
from .config import load_config
from .argv import normalize_args
from .errors import IntegrityError, SnapdbError
from .progress import NULL, Reporter

app = typer.Typer(
    help="PostgreSQL snapshots, restores swapped in by rename after verification, and release-tagged upgrades.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags without a "<bool>" type column
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


class VerifyMode(str, enum.Enum):
    full = "full"
    quick = "quick"

JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, help="Parallel database sessions.")]
StoreOpt = Annotated[Optional[str], typer.Option("--store", help="Store URL (overrides config and SNAPDB_STORE).")]


class State:
    config_path: str | None = None
    quiet = False
    debug = False


state = State()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"snapdb {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    config: Annotated[Optional[str], typer.Option("--config", help="Path of snapdb.toml.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print snapdb's version and exit.")] = False,
) -> None:
    state.config_path, state.quiet, state.debug = config, quiet, debug
    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


@contextmanager
def _errors():
    """Turn library exceptions into one error line and the documented exit code."""
    try:
        yield
    except SnapdbError as exc:
        if state.debug:
            traceback.print_exc()
        err.print(f"error: {exc.message}", markup=False)
        if exc.hint:
            err.print(f"hint: {exc.hint}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("error: interrupted", markup=False)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except Exception as exc:
        if state.debug:
            traceback.print_exc()
        err.print(f"error: internal error: {type(exc).__name__}: {exc}", markup=False)
        err.print("hint: run again with --debug and report the traceback", markup=False)
        raise typer.Exit(1) from None


class RichReporter(Reporter):
    """Draws one progress line per phase on stderr: bar, items done (tables, files), and for
    phases measured in bytes the bytes done, throughput and ETA."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task = None
        self._by_bytes = False
        self._items = 0
        self._total_items: int | None = None

    def phase(self, name, total_bytes=None, total_items=None):
        with self._lock:
            self._stop()
            self._by_bytes = bool(total_bytes)
            self._items, self._total_items = 0, total_items
            cols = [TextColumn("{task.description}"), BarColumn()]
            if self._by_bytes:
                cols += [TextColumn("{task.fields[items]}"), DownloadColumn(), TransferSpeedColumn()]
            else:
                cols += [MofNCompleteColumn()]
            cols += [TimeRemainingColumn()]
            self._progress = Progress(*cols, console=err, transient=False)
            self._progress.start()
            self._task = self._progress.add_task(
                name, total=total_bytes if self._by_bytes else total_items, items=self._items_text())

    def _items_text(self) -> str:
        return f"{self._items}/{self._total_items}" if self._total_items else ""

    def advance(self, nbytes=0, items=0):
        with self._lock:
            if self._progress is None:
                return
            self._items += items
            if self._by_bytes:
                self._progress.update(self._task, advance=nbytes, items=self._items_text())
            else:
                self._progress.advance(self._task, items)

    def done(self):
        with self._lock:
            self._stop()

    def _stop(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, text):
        with self._lock:
            err.print(text, markup=False, highlight=False)


class NotesReporter(Reporter):
    """Without a terminal: no bars, only the one-line status notes (e.g. replication lag)."""

    def note(self, text):
        err.print(text, markup=False, highlight=False)


def _reporter(as_json: bool) -> Reporter:
    if state.quiet:
        return NULL
    if as_json or not sys.stderr.isatty():
        return NotesReporter()
    return RichReporter()


def _say(text: str) -> None:
    if not state.quiet:
        err.print(text, markup=False)


def _emit_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@app.command()
def snapshot(
    source: Annotated[str, typer.Argument(help="Service name or postgresql:// URL.")],
    label: Annotated[Optional[str], typer.Option("--label", help="Free text stored in the manifest.")] = None,
    jobs: JobsOpt = 2,
    prune: Annotated[bool, typer.Option("--prune", help="After a successful snapshot, prune SOURCE's snapshots by [store.retention].")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take a consistent, verified, zstd-compressed snapshot of SOURCE.

    Example: snapdb snapshot prod --label nightly --prune
    """
    with _errors():
        cfg = load_config(state.config_path)
        if prune:
            from .ops.api import policy

            policy(cfg)  # a missing policy is refused before the snapshot, not after
        info = commands.snapshot(cfg, source, label=label, jobs=jobs, store=store, reporter=_reporter(as_json))
    if not as_json:
        typer.echo(info.id)  # before the prune: a failed prune does not hide the snapshot taken
        for w in info.warnings:
            err.print(f"warning: {w}", markup=False)
    pruned = None
    if prune:
        try:
            with _errors():
                pruned = commands.prune(cfg, source=source, store=store)
        except typer.Exit:
            if as_json:
                _emit_json({**info.to_json(), "pruned": None})
            raise
    if as_json:
        _emit_json({**info.to_json(), "pruned": pruned.to_json()} if pruned else info.to_json())
    elif pruned:
        _say_pruned(pruned)


@app.command()
def snapshots(
    source: Annotated[Optional[str], typer.Argument(help="Only snapshots of this source.")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List snapshots, newest first.

    Example: snapdb snapshots prod
    """
    with _errors():
        cfg = load_config(state.config_path)
        items = commands.snapshots(cfg, source, store=store)
    if as_json:
        _emit_json([i.to_json() for i in items])
        return
    table = Table("id", "source", "created", "size", "ratio", "release", "label")
    for col in table.columns[:3]:
        col.no_wrap = True
    for i in items:
        table.add_row(i.id, i.source, i.created_at, _human_size(i.stored_bytes), f"{i.ratio:.1f}x",
                      i.release or "", i.label or "")
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


@app.command()
def restore(
    into: Annotated[str, typer.Option("--into", help="Target: service name, URL or bare database name.")],
    from_: Annotated[Optional[str], typer.Option("--from", help="Latest snapshot of this source.")] = None,
    snapshot_id: Annotated[Optional[str], typer.Option("--snapshot", help="Snapshot id to restore.")] = None,
    server: Annotated[Optional[str], typer.Option("--server", help="Server (service or URL) for a bare database name.")] = None,
    jobs: JobsOpt = 2,
    keep_previous: Annotated[int, typer.Option("--keep-previous", min=0, help="Previous copies to keep.")] = 1,
    verify: Annotated[VerifyMode, typer.Option("--verify", help="full (default): also read every table back and compare checksums; quick: checked files and row counts only.")] = VerifyMode.full,
    no_owner: Annotated[bool, typer.Option("--no-owner", help="Do not carry ownership: objects and the database belong to the restoring role.")] = False,
    no_privileges: Annotated[bool, typer.Option("--no-privileges", help="Do not carry grants (objects and the database).")] = False,
    drop_slots: Annotated[bool, typer.Option("--drop-slots", help="Replace a target holding logical replication slots; they are dropped with the old copy.")] = False,
    detach_subscriptions: Annotated[bool, typer.Option("--detach-subscriptions", help="Replace a target with subscriptions; they are disabled and detached in the copy set aside.")] = False,
    if_newer: Annotated[bool, typer.Option("--if-newer", help="Do nothing (exit 0) when INTO already holds that snapshot, e.g. in cron.")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore a snapshot into a temporary database, verify it, and swap it in as INTO.

    Example: snapdb restore --into service0-dev --from prod --if-newer
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.restore(
            cfg, into, from_=from_, snapshot_id=snapshot_id, server=server, jobs=jobs,
            keep_previous=keep_previous, verify=verify.value, store=store, no_owner=no_owner,
            no_privileges=no_privileges, drop_slots=drop_slots, detach_subscriptions=detach_subscriptions,
            if_newer=if_newer, reporter=_reporter(as_json),
        )
    if as_json:
        _emit_json(res.to_json())
        return
    if res.outcome == "skipped":
        _say(f"{res.target} on {res.server} is up to date: it already holds snapshot {res.snapshot_id} ({res.source}); "
             f"nothing to do ({res.held})")
        return
    how = "verified" if res.verified == "full" else "verified quickly (files, row counts and catalog; no read-back)"
    _say(f"restored snapshot {res.snapshot_id} ({res.source}) into {res.target} on {res.server}"
         f" in {res.seconds:.1f}s: {res.tables} tables, {res.rows} rows, {how}")
    if res.held:
        _say(f"--if-newer did not skip it: {res.held}")
    if res.scrub:
        sc = res.scrub
        _say(f"scrubbed before the swap: {sum(c['rows'] for c in sc['columns'])} rows in {len(sc['columns'])} column "
             f"rule(s), {len(sc['sql'])} SQL file(s), {len(sc['settings'])} setting(s); {sc['checks']} check(s) passed")
    if res.previous and res.previous not in res.dropped_previous:
        _say(f"previous copy kept as {res.previous}")
    for d in res.dropped_previous:
        _say(f"dropped previous copy {d}")
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False)


@app.command()
def verify(
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot id.")],
    against: Annotated[Optional[str], typer.Option("--against", help="Compare this database (service or URL) with the snapshot.")] = None,
    jobs: JobsOpt = 2,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a snapshot's files, and with --against compare a live database with it.

    Example: snapdb verify 20261127T170512.123Z-ab12 --against dev
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.verify(cfg, snapshot_id, against=against, jobs=jobs, store=store, reporter=_reporter(as_json))
        if as_json:
            _emit_json(res.to_json())
        else:
            for p in res.problems:
                typer.echo(str(p))
            if res.ok:
                _say(f"snapshot {res.snapshot_id}: ok" + (f", {against} matches" if against else ""))
        commands.raise_if_failed(res)


MigrationsOpt = Annotated[Optional[str], typer.Option(
    "--migrations", help="alembic script directory (overrides the configuration).")]


@app.command()
def upgrade(
    target: Annotated[str, typer.Argument(help="Service name or postgresql:// URL.")],
    to: Annotated[str, typer.Option("--to", help="Release tag to upgrade to (from releases.toml).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    sql: Annotated[bool, typer.Option("--sql", help="Print the SQL the upgrade would run; change nothing.")] = False,
    skip_rehearsal: Annotated[bool, typer.Option(
        "--skip-rehearsal", help="Upgrade a production service without a rehearsal on record (recorded in history).")] = False,
    migrations: MigrationsOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upgrade TARGET to a release: scripts checked against the ledger, one transaction per revision.

    Example: snapdb upgrade service0-dev --to v2.0
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.upgrade(cfg, target, to=to, dry_run=dry_run, sql=sql, skip_rehearsal=skip_rehearsal,
                               migrations=migrations, store=store)
    if as_json:
        _emit_json(res.to_json())
        return
    if res.outcome == "up-to-date":
        _say(f"{res.target} is already at {res.tag} (revision {res.revision}); nothing to do")
        return
    if res.mode == "sql":
        typer.echo(res.sql or "", nl=False)
        return
    start = f"{res.from_tag or res.from_revision or 'base (no version table)'}"
    if res.mode == "dry-run":
        typer.echo(f"plan for {res.target} ({res.database}): {start} -> {res.tag} (revision {res.revision})")
        typer.echo(f"scripts: {res.scripts}, checksum {res.checksum} matches the ledger")
        for n, step in enumerate(res.steps, 1):
            label = f" [{step['tag']}]" if step["tag"] else ""
            typer.echo(f"  {n}. {step['revision']}{label} {step['file']}: {step['doc']}")
        if res.production:
            typer.echo(f"rehearsal: {res.rehearsal or ('SKIPPED' if res.rehearsal_skipped else 'none')}")
        return
    _say(f"upgraded {res.target} from {start} to {res.tag} ({len(res.steps)} revision"
         f"{'s' if len(res.steps) != 1 else ''}) in {res.seconds:.1f}s; history record {res.history_id}")


release_app = typer.Typer(help="Record releases in the ledger (releases.toml).", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(release_app, name="release")


@release_app.command("add")
def release_add(
    tag: Annotated[str, typer.Argument(help="Release tag, e.g. v2.0 (the git tag, if you use git).")],
    migrations: MigrationsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record the migrations' single head as release TAG, with the checksums of its scripts.

    Example: snapdb release add v2.0
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.release_add(cfg, tag, migrations=migrations)
    if as_json:
        _emit_json(res.to_json())
        return
    typer.echo(f"{res.tag} = revision {res.revision}, checksum {res.checksum}")
    _say(f"recorded in {res.ledger} from {res.scripts}; commit it, then tag: git tag {res.tag}")


@app.command()
def releases(
    migrations: MigrationsOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List releases, whether their scripts still match, and which databases and snapshots are at each.

    Example: snapdb releases
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.releases(cfg, migrations=migrations, store=store)
    if as_json:
        _emit_json(res.to_json())
        return
    table = Table("release", "revision", "scripts", "from", "databases", "snapshots")
    for r in res.releases:
        table.add_row(r.tag, r.revision, r.scripts, r.origin, ", ".join(r.databases),
                      ", ".join(r.snapshots[:3]) + (f" (+{len(r.snapshots) - 3})" if len(r.snapshots) > 3 else ""))
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)
    for r in res.releases:
        for problem in r.problems:
            typer.echo(f"{r.tag}: {problem}")
    released = {r.revision for r in res.releases}
    for head in res.heads:
        if head not in released:
            typer.echo(f"head {head} is not released yet (snapdb release add TAG)")
    for d in res.databases:
        if d["error"]:
            typer.echo(f"{d['service']}: unreachable: {d['error']}")
        elif not d["tag"]:
            typer.echo(f"{d['service']}: at revision {d['revision'] or 'none (no version table)'}, not a release")


class FreezeMode(str, enum.Enum):
    read_only = "read-only"
    offline = "offline"


class CutoverMode(str, enum.Enum):
    snapshot = "snapshot"
    replicate = "replicate"


def _secs(x) -> str:
    return "?" if x is None else f"{x:.1f}s"


@app.command()
def cutover(
    service: Annotated[str, typer.Argument(help="Service to cut over (from snapdb.toml).")],
    to: Annotated[Optional[str], typer.Option("--to", help="Release tag to cut over to.")] = None,
    freeze: Annotated[bool, typer.Option("--freeze", help="Refuse writes while the new database is built (required: without it writes would be lost).")] = False,
    freeze_mode: Annotated[FreezeMode, typer.Option("--freeze-mode", help="read-only (default): writes fail, reads go on; offline: new sessions are refused.")] = FreezeMode.read_only,
    mode: Annotated[CutoverMode, typer.Option("--mode", help="How the new database is built: snapshot (default: copied inside the freeze; works on any server) or replicate (copied and upgraded while the service is live, following it by logical replication: a freeze of about a second; needs wal_level = logical).")] = CutoverMode.snapshot,
    max_freeze: Annotated[Optional[float], typer.Option("--max-freeze", min=0.001, help="Replicate mode: refuse before freezing when the predicted window exceeds this many seconds.")] = None,
    to_server: Annotated[Optional[str], typer.Option("--to-server", help="Replicate mode: build the new database on this server (URL, no password; e.g. a newer PostgreSQL); the after_swap hook repoints the clients.")] = None,
    catchup_timeout: Annotated[float, typer.Option("--catchup-timeout", min=1, help="Replicate mode: seconds the new database may take to catch up with the live one.")] = 3600.0,
    finish: Annotated[bool, typer.Option("--finish", help="End a replicate-mode cutover's rollback window (the old database stops following the new one).")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.001, help="Abort if the swap has not happened after this many seconds.")] = None,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", min=0, help="Seconds open sessions get to finish before they are terminated.")] = 5.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and the predicted freeze window; change nothing.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted cutover.")] = False,
    abort: Annotated[bool, typer.Option("--abort", help="Undo an unfinished cutover (the old database serves again, unfrozen).")] = False,
    jobs: JobsOpt = 2,
    migrations: MigrationsOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cut SERVICE over to a release inside a write-freeze window, with nothing lost and a way back.

    Example: snapdb cutover prod --to v2.0 --freeze
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.cutover(cfg, service, to=to, freeze=freeze, freeze_mode=freeze_mode.value, mode=mode.value,
                               timeout=timeout, drain_timeout=drain_timeout, dry_run=dry_run, resume=resume,
                               abort=abort, finish=finish, jobs=jobs, migrations=migrations, store=store,
                               reporter=_reporter(as_json), max_freeze=max_freeze, to_server=to_server,
                               catchup_timeout=catchup_timeout)
    # a finished cutover whose set-aside database differs from what B was built from: the new
    # release serves, but a write may be missing from it; say so and exit non-zero
    failed_compare = res.outcome == "done" and (res.compare or {}).get("matches") is False
    if as_json:
        _emit_json(res.to_json())
        if failed_compare:
            raise typer.Exit(IntegrityError.exit_code)
        return
    p = res.plan or {}
    pred = (p.get("prediction") or {})
    if res.outcome == "planned":
        typer.echo(f"plan: cut {res.service} ({p.get('database')}) over from {p.get('from_tag') or p.get('from_revision')} "
                   f"to {res.tag} (revision {p.get('revision')}), freeze {p.get('freeze_mode')}")
        typer.echo(f"scripts: {p.get('scripts')}, checksum {p.get('checksum')} matches the ledger; "
                   f"rehearsal: {p.get('rehearsal') or 'not required'}")
        for n, step in enumerate(p.get("steps") or [], 1):
            typer.echo(f"  {n}. {step['revision']} {step['file']}: {step['doc']}")
        parts = ", ".join(f"{k} {_secs(v)}" for k, v in (pred.get("parts") or {}).items())
        typer.echo(f"predicted freeze window: {_secs(pred.get('seconds')) if pred.get('seconds') is not None else 'at least ' + _secs(pred.get('at_least_seconds'))} ({parts})")
        if (pred.get("basis") or {}).get("overhead"):
            typer.echo(f"  freeze, fence, proof and swap: {pred['basis']['overhead']}")
        typer.echo(f"proof: {p.get('proof')}; database {p.get('size_bytes', 0) / 1e6:.0f} MB")
        rp = p.get("replicate")
        if rp:
            typer.echo(f"replicate mode{' to ' + p['to_server'] if p.get('to_server') else ''}: before the freeze "
                       f"{', '.join(rp['before']) or 'no revision'}; inside it {', '.join(rp['during']) or 'no revision'}; "
                       f"rollback {'keeps the new writes (the old database follows the new one)' if rp['reverse'] else 'cannot keep new writes'}")
    elif res.outcome == "done":
        _say(f"cut {res.service} over to {res.tag}: freeze window {_secs(res.freeze_window_seconds)} "
             f"(predicted {_secs(res.predicted_seconds)}); old database set aside as {res.set_aside}")
        for d in getattr(res, "dropped_set_aside", None) or []:
            _say(f"dropped the older set-aside copy {d} (keep_set_aside)")
        for st in res.steps:
            if st.get("seconds") is not None:
                _say(f"  {st['name']:<10} {_secs(st['seconds'])}")
        proof = res.proof or {}
        cmp = res.compare or {}
        if failed_compare:
            other = "the new one" if (res.plan or {}).get("mode") == "replicate" else f"snapshot {res.snapshot_id}"
            first = (cmp.get("differences") or ["?"])[0]
            err.print(f"zero-loss check FAILED: the set-aside database {res.set_aside} differs from {other} "
                      f"({first}); a write may be missing from the new database", markup=False)
        elif (res.plan or {}).get("mode") == "replicate":
            counts = proof.get("counts") or {}
            _say(f"zero-loss check: no write after the freeze point ({proof.get('by')}); row counts equal in "
                 f"{counts.get('tables')} tables at the fence; set-aside database matches the new one "
                 f"({cmp.get('tables_compared', 0)} tables compared in full)")
        else:
            _say(f"zero-loss check: no write after the freeze point ({proof.get('by')}); "
                 f"set-aside database matches snapshot {res.snapshot_id}")
        typer.echo(res.id or "")
    elif res.outcome == "finished":
        _say(f"rollback window of cutover {res.id} of {res.service} ended; {res.set_aside} stays set aside, closed")
    else:
        _say(f"cutover {res.id} of {res.service}: {res.outcome}")
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False)
    if failed_compare:
        raise typer.Exit(IntegrityError.exit_code)


@app.command("freeze")
def freeze_cmd(
    service: Annotated[str, typer.Argument(help="Service to freeze.")],
    mode: Annotated[FreezeMode, typer.Option("--mode", help="read-only (default) or offline.")] = FreezeMode.read_only,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", min=0, help="Seconds open sessions get before they are terminated.")] = 5.0,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Freeze SERVICE's writes for a manual window (undo with snapdb unfreeze).

    Example: snapdb freeze prod --mode offline
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.freeze(cfg, service, mode=mode.value, drain_timeout=drain_timeout, store=store)
    if as_json:
        _emit_json(res.to_json())
        return
    _say(f"{res.service} frozen ({res.mode}) since {res.started_at}; {res.drained.get('terminated', 0)} session(s) ended")
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False)


@app.command()
def unfreeze(
    service: Annotated[str, typer.Argument(help="Service to unfreeze.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """End a manual freeze of SERVICE (settings and privileges exactly as before).

    Example: snapdb unfreeze prod
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.unfreeze(cfg, service, store=store)
    if as_json:
        _emit_json(res.to_json())
        return
    _say(f"{res.service} unfrozen")


@app.command()
def rollback(
    service: Annotated[str, typer.Argument(help="Service to roll back.")],
    discard_writes: Annotated[bool, typer.Option("--discard-writes", help="Roll back even though the current database took writes (they are kept in a snapshot first).")] = False,
    jobs: JobsOpt = 2,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Swap SERVICE back to the database its last cutover set aside.

    Example: snapdb rollback prod
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.rollback(cfg, service, discard_writes=discard_writes, jobs=jobs, store=store,
                                reporter=_reporter(as_json))
    if as_json:
        _emit_json(res.to_json())
        return
    _say(f"rolled {res.service} back to the database cutover {res.cutover_id} set aside; the release it held is "
         f"set aside as {res.set_aside}")
    for d in res.dropped_set_aside:
        _say(f"dropped the older set-aside copy {d} (keep_set_aside)")
    if res.writes_snapshot:
        _say(f"its writes since the cutover ({res.writes.get('summary')}) are kept in snapshot {res.writes_snapshot}")
        typer.echo(res.writes_snapshot)
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False)


@app.command()
def status(
    service: Annotated[Optional[str], typer.Argument(help="Only this service.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 13 with one line per problem when a threshold is crossed (snapshot_max_age, refresh_max_age, --max-age).")] = False,
    max_age: Annotated[Optional[str], typer.Option("--max-age", help="With --check: the newest verified snapshot must be younger than this (e.g. 26h); for production services, or SERVICE.")] = None,
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="Write the facts to this file in Prometheus text format (atomically), e.g. for node_exporter's textfile collector.")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show each service's role, release, newest snapshot, cutover in progress and frozen state.

    Example: snapdb status --check --max-age 26h --metrics /var/lib/node_exporter/textfile/snapdb.prom
    """
    from .errors import CheckFailed

    mon = None
    with _errors():
        cfg = load_config(state.config_path)
        if max_age is not None and not check:
            from .errors import ConfigError

            raise ConfigError("--max-age goes with --check")
        res = commands.status(cfg, service, store=store)
        if check or metrics:
            mon = commands.monitor(cfg, service, status=res.services, check=check, max_age=max_age, metrics=metrics,
                                   store=store)
    if as_json:
        _emit_json({**res.to_json(), "monitor": mon.to_json()} if mon else res.to_json())
        if check and mon.problems:
            raise typer.Exit(CheckFailed.exit_code)
        return
    _status_lines(res)
    if mon:
        for e in mon.services:
            last = e.get("last_restore")
            if last:
                typer.echo(f"  {e['service']}: last restore {last['at']} from snapshot {last['snapshot']}"
                           + (f" (taken {last['snapshot_created_at']})" if last.get("snapshot_created_at") else ""))
        typer.echo(f"store: {mon.store['snapshots']} snapshot(s), {_human_size(mon.store['bytes'])}"
                   + (f", {mon.store['unfinished']} unfinished" if mon.store["unfinished"] else ""))
    if check:
        for p in mon.problems:
            typer.echo(f"problem: {p}")
        if mon.problems:
            raise typer.Exit(CheckFailed.exit_code)
        _say(f"check: ok ({len(mon.services)} service(s))")


def _status_lines(res) -> None:
    for e in res.services:
        cut = e.get("cutover") or {}
        frozen = e.get("frozen")
        line = (f"{e['service']} ({e['role']}): revision {e.get('revision') or '-'}"
                + (f", newest snapshot {e['newest_snapshot']['id']}" if e.get("newest_snapshot") else "")
                + (f", holds snapshot {e['holds']['snapshot']}" if e.get("holds") else "")
                + (f", FROZEN by {frozen['by']} ({frozen['mode']}) since {frozen['since']}" if frozen else "")
                + (f", cutover {cut['id']} to {cut['tag']} {cut['state']} at {cut['step']}"
                   if cut and cut.get("state") in ("running", "aborting") else ""))
        typer.echo(line)
        rb = e.get("rollback")
        if rb:
            typer.echo(f"  rolled back at {rb['at'] or '?'}: {rb['live']} is again the database cutover "
                       f"{rb['cutover_id']} had set aside (as {rb['was_set_aside_as']}); the release it replaced "
                       f"is set aside as {rb['release_set_aside_as']}")
        for d in e.get("set_aside") or []:
            typer.echo(f"  set aside: {d['name']} ({_human_size(d['bytes'])})")
        lb = e.get("leftover_build")
        if lb:
            size = f" ({_human_size(lb['bytes'])})" if lb.get("bytes") is not None else ""
            typer.echo(f"  temporary build: {lb['name']}{size}, " + (f"being made by {lb['busy']}" if lb.get("busy")
                       else "left by an interrupted restore (the next restore drops it)"))
        if e.get("error"):
            typer.echo(f"  unreachable: {e['error']}")


def _say_pruned(res) -> None:
    verb = "would delete" if res.dry_run else "deleted"
    for d in res.deleted:
        _say(f"{verb} {d['id']} ({d['source'] or 'unknown source'}, {d['kind']}, {d['objects']} objects)")
    for d in res.left_alone:
        _say(f"left alone {d['id']}: {d['why']}")
    _say(f"{'would keep' if res.dry_run else 'kept'} {len(res.kept)} snapshot(s), {verb} {len(res.deleted)}"
         + (f", freeing {_human_size(res.bytes_freed)}" if res.bytes_freed else ""))


@app.command()
def prune(
    source: Annotated[Optional[str], typer.Argument(help="Only this source's snapshots (default: all).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be deleted; delete nothing.")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete the snapshots [store.retention] does not keep, and unfinished ones whose writer is gone.

    Example: snapdb prune --dry-run
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.prune(cfg, dry_run=dry_run, source=source, store=store)
    if as_json:
        _emit_json(res.to_json())
        return
    if res.dry_run:
        for k in res.kept:
            typer.echo(f"keep   {k['id']} ({k['source']}): {', '.join(k['reasons'])}")
        for d in res.deleted:
            typer.echo(f"delete {d['id']} ({d['source'] or 'unknown source'}): {d['kind']}")
    _say_pruned(res)


@app.command()
def delete(
    ids: Annotated[list[str], typer.Argument(help="Snapshot ids.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Delete even a snapshot a rehearsal, cutover receipt or rollback refers to, or an unfinished one whose writer cannot be checked from here.")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete snapshots by id: all of them, or none if one is refused.

    Example: snapdb delete 20261127T171505.093Z-5541
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.delete(cfg, ids, force=force, store=store)
    if as_json:
        _emit_json(res.to_json())
        return
    for f in res.forced:
        err.print(f"warning: {f['id']} was {f['reason']} (--force)", markup=False)
    for d in res.deleted:
        _say(f"deleted {d['id']} ({d['kind']}, {d['objects']} objects)")


@app.command()
def history(
    service: Annotated[Optional[str], typer.Argument(help="Only this service: its own snapshots and the operations on its database.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the newest N entries.")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List every snapshot, restore, upgrade, cutover and rollback on record, newest first.

    Example: snapdb history service0-dev --limit 20
    """
    with _errors():
        cfg = load_config(state.config_path)
        res = commands.history(cfg, service, limit=limit, store=store)
    if as_json:
        _emit_json(res.to_json())
        return
    for e in res.entries:  # one line per operation
        secs = e.seconds
        took = "-" if secs is None else f"{secs:.1f}s" if secs < 60 else f"{int(secs // 60)}m{int(secs % 60):02d}s"
        typer.echo(f"{(e.started_at or '?')[:19]}Z {e.operation:<8} {e.outcome:<11} {took:>8}  "
                   f"{e.service or e.database or '?'}" + (f" ({e.database})" if e.service and e.database else "")
                   + (f" snapshot {e.snapshot}" if e.snapshot else "") + (f" tag {e.tag}" if e.tag else "")
                   + f"  by {e.os_user or '?'}@{e.client_host or '?'}" + (f"  error: {e.error}" if e.error else ""))


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    """Console entry point. SIGTERM and SIGHUP interrupt like SIGINT (Ctrl-C): a cutover before
    its swap aborts cleanly, one after it stops without undoing anything."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    app(args=normalize_args(sys.argv[1:]), prog_name="snapdb")
