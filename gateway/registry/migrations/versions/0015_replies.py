"""Replies to senders under approval: drafts, their attachments, and each approver's decision

Revision ID: 0015
Revises: 0014
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'replies',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('letter_id', sa.Integer(), sa.ForeignKey('letters.id'), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('text', sa.Text(), nullable=False, server_default=''),
        sa.Column('authors', JSON, nullable=False),
        sa.Column('chain', JSON, nullable=False),
        sa.Column('rule', sa.Text(), nullable=False, server_default=''),
        sa.Column('step', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('round', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('step_since', sa.DateTime(timezone=True)),
        sa.Column('reminded_at', sa.DateTime(timezone=True)),
        sa.Column('recipient', sa.Text(), nullable=False, server_default=''),
        sa.Column('message_id', sa.Text()),
        sa.Column('outbox_id', sa.Integer()),
        sa.Column('message', sa.LargeBinary()),
        sa.Column('message_sha256', sa.String(64)),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True)),
    )
    op.create_index('ix_replies_letter_id', 'replies', ['letter_id'])
    op.create_index('ix_replies_status', 'replies', ['status'])
    op.create_table(
        'reply_attachments',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('reply_id', sa.Integer(), sa.ForeignKey('replies.id'), nullable=False),
        sa.Column('filename', sa.Text(), nullable=False),
        sa.Column('content_type', sa.Text(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('sha256', sa.String(64), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
    )
    op.create_index('ix_reply_attachments_reply_id', 'reply_attachments', ['reply_id'])
    op.create_table(
        'reply_steps',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('reply_id', sa.Integer(), sa.ForeignKey('replies.id'), nullable=False),
        sa.Column('round', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(16), nullable=False),
        sa.Column('approver', sa.Text(), nullable=False),
        sa.Column('decision', sa.String(16), nullable=False),
        sa.Column('comment', sa.Text(), nullable=False, server_default=''),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_reply_steps_reply_id', 'reply_steps', ['reply_id'])


def downgrade() -> None:
    op.drop_index('ix_reply_steps_reply_id', 'reply_steps')
    op.drop_table('reply_steps')
    op.drop_index('ix_reply_attachments_reply_id', 'reply_attachments')
    op.drop_table('reply_attachments')
    op.drop_index('ix_replies_status', 'replies')
    op.drop_index('ix_replies_letter_id', 'replies')
    op.drop_table('replies')
