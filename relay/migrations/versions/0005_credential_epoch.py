"""a per-user credential epoch, which device cookies are bound to

A device cookie (``__Host-backline-device``) gives a browser its own lane of sign-in
attempts, outside the account's lock. Bound to the username only, it survived a
password change or reset, disabling the user and re-creating the username. It now
carries the user's id and this epoch, which a password change or reset and disabling
the user increase: every cookie issued before stops counting.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credential_epoch", sa.Integer(), nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("credential_epoch")
