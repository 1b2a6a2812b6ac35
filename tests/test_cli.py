"""Issue 12, points 16, 17 and 19: no silent success on nonsense, the command line people type,
and hints where people get stuck. Through the real command (a subprocess, the cron path)."""

from __future__ import annotations

import json

from snapdb.cli import normalize_args

from .conftest import create_db, ensure_roles, run_cli, write_config


def test_missing_or_wrong_store_is_an_error(tmp_path):
    r = run_cli("snapshots", "--store", str(tmp_path / "no" / "such" / "dir"))
    assert r.returncode == 6 and r.stderr.startswith("error: store not found"), r.stderr
    f = tmp_path / "a-file"
    f.write_text("x")
    r = run_cli("snapshots", "--store", str(f))
    assert r.returncode == 6 and "is not a directory" in r.stderr, r.stderr
    r = run_cli("restore", "--into", "x", "--server", "postgresql://h/db", "--store", str(tmp_path / "nope"))
    assert r.returncode == 6, r.stderr


def test_unknown_source_names_the_known_ones(pg, tmp_path, dbname):
    src = create_db(pg, dbname, "CREATE TABLE t (id int)")
    cfg = write_config(tmp_path / "snapdb.toml", tmp_path / "store", {"prod": (pg.url(src), "production")})
    assert run_cli("--config", str(cfg), "snapshot", "prod").returncode == 0
    r = run_cli("--config", str(cfg), "snapshots", "prdo")
    assert r.returncode == 3, r.stderr
    assert "unknown source 'prdo'" in r.stderr and "hint: known: prod" in r.stderr
    # `--json true`: --json is a flag, "true" would be the source: say so
    r = run_cli("--config", str(cfg), "snapshots", "--json", "true")
    assert r.returncode == 3 and "--json takes no value" in r.stderr, r.stderr
    r = run_cli("--config", str(cfg), "snapshots", "prod", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 1


def test_global_options_anywhere_version_and_help(pg, tmp_path, dbname):
    src = create_db(pg, dbname, "CREATE TABLE t (id int)")
    cfg = str(write_config(tmp_path / "snapdb.toml", tmp_path / "store", {"prod": (pg.url(src), "production"),
                                                                         "dev": (pg.url(src + "_dev"), "dev")}))
    assert run_cli("snapshot", "prod", "--config", cfg, "--quiet").returncode == 0
    r = run_cli("restore", "--into", "dev", "--config", cfg, "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # --quiet after the command: no summary
    r = run_cli("--json", "--config", cfg, "snapshots")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["source"] == "prod"
    r = run_cli("snapshots", "--debug", "--config", cfg)
    assert r.returncode == 0
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("snapdb ")
    for args in (["--help"], ["restore", "--help"], ["snapshots", "--help"], ["release", "add", "--help"]):
        r = run_cli(*args)
        assert r.returncode == 0 and "<bool>" not in r.stdout and "--help" in r.stdout, (args, r.stdout)
    # a bad value for an option: exit 2 (usage), as docs/exit-codes.md says
    for bad in (["restore", "--into", "dev", "--verify", "bogus"], ["snapshot", "prod", "--jobs", "x"],
                ["restore", "--into", "dev", "--keep-previous", "-1"], ["snapshot", "prod", "--jobs", "0"]):
        r = run_cli("--config", cfg, *bad)
        assert r.returncode == 2, (bad, r.stderr)


def test_normalize_args_keeps_values_and_separator():
    assert normalize_args(["restore", "--into", "x", "--quiet", "--json"]) == ["--quiet", "restore", "--json", "--into", "x"]
    assert normalize_args(["--json", "release", "add", "v1"]) == ["release", "add", "--json", "v1"]
    assert normalize_args(["snapshot", "p", "--config=a.toml"]) == ["--config=a.toml", "snapshot", "p"]
    assert normalize_args(["snapshot", "--", "--quiet"]) == ["snapshot", "--", "--quiet"]


def test_hint_for_missing_privileges(pg, tmp_path, dbname):
    """Point 19: a restoring role without CREATEDB gets told what it needs."""
    src = create_db(pg, dbname, "CREATE TABLE t (id int)")
    ensure_roles(pg, "no_createdb", options="LOGIN")
    store = str(tmp_path / "store")
    assert run_cli("snapshot", pg.url(src), "--store", store).returncode == 0
    trace = tmp_path / "trace"
    trace.mkdir()
    r = run_cli("restore", "--into", src + "_x", "--server", pg.url(user="no_createdb"), "--store", store,
                "--no-owner", "--no-privileges", env={"SNAPDB_TRACE_DIR": str(trace)})
    assert r.returncode == 5, r.stderr
    assert "it needs CREATEDB" in r.stderr and r.stderr.splitlines()[-1].startswith("hint: ")
    assert not (trace / "restore:created.passed").exists()  # found out before anything was built
