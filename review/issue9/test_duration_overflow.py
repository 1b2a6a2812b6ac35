"""A huge duration in a threshold (config snapshot_max_age / refresh_max_age, or --max-age) is an
internal error (exit 1, "report the traceback") instead of a configuration/usage error (3 or 2)."""
from __future__ import annotations

from tests.conftest import run_cli


def test_huge_max_age_option_is_a_usage_error(tmp_path):
    r = run_cli("status", "--store", str(tmp_path / "store"), "--check", "--max-age", "9999999999d")
    assert r.returncode in (2, 3), (r.returncode, r.stderr)


def test_huge_threshold_in_config_is_a_config_error(tmp_path):
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[services.dev]\n'
                   'url = "postgresql://u@127.0.0.1:1/dev"\nrefresh_max_age = "9999999999d"\n')
    r = run_cli("--config", str(cfg), "status", "--check")
    assert r.returncode == 3, (r.returncode, r.stderr)
