"""Load ``snapdb.toml`` and resolve service names and libpq URLs into connection targets.

Lookup order for the file: ``--config`` argument, ``$SNAPDB_CONFIG``, ``./snapdb.toml``. A missing
file is fine (an empty configuration: URLs and ``--store`` still work); a file that does not parse,
an unknown key, a missing service or a malformed URL raise `ConfigError`.

Passwords: snapdb never holds one. A URL that carries a password is refused; libpq finds
passwords itself in ``.pgpass``, ``PGPASSWORD`` or service files.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConfigError

ROLES = ("production", "standby", "dev")
_TOP_KEYS = {"store", "services", "upgrade"}
_STORE_KEYS = {"url", "endpoint_url", "region", "retention"}  # endpoint_url, region: S3 stores only
RETENTION_KEYS = ("last", "daily", "weekly", "monthly")
_MONITOR_KEYS = ("snapshot_max_age", "refresh_max_age")  # [services.X]: thresholds of status --check
_SCRUB_KEYS = {"sql", "columns", "settings", "checks"}
_UPGRADE_KEYS = {"migrations", "rehearsal_max_age"}
DEFAULT_REHEARSAL_MAX_AGE = timedelta(days=7)
DEFAULT_MIGRATIONS = "migrations"
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(d|h|m|s)\s*$")
_DURATION_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
#: the longest duration any setting takes: far beyond every sensible threshold, and short enough
#: that ``now - limit`` stays a valid datetime
MAX_DURATION = timedelta(days=36500)
#: the longest hook timeout: the child is waited on with poll(), whose timeout (a C int of
#: milliseconds) ends at about 24.8 days; a hook runs inside a cutover's window anyway
MAX_HOOK_TIMEOUT = timedelta(days=1)
_SERVICE_KEYS = {"url", "role", "migrations", "admin_url", "roles", "hooks", "scrub", "keep_set_aside",
                 *_MONITOR_KEYS}
HOOK_POINTS = ("before_freeze", "after_freeze", "after_swap", "on_abort")
_HOOK_KEYS = set(HOOK_POINTS) | {"timeout"}
_URL_PREFIXES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class Endpoint:
    """A database on a server: libpq parameters without any password.

    `params` holds libpq keywords (host, port, user, dbname, sslmode, ...). `name` is the
    service name when it came from the configuration, else None. `admin_params`, from the
    service's ``admin_url``, is the connection for operations that change the database
    (restores into it, upgrades, cutovers); `admin()` returns it. `role_map` maps role names
    of a snapshot's source to roles of this service's server (``[services.X.roles]``).
    """

    params: dict[str, str]
    name: str | None = None
    role: str | None = None
    migrations: str | None = None
    admin_params: dict[str, str] | None = None
    role_map: dict[str, str] = field(default_factory=dict)
    hooks: dict[str, str] = field(default_factory=dict)  # [services.X.hooks]: point -> shell command
    hook_timeout: float = 60.0
    #: copies set aside by cutovers and rollbacks (``__pre_``, ``__rolledback_``) to keep, the newest
    #: first; None: keep every one (``keep_set_aside`` in the service's section)
    keep_set_aside: int | None = None

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or os.environ.get("PGDATABASE") or self.user

    @property
    def user(self) -> str:
        import getpass

        return self.params.get("user") or os.environ.get("PGUSER") or getpass.getuser()

    @property
    def host(self) -> str:
        return self.params.get("host") or os.environ.get("PGHOST") or "/var/run/postgresql"

    @property
    def port(self) -> str:
        return str(self.params.get("port") or os.environ.get("PGPORT") or "5432")

    @property
    def source_name(self) -> str:
        """The name a snapshot of this endpoint is filed under: the service name, else
        ``host:port/dbname`` (never a bare database name, which could be a service's name)."""
        return self.name or self.display()

    def admin(self) -> Endpoint:
        """The connection for changing this database: ``admin_url`` if the service has one."""
        if not self.admin_params:
            return self
        return replace(self, params=dict(self.admin_params), admin_params=None)

    def label(self, dbname: str | None = None) -> str:
        """Describe this endpoint (or database `dbname` on its server) for messages: the service
        by name when it is one, with server, database and user; never a password."""
        db = dbname if dbname is not None else self.dbname
        where = f"{self.host}:{self.port}, database {db!r}, user {self.user!r}"
        if self.name and db == self.dbname:
            return f"service {self.name!r} ({where})"
        return where

    def conninfo(self, dbname: str | None = None) -> str:
        """Return a libpq conninfo string (never contains a password)."""
        params = dict(self.params)
        if dbname is not None:
            params["dbname"] = dbname
        params.setdefault("application_name", "snapdb")
        return make_conninfo(**params)

    def with_dbname(self, dbname: str, name: str | None = None) -> Endpoint:
        """Return the same server with another database (and service name)."""
        admin = {**self.admin_params, "dbname": dbname} if self.admin_params else None
        return replace(self, params={**self.params, "dbname": dbname}, name=name, role=None, admin_params=admin)

    def display(self) -> str:
        """Return a short, credential-free description: ``host:port/dbname``."""
        return f"{self.host}:{self.port}/{self.dbname}"

    def server_key(self) -> tuple[str, str]:
        """Identify the server for same-database comparisons: (address, port).

        Socket directories and loopback addresses all count as "local"; other host names are
        resolved, so ``db1`` and its IP address compare equal. Errs towards "same server".
        """
        return (_canonical_host(self.host), self.port)


@dataclass
class ScrubConfig:
    """``[services.X.scrub]``: what a restore into X runs on the build before the swap
    (snapdb/scrub.py). `columns`: (schema, table, column, SQL expression); `sql`: files, absolute;
    `settings`: database-level settings set on the copy; `checks`: queries that must return no row."""

    sql: list[Path] = field(default_factory=list)
    columns: list[tuple[str, str, str, str]] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)


