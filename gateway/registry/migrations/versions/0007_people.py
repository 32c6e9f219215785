"""People, their sessions and grants, and the audit log of reads and sign-ins

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'people',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('login', sa.String(64), nullable=False, unique=True),
        sa.Column('name', sa.Text(), nullable=False),
        sa.Column('emails', JSON, nullable=False),
        sa.Column('departments', JSON, nullable=False),
        sa.Column('roles', JSON, nullable=False),
        sa.Column('password_hash', sa.Text()),
        sa.Column('language', sa.String(8)),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', WHEN, nullable=False),
        sa.Column('updated_at', WHEN, nullable=False),
    )
    op.create_table(
        'web_sessions',
        sa.Column('token_hash', sa.String(64), primary_key=True),
        sa.Column('person_id', sa.Integer(), sa.ForeignKey('people.id'), nullable=False, index=True),
        sa.Column('csrf', sa.String(64), nullable=False),
        sa.Column('address', sa.String(64), nullable=False),
        sa.Column('created_at', WHEN, nullable=False),
        sa.Column('last_seen_at', WHEN, nullable=False),
        sa.Column('ended_at', WHEN),
    )
    op.create_table(
        'grants',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('person_id', sa.Integer(), sa.ForeignKey('people.id'), nullable=False),
        sa.Column('letter_id', sa.Integer(), sa.ForeignKey('letters.id'), nullable=False, index=True),
        sa.Column('granted_by', sa.Text(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('at', WHEN, nullable=False),
        sa.UniqueConstraint('person_id', 'letter_id', name='uq_grants_person_letter'),
    )
    op.create_table(
        'audit',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('at', WHEN, nullable=False, index=True),
        sa.Column('actor', sa.Text(), nullable=False),
        sa.Column('action', sa.String(64), nullable=False),
        sa.Column('letter_id', sa.Integer(), sa.ForeignKey('letters.id')),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('address', sa.String(64), nullable=False),
        sa.Column('details', JSON, nullable=False),
    )
    op.create_index('ix_audit_letter', 'audit', ['letter_id', 'at'])
    op.create_index('ix_audit_actor_action', 'audit', ['actor', 'action', 'at'])
    op.create_index('ix_audit_address_action', 'audit', ['address', 'action', 'at'])
    # What the queues filter on: a department's letters (now or once), by arrival and by deadline.
    op.create_index('ix_events_to_department', 'events', ['to_department', 'letter_id'])
    op.create_index('ix_letters_department_received', 'letters', ['department', 'received_at'])
    op.create_index('ix_letters_deadline', 'letters', ['deadline'])

    # Like the event log, the audit log is refused rewriting by the database itself.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
                      FOR EACH ROW EXECUTE FUNCTION events_append_only()""")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit
                           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_append_only ON audit")
    else:
        op.execute("DROP TRIGGER audit_no_update")
        op.execute("DROP TRIGGER audit_no_delete")
    op.drop_index('ix_letters_deadline', 'letters')
    op.drop_index('ix_letters_department_received', 'letters')
    op.drop_index('ix_events_to_department', 'events')
    op.drop_table('audit')
    op.drop_table('grants')
    op.drop_table('web_sessions')
    op.drop_table('people')
