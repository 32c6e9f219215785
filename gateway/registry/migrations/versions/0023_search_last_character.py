"""A run of Chinese's last character is a token of its own: a one-character search finds it

Revision ID: 0023
Revises: 0022
"""
from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A letter whose terms hold Chinese (or Japanese, Korean) lacks those tokens, and a query of
    # words joined by punctuation (报价单2026) now looks for them. Its letter leaves the index; the
    # daemon indexes it again at its start, with the terms the code now cuts (computed by the code,
    # not by SQL). A letter whose terms are ASCII alone has the same terms as before and stays.
    _unindex_non_ascii()


def downgrade() -> None:
    # The older code looks for a joined word without those tokens, and the extra ones break its
    # phrase: the same letters leave the index, for the older daemon to index again.
    _unindex_non_ascii()


def _unindex_non_ascii() -> None:
    # Text with a character beyond ASCII has more bytes than characters.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""DELETE FROM letter_search
                      WHERE octet_length(entry) <> length(entry) OR octet_length(content) <> length(content)""")
    else:
        op.execute("""DELETE FROM letter_search
                      WHERE length(CAST(entry AS BLOB)) <> length(entry)
                         OR length(CAST(content AS BLOB)) <> length(content)""")
