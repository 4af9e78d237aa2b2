"""terminal recording text index (timeline search, issue 14)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recording_words",
        sa.Column("word", sa.String(length=64), nullable=False),
        sa.Column("recording_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("recording_words", schema=None) as batch_op:
        batch_op.create_index("ix_recording_words_word", ["word", "session_id"], unique=False)
        batch_op.create_index("ix_recording_words_recording", ["recording_id"], unique=False)
    op.create_table(
        "recording_indexes",
        sa.Column("recording_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("words", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("indexed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("recording_id"),
    )


def downgrade() -> None:
    op.drop_table("recording_indexes")
    with op.batch_alter_table("recording_words", schema=None) as batch_op:
        batch_op.drop_index("ix_recording_words_recording")
        batch_op.drop_index("ix_recording_words_word")
    op.drop_table("recording_words")
