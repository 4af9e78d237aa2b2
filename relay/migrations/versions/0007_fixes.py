"""approved fixes: versions, signatures, revocations, runs, bulk runs (issue 12)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fix_versions",
        sa.Column("fix_id", sa.String(length=48), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("title", sa.String(length=128), nullable=False),
        sa.Column("risk", sa.String(length=16), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("submitted_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("fix_id", "version"),
    )
    with op.batch_alter_table("fix_versions", schema=None) as batch_op:
        batch_op.create_index("ix_fix_versions_digest", ["digest"], unique=False)
    op.create_table(
        "fix_signatures",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("fix_id", sa.String(length=48), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("approver", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fix_id", "version", "key", name="uq_fix_signatures_key"),
    )
    with op.batch_alter_table("fix_signatures", schema=None) as batch_op:
        batch_op.create_index("ix_fix_signatures_version", ["fix_id", "version"], unique=False)
    op.create_table(
        "fix_revocations",
        sa.Column("serial", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("fix_id", sa.String(length=48), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=False),
        sa.Column("revoked_by", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("serial"),
        sa.UniqueConstraint("fix_id", "version", name="uq_fix_revocations_version"),
    )
    op.create_table(
        "fix_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("fix_id", sa.String(length=48), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("technician", sa.String(length=64), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("finding", sa.String(length=128), nullable=True),
        sa.Column("bulk_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("refused_reason", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("exit_status", sa.Integer(), nullable=True),
        sa.Column("signal", sa.String(length=32), nullable=True),
        sa.Column("timed_out", sa.Boolean(), nullable=True),
        sa.Column("cancelled", sa.Boolean(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("output_bytes", sa.BigInteger(), nullable=True),
        sa.Column("kept_bytes", sa.BigInteger(), nullable=True),
        sa.Column("output_sha256", sa.String(length=64), nullable=True),
        sa.Column("output_ok", sa.Boolean(), nullable=True),
        sa.Column("verify_passed", sa.Boolean(), nullable=True),
        sa.Column("cleared", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fix_runs", schema=None) as batch_op:
        batch_op.create_index("ix_fix_runs_session", ["session_id", "started_at"], unique=False)
        batch_op.create_index("ix_fix_runs_agent", ["agent_id", "started_at"], unique=False)
        batch_op.create_index("ix_fix_runs_fix", ["fix_id", "version", "started_at"], unique=False)
        batch_op.create_index("ix_fix_runs_bulk", ["bulk_id"], unique=False)
    op.create_table(
        "fix_bulks",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("fix_id", sa.String(length=48), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("group_name", sa.String(length=128), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "fix_bulk_results",
        sa.Column("bulk_id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("exit_status", sa.Integer(), nullable=True),
        sa.Column("verify_passed", sa.Boolean(), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("error", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("bulk_id", "agent_id"),
    )


def downgrade() -> None:
    op.drop_table("fix_bulk_results")
    op.drop_table("fix_bulks")
    with op.batch_alter_table("fix_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_fix_runs_session")
        batch_op.drop_index("ix_fix_runs_agent")
        batch_op.drop_index("ix_fix_runs_fix")
        batch_op.drop_index("ix_fix_runs_bulk")
    op.drop_table("fix_runs")
    op.drop_table("fix_revocations")
    with op.batch_alter_table("fix_signatures", schema=None) as batch_op:
        batch_op.drop_index("ix_fix_signatures_version")
    op.drop_table("fix_signatures")
    with op.batch_alter_table("fix_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_fix_versions_digest")
    op.drop_table("fix_versions")
