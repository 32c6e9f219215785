"""The transactional outbox: mail rows written with the change that causes them, then claimed,
sent, retried with backoff, or dead-lettered."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Select, case, func, insert, or_, select, update

from gateway.registry.models import Event, OutboxMail
from gateway.registry.store import Store, lease_clock, utcnow

log = logging.getLogger("gateway.outbox")


class Outbox(Store):
    def outbox_due(self, limit: int, now: datetime | None = None) -> list[OutboxMail]:
        """Claim up to `limit` mails that are due and not claimed by a live node (registry/leases.py).

        On PostgreSQL the rows are locked with SKIP LOCKED, so nodes claiming at once take different
        mails instead of waiting for each other; the claim (`claimed_by`, `lease_until`) is what
        keeps them apart afterwards. A mail whose sending began `max_claims` times and never
        finished (its node died sending it, every time) comes back among the returned ones with
        `claims` that many over its `attempts`: the sender dead-letters it rather than letting it
        take a node down again. Claiming counts nothing: of a batch claimed by a node that died,
        only the mail it was sending is to blame (outbox_still_mine counts it)."""
        # This node's own claims too: a node sends from one thread, so a mail it still holds when
        # it looks for more is one a failed round left claimed (its heartbeat would keep that claim
        # alive, and no node would ever send it).
        if self.displaced:
            return []
        mine = OutboxMail.claimed_by == self.claimant
        due_by = now or utcnow()  # attempts are timed by the nodes' clocks; claims by the lease clock

        def due(at: datetime) -> Select[int]:
            return (select(OutboxMail.id).where(
                OutboxMail.status == "pending", OutboxMail.next_attempt_at <= due_by,
                or_(OutboxMail.claimed_by.is_(None), OutboxMail.lease_until < at, mine))
                .order_by(OutboxMail.next_attempt_at, OutboxMail.id).limit(limit))
        with self.read() as conn:
            if conn.execute(due(now or lease_clock(conn))).first() is None:
                return []  # the common case, answered without a write transaction
        with self.write() as conn:
            at = now or lease_clock(conn)
            claimable = due(at)
            if conn.dialect.name == "postgresql":
                claimable = claimable.with_for_update(skip_locked=True)
            ids = list(conn.execute(claimable).scalars())
            if not ids:
                return []
            conn.execute(update(OutboxMail).where(OutboxMail.id.in_(ids)).values(
                claimed_by=self.claimant, lease_until=at + timedelta(seconds=self.lease_seconds)))
        with self.session() as session:
            return list(session.scalars(select(OutboxMail).where(OutboxMail.id.in_(ids))
                                        .order_by(OutboxMail.next_attempt_at, OutboxMail.id)))

    def outbox_still_mine(self, mail_id: int) -> bool:
        """Checked just before a mail goes to the relay, and the claim renewed for the time the
        sending takes. A claim whose lease ran out (this node was cut off from the registry longer
        than the takeover time) is not ours any more, even if no node has taken it yet: one may be
        taking it now. The check and the renewal are one conditional UPDATE, so a node claiming the
        mail at the same moment either finds it renewed or has it already. Its sending begins:
        counted in `claims`, and balanced by the attempt recorded when it ends (sent, to be
        retried, dead); one that never ends took its node down with it. A run taken for dead
        sends nothing more: its name runs elsewhere now."""
        if self.displaced:
            return False
        with self.write() as conn:
            now = lease_clock(conn)
            return bool(conn.execute(update(OutboxMail).where(
                OutboxMail.id == mail_id, OutboxMail.status == "pending",
                OutboxMail.claimed_by == self.claimant, OutboxMail.lease_until >= now)
                .values(lease_until=now + timedelta(seconds=self.lease_seconds), claims=OutboxMail.claims + 1))
                .rowcount)

    def outbox_release(self, mail_ids: list[int], *, begun: int | None = None) -> None:
        """Give claimed mails back unsent (a stop in the middle of a batch); `begun`: the one among
        them whose sending began, uncounted (no node died in it)."""
        if not mail_ids:
            return
        with self.write() as conn:
            conn.execute(update(OutboxMail).where(OutboxMail.id.in_(mail_ids),
                                                  OutboxMail.claimed_by == self.claimant)
                         .values(claimed_by=None, lease_until=None,
                                 claims=case((OutboxMail.id == begun, OutboxMail.claims - 1),
                                             else_=OutboxMail.claims)))

    def outbox_next_due(self) -> datetime | None:
        with self.read() as conn:
            return conn.execute(select(func.min(OutboxMail.next_attempt_at))
                                .where(OutboxMail.status == "pending")).scalar()

    def outbox_sent(self, mail_id: int, response: str) -> None:
        """The relay took it. Recorded even when another node claimed the mail meanwhile (ours ran
        out while the relay was slow): it was delivered, by us. Whichever node comes second finds
        it sent and adds nothing, so one delivery is one sent event; the receiver drops the second
        copy by its Message-ID."""
        now = utcnow()
        with self.write() as conn:
            mail = conn.execute(select(OutboxMail.letter_id, OutboxMail.kind, OutboxMail.recipient, OutboxMail.status,
                                       OutboxMail.attempts, OutboxMail.claimed_by).where(OutboxMail.id == mail_id)
                                .with_for_update()).one()
            if mail.status == "sent":
                log.warning("outbox: mail #%d was sent by %s too; already recorded as sent", mail_id, self.claimant)
                return
            if mail.claimed_by != self.claimant:
                log.warning("outbox: mail #%d was sent by %s while claimed by %s", mail_id, self.claimant,
                            mail.claimed_by)
            conn.execute(update(OutboxMail).where(OutboxMail.id == mail_id).values(
                status="sent", sent_at=now, updated_at=now, attempts=mail.attempts + 1, last_error=None,
                claimed_by=None, lease_until=None))
            if mail.letter_id is not None:
                conn.execute(insert(Event), [self.event_row(mail.letter_id, now, "gateway", f"{mail.kind}-sent", None,
                                                         {"to": mail.recipient, "outbox": mail_id,
                                                          "relay": response[:200]})])

    def outbox_retry_later(self, mail_id: int, error: str, at: datetime, *, begun: bool = True) -> int:
        """Count a failed attempt and let the mail go until `at`; only by the node that holds its claim.
        `begun`: its sending began (outbox_still_mine); one that failed before (the relay refused
        the connection) is counted as begun and ended, so that `claims` stays even with `attempts`."""
        now = utcnow()
        with self.write() as conn:
            attempts = conn.execute(select(OutboxMail.attempts).where(OutboxMail.id == mail_id)).scalar_one() + 1
            conn.execute(update(OutboxMail).where(OutboxMail.id == mail_id, OutboxMail.claimed_by == self.claimant)
                         .values(attempts=attempts, next_attempt_at=at, updated_at=now, last_error=error[:1000],
                                 claimed_by=None, lease_until=None,
                                 claims=OutboxMail.claims + (0 if begun else 1)))
        return attempts

    def outbox_dead(self, mail_id: int, error: str) -> bool:
        """Give the mail up; only while this node holds its claim. A node whose claim was taken over
        (it was cut off, and a slow relay answered it at last) does not give up a mail another node
        is sending or has delivered: False, and nothing recorded."""
        now = utcnow()
        with self.write() as conn:
            mail = conn.execute(select(OutboxMail.letter_id, OutboxMail.kind, OutboxMail.recipient,
                                       OutboxMail.attempts).where(
                OutboxMail.id == mail_id, OutboxMail.status == "pending",
                OutboxMail.claimed_by == self.claimant).with_for_update()).first()
            if mail is None:
                log.warning("outbox: mail #%d is no longer claimed by %s; not dead-lettered by it", mail_id,
                            self.claimant)
                return False
            conn.execute(update(OutboxMail).where(OutboxMail.id == mail_id).values(
                status="dead", updated_at=now, attempts=mail.attempts + 1, last_error=error[:1000],
                claimed_by=None, lease_until=None))
            if mail.letter_id is not None:
                conn.execute(insert(Event), [self.event_row(mail.letter_id, now, "gateway",
                                                         f"{mail.kind}-dead-lettered", None,
                                                         {"to": mail.recipient, "outbox": mail_id,
                                                          "error": error[:500]})])
        return True

    def outbox_requeue(self, mail_id: int, actor: str) -> OutboxMail:
        now = utcnow()
        with self.write() as conn:
            mail = conn.execute(select(OutboxMail.status, OutboxMail.letter_id, OutboxMail.last_error,
                                       OutboxMail.attempts)
                                .where(OutboxMail.id == mail_id).with_for_update()).first()
            if mail is None:
                raise LookupError(f"no outbox mail {mail_id}")
            if mail.status != "dead":
                raise ValueError(f"outbox mail {mail_id} is {mail.status}, not dead")
            # A fresh queue time: the give-up clock starts again, and so does the count of
            # attempts, which sets the back-off (a mail failing again after being fixed waits a
            # minute, not the longest delay) and, against its claims, tells a mail whose node died
            # with it. The failure that stopped it is no longer the mail's state (lists and status
            # would show it as current): the letter's history keeps it and the attempts, in this
            # event as in the dead-lettered one.
            conn.execute(update(OutboxMail).where(OutboxMail.id == mail_id).values(
                status="pending", next_attempt_at=now, created_at=now, updated_at=now, claims=0, attempts=0,
                claimed_by=None, lease_until=None, last_error=None))
            if mail.letter_id is not None:
                details: dict[str, object] = {"outbox": mail_id, "attempts": mail.attempts}
                if mail.last_error:
                    details["error"] = mail.last_error[:500]
                conn.execute(insert(Event), [self.event_row(mail.letter_id, now, actor, "mail-requeued", None,
                                                         details)])
        with self.session() as session:
            return session.get_one(OutboxMail, mail_id)

    def outbox(self, *, status: str | None = None, letter_id: int | None = None,
               limit: int | None = None) -> list[OutboxMail]:
        stmt = select(OutboxMail).order_by(OutboxMail.id)
        if status is not None:
            stmt = stmt.where(OutboxMail.status == status)
        if letter_id is not None:
            stmt = stmt.where(OutboxMail.letter_id == letter_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.session() as session:
            return list(session.scalars(stmt))

    def outbox_failing(self, queued_before: datetime) -> tuple[int, str | None]:
        """How many mails queued before `queued_before` wait still, their last attempt failed, and
        the error of the one tried last."""
        failing = (OutboxMail.status == "pending", OutboxMail.last_error.is_not(None),
                   OutboxMail.created_at < queued_before)
        with self.read() as conn:
            count = conn.execute(select(func.count()).select_from(OutboxMail).where(*failing)).scalar_one()
            error = conn.execute(select(OutboxMail.last_error).where(*failing)
                                 .order_by(OutboxMail.updated_at.desc(), OutboxMail.id.desc()).limit(1)).scalar()
        return int(count), error

    def outbox_counts(self) -> dict[str, int]:
        with self.read() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(
                select(OutboxMail.status, func.count(OutboxMail.id)).group_by(OutboxMail.status))}
