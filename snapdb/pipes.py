"""Run a client program's text output through a Python line filter: `lines_of` reads it, and
`pipe_through` feeds the filtered lines into a second program (``pg_restore -f - | filter |
psql``), in bounded memory.

Contract: both programs run without a shell, die with snapdb (PR_SET_PDEATHSIG) and get no
password in argv (their conninfo never carries one). A non-zero exit of either raises the
caller's error class with the last error line of the program that failed first; the filter's
own exception is re-raised as is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from .errors import SnapdbError, ToolError
from .pgtools import die_with_parent


def _popen(argv: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("PGAPPNAME", "snapdb")
    try:
        return subprocess.Popen(argv, env=env, stderr=subprocess.PIPE,
                                preexec_fn=die_with_parent if sys.platform == "linux" else None, **kw)
    except OSError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}") from None


def _drain(proc: subprocess.Popen, tail: deque) -> threading.Thread:
    def run() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            tail.append(raw.decode("utf-8", "replace").rstrip())
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _detail(tail: deque, rc: int) -> str:
    errors = [ln for ln in tail if "error" in ln.lower()] or list(tail)
    return errors[-1] if errors else f"exit status {rc}"


def lines_of(argv: list[str], error_cls: type[SnapdbError], what: str) -> Iterator[str]:
    """Yield the text lines a program prints on stdout (with their newlines)."""
    proc = _popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    tail: deque[str] = deque(maxlen=20)
    t = _drain(proc, tail)
    finished = False
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            yield raw.decode("utf-8", "surrogateescape")
        finished = True
    finally:
        if not finished:  # the reader stopped early: stop the program too
            proc.kill()
        rc = proc.wait()
        t.join()
    if rc != 0:
        raise error_cls(f"{what} failed: {_detail(tail, rc)}")


def pipe_through(producer: list[str], consumer: list[str], transform: Callable[[Iterable[str]], Iterable[str]],
                 error_cls: type[SnapdbError], what: str) -> None:
    """Run ``producer | transform | consumer``; raise `error_cls` if either program fails."""
    cons = _popen(consumer, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    ctail: deque[str] = deque(maxlen=20)
    ct = _drain(cons, ctail)
    failure: BaseException | None = None
    source = lines_of(producer, error_cls, what)
    filtered = transform(source)
    try:
        assert cons.stdin is not None
        for line in filtered:
            cons.stdin.write(line.encode("utf-8", "surrogateescape"))
    except BrokenPipeError:
        pass  # the consumer stopped (ON_ERROR_STOP): its exit status says why
    except BaseException as exc:
        failure = exc
        cons.kill()
    finally:
        for gen in (filtered, source):
            if hasattr(gen, "close"):
                gen.close()
        try:
            if cons.stdin:
                cons.stdin.close()
        except BrokenPipeError:
            pass
        rc = cons.wait()
        ct.join()
    if rc != 0 and not isinstance(failure, SnapdbError):
        raise error_cls(f"{what} failed: {_detail(ctail, rc)}")
    if failure is not None:
        raise failure
