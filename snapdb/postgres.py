"""PostgreSQL mechanics through psycopg: connections, catalog reads, database-level properties.

Every identifier goes through `psycopg.sql.Identifier`; no SQL is built by string formatting of
names. Connection failures become the caller's error class with libpq's first message line
(libpq messages never include the password). Sessions that read or write table data use
`DATA_SESSION_SETTINGS`, so COPY text is byte-identical on both sides of a restore.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .config import Endpoint
from .errors import SnapdbError

#: snapdb's own schema in managed databases (``snapdb.history``): carried by pg_dump's data
#: section like any schema, but not copied, compared or verified as user data
SNAPDB_SCHEMA = "snapdb"

#: settings that make COPY text output deterministic and unaffected by the caller's environment
DATA_SESSION_SETTINGS = {
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "TimeZone": "UTC",
    "bytea_output": "hex",
    "row_security": "off",
    "search_path": "",
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
}


def connect(
    ep: Endpoint,
    error_cls: type[SnapdbError],
    dbname: str | None = None,
    autocommit: bool = False,
) -> psycopg.Connection:
    """Open a connection to `ep` (or another database on its server).

    A failure raises `error_cls` naming the service (or server), the database and the user,
    with a hint for the usual causes (password, unreachable server, pg_hba.conf, missing
    database or role). libpq's messages never contain the password.
    """
    try:
        return psycopg.connect(ep.conninfo(dbname), autocommit=autocommit, connect_timeout=30)
    except psycopg.Error as exc:
        db = dbname if dbname is not None else ep.dbname
        line = first_line(exc)
        raise error_cls(f"cannot connect to {ep.label(db)}: {line}", hint=connect_hint(ep, db, line)) from None


def connect_hint(ep: Endpoint, dbname: str, line: str) -> str | None:
    """A hint for a libpq connection error `line` (see `connect`)."""
    low = line.lower()
    host = ep.host if not ep.host.startswith("/") else "localhost"
    if "password" in low and ("authentication failed" in low or "no password" in low or "supplied" in low):
        return (f"put the password in ~/.pgpass (mode 0600) as `{host}:{ep.port}:*:{ep.user}:PASSWORD` "
                "(`*`: snapdb also connects to the maintenance and temporary databases), or use "
                "PGPASSWORD or a pg_service.conf entry; snapdb never takes passwords itself")
    if "pg_hba.conf" in low:
        return f"the server refuses this client: add a pg_hba.conf line for user {ep.user} from this host, then reload it"
    if "does not exist" in low and "database" in low:
        return f"check the database name in snapdb.toml (or the URL); list them with: psql -h {host} -p {ep.port} -l"
    if "role" in low and "does not exist" in low:
        return f"create role {ep.user} on that server, or fix the user in snapdb.toml (or the URL)"
    if "permission denied for database" in low or "not permitted to log in" in low:
        return f"the role needs LOGIN and CONNECT on database {dbname!r}: GRANT CONNECT ON DATABASE ... TO {ep.user}"
    if any(k in low for k in ("connection refused", "could not connect", "timeout expired", "no route",
                              "could not translate host name", "name or service not known", "is the server running")):
        return f"is PostgreSQL running and reachable at {ep.host}:{ep.port}? (listen_addresses, firewall, the port in snapdb.toml)"
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    for prefix in ("connection failed: ", "FATAL:  ", "ERROR:  "):
        line = line.replace(prefix, "")
    return line


def apply_data_settings(conn: psycopg.Connection, encoding: str | None = None) -> None:
    """Set `DATA_SESSION_SETTINGS` (and the client encoding) on a session."""
    settings = dict(DATA_SESSION_SETTINGS)
    if encoding:
        settings["client_encoding"] = encoding
    for name, value in settings.items():
        conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))


def open_data_session(
    ep: Endpoint,
    error_cls: type[SnapdbError],
    *,
    dbname: str | None = None,
    encoding: str | None = None,
    snapshot: str | None = None,
) -> psycopg.Connection:
    """Open a session for reading table data: data settings, then a REPEATABLE READ, READ ONLY
    transaction, importing the exported `snapshot` when given."""
    conn = connect(ep, error_cls, dbname=dbname, autocommit=True)
    try:
        apply_data_settings(conn, encoding)
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        if snapshot:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    except psycopg.Error as exc:
        conn.close()
        raise error_cls(f"cannot prepare a session on {ep.host}:{ep.port}: {first_line(exc)}") from None
    return conn


def version_string(num: int) -> str:
    return f"{num // 10000}.{num % 10000}"


@dataclass
class TableRef:
    """A table whose rows snapdb copies itself; `columns` excludes dropped and generated ones."""

    schema: str
    name: str
    columns: list[str]
    bytes: int = 0  # the heap (main fork): what page ranges split (tabledata.plan_parts)
    load_via: tuple[str, str] | None = None  # partition root to load through (see relations)
    toast_bytes: int = 0  # its TOAST table's main fork: large values live there, not in the heap
    oid: int | None = None  # in the source, when read from its catalog (relations.list_tables)

    @property
    def data_bytes(self) -> int:
        """Heap plus TOAST: what reading the whole table costs (packing and work weights)."""
        return self.bytes + self.toast_bytes

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"

    def column_list(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)


@dataclass
class SequenceValue:
    schema: str
    name: str
    last_value: int
    is_called: bool


def read_sequences(conn: psycopg.Connection, skip_unlogged: bool = False) -> list[SequenceValue]:
    """Return every non-extension sequence's state (outside `SNAPDB_SCHEMA`), as seen by the
    current transaction; without the unlogged ones with `skip_unlogged` (a hot standby cannot
    read them)."""
    names = conn.execute(
        """SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'snapdb')
             AND c.relpersistence <> 't' AND (NOT %s OR c.relpersistence <> 'u')
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
           ORDER BY 1, 2""", (skip_unlogged,)
    ).fetchall()
    out = []
    for schema, name in names:
        row = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        out.append(SequenceValue(schema, name, int(row[0]), bool(row[1])))
    return out


def alembic_revisions(conn: psycopg.Connection) -> list[str] | None:
    """Return the revisions in the database's ``alembic_version`` table; None without one.

    The table is looked up in the catalog (``public`` first, then any other schema), so this
    works with an empty ``search_path``. An empty list means a version table with no row.
    """
    row = conn.execute(
        """SELECT n.nspname FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relname = 'alembic_version' AND c.relkind IN ('r', 'p')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_temp\\_%'
           ORDER BY n.nspname <> 'public', n.nspname LIMIT 1"""
    ).fetchone()
    if row is None:
        return None
    rows = conn.execute(
        sql.SQL("SELECT version_num FROM {} ORDER BY 1").format(sql.Identifier(row[0], "alembic_version"))
    ).fetchall()
    return [r[0] for r in rows]


def set_sequences(conn: psycopg.Connection, seqs: list[SequenceValue]) -> None:
    """Set every sequence to its recorded state (``setval``), in the caller's transaction."""
    for q in seqs:
        conn.execute(
            "SELECT pg_catalog.setval(pg_catalog.format('%%I.%%I', %s::text, %s::text)::regclass, %s, %s)",
            (q.schema, q.name, q.last_value, q.is_called),
        )


