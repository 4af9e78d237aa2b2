"""session outcome (resolved / not_resolved / escalated, with a note): four columns of
support_sessions, and the index the management reports read sessions by

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("support_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outcome", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("outcome_note", sa.String(length=1024), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("outcome_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("outcome_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("support_sessions", schema=None) as batch_op:
        batch_op.drop_column("outcome_at")
        batch_op.drop_column("outcome_by")
        batch_op.drop_column("outcome_note")
        batch_op.drop_column("outcome")
