"""the audit trail's Merkle tree and signed-note checkpoints (issue 14, proofs)

The tree of a trail that already has events is built on the first start after this
upgrade (relay/audit.py ``AuditLog.ensure_tree``, in chunks, with progress in the log),
not here: building it needs the events hashed as the relay hashes them, and a large
trail would hold the migration's transaction for minutes.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_tree",
        sa.Column("level", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("idx", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
    )
    op.create_table(
        "audit_notes",
        sa.Column("size", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("root", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.String(length=256), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("size"),
    )


def downgrade() -> None:
    op.drop_table("audit_notes")
    op.drop_table("audit_tree")
