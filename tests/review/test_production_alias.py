"""Review: the production rule compares (host, port, dbname) of the service's url only. Production
reached through a pooler port (or admin_url) is not recognised when the same database is named
through another service on the same server, though the system identifier says it is the same."""

from __future__ import annotations

from ..conftest import create_db, run_cli
from ..dbcompare import table_fingerprints
from .proxy import Forwarder


def test_production_database_replaced_through_another_service(pg, tmp_path, dbname):
    prod_db = create_db(pg, dbname + "_app", "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 1000)")
    other = create_db(pg, dbname + "_staging", "CREATE TABLE junk (id int)")
    fwd = Forwarder(pg.port)
    try:
        url = lambda port, db: f"postgresql://postgres@127.0.0.1:{port}/{db}"  # noqa: E731
        (tmp_path / "snapdb.toml").write_text(f"""[store]
url = "{tmp_path / 'store'}"

[services.prod]
url = "{url(fwd.port, prod_db)}"
admin_url = "{url(pg.port, prod_db)}"
role = "production"

[services.staging]
url = "{url(pg.port, other)}"
role = "dev"
""")
        cfg = str(tmp_path / "snapdb.toml")
        before = table_fingerprints(pg, prod_db)
        assert run_cli("--config", cfg, "snapshot", "staging").returncode == 0
        r = run_cli("--config", cfg, "restore", "--into", prod_db, "--server", "staging", "--from", "staging")
        print(r.returncode, r.stderr)
        assert r.returncode == 8, "production database replaced"
        assert table_fingerprints(pg, prod_db) == before
    finally:
        fwd.close()


from snapdb import commands  # noqa: E402
from snapdb.config import load_config  # noqa: E402
from snapdb.errors import RefusedError  # noqa: E402
import pytest  # noqa: E402

from ..test_upgrade import config, db, migrations, template  # noqa: E402,F401


def test_rehearsal_gate_bypassed_through_another_address(pg, tmp_path, store, db, migrations):  # noqa: F811
    prod = db()
    fwd = Forwarder(pg.port)
    try:
        cfg = load_config(config(tmp_path, store, migrations, {
            "prod": (f"postgresql://postgres@127.0.0.1:{fwd.port}/{prod}", "production")}))
        with pytest.raises(RefusedError, match="no rehearsal"):
            commands.upgrade(cfg, "prod", to="v1.1")
        # the same database by its direct address is production too (same system identifier)
        with pytest.raises(RefusedError, match="production service 'prod'.*no rehearsal"):
            commands.upgrade(cfg, pg.url(prod), to="v1.1")
    finally:
        fwd.close()
