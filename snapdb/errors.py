"""Exceptions raised by snapdb's library code, one class per area, each with its exit code.

Contract: library modules raise only `SnapdbError` subclasses for expected failures; `snapdb.cli`
turns them into one line ``error: <message>`` (plus ``hint: <hint>``) and exits with
``exit_code``. Messages never contain passwords (snapdb refuses URLs that carry one, so it never
holds one). The table in ``docs/exit-codes.md`` mirrors `EXIT_CODES`; a test keeps them equal.
"""

from __future__ import annotations


class SnapdbError(Exception):
    """Root of every expected snapdb failure."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)  # both in args: errors pickle across worker processes
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(SnapdbError):
    """The configuration or a command-line value is invalid (unknown key, service, bad URL)."""

    exit_code = 3
    kind = "config"


class SourceError(SnapdbError):
    """The source database could not be read (connection, permissions, SQL error)."""

    exit_code = 4
    kind = "source"


class TargetError(SnapdbError):
    """The target server or database failed during a restore; the target is left unchanged."""

    exit_code = 5
    kind = "target"


class StoreError(SnapdbError):
    """The snapshot store cannot be read or written, or a snapshot is missing."""

    exit_code = 6
    kind = "store"


class IntegrityError(SnapdbError):
    """A snapshot file or a restored database does not match its manifest."""

    exit_code = 7
    kind = "integrity"


class RefusedError(SnapdbError):
    """A safety rule refused the operation (production target, own source, prepared xacts)."""

    exit_code = 8
    kind = "refused"


class BusyError(SnapdbError):
    """Another snapdb run holds the lock for the same target."""

    exit_code = 9
    kind = "busy"


class ToolError(SnapdbError):
    """A required PostgreSQL client program (pg_dump, pg_restore) is missing or too old."""

    exit_code = 10
    kind = "tool"


class MigrationError(SnapdbError):
    """A migration revision failed; the database stays at the last revision that succeeded."""

    exit_code = 11
    kind = "migration"


class AbortedError(SnapdbError):
    """A cutover was aborted and undone: the old database serves again, unfrozen; the new one
    was removed. Nothing was lost."""

    exit_code = 12
    kind = "aborted"


class CheckFailed(SnapdbError):
    """``status --check`` found a monitored threshold crossed (a snapshot too old, a refresh
    that did not happen); the CLI prints one line per problem."""

    exit_code = 13
    kind = "check"


#: exit code -> meaning; ``docs/exit-codes.md`` documents exactly these.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug: run with --debug and report it)",
    2: "command-line usage error (unknown option, missing argument)",
    ConfigError.exit_code: "configuration error: bad snapdb.toml, unknown service, malformed URL, unknown or invalid release tag",
    SourceError.exit_code: "the source database could not be read",
    TargetError.exit_code: "the target server failed: a restore left the target unchanged; an upgrade could not connect or record its history",
    StoreError.exit_code: "the snapshot store could not be read or written, or no such snapshot",
    IntegrityError.exit_code: "a snapshot or restored database does not match its manifest, or a migration script does not match the release ledger; or, after a cutover, the set-aside database differs from what the new one was built from",
    RefusedError.exit_code: "refused by a safety rule (production target, own source, no rehearsal, database ahead of the release, ...)",
    BusyError.exit_code: "another snapdb run holds the lock for this target",
    ToolError.exit_code: "pg_dump / pg_restore (or git) of a suitable version not found",
    MigrationError.exit_code: "an upgrade revision failed; the database stays at the last revision that succeeded",
    AbortedError.exit_code: "a cutover was aborted and undone: the old database serves again, unfrozen, and nothing was lost",
    CheckFailed.exit_code: "status --check: a monitored threshold is crossed (one line per problem)",
    130: "interrupted (SIGINT)",
}
