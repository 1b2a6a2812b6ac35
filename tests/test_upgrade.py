"""Release-tagged upgrades on a real cluster: ledger, git tags, rehearsal gate, history, lock.

Every test works on a copy of the repository's migrations/ in tmp_path (never on the original)
and on databases cloned from a template loaded with fixtures/service0.sql (release v1.0).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from psycopg import sql

from snapdb import commands
from snapdb.config import load_config, parse_duration
from snapdb.errors import ConfigError, IntegrityError, MigrationError, RefusedError
from snapdb.ledger import Ledger, checksum

from .conftest import ROOT, popen_cli, run_cli
from .dbcompare import schema_dump, table_fingerprints

_templates = __import__("itertools").count(1)  # one template per module that uses it, same second or not
V10, V11, V20 = "3f1c0a9e5b10", "7d2e4b8c1a21", "c94a06f3e872"
V11_FILE = "versions/7d2e4b8c1a21_loyalty_tier_and_order_date_index.py"


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(pg):
    """A database at release v1.0 with service0's data, cloned by `db`."""
    name = f"upgrade_template_{int(time.time())}_{os.getpid()}_{next(_templates)}"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with pg.connect(name) as conn:
        conn.execute((ROOT / "fixtures" / "service0.sql").read_text())
    return name


@pytest.fixture
def db(pg, template, dbname):
    """Return a function creating a fresh copy of the v1.0 template named `dbname` + suffix."""

    def make(suffix: str = "") -> str:
        name = dbname + suffix
        with pg.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)))
        return name

    return make


@pytest.fixture
def migrations(tmp_path) -> Path:
    dest = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def config(tmp_path: Path, store: Path, migrations: Path, services: dict, **upgrade) -> Path:
    """Write snapdb.toml: services = {name: (url, role)}, [upgrade] migrations and `upgrade`."""
    lines = ["[store]", f"url = {json.dumps(str(store))}", "", "[upgrade]",
             f"migrations = {json.dumps(str(migrations))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in upgrade.items()]
    for name, (url, role) in services.items():
        lines += ["", f"[services.{name}]", f"url = {json.dumps(url)}", f"role = {json.dumps(role)}"]
    path = tmp_path / "snapdb.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(cfg_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("--config", str(cfg_path), *args, env=env)


def revision(pg, name: str) -> str | None:
    with pg.connect(name) as conn:
        rows = conn.execute("SELECT version_num FROM public.alembic_version").fetchall()
    return rows[0][0] if rows else None


def history_rows(pg, name: str) -> list[dict]:
    with pg.connect(name) as conn:
        if conn.execute("SELECT to_regclass('snapdb.history')").fetchone()[0] is None:
            return []
        cur = conn.execute("SELECT * FROM snapdb.history ORDER BY id")
        cols = [c.name for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def catalog(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "catalog" / "history").glob("*.json"))]


def columns(pg, name: str, table: str = "customers") -> list[str]:
    with pg.connect(name) as conn:
        return [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (f"app.{table}",))]


def app_schema(pg, name: str) -> str:
    """``pg_dump --schema-only`` of everything but snapdb's own schema."""
    out = subprocess.run([pg.tool("pg_dump"), "--schema-only", "--exclude-schema=snapdb", "-d", pg.conninfo(name)],
                         capture_output=True, text=True, check=True).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout


def add_revision(migrations: Path, rev: str, down: str, body: str) -> None:
    (migrations / "versions" / f"{rev}_test.py").write_text(
        f'"""test revision {rev}"""\nfrom alembic import op\n\nrevision = {rev!r}\ndown_revision = {down!r}\n'
        f"branch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n{body}\n\n\ndef downgrade():\n    pass\n")


