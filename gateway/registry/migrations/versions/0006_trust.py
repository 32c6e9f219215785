"""The check stage's trust verdict on each letter

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    # Letters registered before the check stage have no verdict: '{}' (nothing proven).
    with op.batch_alter_table('letters') as batch:
        batch.add_column(sa.Column('trust', JSON, nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    with op.batch_alter_table('letters') as batch:
        batch.drop_column('trust')
