"""A fax by mail's own number and sender found only by those who may read its content

Revision ID: 0024
Revises: 0023
"""
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # They were register-entry terms, which anyone who sees the letter's entry searches, though the
    # entry shows the mail's sender instead. Their letters leave the index; the daemon indexes them
    # again at its start, with the terms the code now cuts (computed by the code, not by SQL).
    key = "letter_id" if op.get_bind().dialect.name == "postgresql" else "rowid"
    op.execute(f"""DELETE FROM letter_search WHERE {key} IN (
                       SELECT id FROM letters
                       WHERE sender_address <> '' AND COALESCE(fax_number, '') <> ''
                          OR sender_name <> '' AND COALESCE(fax_sender_name, '') <> '')""")


def downgrade() -> None:
    # The terms now cut are found by fewer people, never by more: nothing to undo.
    pass