# -- acceptance 1: the whole release path --------------------------------------------------------
def test_release_path_rehearsal_then_production(pg, tmp_path, store, db, migrations):
    prod = db()
    dev = prod + "_dev"  # created by the restore below
    cfg_path = config(tmp_path, store, migrations, {"prod": (pg.url(prod), "production"), "dev": (pg.url(dev), "dev")})
    cfg = load_config(cfg_path)

    info = commands.snapshot(cfg, "prod")
    assert info.release == "v1.0"

    # production without a rehearsal: refused, with the two commands that make one; nothing changed
    before = schema_dump(pg, prod)
    r = cli(cfg_path, "upgrade", "prod", "--to", "v2.0")
    assert r.returncode == RefusedError.exit_code, r.stderr
    err, hint = r.stderr.strip().splitlines()[-2:]
    assert err.startswith("error: refusing to upgrade production service 'prod' to v2.0: no rehearsal on record")
    assert "snapdb restore --into dev --from prod" in hint and "snapdb upgrade dev --to v2.0" in hint
    assert schema_dump(pg, prod) == before and revision(pg, prod) == V10

    # rehearse: restore prod's snapshot into dev, upgrade dev
    commands.restore(cfg, into="dev", from_="prod")
    rows = history_rows(pg, dev)
    assert [(h["operation"], h["restored_from"], h["restored_from_source"], h["tag"]) for h in rows] == [
        ("restore", info.id, "prod", "v1.0")]
    res = commands.upgrade(cfg, "dev", to="v2.0")
    assert res.outcome == "upgraded" and [s["revision"] for s in res.steps] == [V11, V20]
    assert revision(pg, dev) == V20 and res.restored_from == info.id
    assert {"first_name", "last_name", "loyalty_tier"} <= set(columns(pg, dev)) and "name" not in columns(pg, dev)
    with pg.connect(dev) as conn:
        assert conn.execute("SELECT first_name, last_name, loyalty_tier FROM app.customers WHERE id = 7").fetchone() == (
            "Customer", "7", "standard")
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.orders_placed_at_idx'::regclass").fetchone()[0]
    up = history_rows(pg, dev)[-1]
    assert (up["operation"], up["outcome"], up["from_revision"], up["to_revision"], up["restored_from"]) == (
        "upgrade", "succeeded", V10, V20, info.id)
    assert up["checksum"] == Ledger.load(migrations).get("v2.0").checksum and up["ended_at"] >= up["started_at"]
    assert up["os_user"] and up["client_host"]
    [cat] = [c for c in catalog(store) if c["record_id"] == up["record_id"]]
    assert cat["outcome"] == "succeeded" and cat["restored_from"] == info.id and cat["database"]["dbname"] == dev

    # a rehearsal older than rehearsal_max_age does not count
    stale = load_config(config(tmp_path, store, migrations, {"prod": (pg.url(prod), "production")},
                               rehearsal_max_age="0s"))
    with pytest.raises(RefusedError, match="no rehearsal on record"):
        commands.upgrade(stale, "prod", to="v2.0")
    # a rehearsal of another release does not count for v1.1
    with pytest.raises(RefusedError, match="to v1.1: no rehearsal"):
        commands.upgrade(cfg, "prod", to="v1.1")

    # now production may go
    res = commands.upgrade(cfg, "prod", to="v2.0")
    assert res.outcome == "upgraded" and res.rehearsal == up["record_id"] and not res.rehearsal_skipped
    assert revision(pg, prod) == V20
    assert history_rows(pg, prod)[-1]["rehearsal"] == up["record_id"]
    assert schema_dump(pg, prod).replace(prod, "X") == schema_dump(pg, dev).replace(dev, "X")
    # `releases` shows who is where
    out = commands.releases(cfg)
    where = {r.tag: (r.scripts, sorted(r.databases), r.snapshots) for r in out.releases}
    assert where == {"v1.0": ("ok", [], [info.id]), "v1.1": ("ok", [], []), "v2.0": ("ok", ["dev", "prod"], [])}
    again = commands.upgrade(cfg, "prod", to="v2.0")
    assert again.outcome == "up-to-date" and len(history_rows(pg, prod)) == 1
    # prod's history travels with its snapshots; the copy adds its own restore row and verifies
    latest = commands.snapshot(cfg, "prod")
    assert latest.release == "v2.0"
    commands.restore(cfg, into="dev", from_="prod")
    assert [(h["operation"], h["restored_from"]) for h in history_rows(pg, dev)] == [
        ("upgrade", None), ("restore", latest.id)]
    assert commands.verify(cfg, latest.id, against="dev").ok


