"""Fault-injection checkpoints for tests; inert unless the environment asks for them.

`checkpoint(step)` is called at named steps of the pipelines (see docs/architecture.md):

- ``SNAPDB_KILL_AT=<step>``: the process sends itself SIGKILL at that step.
- ``SNAPDB_PAUSE_AT=<step>`` with ``SNAPDB_FAULT_DIR=<dir>``: the process creates
  ``<dir>/<step>.reached`` and waits (up to 10 minutes) until ``<dir>/<step>.go`` exists.
- ``SNAPDB_TRACE_DIR=<dir>``: the process creates ``<dir>/<step>.passed`` at every step it
  passes, without stopping (a test can prove a step was never reached).

Nothing happens when none of these variables is set, which is how production runs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def checkpoint(step: str) -> None:
    """Honour a kill or pause request for `step`, if one is set in the environment."""
    trace = os.environ.get("SNAPDB_TRACE_DIR")
    if trace:
        (Path(trace) / f"{step}.passed").touch()
    if os.environ.get("SNAPDB_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("SNAPDB_PAUSE_AT") == step and os.environ.get("SNAPDB_FAULT_DIR"):
        d = Path(os.environ["SNAPDB_FAULT_DIR"])
        (d / f"{step}.reached").write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while not (d / f"{step}.go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
