"""Classification on letters (owner, tags, decision trace) and the outbox

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('letters') as batch:
        batch.add_column(sa.Column('owner', sa.Text(), nullable=True))
        batch.add_column(sa.Column('tags', JSON, nullable=False, server_default=sa.text("'[]'")))
        batch.add_column(sa.Column('classification', JSON, nullable=True))
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('letter_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.Text(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('details', JSON, nullable=False),
    sa.ForeignKeyConstraint(['letter_id'], ['letters.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_outbox_due', 'outbox', ['status', 'next_attempt_at'])
    op.create_index('ix_outbox_letter', 'outbox', ['letter_id'])
    op.create_index('ix_outbox_kind_recipient', 'outbox', ['kind', 'recipient', 'created_at'])
    op.create_index('ix_outbox_message_id', 'outbox', ['message_id'])


def downgrade() -> None:
    op.drop_table('outbox')
    with op.batch_alter_table('letters') as batch:
        batch.drop_column('classification')
        batch.drop_column('tags')
        batch.drop_column('owner')
