"""Delivering the outbox through the relay: retries with backoff, dead letters with an alert.

Mails are claimed, never picked (registry/outbox.py, registry/leases.py): with several nodes
on one registry each mail is sent by the node that claimed it, once.

A row is marked sent only after the relay accepted it, so a crash between the
two sends it again at the next start (with the same Message-ID): at least
once, never lost. Connection failures and 4xx answers are retried, doubling
the wait each time; a 5xx answer, or no delivery within `give_up_hours`,
dead-letters the mail and says so in the log (ALERT) and on the letter. An
unreadable reply-keys file holds every mail back (ALERT), never dead-letters it.

A mail larger than the SIZE the relay announces in its EHLO (RFC 1870) would be refused however
often it is tried: it is dead-lettered at once, naming both sizes.

Mail to an address whose local part is not ASCII (`李明@example.org`) goes with SMTPUTF8
(RFC 6531) when the relay offers it in its EHLO; a relay that does not cannot carry it, however
often it is tried, so such a mail is dead-lettered at once, saying so.
"""
from __future__ import annotations

import logging
import os
import random
import smtplib
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

from gateway.addressing import needs_smtputf8
from gateway.archive import ArchiveError
from gateway.config import Config
from gateway.faults import checkpoint
from gateway.outbound import circulation, outward, replies
from gateway.outbound.compose import (ComposeError, deliverable, notification, password_reset, receipt, refusal,
                                      reminder, sealed)
from gateway.registry import Registry, RegistryUnavailable
from gateway.registry.models import Letter, OutboxMail
from gateway.runner import Runner
from gateway.spool import DamagedItem, read_raw
from gateway.stages.tokens import KeyFileError, keyring

log = logging.getLogger("gateway.outbox")

BATCH = 50


# Mail about a person, not a letter, by kind: how each is written.
ABOUT_NO_LETTER: dict[str, Callable[[Config, OutboxMail], EmailMessage]] = {"password-reset": password_reset}


class Refused(Exception):
    def __init__(self, code: int, text: str):
        self.code = code
        super().__init__(f"{code} {text}")


