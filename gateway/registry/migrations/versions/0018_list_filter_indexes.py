"""Indexes for `letters list` filtered by status or by category, oldest first

Revision ID: 0018
Revises: 0017
"""
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A listing filtered by status or category is ordered by arrival: with the filter alone in
    # the index, SQLite sorted every matching letter (100,000 letters: 0.1-0.2 s) to return 50.
    # The pairs also serve every look-up by status or category alone, which the single-column
    # indexes did (and the status one twice over, with ix_letters_status_deadline).
    op.create_index('ix_letters_status_received', 'letters', ['status', 'received_at'])
    op.create_index('ix_letters_category_received', 'letters', ['category', 'received_at'])
    op.drop_index('ix_letters_status', 'letters')
    op.drop_index('ix_letters_category', 'letters')


def downgrade() -> None:
    op.create_index('ix_letters_category', 'letters', ['category'])
    op.create_index('ix_letters_status', 'letters', ['status'])
    op.drop_index('ix_letters_category_received', 'letters')
    op.drop_index('ix_letters_status_received', 'letters')
