"""Indexes for the sidebar's counts: open letters by deadline, and letters by their owner

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # "Overdue" is open and past the deadline: a range per open state instead of a scan.
    op.create_index('ix_letters_status_deadline', 'letters', ['status', 'deadline'])
    # "My letters" compares owners case-blind.
    op.create_index('ix_letters_owner_lower', 'letters', [sa.text('lower(owner)')])


def downgrade() -> None:
    op.drop_index('ix_letters_owner_lower', 'letters')
    op.drop_index('ix_letters_status_deadline', 'letters')
