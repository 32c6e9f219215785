"""A paper letter's organisation, telephone and postal address found only by those who may read its content

Revision ID: 0022
Revises: 0021
"""
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # They were register-entry terms, which anyone who sees the letter's entry searches, though the
    # entry does not show them. Their letters leave the index; the daemon indexes them again at its
    # start, with the terms the code now cuts (they are computed by the code, not by SQL).
    key = "letter_id" if op.get_bind().dialect.name == "postgresql" else "rowid"
    op.execute(f"""DELETE FROM letter_search WHERE {key} IN (
                       SELECT id FROM letters
                       WHERE sender_organisation <> '' OR sender_phone <> '' OR sender_postal_address <> '')""")


def downgrade() -> None:
    # The terms now cut are found by fewer people, never by more: nothing to undo.
    pass
