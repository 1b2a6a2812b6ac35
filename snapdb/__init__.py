"""snapdb: PostgreSQL snapshots, restores swapped in by rename, and release-tagged upgrades."""

__version__ = "0.1.0"
