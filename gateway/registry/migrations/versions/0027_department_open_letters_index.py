"""An index of a department's letters by state and deadline, for the counts of a department's work

Revision ID: 0027
Revises: 0026
"""
from alembic import op

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A department's open letters, and those of them overdue or due, counted from the index alone
    # (the sidebar's overdue count and the dashboard's figures for a department's people): with
    # 100,000 letters, SQLite read every open letter's row to test its department, 0.1-0.2 s a page.
    # if_not_exists: a register made from the present models has it already; run again, it changes nothing.
    op.create_index('ix_letters_department_status_deadline', 'letters', ['department', 'status', 'deadline'],
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_index('ix_letters_department_status_deadline', 'letters', if_exists=True)
