"""Issue 7, hostile review A of `snapdb cutover SERVICE --to TAG --freeze` (snapshot mode): each
defect found, reproduced on a real server. Every test here failed before its fix."""

from __future__ import annotations

import json
import shlex
import sys
import time

import psycopg

from .cutoverenv import make_env
from .dbcompare import database_props

V10, V20 = "3f1c0a9e5b10", "c94a06f3e872"


def _py_hook(code: str) -> str:
    """A hook command running Python `code` (with psycopg) in this interpreter."""
    return f"{sys.executable} -c {shlex.quote(code)}"


def _hooks(**points: str) -> str:
    lines = ["[services.prod.hooks]", 'timeout = "30s"']
    lines += [f"{p} = {json.dumps(cmd)}" for p, cmd in points.items()]
    return "\n".join(lines) + "\n"


def _rollback_prepared(pg, dbname: str, gid: str) -> None:
    with pg.connect(dbname) as conn:
        if conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone():
            conn.execute(f"ROLLBACK PREPARED '{gid}'")


def _cutovers(env) -> bool:
    return (env.store / "catalog" / "cutovers").exists()


# -- 6. a prepared transaction created between preflight and the freeze -------------------------------
def test_prepared_transaction_before_the_freeze_fails_fast(pg, tmp_path, dbname):
    from .cutoverenv import Env  # noqa: F401

    app = pg.conninfo(dbname).replace("user=postgres", "user=lh_app")
    code = (f"import psycopg\nc = psycopg.connect({app!r})\n"
            "c.execute(\"INSERT INTO lh.events VALUES (gen_random_uuid(), 77, 1)\")\n"
            "c.execute(\"PREPARE TRANSACTION 'lh_between'\")\nc.close()\n")
    env = make_env(pg, tmp_path, dbname, hooks=_hooks(before_freeze=_py_hook(code)))
    props = database_props(pg, env.prod)
    try:
        started = time.monotonic()
        r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze", "--drain-timeout", "1")
        took = time.monotonic() - started
        assert r.returncode == 12, r.stderr
        assert "prepared transaction lh_between" in r.stderr and "hook" not in r.stderr, r.stderr
        assert took < 25, f"took {took:.0f} s: it waited for the table locks instead of failing fast"
        assert database_props(pg, env.prod) == props and env.revision() == V10
        assert set(env.databases()) == {env.prod, env.dev}  # B not built
    finally:
        _rollback_prepared(pg, dbname, "lh_between")


# -- 7. a cutover while a manual freeze is in place --------------------------------------------------------
def test_cutover_refused_while_manually_frozen(pg, tmp_path, dbname):
    env = make_env(pg, tmp_path, dbname)
    r = env.cli("freeze", "prod", "--drain-timeout", "0")
    assert r.returncode == 0, r.stderr
    frozen = database_props(pg, env.prod)
    r = env.cli("cutover", "prod", "--to", "v2.0", "--freeze")
    assert r.returncode == 8, r.stderr
    assert "unfreeze" in r.stderr and len([x for x in r.stderr.splitlines() if x.startswith("error:")]) == 1, r.stderr
    assert database_props(pg, env.prod) == frozen and env.revision() == V10
    assert set(env.databases()) == {env.prod, env.dev} and not _cutovers(env)
    assert env.cli("unfreeze", "prod").returncode == 0
