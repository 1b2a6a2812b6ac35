"""Review: the rehearsal gate when the rehearsal's snapshot has been deleted from the store."""

from __future__ import annotations

import shutil

from snapdb import commands
from snapdb.config import load_config

from ..test_upgrade import config, db, migrations, template  # noqa: F401


def test_rehearsal_counts_after_its_snapshot_is_deleted(pg, tmp_path, store, db, migrations):  # noqa: F811
    prod = db()
    cfg = load_config(config(tmp_path, store, migrations, {"prod": (pg.url(prod), "production"),
                                                           "dev": (pg.url(prod + "_dev"), "dev")}))
    snap = commands.snapshot(cfg, "prod")
    commands.restore(cfg, into="dev", from_="prod")
    shutil.rmtree(store / "snapshots" / snap.id)
    commands.upgrade(cfg, "dev", to="v1.1")
    assert commands.upgrade(cfg, "prod", to="v1.1").outcome == "upgraded"
