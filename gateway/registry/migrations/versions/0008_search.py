"""The full-text index of letters (FTS5 on SQLite, a tsvector with a GIN index on PostgreSQL)

Revision ID: 0008
Revises: 0007
"""
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Letters registered before are indexed by the daemon at its start (and `gateway db reindex`):
    # their terms are computed by the code, not by SQL.
    if op.get_bind().dialect.name == "postgresql":
        # entry: number and sender (found by anyone who sees the letter); content: subject, text,
        # attachment names (found only by those who may read it).
        op.execute("""CREATE TABLE letter_search (
                          letter_id integer PRIMARY KEY REFERENCES letters(id),
                          entry text NOT NULL,
                          content text NOT NULL,
                          tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', entry || ' ' || content)) STORED,
                          tsv_entry tsvector GENERATED ALWAYS AS (to_tsvector('simple', entry)) STORED)""")
        op.execute("CREATE INDEX ix_letter_search_tsv ON letter_search USING gin (tsv)")
        op.execute("CREATE INDEX ix_letter_search_tsv_entry ON letter_search USING gin (tsv_entry)")
    else:
        # The terms are already cut and folded; unicode61 only splits them at the spaces.
        op.execute("CREATE VIRTUAL TABLE letter_search USING fts5(entry, content, "
                   "tokenize = 'unicode61 remove_diacritics 0')")


def downgrade() -> None:
    op.execute("DROP TABLE letter_search")