@dataclass
class Config:
    """Parsed configuration: the store URL and the named services."""

    store_url: str | None = None
    store_options: dict[str, str] = field(default_factory=dict)  # [store] endpoint_url, region -> open_store
    services: dict[str, Endpoint] = field(default_factory=dict)
    path: Path | None = None
    migrations: str | None = None  # [upgrade] migrations
    rehearsal_max_age: timedelta = DEFAULT_REHEARSAL_MAX_AGE  # [upgrade] rehearsal_max_age
    retention: dict[str, int] | None = None  # [store.retention]: rule -> count (store/retention.py)
    scrub: dict[str, ScrubConfig] = field(default_factory=dict)  # service -> [services.X.scrub]
    monitor: dict[str, dict[str, timedelta]] = field(default_factory=dict)  # service -> thresholds

    def endpoint(self, ref: str) -> Endpoint:
        """Resolve a service name or a libpq URL to an `Endpoint`.

        Raises `ConfigError` for an unknown service or a malformed URL.
        """
        if ref in self.services:
            return self.services[ref]
        if is_url(ref):
            return Endpoint(params=parse_url(ref, what="URL"))
        known = ", ".join(sorted(self.services)) or "none configured"
        raise ConfigError(
            f"unknown service {ref!r} (services: {known})",
            hint="give a service from snapdb.toml or a postgresql:// URL",
        )

    def migrations_dir(self, service: str | None = None, override: str | None = None, *, must_exist: bool = True) -> Path:
        """Return the alembic script directory for `service` (absolute).

        Order: `override` (relative to the current directory), the service's ``migrations`` key,
        ``[upgrade] migrations``, then ``migrations`` -- the last three relative to the config
        file's directory (the current directory without a config file). Raises `ConfigError` when
        `must_exist` and the directory does not exist.
        """
        base = self.path.resolve().parent if self.path else Path.cwd()
        svc = self.services.get(service) if service else None
        if override:
            where, p = "--migrations", Path(override).expanduser()
        elif svc is not None and svc.migrations:
            where, p = f"migrations of service {service!r}", base / Path(svc.migrations).expanduser()
        elif self.migrations:
            where, p = "[upgrade] migrations", base / Path(self.migrations).expanduser()
        else:
            where, p = "default migrations directory", base / DEFAULT_MIGRATIONS
        p = p.resolve()
        if must_exist and not p.is_dir():
            raise ConfigError(
                f"{where}: no such directory {p}",
                hint="set migrations = \"path\" for the service or in [upgrade], or pass --migrations",
            )
        return p

    def store(self, override: str | None = None) -> str:
        """Return the store URL: `override`, ``$SNAPDB_STORE``, then the config file's."""
        url = override or os.environ.get("SNAPDB_STORE") or self.store_url
        if not url:
            raise ConfigError(
                "no snapshot store configured",
                hint="set [store] url in snapdb.toml, SNAPDB_STORE, or pass --store",
            )
        return url


