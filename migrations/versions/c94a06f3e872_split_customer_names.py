"""service0 v2.0: split customers.name into first_name and last_name (rewrites every row).

Revision ID: c94a06f3e872
Revises: 7d2e4b8c1a21
Create Date: 2024-06-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "c94a06f3e872"
down_revision = "7d2e4b8c1a21"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("first_name", sa.Text()), schema="app")
    op.add_column("customers", sa.Column("last_name", sa.Text()), schema="app")
    # "Customer 7" -> ("Customer", "7"); a name without a space keeps an empty last name.
    op.execute(
        """UPDATE app.customers
           SET first_name = split_part(name, ' ', 1),
               last_name = CASE WHEN strpos(name, ' ') > 0 THEN substr(name, strpos(name, ' ') + 1) ELSE '' END"""
    )
    op.alter_column("customers", "first_name", nullable=False, schema="app")
    op.alter_column("customers", "last_name", nullable=False, schema="app")
    op.drop_column("customers", "name", schema="app")
    op.execute("INSERT INTO app.schema_version VALUES ('2.0', now())")


def downgrade() -> None:
    op.add_column("customers", sa.Column("name", sa.Text()), schema="app")
    op.execute("UPDATE app.customers SET name = btrim(first_name || ' ' || last_name)")
    op.alter_column("customers", "name", nullable=False, schema="app")
    op.drop_column("customers", "first_name", schema="app")
    op.drop_column("customers", "last_name", schema="app")
    op.execute("DELETE FROM app.schema_version WHERE version = '2.0'")
