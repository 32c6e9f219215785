"""The outbox when the registry fails under it, with a real SMTP sink as the relay: a round cut
short by the registry leaves no mail claimed for ever (the node's heartbeat would keep such a
claim alive), and a mail whose composing reads the registry waits for it instead of being
dead-lettered. The registry's failure is injected into one call, as a dropped connection would
raise it; everything else is the real registry and the real sender.

With two nodes on a real PostgreSQL: a node cut off while a slow relay holds its mail loses the claim
to another node, and what the first one's relay answers at last neither dead-letters a mail the other
delivered nor records one delivery twice; a claim whose lease ran out is not sent on; a node named
`gw_1` joining does not free the claims of a live `gw-1` (`_` is no wildcard)."""
from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from conftest import ROOT, wait_for
from gateway import config as config_mod
from gateway.config import Config
from gateway.outbound.sender import OutboxSender
from gateway.registry import Registry, RegistryUnavailable
from gateway.registry.leases import Cluster
from gateway.registry.models import Event, Letter, OutboxMail
from gateway.registry.store import utcnow
from gateway.registry.plan import NewLetter, NewMail, Routing
from gateway.stages.tokens import keyring
from smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def configured(tmp_path: Path, relay: str, registry_url: str = "") -> tuple[Config, Registry]:
    tmp_path.mkdir(exist_ok=True)
    text = (ROOT / "config" / "gateway.toml").read_text()
    text = text.replace('url = ""', f'url = "{registry_url}"', 1)
    text = text.replace('state_dir = "../storage"', f'state_dir = "{tmp_path / "state"}"')
    text = text.replace('relay = ""', f'relay = "{relay}"')
    text = re.sub(r"(?m)^retry_min_seconds = .*$", "retry_min_seconds = 0.01", text)
    text = re.sub(r"(?m)^retry_max_seconds = .*$", "retry_max_seconds = 0.01", text)
    (tmp_path / "gateway.toml").write_text(text)
    shutil.copy(ROOT / "config" / "rules.yaml", tmp_path / "rules.yaml")
    config = config_mod.load(tmp_path / "gateway.toml")
    registry = Registry.from_config(config)
    registry.upgrade()
    keyring(config)
    return config, registry


def letter_with_mail(registry: Registry, mails: int) -> None:
    routing = Routing(status="routed", department="business", category=None, urgency="regular",
                      confidentiality="normal", owner=None, tags=[], deadline=None, trace={}, flags=[],
                      mail=[NewMail("notification", f"desk{k}@example.org", {}, f"<n{k}@example.org>")
                            for k in range(mails)],
                      receipt=None, no_receipt="a test")
    registry.register([NewLetter(["test:1"], "email", "smtp", datetime.now(timezone.utc), "1" * 64, 0,
                                 "none", subject="Contract", routing=routing)])


def failing_once(call: Callable[..., Any], at: int) -> Callable[..., Any]:
    """`call`, except that its `at`-th call raises what a dropped registry connection raises."""
    calls = 0

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == at:
            raise RegistryUnavailable("registry: server closed the connection unexpectedly")
        return call(*args, **kwargs)
    return wrapped


def test_a_round_cut_short_by_the_registry_leaves_no_mail_claimed_for_ever(tmp_path: Path,
                                                                            relay: SmtpSink) -> None:
    config, registry = configured(tmp_path, relay.address)
    try:
        letter_with_mail(registry, 3)
        cluster = Cluster(registry, "node1", takeover_seconds=60)
        cluster.join()
        sender = OutboxSender(config, registry)
        real = registry.outbox_still_mine
        registry.outbox_still_mine = failing_once(real, 2)  # type: ignore[method-assign]
        with pytest.raises(RegistryUnavailable):
            sender.deliver_due()  # the loop logs it and tries again after a pause
        registry.outbox_still_mine = real  # type: ignore[method-assign]
        assert len(relay.received) == 1
        # Given back at once: unclaimed, for any node.
        assert [(m.status, m.claimed_by) for m in registry.outbox() if m.status != "sent"] == [("pending", None)] * 2

        # And when they could not be given back either, the node takes its own claims up again.
        release = registry.outbox_release
        registry.outbox_release = failing_once(release, 1)  # type: ignore[method-assign]
        registry.outbox_still_mine = failing_once(real, 1)  # type: ignore[method-assign]
        with pytest.raises(RegistryUnavailable):
            sender.deliver_due()
        registry.outbox_still_mine = real  # type: ignore[method-assign]
        registry.outbox_release = release  # type: ignore[method-assign]
        assert {m.claimed_by for m in registry.outbox() if m.status != "sent"} == {registry.claimant}
        cluster.beat()  # the heartbeat keeps the node's claims alive
        sender.deliver_due()
        assert len(relay.received) == 3 and {m.status for m in registry.outbox()} == {"sent"}
        assert all(m.claims == 1 for m in registry.outbox() if m.recipient != "desk0@example.org")
    finally:
        registry.close()


