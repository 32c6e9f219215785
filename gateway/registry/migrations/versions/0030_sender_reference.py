"""The sender's reference (来文字号) of each letter: the number its issuer gave the document

Revision ID: 0030
Revises: 0029
"""
from alembic import op
import sqlalchemy as sa

revision = '0030'
down_revision = '0029'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Run again (a register made from the present models has it, or a revision set back), it adds
    # nothing twice. Letters registered before have none: "" (a subject citing one is not searched).
    letters = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('letters')}
    if 'sender_reference' not in letters:
        op.add_column('letters', sa.Column('sender_reference', sa.String(length=100), nullable=False,
                                           server_default=''))


def downgrade() -> None:
    op.drop_column('letters', 'sender_reference')
