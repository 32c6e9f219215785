"""The sender's satisfaction: one-time rating links and ratings

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'ratings',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('letter_id', sa.Integer(), sa.ForeignKey('letters.id'), nullable=False),
        # One rating per result mail: its link and a reply to it count once between them.
        sa.Column('feedback_message_id', sa.Text(), nullable=False),
        sa.Column('score', sa.Integer(), nullable=False),
        sa.Column('comment', sa.Text(), nullable=False, server_default=''),
        sa.Column('via', sa.String(8), nullable=False),
        sa.Column('department', sa.String(64)),
        sa.Column('category', sa.String(64)),
        sa.Column('address', sa.String(64), nullable=False, server_default=''),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('feedback_message_id', name='uq_ratings_feedback_message_id'),
    )
    op.create_index('ix_ratings_letter', 'ratings', ['letter_id'])
    op.create_index('ix_ratings_department_at', 'ratings', ['department', 'at'])


def downgrade() -> None:
    op.drop_index('ix_ratings_department_at', 'ratings')
    op.drop_index('ix_ratings_letter', 'ratings')
    op.drop_table('ratings')
