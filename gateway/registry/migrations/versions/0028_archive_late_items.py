"""Which archive package holds each sent reply and each finished circulation

Revision ID: 0028
Revises: 0027
"""
import sqlalchemy as sa
from alembic import op

revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Run again (a register made from the present models has the columns, or a revision set back):
    # nothing is added twice, and what packages hold is worked out only when the columns are new
    # (again, it would take late parts' replies back out of them, to be packed a second time).
    columns = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('replies')}
    if 'archive_package_id' in columns:
        op.create_index('ix_replies_archive_package', 'replies', ['archive_package_id', 'status'], if_not_exists=True)
        op.create_index('ix_circulations_archive_package', 'circulations', ['archive_package_id', 'status'],
                        if_not_exists=True)
        return
    op.add_column('replies', sa.Column('archive_package_id', sa.Integer(), nullable=True))
    op.add_column('circulations', sa.Column('archive_package_id', sa.Integer(), nullable=True))
    op.create_index('ix_replies_archive_package', 'replies', ['archive_package_id', 'status'], if_not_exists=True)
    op.create_index('ix_circulations_archive_package', 'circulations', ['archive_package_id', 'status'],
                    if_not_exists=True)
    # What packages written before already hold: a reply sent, or a circulation finished, before its
    # letter was packed. The rest (a circulation still running when packed, its record then
    # incomplete, included) goes into a part of its own at the next run.
    op.execute("UPDATE replies SET archive_package_id = (SELECT l.archive_package_id FROM letters l "
               "WHERE l.id = replies.letter_id AND replies.sent_at <= l.archived_at) "
               "WHERE status = 'sent' AND message IS NOT NULL")
    op.execute("UPDATE circulations SET archive_package_id = (SELECT l.archive_package_id FROM letters l "
               "WHERE l.id = circulations.letter_id AND circulations.finished_at <= l.archived_at) "
               "WHERE status = 'finished'")


def downgrade() -> None:
    op.drop_index('ix_circulations_archive_package', 'circulations', if_exists=True)
    op.drop_index('ix_replies_archive_package', 'replies', if_exists=True)
    op.drop_column('circulations', 'archive_package_id')
    op.drop_column('replies', 'archive_package_id')
