"""Which process a node's pid was: the machine's boot and the process's start, beside the pid

Revision ID: 0031
Revises: 0030
"""
from alembic import op
import sqlalchemy as sa

revision = '0031'
down_revision = '0030'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Run again (a register made from the present models has it), it adds nothing twice. A node
    # recorded before has none: its pid alone is looked at, as before.
    nodes = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('nodes')}
    if 'process' not in nodes:
        op.add_column('nodes', sa.Column('process', sa.String(100)))


def downgrade() -> None:
    op.drop_column('nodes', 'process')
