"""Operator hooks at fixed points of a cutover: shell commands from the service's configuration.

Points: ``before_freeze`` (e.g. turn on maintenance mode), ``after_freeze``, ``after_swap`` (e.g.
restart the application on the release's code, repoint PgBouncer), ``on_abort``. A hook runs
with ``/bin/sh -c`` (the command is the operator's own configuration, never built from data),
stdin closed, in the current directory, with the cutover's facts in ``SNAPDB_*`` environment
variables (`facts_env`) and at most ``hook_timeout`` seconds (default 60).

Contract: `run` returns the hook's result when it exits 0; otherwise (non-zero, killed by the
timeout, not runnable) it raises `HookFailed` with the last lines of its output. What a failure
means is the caller's: before the swap the cutover aborts and A is unfrozen; after the swap
the new release stays (the swap cannot be undone without risking writes B took) and the failure
is reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass

from ..errors import SnapdbError

POINTS = ("before_freeze", "after_freeze", "after_swap", "on_abort")
DEFAULT_TIMEOUT = 60.0


class HookFailed(SnapdbError):
    """A hook exited non-zero or timed out."""

    exit_code = 12
    kind = "aborted"
    #: what ran (exit code -9 when killed by the timeout, 127 when it could not start), for the receipt
    result: "HookResult | None" = None


def _failed(message: str, res: "HookResult", hint: str | None = None) -> HookFailed:
    exc = HookFailed(message, hint=hint)
    exc.result = res
    return exc


@dataclass
class HookResult:
    point: str
    command: str
    exit_code: int
    seconds: float
    output: str

    def to_json(self) -> dict:
        return {"point": self.point, "command": self.command, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 3), "output": self.output}


def facts_env(facts: dict) -> dict[str, str]:
    """``SNAPDB_<NAME>`` variables for the facts (None values left out)."""
    return {f"SNAPDB_{k.upper()}": str(v) for k, v in facts.items() if v is not None}


def run(point: str, command: str | None, facts: dict, timeout: float = DEFAULT_TIMEOUT) -> HookResult | None:
    """Run the hook for `point` (nothing when `command` is None)."""
    if not command:
        return None
    env = {**os.environ, **facts_env(facts), "SNAPDB_HOOK": point}
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    except OSError as exc:
        raise _failed(f"hook {point} could not run: {exc.strerror}",
                      HookResult(point, command, 127, time.monotonic() - started, exc.strerror or "")) from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise _failed(f"hook {point} did not finish within {timeout:g} s: {command}",
                      HookResult(point, command, -9, time.monotonic() - started, "killed: timeout"),
                      hint="raise hook_timeout in the service's [hooks], or fix the command") from None
    for line in out.decode("utf-8", "replace").splitlines():
        tail.append(line)
    res = HookResult(point, command, proc.returncode, time.monotonic() - started, "\n".join(tail))
    if proc.returncode != 0:
        last = tail[-1] if tail else ""
        raise _failed(f"hook {point} failed (exit {proc.returncode}): {command}" + (f": {last}" if last else ""), res)
    return res
