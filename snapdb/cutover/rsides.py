"""Where the two databases of a replicate-mode cutover live, and snapdb's sessions on them.

A (the live database) is the service's own; B (the new one) is the build on A's server, or on
``--to-server``'s (`b_server`), named by its build name until the swap and by the service's
name after (`b_name`). `a` and `b` open autocommit sessions that write (snapdb's own, passing
the freeze's gate); `replicated_tables` are the tables replication carries; `plan` is the
preflight's replicate part. Used by `replicate`, `rswap` and `reverse`; imports nothing of them.
"""

from __future__ import annotations

import re

import psycopg

from .. import relations
from ..config import Endpoint
from ..errors import TargetError
from ..postgres import connect, control_session
from . import freeze, run

#: tables each side keeps for itself: never replicated, compared or counted
OWN_TABLES = {("public", "alembic_version")}


def rep_name(cutover_id: str) -> str:
    """Name of the publication, subscription and slot of cutover `cutover_id`."""
    return "snapdb_rep_" + re.sub(r"[^a-z0-9_]", "_", cutover_id.lower())[:48]


def rev_name(cutover_id: str) -> str:
    """Name of the reverse publication, subscription and slot (B back to the set-aside A)."""
    return "snapdb_rev_" + re.sub(r"[^a-z0-9_]", "_", cutover_id.lower())[:48]


# -- where B lives --------------------------------------------------------------------------------------
def b_server(ctx: run.Context) -> Endpoint:
    """The admin endpoint of B's server (A's own unless the cutover goes to another server)."""
    other = (ctx.j.facts.get("replication") or {}).get("to_server")
    return Endpoint(params=dict(other["params"]), name=ctx.service) if other else ctx.ep


def same_server(ctx: run.Context) -> bool:
    return not (ctx.j.facts.get("replication") or {}).get("to_server")


def b_maint(ctx: run.Context) -> psycopg.Connection:
    """A session on B's server's maintenance database (A's own session when they are one)."""
    if same_server(ctx):
        return ctx.maint
    if ctx.b_maint is None or ctx.b_maint.closed:
        ctx.b_maint = control_session(b_server(ctx), TargetError, dbname=ctx.maintenance_db)
    return ctx.b_maint


def b_name(ctx: run.Context) -> str:
    """B's current name: its build name until the swap, the service's name after."""
    if ctx.j.done("swap"):
        return ctx.dbname
    return ctx.j.facts["build"]["name"]


def b(ctx: run.Context, dbname: str | None = None) -> psycopg.Connection:
    conn = connect(b_server(ctx), TargetError, dbname=dbname or b_name(ctx), autocommit=True)
    conn.execute("SET default_transaction_read_only = off")
    return conn


def a(ctx: run.Context, dbname: str | None = None) -> psycopg.Connection:
    """snapdb's own session on A (it passes the freeze's gate; writes only what snapdb must)."""
    ep = freeze.own_endpoint(ctx.ep, ctx.st) if ctx.st is not None else ctx.ep
    conn = connect(ep, TargetError, dbname=dbname or ctx.dbname, autocommit=True)
    conn.execute("SET default_transaction_read_only = off")
    return conn


def replicated_tables(conn: psycopg.Connection) -> list:
    """A's tables that replication carries (`relations.list_tables`, without `OWN_TABLES`)."""
    return [t for t in relations.list_tables(conn)[0] if (t.schema, t.name) not in OWN_TABLES]


def plan(ctx: run.Context) -> dict:
    return (ctx.j.facts.get("plan") or {}).get("replicate") or {}
