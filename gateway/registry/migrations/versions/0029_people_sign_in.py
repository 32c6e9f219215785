"""People's own sign-in: two-step sign-in (a person's authenticator secret and recovery codes, sign-ins
waiting for their code), each session's browser, and password reset links

Revision ID: 0029
Revises: 0028
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table('password_resets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['person_id'], ['people.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index('ix_password_resets_person_id', 'password_resets', ['person_id'])
    with op.batch_alter_table('people') as batch:
        batch.add_column(sa.Column('totp_secret', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('totp_enabled_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('totp_last_step', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('recovery_codes', JSON, nullable=False, server_default=sa.text("'[]'")))
    with op.batch_alter_table('web_sessions') as batch:
        batch.add_column(sa.Column('awaiting_code', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column('method', sa.String(length=16), nullable=False, server_default='password'))
        batch.add_column(sa.Column('user_agent', sa.String(length=200), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('web_sessions') as batch:
        batch.drop_column('user_agent')
        batch.drop_column('method')
        batch.drop_column('awaiting_code')
    with op.batch_alter_table('people') as batch:
        for column in ('recovery_codes', 'totp_last_step', 'totp_enabled_at', 'totp_secret'):
            batch.drop_column(column)
    op.drop_index('ix_password_resets_person_id', 'password_resets')
    op.drop_table('password_resets')
