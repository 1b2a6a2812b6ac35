"""The command line's argument order: global options accepted anywhere (`normalize_args`).

A pure function over a list of strings, used by `snapdb.cli` before typer parses; it imports
nothing of snapdb.
"""

from __future__ import annotations

GLOBAL_FLAGS = ("--quiet", "-q", "--debug", "--version")
GROUPS = ("release",)


def normalize_args(argv: list[str]) -> list[str]:
    """Let the global options (``--quiet``, ``-q``, ``--debug``, ``--config PATH``,
    ``--version``) stand anywhere on the command line, and ``--json`` before the command too:
    they are moved to where the parser expects them. Everything after ``--`` stays as it is."""
    front: list[str] = []
    rest: list[str] = []
    json_flag = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if a in GLOBAL_FLAGS:
            front.append(a)
        elif a == "--config" and i + 1 < len(argv):
            front += [a, argv[i + 1]]
            i += 1
        elif a.startswith("--config="):
            front.append(a)
        elif a == "--json":
            json_flag = True
        else:
            rest.append(a)
        i += 1
    if json_flag:
        at = 0
        if rest and not rest[0].startswith("-"):
            at = 2 if rest[0] in GROUPS and len(rest) > 1 else 1
        rest.insert(at, "--json")
    return front + rest
