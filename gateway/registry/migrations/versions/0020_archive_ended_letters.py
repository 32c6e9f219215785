"""Letters packed while open and ended since: archived

Revision ID: 0020
Revises: 0019
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A letter packed with its month while still open, closed or withdrawn afterwards, stayed
    # "closed" or "withdrawn": its content was read without a borrowing, and no borrowing could be
    # asked for it. Archived now, as the letters that had ended before their month's run were, each
    # with the event that says so.
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    ended = bind.execute(sa.text("SELECT id, archive_number FROM letters WHERE archive_number IS NOT NULL "
                                 "AND status IN ('closed', 'withdrawn')")).all()
    if not ended:
        return
    now = datetime.now(timezone.utc)
    events = sa.table("events", sa.column("letter_id", sa.Integer), sa.column("at", sa.DateTime(timezone=True)),
                      sa.column("actor", sa.String), sa.column("action", sa.String),
                      sa.column("from_department", sa.String), sa.column("to_department", sa.String),
                      sa.column("details", JSONB if postgresql else sa.JSON))
    at = now if postgresql else now.replace(tzinfo=None)  # SQLite keeps UTC without its zone
    bind.execute(events.insert(), [
        {"letter_id": letter_id, "at": at, "actor": "gateway", "action": "archived", "from_department": None,
         "to_department": None, "details": {"archive_number": number, "packed": "before it ended"}}
        for letter_id, number in ended])
    letters = sa.table("letters", sa.column("id", sa.Integer), sa.column("status", sa.String),
                       sa.column("updated_at", sa.DateTime(timezone=True)))
    ids = [letter_id for letter_id, _ in ended]
    for first in range(0, len(ids), 500):
        bind.execute(letters.update().where(letters.c.id.in_(ids[first:first + 500]))
                     .values(status="archived", updated_at=at))


def downgrade() -> None:
    pass  # the letters stay archived: which were closed and which withdrawn is in their events
