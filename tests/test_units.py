"""Configuration, documentation and CLI checks that need no database (the store contract is in
test_store.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snapdb import cli
from snapdb.config import Config, load_config
from snapdb.errors import EXIT_CODES, ConfigError
from snapdb.store import open_store

ROOT = Path(__file__).resolve().parents[1]


# -- configuration -----------------------------------------------------------------------
def _write(tmp_path, text):
    p = tmp_path / "snapdb.toml"
    p.write_text(text)
    return p


def test_config_services_and_store(tmp_path, monkeypatch):
    p = _write(tmp_path, '[store]\nurl = "/var/lib/snapdb"\n[services.prod]\nurl = "postgresql://app@db1/service0"\n'
                         'role = "production"\n[services.dev]\nurl = "postgresql://app@db1/service0-dev"\nrole = "dev"\n')
    cfg = load_config(p)
    assert cfg.store() == "/var/lib/snapdb"
    monkeypatch.setenv("SNAPDB_STORE", "/elsewhere")
    assert cfg.store() == "/elsewhere" and cfg.store("/cli") == "/cli"
    prod = cfg.endpoint("prod")
    assert (prod.dbname, prod.user, prod.role, prod.source_name) == ("service0", "app", "production", "prod")
    url = cfg.endpoint("postgresql://u@h:5433/other%2Ddb")
    assert (url.dbname, url.port, url.name, url.source_name) == ("other-db", "5433", None, "h:5433/other-db")
    monkeypatch.setenv("SNAPDB_CONFIG", str(p))
    assert set(load_config().services) == {"prod", "dev"}


@pytest.mark.parametrize("text,msg", [
    ('[store]\nurl = "/x"\nnope = 1\n', "unknown key 'nope'"),
    ('[services.a]\nurl = "postgresql://h/db"\nrole = "boss"\n', "role must be one of"),
    ('[services.a]\nrole = "dev"\n', "url is required"),
    ('[services.a]\nurl = "postgresql://u:pw@h/db"\n', "contains a password"),
    ('[services.a]\nurl = "postgresql://h:notaport/db"\n', "malformed"),
    ('[store\n', "snapdb.toml"),
    ('extra = 1\n', "unknown key 'extra'"),
    # malformed URLs whose libpq parse error would quote the password
    ('[services.a]\nurl = "postgresql://app:Sup3r%Secret@db1/x"\n', "contains a password"),
    ('[services.a]\nurl = "postgresql://app:Sup3rSecret@[db1/x"\n', "contains a password"),
    ('[services.a]\nurl = "host=db1 password=Sup3rSecret"\n', "contains a password"),
    ('[services.a]\nurl = "postgresql://db1/x%zSup3rSecret"\n', "malformed"),
])
def test_config_errors(tmp_path, text, msg):
    with pytest.raises(ConfigError, match=msg) as info:
        load_config(_write(tmp_path, text))
    text_out = info.value.message + (info.value.hint or "")
    assert "\n" not in info.value.message and "pw@" not in text_out and "Sup3r" not in text_out


def test_unknown_service_and_missing_store():
    cfg = Config()
    with pytest.raises(ConfigError, match="unknown service 'prod'"):
        cfg.endpoint("prod")
    with pytest.raises(ConfigError, match="no snapshot store"):
        cfg.store()
    with pytest.raises(ConfigError, match="unsupported store URL scheme"):
        open_store("ftp://x/y")


# -- documentation ------------------------------------------------------------------------
def test_exit_code_table_matches_errors():
    text = (ROOT / "docs" / "exit-codes.md").read_text()
    documented = {int(m) for m in re.findall(r"^\|\s*(\d+)\s*\|", text, re.M)}
    assert documented == set(EXIT_CODES)


def test_every_command_documented():
    text = (ROOT / "docs" / "commands.md").read_text()
    names = [c.name or c.callback.__name__ for c in cli.app.registered_commands]
    for group in cli.app.registered_groups:  # sub-apps: `## snapdb release add`
        names += [f"{group.name} {c.name or c.callback.__name__}" for c in group.typer_instance.registered_commands]
    assert names and "release add" in names
    for name in names:
        assert f"## snapdb {name}" in text, name


def _modules() -> dict[str, Path]:
    """snapdb's modules by dotted name below the package (``restore``, ``store.local``)."""
    out = {}
    for f in sorted((ROOT / "snapdb").rglob("*.py")):
        rel = f.relative_to(ROOT / "snapdb").with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts != ["__main__"]:
            out[".".join(parts)] = f
    return out


