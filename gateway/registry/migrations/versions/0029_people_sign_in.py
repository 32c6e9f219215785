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
    # Run again (a register made from the present models has all this, or a revision set back),
    # it adds nothing twice.
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table('password_resets'):
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
    op.create_index('ix_password_resets_person_id', 'password_resets', ['person_id'], if_not_exists=True)
    people = {c['name'] for c in inspector.get_columns('people')}
    new_people = [c for c in (sa.Column('totp_secret', sa.String(length=64), nullable=True),
                              sa.Column('totp_enabled_at', sa.DateTime(timezone=True), nullable=True),
                              sa.Column('totp_last_step', sa.BigInteger(), nullable=True),
                              sa.Column('recovery_codes', JSON, nullable=False, server_default=sa.text("'[]'")))
                  if c.name not in people]
    if new_people:
        with op.batch_alter_table('people') as batch:
            for column in new_people:
                batch.add_column(column)
    sessions = {c['name'] for c in inspector.get_columns('web_sessions')}
    new_sessions = [c for c in (sa.Column('awaiting_code', sa.Boolean(), nullable=False, server_default=sa.false()),
                                sa.Column('method', sa.String(length=16), nullable=False, server_default='password'),
                                sa.Column('user_agent', sa.String(length=200), nullable=False, server_default=''))
                    if c.name not in sessions]
    if new_sessions:
        with op.batch_alter_table('web_sessions') as batch:
            for column in new_sessions:
                batch.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table('web_sessions') as batch:
        batch.drop_column('user_agent')
        batch.drop_column('method')
        batch.drop_column('awaiting_code')
    with op.batch_alter_table('people') as batch:
        for column in ('recovery_codes', 'totp_last_step', 'totp_enabled_at', 'totp_secret'):
            batch.drop_column(column)
    op.drop_index('ix_password_resets_person_id', 'password_resets', if_exists=True)
    op.drop_table('password_resets')
