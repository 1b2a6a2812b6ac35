"""Acceptance 8 (part): the demo that `make demo` runs works end to end.

`make demo` itself only adds the virtualenv step; CI's clean-clone run of `make test` covers that.
"""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_demo_script_runs_the_whole_story():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for expected in ("snapdb snapshot prod", "restored snapshot", "previous copy kept as service0-dev__prev_",
                     "scrubbed before the swap", "customer1@example.invalid", "would keep", "check: ok", "refusing to restore into 'prod'", "predicted freeze window",
                     "freeze window", "zero-loss check", ", 0 lost", "all steps returned their expected exit codes"):
        assert expected in out, expected