def control_session(ep: Endpoint, error_cls: type[SnapdbError], dbname: str | None = None) -> psycopg.Connection:
    """Open an autocommit session meant to hold a lock (`snapdb.locks`) while idle for a long time:
    the timeouts that would end it (and release the lock) are disabled."""
    conn = connect(ep, error_cls, dbname=dbname, autocommit=True)
    try:
        keep_session_alive(conn)
    except psycopg.Error as exc:
        conn.close()
        raise error_cls(f"cannot prepare a control session on {ep.host}:{ep.port}: {first_line(exc)}") from None
    return conn



def keep_session_alive(conn: psycopg.Connection) -> None:
    """Disable the timeouts that would end a long-idle control session (and the lock it holds)."""
    names = ["statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"]
    if conn.info.server_version >= 140000:
        names.append("idle_session_timeout")
    for name in names:
        conn.execute("SELECT pg_catalog.set_config(%s, '0', false)", (name,))


def large_object_count(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata").fetchone()[0])


@dataclass
class DatabaseProps:
    """Database-level properties that pg_dump (without --create) does not carry.

    `locale_provider` is ``c`` (libc), ``i`` (ICU) or ``b`` (builtin, PostgreSQL 17+);
    `icu_locale` is the ICU or builtin locale (``daticulocale`` up to 16, ``datlocale`` from 17),
    `icu_rules` the ICU tailoring rules (16+).
    """

    encoding: str
    collate: str
    ctype: str
    locale_provider: str = "c"
    icu_locale: str | None = None
    owner: str = ""
    comment: str | None = None
    connection_limit: int = -1
    acl: list[dict] | None = None  # None: default privileges
    settings: list[str] = field(default_factory=list)  # "name=value" as in pg_db_role_setting
    role_settings: dict[str, list[str]] = field(default_factory=dict)
    icu_rules: str | None = None


def _locale_columns(version: int) -> str:
    """The locale provider, locale and rules columns of pg_database for a server `version`."""
    if version >= 170000:
        return "d.datlocprovider::text, d.datlocale, d.daticurules"
    if version >= 160000:
        return "d.datlocprovider::text, d.daticulocale, d.daticurules"
    if version >= 150000:
        return "d.datlocprovider::text, d.daticulocale, NULL::text"
    return "'c'::text, NULL::text, NULL::text"


def default_acl(owner: str) -> list[dict]:
    """A database's default privileges (``acldefault('d', owner)``) as aclexplode rows."""
    return [{"grantee": g, "privilege": p, "grantable": False}
            for g, p in sorted([(owner, "CONNECT"), (owner, "CREATE"), (owner, "TEMPORARY"),
                                ("PUBLIC", "CONNECT"), ("PUBLIC", "TEMPORARY")])]


def _is_default_acl(acl: list[dict], owner: str) -> bool:
    return sorted((g["grantee"], g["privilege"], g["grantable"]) for g in acl) == \
        sorted((g["grantee"], g["privilege"], g["grantable"]) for g in default_acl(owner))


def read_database_props(conn: psycopg.Connection, dbname: str) -> DatabaseProps:
    """Read `dbname`'s properties from the shared catalogs (any server version from 13)."""
    row = conn.execute(
        sql.SQL("""SELECT pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
                  {}, pg_catalog.pg_get_userbyid(d.datdba),
                  pg_catalog.shobj_description(d.oid, 'pg_database'), d.datconnlimit,
                  d.datacl IS NULL, d.oid
           FROM pg_catalog.pg_database d WHERE d.datname = %s""").format(
            sql.SQL(_locale_columns(conn.info.server_version))),
        (dbname,),
    ).fetchone()
    if row is None:
        raise SnapdbError(f"database {dbname!r} not found")
    props = DatabaseProps(
        encoding=row[0], collate=row[1], ctype=row[2], locale_provider=row[3],
        icu_locale=row[4], icu_rules=row[5], owner=row[6], comment=row[7], connection_limit=row[8],
    )
    oid = row[10]
    if not row[9]:
        props.acl = [
            {"grantee": g, "privilege": p, "grantable": bool(gr)}
            for g, p, gr in conn.execute(
                """SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                               ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                          a.privilege_type, a.is_grantable
                   FROM pg_catalog.pg_database d, LATERAL pg_catalog.aclexplode(d.datacl) a
                   WHERE d.oid = %s ORDER BY 1, 2""",
                (oid,),
            ).fetchall()
        ]
        if _is_default_acl(props.acl, props.owner):
            props.acl = None  # granted explicitly but the same as the default: the default
    for role, setconfig in conn.execute(
        """SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(s.setrole) END,
                  s.setconfig
           FROM pg_catalog.pg_db_role_setting s WHERE s.setdatabase = %s ORDER BY 1 NULLS FIRST""",
        (oid,),
    ).fetchall():
        if role is None:
            props.settings = list(setconfig or [])
        else:
            props.role_settings[role] = list(setconfig or [])
    return props


DATABASE_PRIVILEGES = {"CONNECT", "CREATE", "TEMPORARY"}

#: settings whose values are lists of separately quoted elements (as in pg_dumpall)
_LIST_QUOTE_GUCS = {
    "search_path", "temp_tablespaces", "session_preload_libraries", "shared_preload_libraries",
    "local_preload_libraries", "unix_socket_directories",
}


def _split_guc_list(value: str) -> list[str]:
    """Split a GUC list value such as ``"$user", public`` into its elements.

    PostgreSQL stores each element of these lists as a quoted identifier when needed, so an
    empty element (``SET search_path = ''``) is stored as ``""`` and must stay one element.
    """
    out, cur, i, quoted, token = [], "", 0, False, False
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and value[i + 1:i + 2] == '"':
                cur += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur += ch
        elif ch == '"':
            quoted = token = True
        elif ch == ",":
            out.append(cur.strip())
            cur, token = "", False
        else:
            cur += ch
            token = token or not ch.isspace()
        i += 1
    if token or out:
        out.append(cur.strip())
    return out


def setting_clause(item: str) -> sql.Composable:
    """Turn a ``name=value`` entry of pg_db_role_setting into ``SET name = value`` SQL that
    stores exactly the same entry again (empty lists included)."""
    name, _, value = item.partition("=")
    if name.lower() in _LIST_QUOTE_GUCS:
        elements = _split_guc_list(value)
        values = sql.SQL(", ").join(sql.Literal(v) for v in elements) if elements else sql.Literal("")
    else:
        values = sql.Literal(value)
    return sql.SQL("SET {} = {}").format(sql.Identifier(name), values)


def setting_problems(conn: psycopg.Connection, items: list[str]) -> list[tuple[str, psycopg.Error]]:
    """Which ``name=value`` entries (as in pg_db_role_setting) `conn`'s role could not store with
    ``ALTER DATABASE … SET`` or ``ALTER ROLE … IN DATABASE … SET``, each with the server's error;
    nothing is stored.

    Both statements check an entry alike, with the current role's rights: the name (a placeholder
    such as ``app.x`` needs a superuser or, on 15+, SET privilege on it), whether the parameter can
    be set per database at all (PGC_POSTMASTER, PGC_SIGHUP, PGC_BACKEND and internal ones cannot),
    SET privilege on a PGC_SUSET one, and the value, leniently for values naming objects (a
    tablespace, a text search configuration the build will have). So does the same statement for
    the current role's own entry in `conn`'s database, which needs no right of its own: it runs here
    for each entry, in a transaction that is rolled back. (``set_config`` would be no test: it
    checks a session value, accepting any placeholder and refusing objects `conn`'s database
    lacks.) Runs on an autocommit connection."""
    db = sql.Identifier(conn.execute("SELECT pg_catalog.current_database()").fetchone()[0])
    out = []
    with conn.transaction(force_rollback=True):
        for item in dict.fromkeys(items):
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} ").format(db) + setting_clause(item))
            except psycopg.Error as exc:
                if exc.sqlstate is None or conn.broken:  # the session failed, not the entry
                    raise
                out.append((item, exc))
    return out