def test_a_mail_whose_composing_finds_the_registry_gone_waits_for_it(tmp_path: Path, relay: SmtpSink) -> None:
    """A notification of a letter whose original is read back from the archive: the registry gone
    while composing it is not the mail's fault (no dead letter); the next round sends it."""
    config, registry = configured(tmp_path, relay.address)
    try:
        letter_with_mail(registry, 1)
        with registry.write() as conn:  # verified and released: its original is read from the archive
            conn.execute(update(Letter).values(raw_released=True, archive_package_id=1))
        real = registry.archive_package
        registry.archive_package = failing_once(real, 1)  # type: ignore[method-assign]
        sender = OutboxSender(config, registry)
        with pytest.raises(RegistryUnavailable):
            sender.deliver_due()
        [mail] = registry.outbox()
        assert (mail.status, mail.claimed_by, mail.last_error) == ("pending", None, None)
        sender.deliver_due()  # the package is not there: sent without its original, as for any unreadable one
        [mail] = registry.outbox()
        assert mail.status == "sent" and len(relay.received) == 1
    finally:
        registry.close()


def run_out(registry: Registry) -> None:
    """Every claim's lease over, as when its node was cut off longer than the takeover time."""
    with registry.write() as conn:
        conn.execute(update(OutboxMail).values(lease_until=utcnow() - timedelta(seconds=1)))


def actions(registry: Registry) -> list[str]:
    with registry.read() as conn:
        return list(conn.execute(select(Event.action).order_by(Event.id)).scalars())


@pytest.mark.parametrize("late_answer", ["550 5.1.1 no such user", "250 OK"])
def test_a_claim_taken_over_during_a_slow_send_is_recorded_once(tmp_path: Path, pg_url: str,
                                                               late_answer: str) -> None:
    slow, quick = SmtpSink(), SmtpSink().start()
    slow.data_gate, slow.data_answer = threading.Event(), late_answer
    slow.start()
    config_a, registry_a = configured(tmp_path / "a", slow.address, pg_url)
    config_b, registry_b = configured(tmp_path / "b", quick.address, pg_url)
    try:
        letter_with_mail(registry_a, 1)
        Cluster(registry_a, "node-a", takeover_seconds=60).join()
        Cluster(registry_b, "node-b", takeover_seconds=60).join()
        first = threading.Thread(target=OutboxSender(config_a, registry_a).deliver_due)
        first.start()
        wait_for(lambda: slow.attempts == 1, 30, "node a in DATA at its relay")
        run_out(registry_a)  # a is cut off from the registry longer than the takeover time
        assert OutboxSender(config_b, registry_b).deliver_due() == 1
        assert len(quick.received) == 1
        slow.data_gate.set()  # a's relay answers at last
        first.join()
        [mail] = registry_a.outbox()
        assert mail.status == "sent", mail.last_error  # b delivered it: a's late 550 gives nothing up
        assert actions(registry_a).count("notification-sent") == 1
        assert "notification-dead-lettered" not in actions(registry_a)
    finally:
        slow.stop()
        quick.stop()
        registry_a.close()
        registry_b.close()


def test_a_claim_whose_lease_ran_out_is_not_sent_on(tmp_path: Path, pg_url: str, relay: SmtpSink) -> None:
    _, registry = configured(tmp_path, relay.address, pg_url)
    try:
        letter_with_mail(registry, 2)
        Cluster(registry, "node-a", takeover_seconds=60).join()
        first, second = registry.outbox_due(10)
        run_out(registry)
        assert not registry.outbox_still_mine(second.id)  # another node may be taking it this moment
        # A claim still ours (if nearly out) is renewed for the time the sending takes.
        with registry.write() as conn:
            conn.execute(update(OutboxMail).where(OutboxMail.id == first.id)
                         .values(lease_until=utcnow() + timedelta(seconds=5)))
        assert registry.outbox_still_mine(first.id)
        [renewed] = [m for m in registry.outbox() if m.id == first.id]
        assert renewed.lease_until is not None and renewed.lease_until > utcnow() + timedelta(seconds=30)
    finally:
        registry.close()