class OutboxSender(Runner):
    """Delivers what is due; one pass is one batch, and the next pass comes when the
    earliest retry is due, the poll interval passes, or something wakes it."""

    def __init__(self, config: Config, registry: Registry):
        super().__init__("outbox", config, interval=config.model.outbound.poll_seconds, logger=log,
                         expected=(RegistryUnavailable,))
        self.registry = registry
        self._told_no_relay = False

    @property
    def stop_timeout(self) -> float:  # type: ignore[override]
        return float(self.config.model.outbound.timeout_seconds + 5)  # a delivery under way may finish

    def run_once(self) -> bool | float:
        wait = self.config.model.outbound.poll_seconds
        if not self.config.model.outbound.relay:
            if not self._told_no_relay:
                counts = self.registry.outbox_counts()
                log.warning("no outbound relay configured ([outbound] relay): %d mail(s) wait in the outbox",
                            counts.get("pending", 0))
                self._told_no_relay = True
            return wait
        self._told_no_relay = False
        if self.deliver_due() == BATCH:
            return True  # more waiting
        due = self.registry.outbox_next_due()
        if due is not None:
            wait = max(0.05, min(wait, (due - datetime.now(timezone.utc)).total_seconds()))
        return wait

    # -- one round --------------------------------------------------------
    def deliver_due(self) -> int:
        """Try every mail that is due (up to a batch); returns how many were looked at."""
        due = self.registry.outbox_due(BATCH)
        if not due:
            return 0
        settings = self.config.model.outbound
        try:
            keyring(self.config)  # every mail carries a signed loop marker
        except KeyFileError as exc:
            # Not any mail's fault, and mended by a person: everything waits, nothing is given up.
            self._keys_broken(due, exc)
            return len(due)
        give_up = timedelta(hours=settings.give_up_hours)
        now = datetime.now(timezone.utc)
        live = []
        for mail in due:
            if mail.claims - mail.attempts >= self.registry.max_claims:
                # Sendings begun minus attempts ended: the times its node died with it. A mail that
                # takes the sender down is not tried again.
                self._dead(mail, f"its sending began {mail.claims - mail.attempts} times and never finished (the "
                                 "node sending it stopped each time)")
            elif now - mail.created_at > give_up:
                self._dead(mail, f"not delivered within {settings.give_up_hours:g} hours: {mail.last_error or '-'}")
            else:
                live.append(mail)
        if not live:
            return len(due)
        try:
            client = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            # The relay refusing us is not any mail's fault: nothing is dead-lettered for it.
            error = _describe(exc)
            if isinstance(getattr(exc, "smtp_code", None), int):
                log.error("ALERT outbox: relay %s refuses the gateway: %s; %d mail(s) wait", settings.relay,
                          error, len(live))
            for mail in live:
                self._later(mail, f"relay {settings.relay}: {error}", begun=False)
            return len(due)
        n = 0
        begun: int | None = None  # the mail whose sending began and has not ended
        try:
            for n, mail in enumerate(live):
                if self.stopping:
                    self.registry.outbox_release([m.id for m in live[n:]])
                    break
                if not self.registry.outbox_still_mine(mail.id):
                    log.warning("outbox: %s #%d: claim lost (this node was cut off from the registry); another "
                                "node sends it", mail.kind, mail.id)
                    continue
                begun = mail.id
                try:
                    self._send(client, mail)
                except (smtplib.SMTPServerDisconnected, OSError) as exc:
                    # The connection is gone: this one and the rest wait for the next round.
                    for rest in live[n:]:
                        self._later(rest, f"relay {settings.relay}: {_describe(exc)}", begun=rest.id == begun)
                    return len(due)
                begun = None
        except BaseException:
            # The registry gone, say: the mails not finished are given back at once for any node
            # to send (this one takes its own back at its next round if the registry cannot be
            # told now). The one under way may have reached the relay: at least once, never lost.
            try:
                self.registry.outbox_release([m.id for m in live[n:]], begun=begun)
            except Exception:
                log.warning("outbox: %d claimed mail(s) not given back now; taken up at the next round",
                            len(live) - n)
            raise
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()
        return len(due)

    def _connect(self) -> smtplib.SMTP:
        settings = self.config.model.outbound
        host, _, port = settings.relay.rpartition(":")
        context = None
        if settings.tls != "none":
            context = ssl.create_default_context(cafile=str(self.config.resolve(settings.tls_ca_file))
                                                 if settings.tls_ca_file else None)
        client: smtplib.SMTP
        if settings.tls == "implicit":
            client = smtplib.SMTP_SSL(host, int(port), local_hostname=settings.helo_name,
                                      timeout=settings.timeout_seconds, context=context)
        else:
            client = smtplib.SMTP(host, int(port), local_hostname=settings.helo_name,
                                  timeout=settings.timeout_seconds)
        try:
            client.ehlo()
            if settings.tls == "starttls":
                client.starttls(context=context)
                client.ehlo()
            if settings.username is not None:
                password = os.environ.get(settings.password_env or "")
                if password is None:
                    raise smtplib.SMTPAuthenticationError(0, f"environment variable {settings.password_env} is not set")
                client.login(settings.username, password)
        except BaseException:
            client.close()
            raise
        return client

    def _send(self, client: smtplib.SMTP, mail: OutboxMail) -> None:
        letter = self.registry.letter_by_id(mail.letter_id) if mail.letter_id is not None else None
        relay = self.config.model.outbound.relay
        try:
            if letter is None and mail.kind not in ABOUT_NO_LETTER:
                raise ComposeError(f"letter {mail.letter_id} is not in the register")
            recipient = deliverable(mail.recipient)
            utf8 = needs_smtputf8(recipient)
            if utf8 and not client.has_extn("smtputf8"):
                # Not a passing fault: this relay never carries it (`gateway outbox retry` once it does).
                self._dead(mail, f"relay {relay} does not offer SMTPUTF8 (RFC 6531), without which no mail "
                                 f"reaches {mail.recipient}: its local part is not ASCII")
                return
            data = self._compose(mail, letter)
        except KeyFileError as exc:  # damaged since the round began: the installation's fault
            self._keys_broken([mail], exc, begun=True)
            return
        except RegistryUnavailable:
            raise  # composing reads the registry too (a reply, an archived original): not the mail's fault
        except Exception as exc:  # this mail's fault, never the whole outbox's
            self._dead(mail, f"cannot be written: {type(exc).__name__}: {exc}")
            return
        size_limit = _announced_size(client)
        if size_limit and len(data) > size_limit:
            # Refused at MAIL FROM whatever is tried (RFC 1870), and no fault of the gateway's.
            self._dead(mail, f"{len(data)} bytes, more than the {size_limit} bytes relay {relay} takes "
                             "(the SIZE in its EHLO)")
            return
        sender = self.config.model.outbound.from_address
        try:
            refused = client.sendmail(sender, [recipient], data, mail_options=["SMTPUTF8"] if utf8 else ())
            if refused:
                code, text = refused[recipient]
                raise Refused(code, text.decode(errors="replace"))
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients.get(recipient, (550, b"refused"))
            self._answered(mail, code, text.decode(errors="replace"))
            return
        except smtplib.SMTPSenderRefused as exc:
            # MAIL FROM refused: the relay's view of us, not of this mail; retried, with an alert.
            error = f"relay refused the sender {sender}: {_describe(exc)}"
            log.error("ALERT outbox: %s", error)
            self._later(mail, error)
            return
        except smtplib.SMTPResponseException as exc:  # DATA refused, and the like
            self._answered(mail, exc.smtp_code, _describe(exc).partition(" ")[2])
            return
        except Refused as exc:
            self._answered(mail, exc.code, str(exc))
            return
        checkpoint("after-relay-accepted")  # the relay has it, the outbox does not know yet
        self.registry.outbox_sent(mail.id, f"250 accepted by {relay}")
        log.info("%s: %s sent to %s", letter.number if letter else "-", mail.kind, mail.recipient)

    def _compose(self, mail: OutboxMail, letter: Letter | None) -> bytes:
        if mail.kind in ABOUT_NO_LETTER:
            return sealed(self.config, mail.kind, ABOUT_NO_LETTER[mail.kind](self.config, mail))
        if letter is None:
            raise ComposeError(f"a {mail.kind} mail about no letter")
        if mail.kind in ("receipt", "feedback"):
            return sealed(self.config, mail.kind, receipt(self.config, mail, letter, mail.kind))
        if mail.kind in ("reminder", "escalation"):
            return sealed(self.config, mail.kind, reminder(self.config, mail, letter))
        if mail.kind == "refused-command":
            return sealed(self.config, mail.kind, refusal(self.config, mail, letter))
        if mail.kind in outward.KINDS:
            return sealed(self.config, mail.kind, outward.compose(self.config, mail, letter))
        if mail.kind in replies.KINDS:
            return replies.compose(self.config, self.registry, mail, letter)
        if mail.kind in circulation.KINDS:
            return sealed(self.config, mail.kind, circulation.compose(self.config, mail, letter))
        raw = self._original(letter) if letter.confidentiality != "confidential" else None
        try:
            return sealed(self.config, mail.kind, notification(self.config, mail, letter, raw))
        except ComposeError:
            raise
        except Exception as exc:
            # An original the email package cannot re-serialise as message/rfc822 (hostile
            # headers): attach its bytes as a file instead; the department still hears of it.
            log.warning("%s: original attached as a file (%s: %s)", letter.number, type(exc).__name__, exc)
            return sealed(self.config, mail.kind, notification(self.config, mail, letter, raw, original_as_file=True))

    def _original(self, letter: Letter) -> bytes | None:
        if letter.raw_size > self.config.model.outbound.attach_original_max_bytes:
            return None
        path = self.config.state_dir / letter.raw_path
        try:
            if not letter.raw_released:
                return read_raw(path)  # checked against its seal
            # Read from its archive package: the archive's code is loaded only for such a letter.
            from gateway.archive.packer import read_original
            return read_original(self.config, self.registry, letter)
        except (OSError, DamagedItem, ArchiveError) as exc:
            log.error("ALERT outbox: %s: original %s unreadable, notification sent without it: %s",
                      letter.number, path, exc)
            return None

    def _keys_broken(self, mails: list[OutboxMail], exc: KeyFileError, *, begun: bool = False) -> None:
        log.error("ALERT outbox: the reply keys cannot be read (%s); %d mail(s) wait until the file is "
                  "mended or restored", exc, len(mails))
        for mail in mails:
            self._later(mail, f"the reply keys cannot be read: {exc}", begun=begun)

    def _answered(self, mail: OutboxMail, code: int, text: str) -> None:
        error = f"relay answered {code} {text.strip()[:300]}"
        if 400 <= code < 500:
            self._later(mail, error)
        else:
            self._dead(mail, error)

    def _later(self, mail: OutboxMail, error: str, *, begun: bool = True) -> None:
        settings = self.config.model.outbound
        # The doubling stops at 2**40: after a thousand attempts (greylisting, a 60 s ceiling, two
        # days) 2**attempts would no longer fit a float, and one mail would stop the whole outbox.
        delay = min(settings.retry_min_seconds * 2.0 ** min(mail.attempts, 40), settings.retry_max_seconds)
        delay *= random.uniform(0.9, 1.1)  # many mails failing together do not retry together
        next_try = datetime.now(timezone.utc) + timedelta(seconds=delay)
        attempts = self.registry.outbox_retry_later(mail.id, error, next_try, begun=begun)
        log.warning("outbox: %s #%d to %s not delivered (attempt %d), next try in %.0f s: %s",
                    mail.kind, mail.id, mail.recipient, attempts, delay, error)

    def _dead(self, mail: OutboxMail, error: str) -> None:
        if not self.registry.outbox_dead(mail.id, error):
            return  # another node holds it now, and decides
        log.error("ALERT outbox: %s #%d to %s dead-lettered: %s (gateway outbox retry %d queues it again)",
                  mail.kind, mail.id, mail.recipient, error, mail.id)


def _announced_size(client: smtplib.SMTP) -> int:
    """The largest message the relay said it takes (EHLO SIZE); 0: it did not say."""
    value = client.esmtp_features.get("size", "").strip() if client.has_extn("size") else ""
    return int(value) if value.isdigit() else 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{exc.smtp_code} {text}"
    return str(exc) or type(exc).__name__
