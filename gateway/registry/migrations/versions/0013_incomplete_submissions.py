"""Requests to a sender for missing materials, and supplements

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'sender_requests',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('letter_id', sa.Integer(), sa.ForeignKey('letters.id'), nullable=False),
        sa.Column('missing', JSON, nullable=False),
        sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('requested_by', sa.Text(), nullable=False),
        sa.Column('recipient', sa.Text(), nullable=False, server_default=''),
        sa.Column('message_id', sa.Text()),
        sa.Column('paused_deadline', sa.DateTime(timezone=True)),
        sa.Column('remaining_days', sa.Integer()),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('settled_at', sa.DateTime(timezone=True)),
        sa.Column('reminded_at', sa.DateTime(timezone=True)),
    )
    op.create_index('ix_sender_requests_letter', 'sender_requests', ['letter_id'])
    # The reminder pass looks for waiting requests past their date.
    op.create_index('ix_sender_requests_status_due', 'sender_requests', ['status', 'due_at'])
    op.create_index('ix_sender_requests_message_id', 'sender_requests', ['message_id'])


def downgrade() -> None:
    op.drop_index('ix_sender_requests_message_id', 'sender_requests')
    op.drop_index('ix_sender_requests_status_due', 'sender_requests')
    op.drop_index('ix_sender_requests_letter', 'sender_requests')
    op.drop_table('sender_requests')