def apply_database_props(conn: psycopg.Connection, dbname: str, props: DatabaseProps) -> None:
    """Re-apply owner, comment, connection limit, grants and settings onto `dbname`.

    Existing database-level settings of `dbname` are reset first, so the result equals `props`.
    Runs in the caller's transaction.
    """
    db = sql.Identifier(dbname)
    if props.owner:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(props.owner)))
    conn.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            db, sql.Literal(props.comment) if props.comment is not None else sql.SQL("NULL")
        )
    )
    conn.execute(
        sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(props.connection_limit))
    )
    apply_database_acl(conn, dbname, props)
    conn.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(db))
    for item in props.settings:
        conn.execute(sql.SQL("ALTER DATABASE {} ").format(db) + setting_clause(item))
    for role, items in props.role_settings.items():
        for item in items:
            conn.execute(
                sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(sql.Identifier(role), db)
                + setting_clause(item)
            )


def apply_database_acl(conn: psycopg.Connection, dbname: str, props: DatabaseProps) -> None:
    """Make `dbname`'s privileges `props.acl` (nothing for None, the default ones). Runs in the
    caller's transaction."""
    db = sql.Identifier(dbname)
    if props.acl is not None:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        if props.owner:
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, sql.Identifier(props.owner)))
        for g in props.acl:
            if g["privilege"] not in DATABASE_PRIVILEGES:  # the manifest is data: never paste it as SQL
                raise SnapdbError(f"unknown database privilege {g['privilege']!r} in the snapshot manifest")
            grantee = sql.SQL("PUBLIC") if g["grantee"] == "PUBLIC" else sql.Identifier(g["grantee"])
            conn.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(g["privilege"]), db, grantee,
                    sql.SQL(" WITH GRANT OPTION") if g["grantable"] else sql.SQL(""),
                )
            )


