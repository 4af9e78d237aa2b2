"""a failing scheduled report's back-off kept with its row (shared by the relay nodes,
and kept across a restart); self-service run keys found by age, to be forgotten

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("report_deliveries") as batch:
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("retry_at", sa.Float(), nullable=True))
    op.create_index("ix_self_service_runs_recorded_at", "self_service_runs", ["recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_self_service_runs_recorded_at", table_name="self_service_runs")
    with op.batch_alter_table("report_deliveries") as batch:
        batch.drop_column("retry_at")
        batch.drop_column("failures")
