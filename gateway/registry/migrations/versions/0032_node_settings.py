"""The settings every node must be given alike, as each node runs them (digests), to compare

Revision ID: 0032
Revises: 0031
"""
from alembic import op
import sqlalchemy as sa

revision = '0032'
down_revision = '0031'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Run again (a register made from the present models has it), it adds nothing twice.
    nodes = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('nodes')}
    if 'settings' not in nodes:
        op.add_column('nodes', sa.Column('settings', sa.Text()))


def downgrade() -> None:
    op.drop_column('nodes', 'settings')