def own_acl(role: str) -> list[dict]:
    """Every database privilege for `role` alone: the ACL of a database that no other role (but
    superusers, whom no privilege stops) may connect to."""
    return [{"grantee": role, "privilege": p, "grantable": False} for p in sorted(DATABASE_PRIVILEGES)]


def database_owner(conn: psycopg.Connection, dbname: str) -> str:
    return conn.execute("SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = %s",
                        (dbname,)).fetchone()[0]


def restrict_database_acl(conn: psycopg.Connection, dbname: str, role: str) -> None:
    """Make `role` the only grantee of `dbname`'s privileges (PUBLIC's and the owner's revoked:
    the owner is often the application's role). Runs in the caller's transaction; sessions
    already connected stay, so restrict a database no other role can have reached yet."""
    apply_database_acl(conn, dbname, DatabaseProps(encoding="", collate="", ctype="", owner=database_owner(conn, dbname),
                                                   acl=own_acl(role)))


def open_database_acl(conn: psycopg.Connection, dbname: str, props: DatabaseProps, restricted_to: str) -> None:
    """Undo `restrict_database_acl(conn, dbname, restricted_to)`: give `dbname` its owner
    `props.owner` (when set; a build is the restoring role's until then) and the privileges
    `props.acl`. The default privileges (None) become no ACL at all when the connected role is a
    superuser (only a catalog update can store that), else the same grants made explicitly, which
    `read_database_props` reads back as the default. Runs in the caller's transaction: give a
    database its owner only once nothing in it needs to stay hidden from that role."""
    if props.owner:  # ALTER … OWNER rewrites the old owner's grants to the new one's; replaced below
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dbname), sql.Identifier(props.owner)))
    owner = database_owner(conn, dbname)
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(dbname),
                                                                     sql.Identifier(restricted_to)))
    apply_database_acl(conn, dbname, DatabaseProps(encoding="", collate="", ctype="", owner=owner,
                                                   acl=default_acl(owner) if props.acl is None else props.acl))
    if props.acl is None and is_superuser(conn):
        conn.execute("UPDATE pg_catalog.pg_database SET datacl = NULL WHERE datname = %s", (dbname,))


