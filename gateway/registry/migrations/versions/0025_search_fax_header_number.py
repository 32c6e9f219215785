"""A drop-folder fax whose number only its header line gave found by that number

Revision ID: 0025
Revises: 0024
"""
from alembic import op

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Its terms were cut before the number read from the header line was filled in, so nobody found
    # it by that number. Faxes whose header line was read leave the index; the daemon indexes them
    # again at its start, with the terms the code cuts (computed by the code, not by SQL).
    key = "letter_id" if op.get_bind().dialect.name == "postgresql" else "rowid"
    op.execute(f"""DELETE FROM letter_search WHERE {key} IN (
                       SELECT letters.id FROM letters JOIN ocr_readings ON ocr_readings.letter_id = letters.id
                       WHERE ocr_readings.header IS NOT NULL AND COALESCE(letters.fax_number, '') <> '')""")


def downgrade() -> None:
    # The terms now cut add the number the letter shows: nothing to undo.
    pass
