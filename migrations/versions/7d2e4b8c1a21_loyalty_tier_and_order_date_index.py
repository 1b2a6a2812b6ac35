"""service0 v1.1: customers.loyalty_tier (with a default) and an index on orders.placed_at.

Revision ID: 7d2e4b8c1a21
Revises: 3f1c0a9e5b10
Create Date: 2024-03-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "7d2e4b8c1a21"
down_revision = "3f1c0a9e5b10"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction, so it runs in an autocommit
    # block. It comes first and is repeatable (a failed concurrent build leaves an INVALID index
    # behind, dropped here), so a failure never leaves a half-done step that a re-run trips over.
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS app.orders_placed_at_idx")
        op.execute("CREATE INDEX CONCURRENTLY orders_placed_at_idx ON app.orders (placed_at)")
    # The rest runs in this revision's own transaction, with the version update.
    op.add_column("customers", sa.Column("loyalty_tier", sa.Text(), nullable=False, server_default="standard"),
                  schema="app")
    op.execute("INSERT INTO app.schema_version VALUES ('1.1', now())")


def downgrade() -> None:
    op.execute("DELETE FROM app.schema_version WHERE version = '1.1'")
    op.drop_column("customers", "loyalty_tier", schema="app")
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS app.orders_placed_at_idx")
