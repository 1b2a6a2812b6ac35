"""A huge duration in a threshold (config snapshot_max_age / refresh_max_age, or --max-age) was an
internal error (exit 1, "report the traceback") instead of a configuration/usage error (3 or 2)."""
from __future__ import annotations

import pytest

from snapdb.config import load_config, parse_duration
from snapdb.errors import ConfigError

from .conftest import run_cli


def test_huge_max_age_option_is_a_usage_error(tmp_path):
    r = run_cli("status", "--store", str(tmp_path / "store"), "--check", "--max-age", "9999999999d")
    assert r.returncode in (2, 3), (r.returncode, r.stderr)


def test_huge_threshold_in_config_is_a_config_error(tmp_path):
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[services.dev]\n'
                   'url = "postgresql://u@127.0.0.1:1/dev"\nrefresh_max_age = "9999999999d"\n')
    r = run_cli("--config", str(cfg), "status", "--check")
    assert r.returncode == 3, (r.returncode, r.stderr)


def test_duration_past_any_range_is_a_config_error():
    """Past timedelta's range, past int()'s digit limit, or past the setting's own maximum: one
    ConfigError line naming the setting, never OverflowError / ValueError."""
    for text in ("9999999999d", "1" * 5000 + "s", "36501d"):
        with pytest.raises(ConfigError, match=r"^x must be at most 36500d, not '") as exc:
            parse_duration(text, "x")
        assert len(exc.value.message) < 100 and "\n" not in exc.value.message
    assert parse_duration("36500d", "x").days == 36500


def test_hook_timeout_poll_cannot_take_is_a_config_error(tmp_path):
    """A hook timeout of "30d" parsed, then made the cutover die in poll() ("timeout is too
    large") when the hook ran; it is refused when the configuration is read."""
    cfg = tmp_path / "snapdb.toml"
    cfg.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n[services.prod]\n'
                   'url = "postgresql://u@127.0.0.1:1/prod"\nrole = "production"\n'
                   '[services.prod.hooks]\nafter_swap = "true"\ntimeout = "30d"\n')
    with pytest.raises(ConfigError, match=r"hooks timeout must be at most 1d, not '30d'"):
        load_config(cfg)
    cfg.write_text(cfg.read_text().replace('"30d"', '"1d"'))
    assert load_config(cfg).services["prod"].hook_timeout == 86400
