"""Issue 12, points 6, 14, 15 and 21a: a snapshot's source is a server plus a database; the rehearsal
gate counts only copies of the production service's own database; the first release of an
existing (unmanaged) database is rehearsable; upgrades can use a separate admin connection."""

from __future__ import annotations

import json
import shutil

import pytest

from snapdb import commands
from snapdb.config import load_config
from snapdb.errors import RefusedError, StoreError

from .conftest import ROOT, create_db, ensure_roles, run_cli
from .test_upgrade import V11, config, db, migrations, revision, template  # noqa: F401 (fixtures)

DATA = "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row' FROM generate_series(1, 100) g"


def test_url_snapshots_are_not_filed_under_a_service_name(pg, pg2, tmp_path, dbname):
    """A same-named database on an unrelated server, snapshotted by URL, is never taken for the
    production service whose name is that database name."""
    name = dbname
    create_db(pg, name, DATA)
    create_db(pg2, name, DATA + "; INSERT INTO t VALUES (999, 'unrelated')")
    store = tmp_path / "store"
    lines = ["[store]", f'url = "{store}"', "", f'[services."{name}"]', f'url = "{pg.url(name)}"', 'role = "production"']
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text("\n".join(lines) + "\n")
    r = run_cli("--config", str(cfg), "snapshot", pg2.url(name), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"] == f"127.0.0.1:{pg2.port}/{name}"
    r = run_cli("--config", str(cfg), "snapshots", name, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout + r.stderr
    r = run_cli("--config", str(cfg), "restore", "--into", name + "_dev", "--server", pg.url(), "--from", name)
    assert r.returncode == StoreError.exit_code and f"no snapshots of {name!r}" in r.stderr, r.stderr


def test_snapshots_filed_under_a_service_but_of_another_server(pg, pg2, tmp_path, store, db, migrations):  # noqa: F811
    """The configuration's "prod" pointed elsewhere when a snapshot was taken (or was edited):
    `--from prod` does not use it, and an upgrade rehearsed on it does not open the gate."""
    prod = db()
    other = create_db(pg2, prod)  # same database name, another server
    with pg2.connect(other) as conn:
        conn.execute((ROOT / "fixtures" / "service0.sql").read_text())
    dev = prod + "_dev"
    elsewhere = load_config(config(tmp_path, store, migrations, {"prod": (pg2.url(other), "production"),
                                                                 "dev": (pg.url(dev), "dev")}))
    commands.snapshot(elsewhere, "prod")
    commands.restore(elsewhere, into="dev", from_="prod")
    assert commands.upgrade(elsewhere, "dev", to="v1.1").outcome == "upgraded"  # a rehearsal, of pg2's database

    here = load_config(config(tmp_path, store, migrations, {"prod": (pg.url(prod), "production"),
                                                            "dev": (pg.url(dev), "dev")}))
    with pytest.raises(StoreError, match="taken of another server or database"):
        commands.restore(here, into="dev", from_="prod")
    with pytest.raises(RefusedError, match="no rehearsal on record"):
        commands.upgrade(here, "prod", to="v1.1")
    assert revision(pg, prod) != V11


def test_rehearsal_must_come_from_this_production_service(pg, tmp_path, store, db, migrations):  # noqa: F811
    """Point 21a: a rehearsal on a copy of *another* production service does not count."""
    prod, prod2 = db(), db("_b")
    dev = prod + "_dev"
    cfg = load_config(config(tmp_path, store, migrations, {"prod": (pg.url(prod), "production"),
                                                           "prod2": (pg.url(prod2), "production"),
                                                           "dev": (pg.url(dev), "dev")}))
    commands.snapshot(cfg, "prod2")
    commands.restore(cfg, into="dev", from_="prod2")
    commands.upgrade(cfg, "dev", to="v1.1")
    with pytest.raises(RefusedError, match="no rehearsal on record"):
        commands.upgrade(cfg, "prod", to="v1.1")
    assert commands.upgrade(cfg, "prod2", to="v1.1").outcome == "upgraded"  # its own rehearsal counts


ADOPT = '''"""adopt: the first release of an existing database"""
from alembic import op

revision = "ad01"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("ALTER TABLE public.t ADD COLUMN note text")


def downgrade():
    pass
'''


def test_first_release_of_an_existing_database_is_rehearsable(pg, tmp_path, dbname):
    """Point 14: production has no alembic version table. Restore it into dev, upgrade dev to the
    first release, then production is allowed (the hint's path works)."""
    prod = create_db(pg, dbname, DATA)
    mig = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", mig, ignore=shutil.ignore_patterns("__pycache__", "versions", "releases.toml"))
    (mig / "versions").mkdir()
    (mig / "versions" / "ad01_adopt.py").write_text(ADOPT)
    store = tmp_path / "store"
    cfg_path = config(tmp_path, store, mig, {"prod": (pg.url(prod), "production"), "dev": (pg.url(prod + "_dev"), "dev")})
    cfg = load_config(cfg_path)
    commands.release_add(cfg, "v1")
    info = commands.snapshot(cfg, "prod")
    assert info.release is None  # unmanaged
    with pytest.raises(RefusedError, match="no rehearsal"):
        commands.upgrade(cfg, "prod", to="v1")
    commands.restore(cfg, into="dev", from_="prod")
    with pg.connect(prod + "_dev") as conn:
        assert conn.execute("SELECT to_regnamespace('snapdb')").fetchone()[0] is None  # still an exact copy
    up = commands.upgrade(cfg, "dev", to="v1")
    assert up.outcome == "upgraded" and up.restored_from == info.id
    res = commands.upgrade(cfg, "prod", to="v1")
    assert res.outcome == "upgraded" and res.rehearsal == up.history_id
    assert revision(pg, prod) == "ad01"


def test_admin_url_for_upgrades_and_services_named_in_messages(pg, tmp_path, dbname, migrations):  # noqa: F811
    """Point 15: a read-only role snapshots; the service's admin_url upgrades (and writes
    snapdb.history, which the read-only role cannot)."""
    prod = create_db(pg, dbname)
    with pg.connect(prod) as conn:
        conn.execute((ROOT / "fixtures" / "service0.sql").read_text())
    ensure_roles(pg, "ro15", options="LOGIN")
    pg.psql("GRANT pg_read_all_data TO ro15")  # tables, sequences and schemas; large objects need their own grant
    pg.psql("DO $$DECLARE o oid; BEGIN FOR o IN SELECT oid FROM pg_largeobject_metadata LOOP "
            "EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO ro15', o); END LOOP; END$$", dbname=prod)
    store = tmp_path / "store"
    base = config(tmp_path, store, migrations, {"prod": (pg.url(prod, user="ro15"), "dev")}).read_text()
    ro_only = tmp_path / "ro.toml"
    ro_only.write_text(base)
    admin = tmp_path / "admin.toml"
    admin.write_text(base + f'admin_url = "{pg.url(prod)}"\n')
    assert run_cli("--config", str(admin), "snapshot", "prod").returncode == 0  # through url (ro15)
    r = run_cli("--config", str(ro_only), "upgrade", "prod", "--to", "v1.1")
    assert r.returncode == 5 and "snapdb.history" in r.stderr, r.stderr
    r = run_cli("--config", str(admin), "upgrade", "prod", "--to", "v1.1")
    assert r.returncode == 0, r.stderr
    assert revision(pg, prod) == V11
    # connection failures name the service (and server, database and user), with a hint
    broken = tmp_path / "broken.toml"
    broken.write_text(base.replace(f":{pg.port}/", ":1/"))
    r = run_cli("--config", str(broken), "snapshot", "prod")
    assert r.returncode == 4 and "cannot connect to service 'prod' (127.0.0.1:1" in r.stderr, r.stderr
    assert "hint: is PostgreSQL running" in r.stderr
