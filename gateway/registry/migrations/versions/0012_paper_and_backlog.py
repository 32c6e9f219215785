"""Paper letters (sender's organisation, postal address, phone) and backlog items

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Paper letters: who sent them, as the registry office took it from the envelope or the visitor.
    # Plain ADD COLUMN (no batch copy of the table, which would lose its expression index on SQLite).
    op.add_column('letters', sa.Column('sender_organisation', sa.Text(), nullable=False, server_default=''))
    op.add_column('letters', sa.Column('sender_postal_address', sa.Text(), nullable=False, server_default=''))
    op.add_column('letters', sa.Column('sender_phone', sa.String(64), nullable=False, server_default=''))
    # Backlog items: letters taken over from another mail system (`gateway import`, an IMAP first import).
    op.add_column('letters', sa.Column('backlog', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column('letters', 'backlog')
    op.drop_column('letters', 'sender_phone')
    op.drop_column('letters', 'sender_postal_address')
    op.drop_column('letters', 'sender_organisation')
