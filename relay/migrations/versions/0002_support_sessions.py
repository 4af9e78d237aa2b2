"""support sessions

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('support_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=True),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('technician', sa.String(length=64), nullable=False),
    sa.Column('opened_by', sa.String(length=256), nullable=False),
    sa.Column('reason', sa.String(length=512), nullable=False),
    sa.Column('ticket', sa.String(length=128), nullable=False),
    sa.Column('capabilities', sa.String(length=512), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('node', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('opened_at', sa.Float(), nullable=True),
    sa.Column('ready_at', sa.Float(), nullable=True),
    sa.Column('closed_at', sa.Float(), nullable=True),
    sa.Column('close_reason', sa.String(length=256), nullable=True),
    sa.Column('code_hash', sa.String(length=64), nullable=True),
    sa.Column('code_expires_at', sa.Float(), nullable=True),
    sa.Column('remote_hostname', sa.String(length=256), nullable=True),
    sa.Column('remote_address', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('support_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_support_sessions_agent', ['agent_id', 'created_at'],
                              unique=False)
        batch_op.create_index('ix_support_sessions_code', ['code_hash'], unique=False)
        batch_op.create_index('ix_support_sessions_state', ['state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('support_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_support_sessions_state')
        batch_op.drop_index('ix_support_sessions_code')
        batch_op.drop_index('ix_support_sessions_agent')
    op.drop_table('support_sessions')