def test_architecture_describes_every_module():
    """docs/architecture.md has a paragraph ``**name** (`snapdb/path.py`)`` for every module, and
    names no module that does not exist."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    mods = _modules()
    for name, f in mods.items():
        path = f.relative_to(ROOT).as_posix()
        assert f"**{name}** (`{path}`)" in text, f"docs/architecture.md lacks the paragraph for {name} ({path})"
    described = set(re.findall(r"^\*\*([a-z_.]+)\*\* \(`snapdb/", text, re.M))
    assert described <= set(mods), f"described but missing: {sorted(described - set(mods))}"


def _imports(f: Path, name: str) -> set[str]:
    """The snapdb modules `f` (module `name`) imports, anywhere in it (function bodies too)."""
    import ast

    pkg = name.split(".")[:-1] if f.name != "__init__.py" else name.split(".")
    out = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("snapdb"):
                mod = node.module[len("snapdb."):] if node.module != "snapdb" else ""
            else:
                continue
            for alias in node.names:
                full = f"{mod}.{alias.name}" if mod else alias.name
                out.add(full if full in _modules() else mod)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("snapdb."):
                    out.add(alias.name[len("snapdb."):])
    return {m for m in out if m and m != name}


def test_imports_point_one_way():
    """The import graph of snapdb's modules has no cycle; nothing imports cli; store/ and the
    PostgreSQL modules never import each other; only cli uses typer or exits."""
    mods = _modules()
    # a sub-module may use its own package's names (store.local -> store): not an edge
    graph = {name: {m for m in _imports(f, name) if m in mods and not name.startswith(m + ".")}
             for name, f in mods.items()}
    assert any(graph.values()), "the import scan found nothing: it is broken"
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [n, m])}")
            if m not in state:
                visit(m, path + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])
    pg_modules = {"postgres", "pgtools", "tabledata", "relations", "roles", "locks", "pipes", "swap"}
    for name, deps in graph.items():
        assert "cli" not in deps, f"{name} imports cli"
        if name == "store" or name.startswith("store."):
            assert not deps & pg_modules, f"{name} imports {deps & pg_modules}"
        if name in ("postgres", "pgtools", "tabledata"):
            assert not {d for d in deps if d == "store" or d.startswith("store.")}, f"{name} imports the store"
    for name, f in mods.items():
        if name != "cli":
            src = f.read_text()
            assert "import typer" not in src and "sys.exit" not in src, name


# -- CLI through typer's runner ----------------------------------------------------------------
def test_cli_runner_errors_and_help(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli.app, ["--help"])
    assert r.exit_code == 0 and "restore" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(cli.app, ["snapshots", "--store", str(tmp_path / "empty"), "--json"])
    assert r.exit_code == 0 and r.output.strip() == "[]"
    r = runner.invoke(cli.app, ["--config", str(tmp_path / "missing.toml"), "snapshots"])
    assert r.exit_code == ConfigError.exit_code


def test_scratch_dir_removes_only_stale_dirs_of_dead_runs(tmp_path, monkeypatch):
    import os
    import time

    from snapdb import pgtools

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = 2 ** 22 + 12345  # above pid_max's usual range: no such process
    old_dead = tmp_path / f"snapdb-{dead}-old"
    young_dead = tmp_path / f"snapdb-{dead}-young"
    old_live = tmp_path / f"snapdb-{os.getpid()}-live"
    for d in (old_dead, young_dead, old_live):
        d.mkdir()
        (d / "schema.dump").write_bytes(b"x")
    past = time.time() - pgtools.STALE_SCRATCH - 60
    for d in (old_dead, old_live):
        os.utime(d / "schema.dump", (past, past))
        os.utime(d, (past, past))
    new = pgtools.scratch_dir()
    assert new.is_dir() and new.name.startswith(f"snapdb-{os.getpid()}-")
    assert not old_dead.exists()  # killed run, untouched for hours
    assert young_dead.exists()  # maybe a live run in another PID namespace
    assert old_live.exists()  # our own process
