"""diagnostics reports

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "diagnostics_reports",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("technician", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("findings", sa.Integer(), nullable=False),
        sa.Column("worst", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("diagnostics_reports", schema=None) as batch_op:
        batch_op.create_index("ix_reports_agent_time", ["agent_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("diagnostics_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_reports_agent_time")
    op.drop_table("diagnostics_reports")
