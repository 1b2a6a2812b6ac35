"""alembic environment of service0's migrations, as snapdb runs them.

snapdb drives this directory through alembic's Python API and passes an open SQLAlchemy
connection in ``config.attributes["connection"]``; it runs one revision per call, each in its own
transaction (``transaction_per_migration``), except what a script puts in an
``autocommit_block()``. Offline mode (``snapdb upgrade --sql``) prints PostgreSQL SQL instead.
Without a passed connection (the plain ``alembic`` command line, for developers) it connects to
``sqlalchemy.url`` from alembic.ini. The version table is ``public.alembic_version``.
"""

from alembic import context

config = context.config
OPTIONS = {"transaction_per_migration": True, "version_table_schema": "public"}


def run_offline() -> None:
    context.configure(dialect_name="postgresql", literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif config.attributes.get("connection") is not None:
    run_online(config.attributes["connection"])
else:
    from sqlalchemy import engine_from_config, pool

    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as conn:
        run_online(conn)