def _canonical_host(host: str) -> str:
    first = host.split(",")[0].strip()
    if not first or first.startswith("/") or first.startswith("@"):
        return "local"
    try:
        addr = ipaddress.ip_address(socket.getaddrinfo(first, None)[0][4][0].split("%")[0])
    except (OSError, ValueError, IndexError):
        return first.lower()
    return "local" if addr.is_loopback else str(addr)


def is_url(ref: str) -> bool:
    return ref.startswith(_URL_PREFIXES) or ("=" in ref and " " in ref.strip())


_PASSWORD_REFUSED = "contains a password; snapdb refuses to hold passwords"
_PASSWORD_HINT = "remove it from the URL and use ~/.pgpass, PGPASSWORD or a pg_service.conf entry"


def _has_password(url: str) -> bool:
    """Spot a non-empty password in a URL's userinfo before libpq parses it (its parse errors
    quote tokens of the URL). Key/value strings need no pre-check: libpq does not echo values."""
    if not url.startswith(_URL_PREFIXES):
        return False
    netloc = re.split(r"[/?]", url.split("://", 1)[1], maxsplit=1)[0]
    if "@" not in netloc:
        return False
    _user, sep, password = netloc.rsplit("@", 1)[0].partition(":")
    return bool(sep and password)


def parse_url(url: str, what: str) -> dict[str, str]:
    """Parse a libpq URL or conninfo string; refuse one that carries a password.

    Error messages never repeat the URL's text: libpq's parse errors quote the offending token,
    which may be (part of) a password, so quoted tokens are cut out of them.
    """
    if _has_password(url):
        raise ConfigError(f"{what} {_PASSWORD_REFUSED}", hint=_PASSWORD_HINT)
    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError with libpq's message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        first = re.sub(r'"[^"]*"', '"…"', first)
        if url in first or any(len(p) > 3 and p in first for p in re.split(r"[:@/?&=]", url)):
            first = "libpq cannot parse it"
        raise ConfigError(f"malformed {what}: {first}") from None
    for port in str(params.get("port") or "5432").split(","):
        if not (port.strip().isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"malformed {what}: invalid port number")  # not echoed: it may be a password
    if params.get("password"):
        raise ConfigError(f"{what} {_PASSWORD_REFUSED}", hint=_PASSWORD_HINT)
    return {k: str(v) for k, v in params.items() if v is not None}


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the configuration (see module docstring for the lookup order)."""
    explicit = path or os.environ.get("SNAPDB_CONFIG")
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
    else:
        p = Path("snapdb.toml")
        if not p.is_file():
            return Config()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: {str(exc).splitlines()[0]}") from None
    return _parse(data, p)


def _parse(data: dict, path: Path) -> Config:
    _check_keys(data, _TOP_KEYS, str(path))
    cfg = Config(path=path)
    store = _section(data, "store", _STORE_KEYS, f"{path} [store]")
    cfg.store_url = _path_string(store, "url", f"{path} [store]")
    for key in ("endpoint_url", "region"):
        if (value := _path_string(store, key, f"{path} [store]")) is not None:
            cfg.store_options[key] = value
    if "retention" in store:
        cfg.retention = _retention(_section(store, "retention", set(RETENTION_KEYS), f"{path} [store.retention]"),
                                   f"{path} [store.retention]")
    services = data.get("services", {})
    if not isinstance(services, dict):
        raise ConfigError(f"{path}: [services] must contain tables like [services.prod]")
    for name in services:
        where = f"{path} [services.{name}]"
        svc = _section(services, name, _SERVICE_KEYS, where)
        url = _path_string(svc, "url", where)
        if url is None:
            raise ConfigError(f"{where}: url is required")
        role = svc.get("role", "dev")
        if role not in ROLES:
            raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}")
        params = parse_url(url, what=f"url of service {name!r}")
        admin_url = _path_string(svc, "admin_url", where)
        admin = parse_url(admin_url, what=f"admin_url of service {name!r}") if admin_url else None
        if admin is not None:
            admin.setdefault("dbname", params.get("dbname", ""))
            if not admin["dbname"]:
                del admin["dbname"]
        cfg.services[name] = Endpoint(params=params, name=name, role=role,
                                      migrations=_path_string(svc, "migrations", where),
                                      admin_params=admin, role_map=_role_map(svc.get("roles", {}), where))
        hooks = _section(svc, "hooks", _HOOK_KEYS, f"{where} hooks")
        for point in HOOK_POINTS:
            cmd = _path_string(hooks, point, f"{where} hooks")
            if cmd:
                cfg.services[name].hooks[point] = cmd
        if "keep_set_aside" in svc:
            keep = svc["keep_set_aside"]
            if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
                raise ConfigError(f"{where}: keep_set_aside must be a whole number, 1 or more (the newest copy is "
                                  f"the way back), not {keep!r}")
            cfg.services[name] = replace(cfg.services[name], keep_set_aside=keep)
        if "timeout" in hooks:
            cfg.services[name] = replace(cfg.services[name], hook_timeout=parse_duration(
                hooks["timeout"], f"{where} hooks timeout", maximum=MAX_HOOK_TIMEOUT).total_seconds())
        if "scrub" in svc:
            if role == "production":
                raise ConfigError(f"{where}: scrub rules on a production service are refused",
                                  hint="scrub rules belong to the non-production services restored from it")
            cfg.scrub[name] = _scrub(_section(svc, "scrub", _SCRUB_KEYS, f"{where} scrub"), f"{where} scrub", path)
        limits = {k: parse_duration(svc[k], f"{where} {k}") for k in _MONITOR_KEYS if k in svc}
        if limits:
            cfg.monitor[name] = limits
    upgrade = _section(data, "upgrade", _UPGRADE_KEYS, f"{path} [upgrade]")
    cfg.migrations = _path_string(upgrade, "migrations", f"{path} [upgrade]")
    if "rehearsal_max_age" in upgrade:
        cfg.rehearsal_max_age = parse_duration(upgrade["rehearsal_max_age"], f"{path} [upgrade] rehearsal_max_age")
    return cfg


def _retention(table: dict, where: str) -> dict[str, int]:
    if not table:
        raise ConfigError(f"{where}: give at least one of {', '.join(RETENTION_KEYS)}",
                          hint="e.g. last = 7, daily = 7, weekly = 4, monthly = 6")
    out = {k: 0 for k in RETENTION_KEYS}
    for k, v in table.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100_000:
            raise ConfigError(f"{where}: {k} must be a whole number, 0 or more, not {v!r}")
        out[k] = v
    if not any(out.values()):  # every rule off keeps only each source's newest: what an empty table would do
        raise ConfigError(f"{where}: the rules are all 0, which would delete every snapshot but each source's newest",
                          hint="set at least one of them above 0, e.g. last = 7")
    return out


def _scrub(table: dict, where: str, path: Path) -> ScrubConfig:
    out = ScrubConfig()
    sql_files = table.get("sql", [])
    if isinstance(sql_files, str):
        sql_files = [sql_files]
    if not isinstance(sql_files, list) or not all(isinstance(f, str) and f for f in sql_files):
        raise ConfigError(f"{where}: sql must be a file name or a list of them")
    for f in sql_files:
        p = (path.resolve().parent / Path(f).expanduser()).resolve()
        if not p.is_file():
            raise ConfigError(f"{where}: sql file not found: {p}")
        out.sql.append(p)
    columns = table.get("columns", {})
    if not isinstance(columns, dict):
        raise ConfigError(f"{where}: columns must be a table like columns = {{ \"app.users.email\" = \"'user' || id\" }}")
    for col, expr in columns.items():
        parts = col.split(".")
        if len(parts) == 2:
            parts = ["public", *parts]
        if len(parts) != 3 or not all(parts) or not isinstance(expr, str) or not expr.strip():
            raise ConfigError(f"{where}: columns: {col!r} must be \"schema.table.column\" (or \"table.column\") = "
                              "\"SQL expression\"")
        out.columns.append((parts[0], parts[1], parts[2], expr))
    settings = table.get("settings", {})
    if not isinstance(settings, dict) or not all(isinstance(v, (str, int, float, bool)) for v in settings.values()):
        raise ConfigError(f"{where}: settings must be a table like settings = {{ \"app.send_mail\" = \"off\" }}")
    for k, v in settings.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", k):
            raise ConfigError(f"{where}: settings: {k!r} is not a setting name")
        out.settings[k] = ("on" if v else "off") if isinstance(v, bool) else str(v)
    checks = table.get("checks", [])
    if isinstance(checks, str):
        checks = [checks]
    if not isinstance(checks, list) or not all(isinstance(c, str) and c.strip() for c in checks):
        raise ConfigError(f"{where}: checks must be a list of SQL queries that return no rows when all is well")
    out.checks = list(checks)
    if not (out.sql or out.columns or out.settings):
        raise ConfigError(f"{where}: give sql files, columns or settings to scrub")
    return out


def _role_map(table: object, where: str) -> dict[str, str]:
    """``[services.X.roles]``: source role name -> role name on this service's server."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: roles must be a table like roles = {{ app = \"app_dev\" }}")
    out = {}
    for src, dst in table.items():
        if not isinstance(dst, str) or not dst or not src:
            raise ConfigError(f"{where} roles: {src!r} must map to a non-empty role name")
        out[src] = dst
    return out


