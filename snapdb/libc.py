"""Optional Linux C-library calls (prctl, syncfs) through ctypes; None where unavailable."""

from __future__ import annotations


def function(name: str):
    """Return the C library's `name` function, or None (another OS, or a libc without it)."""
    try:
        import ctypes

        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
