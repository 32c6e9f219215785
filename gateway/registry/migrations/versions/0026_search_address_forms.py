"""A sender's address found with its domain in Unicode and in A-labels alike

Revision ID: 0026
Revises: 0025
"""
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Their entry terms had the address only as the letter gave it (例子.中国, or
    # xn--fsqu00a.xn--fiqs8s). Letters whose sender's address has a domain beyond ASCII or in
    # A-labels leave the index; the daemon indexes them again at its start, with the terms the code
    # now cuts (computed by the code, not by SQL).
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    key = "letter_id" if postgres else "rowid"
    beyond_ascii = "sender_address ~ '[^ -~]'" if postgres else "sender_address GLOB '*[^ -~]*'"
    op.execute(f"""DELETE FROM letter_search WHERE {key} IN (
                       SELECT id FROM letters
                       WHERE LOWER(sender_address) LIKE '%xn--%' OR {beyond_ascii})""")


def downgrade() -> None:
    # The terms now cut only add other spellings of what the entry shows: nothing to undo.
    pass
