"""An IMAP folder's import scope kept in its row: the first import's last UID and a reset's read-mail date

Revision ID: 0021
Revises: 0020
"""
from alembic import op
import sqlalchemy as sa

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The newest UID of the folder's first import (or of the import after a UIDVALIDITY change),
    # kept after it ends: a message of that import fetched only later is still backlog.
    op.add_column('imap_folders', sa.Column('backlog_until', sa.BigInteger(), nullable=True))
    # While an import after a UIDVALIDITY change is under way: read mail from this day on is taken
    # too ("unseen" first imports), so that an import resumed after a dropped connection keeps it.
    op.add_column('imap_folders', sa.Column('import_seen_since', sa.Date(), nullable=True))
    # An import under way now is one whose end is known already.
    op.execute("UPDATE imap_folders SET backlog_until = importing_until WHERE importing_until IS NOT NULL")


def downgrade() -> None:
    op.drop_column('imap_folders', 'import_seen_since')
    op.drop_column('imap_folders', 'backlog_until')
