#!/usr/bin/env python3
"""Replicate-mode cutover killed at every step boundary (issue 8, acceptance 4), exhaustively.

The suite (tests/test_replicate_faults.py) runs five representative kill points; this runs all
thirteen (preflight, build, follow, upgrade, freeze, fence, finalize, prove, inside the swap with
A closed, the swapped-but-unrecorded point, swap, compare, reverse), each killed then aborted, then killed again and
resumed, under writers. Usage: ``.venv/bin/python bench/replicate_faults.py [pytest args]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    env = {**os.environ, "SNAPDB_ALL_KILL_POINTS": "1", "PYTHONPATH": str(ROOT)}
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0",
                              "tests/test_replicate_faults.py", *sys.argv[1:]], cwd=ROOT, env=env))
