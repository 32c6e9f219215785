"""Circulation with sign-off, and borrowing from the archive

Revision ID: 0016
Revises: 0015
"""
from alembic import op
import sqlalchemy as sa

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'circulations',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('letter_id', sa.Integer(), sa.ForeignKey('letters.id'), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('started_by', sa.Text(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True)),
        sa.Column('current', sa.Integer()),
    )
    op.create_index('ix_circulations_letter_id', 'circulations', ['letter_id'])
    op.create_index('ix_circulations_status', 'circulations', ['status'])
    op.create_table(
        'circulation_steps',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('circulation_id', sa.Integer(), sa.ForeignKey('circulations.id'), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('target', sa.String(64), nullable=False),
        sa.Column('reached_at', sa.DateTime(timezone=True)),
        sa.Column('deadline', sa.DateTime(timezone=True)),
        sa.Column('signed_at', sa.DateTime(timezone=True)),
        sa.Column('signed_by', sa.Text()),
        sa.Column('instruction', sa.Text(), nullable=False, server_default=''),
        sa.Column('reminders', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('reminded_at', sa.DateTime(timezone=True)),
        sa.Column('escalated_at', sa.DateTime(timezone=True)),
        sa.UniqueConstraint('circulation_id', 'position', name='uq_circulation_steps_position'),
    )
    op.create_index('ix_circulation_steps_circulation', 'circulation_steps', ['circulation_id'])
    op.create_table(
        'borrowings',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('letter_id', sa.Integer(), sa.ForeignKey('letters.id'), nullable=False),
        sa.Column('person_id', sa.Integer(), sa.ForeignKey('people.id'), nullable=False),
        sa.Column('login', sa.String(64), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('days', sa.Integer(), nullable=False),
        sa.Column('approver', sa.String(16), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('decided_by', sa.Text()),
        sa.Column('decided_at', sa.DateTime(timezone=True)),
        sa.Column('comment', sa.Text(), nullable=False, server_default=''),
        sa.Column('ends_at', sa.DateTime(timezone=True)),
        sa.Column('ended_at', sa.DateTime(timezone=True)),
    )
    # A person's grant for a letter is looked up at every read of it; the expiry pass by status.
    op.create_index('ix_borrowings_letter_person', 'borrowings', ['letter_id', 'person_id'])
    op.create_index('ix_borrowings_status', 'borrowings', ['status', 'ends_at'])


def downgrade() -> None:
    op.drop_index('ix_borrowings_status', 'borrowings')
    op.drop_index('ix_borrowings_letter_person', 'borrowings')
    op.drop_table('borrowings')
    op.drop_index('ix_circulation_steps_circulation', 'circulation_steps')
    op.drop_table('circulation_steps')
    op.drop_index('ix_circulations_status', 'circulations')
    op.drop_index('ix_circulations_letter_id', 'circulations')
    op.drop_table('circulations')