def test_skip_rehearsal_is_loud_and_recorded(pg, tmp_path, store, db, migrations):
    prod = db()
    cfg_path = config(tmp_path, store, migrations, {"prod": (pg.url(prod), "production")})
    r = cli(cfg_path, "upgrade", "prod", "--to", "v1.1", "--skip-rehearsal")
    assert r.returncode == 0, r.stderr
    assert "WITHOUT a rehearsal" in r.stderr and "recorded" in r.stderr
    row = history_rows(pg, prod)[-1]
    assert (row["skip_rehearsal"], row["outcome"], row["rehearsal"]) == (True, "succeeded", None)
    assert [c["skip_rehearsal"] for c in catalog(store)] == [True]
    # a production service reached through its URL is still production
    r = cli(cfg_path, "upgrade", pg.url(prod), "--to", "v2.0")
    assert r.returncode == RefusedError.exit_code and "production service 'prod'" in r.stderr


# -- acceptance 2: an edited released script ---------------------------------------------------------
def test_edited_released_script_is_refused_and_listed(pg, tmp_path, store, db, migrations):
    target = db()
    cfg_path = config(tmp_path, store, migrations, {"dev": (pg.url(target), "dev")})
    f = migrations / V11_FILE
    data = f.read_bytes()
    edited = data.replace(b'"standard"', b'"standarD"', 1)
    assert len(edited) == len(data) and edited != data  # exactly one byte differs
    f.write_bytes(edited)
    before = schema_dump(pg, target)

    r = cli(cfg_path, "upgrade", "dev", "--to", "v2.0")
    assert r.returncode == IntegrityError.exit_code, r.stderr
    expected = Ledger.load(migrations).get("v2.0").files[V11_FILE]
    actual = hashlib.sha256(edited).hexdigest()
    assert V11_FILE in r.stderr and expected in r.stderr and actual in r.stderr
    assert schema_dump(pg, target) == before and history_rows(pg, target) == []

    r = cli(cfg_path, "releases", "--json")
    assert r.returncode == 0, r.stderr
    status = {x["tag"]: x for x in json.loads(r.stdout)["releases"]}
    assert {t: s["scripts"] for t, s in status.items()} == {"v1.0": "ok", "v1.1": "modified", "v2.0": "modified"}
    assert any(V11_FILE in p for p in status["v1.1"]["problems"])
    assert json.loads(r.stdout)["databases"] == [{"service": "dev", "revision": V10, "tag": "v1.0", "error": None}]
    r = cli(cfg_path, "releases")
    assert r.returncode == 0 and "modified" in r.stdout and V11_FILE in r.stdout
    # recording a new release on top of the edit is refused too
    with pytest.raises(IntegrityError, match=V11_FILE):
        commands.release_add(load_config(cfg_path), "v2.1")


