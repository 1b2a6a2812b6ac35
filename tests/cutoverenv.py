"""A production service ready for a cutover: service0 (release v1.0) plus the load harness's
tables, a dev copy upgraded to v2.0 as the rehearsal, and a snapdb.toml naming both."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from .conftest import ROOT, run_cli
from .loadharness import SCHEMA


@dataclass
class Env:
    pg: object
    prod: str  # database name
    dev: str
    cfg: str  # snapdb.toml path
    store: Path
    dir: Path

    def app(self, dbname: str | None = None) -> str:
        """The conninfo an application uses: role lh_app."""
        return self.pg.conninfo(dbname or self.prod).replace("user=postgres", "user=lh_app")

    def cli(self, *args: str, env: dict | None = None, timeout: int = 300):
        return run_cli("--config", self.cfg, *args, env=env, timeout=timeout)

    def journal(self) -> dict:
        [j] = list((self.store / "catalog" / "cutovers").glob("*/journal.json"))
        return json.loads(j.read_text())

    def oid(self, dbname: str) -> int | None:
        with self.pg.connect() as conn:
            row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        return row[0] if row else None

    def databases(self) -> dict[str, bool]:
        """The service's databases (its own name and its side names) and whether each accepts
        connections."""
        from snapdb import names

        def ours(d: str) -> bool:  # side names of long services are truncated and hashed: ask snapdb's rules
            return (d.startswith(self.prod) or d == names.tmp_name(self.prod) or names.is_pre_of(self.prod, d)
                    or names.is_rolledback_of(self.prod, d) or names.is_prev_of(self.prod, d))

        with self.pg.connect() as conn:
            return {d: a for d, a in conn.execute("SELECT datname, datallowconn FROM pg_database").fetchall() if ours(d)}

    def revision(self, dbname: str | None = None) -> str:
        with self.pg.connect(dbname or self.prod) as conn:
            return conn.execute("SELECT version_num FROM public.alembic_version").fetchone()[0]


def make_env(pg, tmp_path: Path, dbname: str, *, hooks: str = "", rehearse: bool = True) -> Env:
    """service0 + harness tables as production service `prod`, rehearsed on `dev`."""
    return make_env_named(pg, tmp_path, dbname, dbname + "_dev", hooks=hooks, rehearse=rehearse)


def make_env_named(pg, tmp_path: Path, prod: str, dev: str, *, hooks: str = "", rehearse: bool = True,
                   admin_user: str | None = None) -> Env:
    """As `make_env`, with the dev copy's name given (for names near the 63-byte limit) and,
    optionally, another login role as the production service's admin (`admin_user`)."""
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(prod)))
        conn.execute("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lh_app') THEN "
                     "CREATE ROLE lh_app LOGIN; END IF; END$$")
    with pg.connect(prod) as conn:
        conn.execute((ROOT / "fixtures" / "service0.sql").read_text())
        conn.execute(SCHEMA)
        conn.execute("GRANT USAGE ON SCHEMA lh TO lh_app; GRANT ALL ON ALL TABLES IN SCHEMA lh TO lh_app; "
                     "GRANT ALL ON ALL SEQUENCES IN SCHEMA lh TO lh_app")
    mig = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", mig, ignore=shutil.ignore_patterns("__pycache__"))
    store = tmp_path / "store"
    cfg = tmp_path / "snapdb.toml"
    url = pg.url(prod, user=admin_user) if admin_user else pg.url(prod)
    cfg.write_text(
        f'[store]\nurl = "{store}"\n\n[upgrade]\nmigrations = "{mig}"\n\n'
        f'[services.prod]\nurl = "{url}"\nrole = "production"\n{hooks}\n'
        f'[services.dev]\nurl = "{pg.url(dev)}"\nrole = "dev"\n')
    env = Env(pg, prod, dev, str(cfg), store, tmp_path)
    if admin_user:  # the snapshot and rehearsal as the superuser, as an operator would set it up
        su = tmp_path / "snapdb-su.toml"
        su.write_text(cfg.read_text().replace(url, pg.url(prod)))
        run = lambda *a: run_cli("--config", str(su), *a)  # noqa: E731
    else:
        run = env.cli
    for args in [["snapshot", "prod"], ["restore", "--into", "dev", "--from", "prod"]] + (
            [["upgrade", "dev", "--to", "v2.0"]] if rehearse else []):
        r = run(*args)
        assert r.returncode == 0, (args, r.stderr)
    return env