def _section(parent: dict, key: str, allowed: set[str], where: str) -> dict:
    """Return the table `parent[key]` (empty if absent), checked for unknown keys."""
    table = parent.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _check_keys(table, allowed, where)
    return table


def _path_string(table: dict, key: str, where: str) -> str | None:
    """Return `table[key]` if present, which must be a non-empty string."""
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def parse_duration(text: object, where: str, maximum: timedelta = MAX_DURATION) -> timedelta:
    """Parse a duration such as ``"7d"``, ``"36h"``, ``"90m"`` or ``"30s"``, at most `maximum`.

    Raises `ConfigError` (exit 3), naming `where`, for anything else: not a duration, or one
    longer than `maximum` (also one too long for Python to hold at all).
    """
    m = _DURATION_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ConfigError(f"{where} must be a duration like \"7d\", \"36h\", \"90m\" or \"30s\", not {_shown(text)}")
    try:
        value = timedelta(**{_DURATION_UNITS[m.group(2)]: int(m.group(1))})
    except (OverflowError, ValueError):  # past timedelta's range, or more digits than int() reads
        value = None
    if value is None or value > maximum:
        raise ConfigError(f"{where} must be at most {format_duration(maximum)}, not {_shown(text)}")
    return value


def _shown(value: object, limit: int = 40) -> str:
    """`value` as quoted in an error message, cut short so the message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def format_duration(td: timedelta) -> str:
    """Render a duration the way `parse_duration` reads it (largest whole unit)."""
    secs = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs and secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}", hint=f"allowed keys: {', '.join(sorted(allowed))}"
        )