def is_superuser(conn: psycopg.Connection) -> bool:
    """Whether the connected role is a superuser."""
    return bool(conn.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()[0])


def database_exists(conn: psycopg.Connection, dbname: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def list_databases(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT datname FROM pg_catalog.pg_database ORDER BY 1")]


def system_identifier(conn: psycopg.Connection) -> str | None:
    """Return the cluster's system identifier, or None when this role may not read it."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier::text FROM pg_catalog.pg_control_system()").fetchone()
        return row[0]
    except psycopg.Error:
        return None


_PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}


def create_database(conn: psycopg.Connection, dbname: str, props: DatabaseProps, owner: str | None = None, *,
                    allow_connections: bool = True) -> int:
    """Create an empty database with the encoding and locale of `props`, owned by `owner` (the
    connected role when None); return its OID (autocommit conn). Without `allow_connections` it
    refuses every session (``ALLOW_CONNECTIONS false``) from its first moment.

    The locale provider is always stated: left out, the server would take template0's, so a
    libc database restored onto a server whose template0 uses ICU would silently sort otherwise.
    Servers before 15 know only libc.
    """
    parts = [
        sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {}").format(
            sql.Identifier(dbname), sql.Literal(props.encoding)
        ),
        sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(props.collate), sql.Literal(props.ctype)),
    ]
    if owner:
        parts.append(sql.SQL(" OWNER {}").format(sql.Identifier(owner)))
    version = conn.info.server_version
    provider = props.locale_provider or "c"
    if version >= 150000:
        parts.append(sql.SQL(" LOCALE_PROVIDER {}").format(sql.SQL(_PROVIDERS[provider])))
        if provider == "i":
            parts.append(sql.SQL(" ICU_LOCALE {}").format(sql.Literal(props.icu_locale or "")))
            if props.icu_rules:
                parts.append(sql.SQL(" ICU_RULES {}").format(sql.Literal(props.icu_rules)))
        elif provider == "b":
            parts.append(sql.SQL(" BUILTIN_LOCALE {}").format(sql.Literal(props.icu_locale or "C")))
    elif provider != "c":
        raise SnapdbError(f"the server (PostgreSQL {version_string(version)}) has no locale provider "
                          f"{_PROVIDERS.get(provider, provider)!r}, which the snapshot's database uses")
    if not allow_connections:
        parts.append(sql.SQL(" ALLOW_CONNECTIONS false"))
    conn.execute(sql.Composed(parts))
    return database_oid(conn, dbname)


def database_oid(conn: psycopg.Connection, dbname: str) -> int | None:
    row = conn.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (dbname,)).fetchone()
    return int(row[0]) if row else None


def drop_database(conn: psycopg.Connection, dbname: str) -> None:
    """Drop `dbname` if it exists, terminating its sessions (autocommit conn)."""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def prepared_xacts(conn: psycopg.Connection, dbname: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = %s", (dbname,))]


def terminate_sessions(conn: psycopg.Connection, dbname: str) -> int:
    rows = conn.execute(
        """SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
           WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()""",
        (dbname,),
    ).fetchall()
    return len(rows)


def wait_sessions_gone(conn: psycopg.Connection, dbname: str, timeout: float = 1.0, poll: float = 0.002) -> bool:
    """Wait until no session but `conn`'s own is on `dbname`, at most `timeout` seconds; True when
    none is left. A session just terminated or closed by its client is still there while its
    backend exits (releasing its locks takes a moment), and ``ALTER DATABASE … RENAME`` / ``DROP
    DATABASE`` wait for it in steps of 100 ms: polling first costs milliseconds instead. Works
    inside a transaction too (the activity snapshot is cleared before each look)."""
    deadline = time.monotonic() + timeout
    while True:
        conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        if not conn.execute("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE datname = %s "
                            "AND pid <> pg_catalog.pg_backend_pid() LIMIT 1", (dbname,)).fetchone():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)


def rename_database(conn: psycopg.Connection, old: str, new: str) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))
