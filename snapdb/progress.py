"""Progress reporting hooks: library code reports, only the CLI draws.

Pipelines call `Reporter.phase` when a step starts and `Reporter.advance` as bytes or tables
complete. The default `Reporter` ignores everything; `snapdb.cli` supplies one that draws a rich
progress bar on a terminal. Implementations must be thread-safe (workers call `advance`).
"""

from __future__ import annotations


class Reporter:
    """No-op reporter; subclass and override to display progress."""

    def phase(self, name: str, total_bytes: int | None = None, total_items: int | None = None) -> None:
        """A new step begins (e.g. "copying tables"), with its expected size if known."""

    def advance(self, nbytes: int = 0, items: int = 0) -> None:
        """Some bytes or items of the current step are done."""

    def done(self) -> None:
        """The current step is finished."""

    def note(self, text: str) -> None:
        """A one-line status (e.g. replication lag while waiting)."""


NULL = Reporter()