# -- acceptance 3: git tags, not the working tree ----------------------------------------------------
def test_git_tag_tree_is_what_runs(pg, tmp_path, store, db):
    repo = tmp_path / "repo"
    mig = repo / "app" / "migrations"
    shutil.copytree(ROOT / "migrations", mig, ignore=shutil.ignore_patterns("__pycache__"))
    v20_file = next((mig / "versions").glob(f"{V20}_*.py"))
    v20_text = v20_file.read_text()
    v20_file.unlink()
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1.1")
    git(repo, "tag", "v1.1")
    v20_file.write_text(v20_text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v2.0")
    git(repo, "tag", "-a", "v2.0", "-m", "release v2.0")  # annotated tags resolve too
    f = mig / V11_FILE  # an uncommitted edit that changes what v1.1 does
    f.write_text(f.read_text().replace('"standard"', '"gold"'))
    assert "gold" in f.read_text() and git(repo, "status", "--porcelain").strip()

    first, second = db("_a"), db("_b")
    cfg_path = config(tmp_path, store, mig, {"a": (pg.url(first), "dev"), "b": (pg.url(second), "dev")})
    cfg = load_config(cfg_path)
    res = commands.upgrade(cfg, "a", to="v2.0")
    assert res.scripts.startswith("git tag v2.0 (commit ") and res.outcome == "upgraded"
    with pg.connect(first) as conn:
        assert conn.execute("SELECT DISTINCT loyalty_tier FROM app.customers").fetchall() == [("standard",)]
    assert history_rows(pg, first)[-1]["scripts_origin"].startswith("git tag v2.0")
    r = cli(cfg_path, "releases", "--json")
    status = {x["tag"]: (x["scripts"], x["origin"][:11]) for x in json.loads(r.stdout)["releases"]}
    assert status == {"v1.0": ("ok", "working tre"), "v1.1": ("ok", "git tag v1."), "v2.0": ("ok", "git tag v2.")}
    # v1.1's tree does not know v2.0's revision; the database is still recognised as ahead
    with pytest.raises(RefusedError, match="ahead of the release's revision"):
        commands.upgrade(cfg, "a", to="v1.1")
    # a release recorded for an existing git tag is read from the tag, not the edited working tree
    git(repo, "tag", "v2.0.1", "v2.0")
    added = commands.release_add(cfg, "v2.0.1")
    assert added.scripts.startswith("git tag v2.0.1") and added.checksum == Ledger.load(mig).get("v2.0").checksum

    # without the git tag, the working tree is read -- and its edit is refused
    git(repo, "tag", "-d", "v2.0")
    with pytest.raises(IntegrityError, match=V11_FILE) as info:
        commands.upgrade(cfg, "b", to="v2.0")
    assert "working tree" in info.value.message and revision(pg, second) == V10


# -- acceptance 4: a failing revision --------------------------------------------------------------
def test_failing_revision_stays_at_last_good_one(pg, tmp_path, store, db, migrations):
    add_revision(migrations, "aa01", V20, "    op.execute('CREATE TABLE app.coupons (code text PRIMARY KEY)')")
    add_revision(migrations, "bb02", "aa01",
                 "    op.execute('ALTER TABLE app.products ADD COLUMN discontinued boolean')\n"
                 "    op.execute('SELECT 1 / 0')")
    target = db()
    cfg_path = config(tmp_path, store, migrations, {"dev": (pg.url(target), "dev")})
    added = commands.release_add(load_config(cfg_path), "v3.0")
    assert added.revision == "bb02" and list(added.files)[-1] == "versions/bb02_test.py"

    r = cli(cfg_path, "upgrade", "dev", "--to", "v3.0")
    assert r.returncode == MigrationError.exit_code, r.stderr
    assert "revision bb02 (versions/bb02_test.py) failed: division by zero" in r.stderr
    assert "stays at revision aa01" in r.stderr
    hint = r.stderr.strip().splitlines()[-1]
    assert hint.startswith("hint: ") and "snapdb release add" in hint and "snapdb restore --into" in hint
    assert revision(pg, target) == "aa01"
    assert "discontinued" not in columns(pg, target, "products")  # bb02's transaction rolled back
    with pg.connect(target) as conn:
        assert conn.execute("SELECT to_regclass('app.coupons')").fetchone()[0] is not None
    row = history_rows(pg, target)[-1]
    assert (row["outcome"], row["from_revision"], row["reached_revision"], row["failed_revision"]) == (
        "failed", V10, "aa01", "bb02")
    assert "division by zero" in row["error"]
    [cat] = catalog(store)
    assert (cat["record_id"], cat["outcome"], cat["failed_revision"]) == (row["record_id"], "failed", "bb02")

    # a second attempt fails the same way, from aa01, and leaves the first record alone
    with pytest.raises(MigrationError, match="bb02"):
        commands.upgrade(load_config(cfg_path), "dev", to="v3.0")
    outcomes = [(h["outcome"], h["from_revision"]) for h in history_rows(pg, target)]
    assert outcomes == [("failed", V10), ("failed", "aa01")]


# -- acceptance 5: two concurrent upgrades -------------------------------------------------------------
def test_concurrent_upgrades_run_once(pg, tmp_path, store, db, migrations):
    target = db()
    cfg_path = config(tmp_path, store, migrations, {"dev": (pg.url(target), "dev")})
    faults = tmp_path / "faults"
    faults.mkdir()
    first = popen_cli("--config", str(cfg_path), "upgrade", "dev", "--to", "v2.0",
                      env={"SNAPDB_PAUSE_AT": "upgrade:locked", "SNAPDB_FAULT_DIR": str(faults)})
    try:
        deadline = time.monotonic() + 60
        while not (faults / "upgrade:locked.reached").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = cli(cfg_path, "upgrade", "dev", "--to", "v2.0")
        assert second.returncode == 9, second.stderr
        assert "error: another snapdb upgrade" in second.stderr and "holds the lock of dev" in second.stderr
        assert revision(pg, target) == V10
    finally:
        (faults / "upgrade:locked.go").touch()
        _, errout = first.communicate(timeout=120)
    assert first.returncode == 0, errout
    assert revision(pg, target) == V20
    third = cli(cfg_path, "upgrade", "dev", "--to", "v2.0")
    assert third.returncode == 0 and "already at v2.0" in third.stderr
    assert [(h["operation"], h["outcome"]) for h in history_rows(pg, target)] == [("upgrade", "succeeded")]
    with pg.connect(target) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM app.schema_version ORDER BY 1")] == ["1.0", "1.1", "2.0"]


def test_killed_upgrade_resumes_from_last_committed_revision(pg, tmp_path, store, db, migrations):
    target = db()
    cfg_path = config(tmp_path, store, migrations, {"dev": (pg.url(target), "dev")})
    r = cli(cfg_path, "upgrade", "dev", "--to", "v2.0", env={"SNAPDB_KILL_AT": "upgrade:revision-applied"})
    assert r.returncode == -9  # SIGKILL right after v1.1 committed
    assert revision(pg, target) == V11
    assert [(h["outcome"], h["reached_revision"]) for h in history_rows(pg, target)] == [("running", V11)]
    r = cli(cfg_path, "upgrade", "dev", "--to", "v2.0")
    assert r.returncode == 0, r.stderr
    assert revision(pg, target) == V20
    assert [(h["outcome"], h["from_revision"]) for h in history_rows(pg, target)] == [
        ("interrupted", V10), ("succeeded", V11)]
    assert [c["outcome"] for c in catalog(store)] == ["succeeded"]  # a killed run publishes nothing


# -- acceptance 6: --dry-run and --sql change nothing --------------------------------------------------
def test_dry_run_and_sql_change_nothing(pg, tmp_path, store, db, migrations):
    target, by_sql, by_upgrade = db(), db("_sql"), db("_up")
    cfg_path = config(tmp_path, store, migrations, {"dev": (pg.url(target), "dev"), "up": (pg.url(by_upgrade), "dev")})
    before, rows_before = schema_dump(pg, target), table_fingerprints(pg, target)

    r = cli(cfg_path, "upgrade", "dev", "--to", "v2.0", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"1. {V11} [v1.1]" in r.stdout and f"2. {V20} [v2.0]" in r.stdout and "v1.0 -> v2.0" in r.stdout
    r2 = cli(cfg_path, "upgrade", "dev", "--to", "v2.0", "--sql")
    assert r2.returncode == 0, r2.stderr
    text = r2.stdout
    assert "CREATE INDEX CONCURRENTLY orders_placed_at_idx" in text and "UPDATE app.customers" in text
    assert f"UPDATE public.alembic_version SET version_num='{V20}'" in text
    r3 = cli(cfg_path, "upgrade", "dev", "--to", "v2.0", "--dry-run", "--json")
    assert json.loads(r3.stdout)["mode"] == "dry-run"
    assert schema_dump(pg, target) == before and table_fingerprints(pg, target) == rows_before
    assert not (store / "catalog").exists()

    # the printed SQL does what the upgrade does
    subprocess.run([pg.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.conninfo(by_sql)],
                   input=text, text=True, check=True, capture_output=True)
    assert cli(cfg_path, "upgrade", "up", "--to", "v2.0").returncode == 0
    assert revision(pg, by_sql) == V20 and app_schema(pg, by_sql) == app_schema(pg, by_upgrade)


# -- refusals and the ledger ---------------------------------------------------------------------------
def test_unknown_tag_ahead_and_bad_input(pg, tmp_path, store, db, migrations):
    target = db()
    cfg_path = config(tmp_path, store, migrations, {"dev": (pg.url(target), "dev")})
    r = cli(cfg_path, "upgrade", "dev", "--to", "v9.9")
    assert r.returncode == ConfigError.exit_code and "unknown release 'v9.9'" in r.stderr and "v1.0, v1.1, v2.0" in r.stderr
    for bad in ("--bad", "v1..0", "a b"):
        r = cli(cfg_path, "upgrade", "dev", "--to", bad)
        assert r.returncode == ConfigError.exit_code and "invalid release tag" in r.stderr
    assert cli(cfg_path, "upgrade", "dev").returncode == 2  # --to is required
    assert cli(cfg_path, "upgrade", "dev", "--to", "v2.0", "--dry-run", "--sql").returncode == ConfigError.exit_code
    assert cli(cfg_path, "upgrade", "dev", "--to", "v2.0").returncode == 0
    r = cli(cfg_path, "upgrade", "dev", "--to", "v1.1")
    assert r.returncode == RefusedError.exit_code
    assert r.stderr.startswith(f"error: dev is at revision {V20} (v2.0), ahead of the release's revision {V11}")
    assert [h["tag"] for h in history_rows(pg, target)] == ["v2.0"]
    r = cli(cfg_path, "upgrade", "dev", "--to", "v2.0", "--migrations", str(tmp_path / "nowhere"))
    assert r.returncode == ConfigError.exit_code and "no such directory" in r.stderr


def test_release_add_rules(tmp_path, migrations, store):
    cfg = load_config(config(tmp_path, store, migrations, {}))
    with pytest.raises(RefusedError, match="already recorded"):
        commands.release_add(cfg, "v2.0")
    add_revision(migrations, "cc01", V20, "    pass")
    add_revision(migrations, "cc02", V20, "    pass")
    with pytest.raises(RefusedError, match="2 heads \\(cc01, cc02\\)"):
        commands.release_add(cfg, "v3.0")
    (migrations / "versions" / "cc02_test.py").unlink()
    res = commands.release_add(cfg, "v3.0")
    assert res.revision == "cc01" and res.scripts.startswith("working tree")
    ledger = Ledger.load(migrations)
    assert list(ledger.releases) == ["v1.0", "v1.1", "v2.0", "v3.0"]
    assert ledger.get("v3.0").checksum == checksum(ledger.get("v3.0").files)
    # the byte rule, spelled out
    files = ledger.get("v1.0").files
    assert list(files) == ["env.py", "versions/3f1c0a9e5b10_initial_schema.py"]
    for path, digest in files.items():
        assert hashlib.sha256((migrations / path).read_bytes()).hexdigest() == digest
    manual = hashlib.sha256(b"".join(p.encode() + b"\0" + d.encode() + b"\n" for p, d in files.items())).hexdigest()
    assert manual == ledger.get("v1.0").checksum
    # a hand-edited ledger is refused
    text = (migrations / "releases.toml").read_text()
    (migrations / "releases.toml").write_text(text.replace(files["env.py"], "0" * 64, 1))
    with pytest.raises(ConfigError, match="edited by hand"):
        Ledger.load(migrations)


def test_initial_revision_builds_the_fixture_schema(pg, tmp_path, store, db, dbname, migrations):
    fixture = db("_fixture")
    empty = dbname + "_empty"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(empty)))
    cfg = load_config(config(tmp_path, store, migrations, {"e": (pg.url(empty), "dev")}))
    res = commands.upgrade(cfg, "e", to="v1.0")
    assert res.from_revision is None and [s["revision"] for s in res.steps] == [V10]
    assert app_schema(pg, empty) == app_schema(pg, fixture)


def test_config_upgrade_section(tmp_path):
    p = tmp_path / "snapdb.toml"
    p.write_text('[upgrade]\nmigrations = "mig"\nrehearsal_max_age = "36h"\n[services.a]\nurl = "postgresql://h/a"\n'
                 'migrations = "other"\n')
    cfg = load_config(p)
    assert cfg.rehearsal_max_age.total_seconds() == 36 * 3600
    assert cfg.migrations_dir("a", must_exist=False) == (tmp_path / "other").resolve()
    assert cfg.migrations_dir(None, must_exist=False) == (tmp_path / "mig").resolve()
    assert cfg.migrations_dir("not-a-service", must_exist=False) == (tmp_path / "mig").resolve()
    assert cfg.migrations_dir("a", "cli-dir", must_exist=False) == Path("cli-dir").resolve()
    for bad in ('"7 weeks"', "7", '"-1d"'):
        p.write_text(f"[upgrade]\nrehearsal_max_age = {bad}\n")
        with pytest.raises(ConfigError, match="rehearsal_max_age must be a duration"):
            load_config(p)
    p.write_text("[upgrade]\nwhatever = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'whatever'"):
        load_config(p)
    assert parse_duration("7d", "x").days == 7
