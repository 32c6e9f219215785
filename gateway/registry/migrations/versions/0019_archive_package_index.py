"""An index for the letters of an archive package

Revision ID: 0019
Revises: 0018
"""
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Verifying, releasing and destroying a package read its letters by package: without an index
    # each of them read the whole letters table, once per package (a registry of years of letters,
    # checked month by month, read it dozens of times over).
    op.create_index('ix_letters_archive_package', 'letters', ['archive_package_id'])


def downgrade() -> None:
    op.drop_index('ix_letters_archive_package', 'letters')