def test_only_the_mail_that_took_its_node_down_each_time_is_given_up(tmp_path: Path, pg_url: str,
                                                                      relay: SmtpSink) -> None:
    """A mail whose sending takes its node down (max_claims times, on one node or another) is
    dead-lettered; the mails claimed in the same batches, never reached because their node died
    first, are sent."""
    _, registry_a = configured(tmp_path / "a", relay.address, pg_url)
    config_b, registry_b = configured(tmp_path / "b", relay.address, pg_url)
    try:
        letter_with_mail(registry_a, 3)
        Cluster(registry_a, "node-a", takeover_seconds=60).join()
        Cluster(registry_b, "node-b", takeover_seconds=60).join()
        for death in range(registry_a.max_claims):  # on one node and the other, the last on node a
            node = (registry_a, registry_b)[(registry_a.max_claims - 1 - death) % 2]
            first, *_ = node.outbox_due(10)
            assert first.recipient == "desk0@example.org"
            assert node.outbox_still_mine(first.id)  # its sending begins, and the node dies in it
            run_out(node)
        OutboxSender(config_b, registry_b).deliver_due()
        mails = {mail.recipient: mail for mail in registry_b.outbox()}
        assert mails["desk0@example.org"].status == "dead"
        assert "never finished" in (mails["desk0@example.org"].last_error or "")
        assert mails["desk1@example.org"].status == mails["desk2@example.org"].status == "sent"
        assert sorted(r.rcpt_tos for r in relay.received) == [["desk1@example.org"], ["desk2@example.org"]]
    finally:
        registry_a.close()
        registry_b.close()


def test_a_node_name_is_no_pattern(tmp_path: Path, pg_url: str, relay: SmtpSink) -> None:
    _, registry_a = configured(tmp_path / "a", relay.address, pg_url)
    _, registry_b = configured(tmp_path / "b", relay.address, pg_url)
    try:
        letter_with_mail(registry_a, 1)
        alive = Cluster(registry_a, "gw-1", takeover_seconds=60)
        alive.join()
        [mail] = registry_a.outbox_due(10)
        assert alive.acquire("imap:liaison/INBOX")
        assert Cluster(registry_b, "gw_1", takeover_seconds=60).join() == 0
        assert [m.claimed_by for m in registry_a.outbox()] == [alive.instance]
        assert alive.holds("imap:liaison/INBOX")
    finally:
        registry_a.close()
        registry_b.close()


def test_a_mail_retried_a_thousand_times_keeps_its_backoff_and_blocks_no_other(tmp_path: Path,
                                                                              relay: SmtpSink) -> None:
    """Greylisted for days with a short ceiling, a mail reaches a thousand attempts: its next try is
    still the ceiling away (2**attempts no longer fits a float), and the mails after it are sent."""
    config, registry = configured(tmp_path, relay.address)
    try:
        letter_with_mail(registry, 3)
        with registry.write() as conn:
            conn.execute(update(OutboxMail).where(OutboxMail.recipient == "desk0@example.org").values(attempts=1100))
        relay.rcpt_answers["desk0@example.org"] = "451 4.7.1 greylisted, try again later"
        OutboxSender(config, registry).deliver_due()
        mails = {mail.recipient: mail for mail in registry.outbox()}
        assert mails["desk0@example.org"].status == "pending" and mails["desk0@example.org"].attempts == 1101
        assert "451" in (mails["desk0@example.org"].last_error or "")
        assert mails["desk1@example.org"].status == mails["desk2@example.org"].status == "sent"
        assert sorted(r.rcpt_tos for r in relay.received) == [["desk1@example.org"], ["desk2@example.org"]]
    finally:
        registry.close()


def test_a_mail_larger_than_the_relay_takes_is_dead_lettered_at_once_saying_so(tmp_path: Path) -> None:
    """The relay announces its SIZE: a mail over it is never accepted, however often it is tried,
    and is not the relay refusing the gateway: dead-lettered at once, the sizes named."""
    relay = SmtpSink(size_limit=600).start()
    config, registry = configured(tmp_path, relay.address)
    try:
        letter_with_mail(registry, 1)
        OutboxSender(config, registry).deliver_due()
        [mail] = registry.outbox()
        assert (mail.status, mail.attempts) == ("dead", 1) and relay.received == []
        assert f"more than the 600 bytes relay {relay.address} takes" in (mail.last_error or "")
    finally:
        relay.stop()
        registry.close()
