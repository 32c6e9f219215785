"""IMAP intake: every configured folder of every account, watched by a thread of its own.

For each folder the watcher connects, selects, settles what is new, then
waits with IDLE (re-issued well before the server's 29-minute limit) or
sleeps until the next poll. Messages are fetched in batches with BODY.PEEK (so
nothing is marked \\Seen early) and written to the spool; one sync makes the
batch durable; only then is the account's action (seen, move, delete, keep)
applied on the server and each UID recorded in the ledger with its spool item.
The spool workers register the items. A crash anywhere in between makes the
next sync fetch a message again, and the registry recognises the second copy
by its source key: no duplicate, and nothing skipped.

One folder failing (a refused login, a dropped connection, a message the
server cannot deliver) never holds up another: each watcher reconnects on its
own with exponential backoff and jitter.

With several nodes on one registry, each (account, folder) is leased (registry/leases.py):
only the node holding the lease connects to it; the others wait, and one of them takes it
over within `[cluster] takeover_seconds` of the holder's last heartbeat. The node names
itself to the server (IMAP ID) so that the server's log tells the nodes apart.
"""
from __future__ import annotations

import hashlib
import logging
import random
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta, timezone
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from gateway.config import Config, ImapAccount
from gateway.faults import checkpoint
from gateway.registry import RegistryUnavailable
from gateway.registry.leases import Cluster
from gateway.registry.ledger import PENDING, FolderState, ImapLedger, Settled
from gateway.spool import Spool, SpoolError, SpoolItem

log = logging.getLogger("gateway.imap")

_HEADERS = b"BODY[HEADER]"


class AccountError(Exception):
    """Something about the account or the connection; the watcher backs off and reconnects."""


class TokenError(AccountError):
    """The token command failed: an operator must look (expired consent, revoked secret)."""


class LeaseLost(Exception):
    """Another node watches this folder now (this node was cut off for longer than the takeover time)."""


def _chunks(values: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def read_password(config: Config, account: ImapAccount) -> str:
    import os

    if account.password_env is not None:
        value = os.environ.get(account.password_env)
        if value is None:
            raise AccountError(f"the environment variable {account.password_env} is not set")
        return value
    path = config.resolve(account.password_file)
    assert path is not None
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise AccountError(f"cannot read the password file {path}: {exc.strerror}") from None


def fetch_token(account: ImapAccount, timeout: float = 30.0) -> str:
    """Run the configured command for a fresh OAuth2 access token (on every connect)."""
    assert account.token_command
    try:
        proc = subprocess.run(account.token_command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TokenError(f"token command {account.token_command[0]} failed: {exc}") from None
    token = proc.stdout.strip()
    if proc.returncode != 0 or not token:
        detail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        raise TokenError(f"token command {account.token_command[0]} failed (exit {proc.returncode})"
                           f"{': ' + detail if detail else ', no token printed'}")
    return token


def connect(config: Config, account: ImapAccount) -> IMAPClient:
    timeout = config.model.imap.timeout_seconds
    context = None
    if account.tls != "plain":
        context = ssl.create_default_context(cafile=str(config.resolve(account.tls_ca_file))
                                             if account.tls_ca_file else None)
    try:
        client = IMAPClient(account.host, port=account.effective_port, ssl=account.tls == "implicit",
                            ssl_context=context, timeout=timeout)
    except (OSError, IMAPClientError) as exc:
        raise AccountError(f"cannot connect to {account.host}:{account.effective_port}: {exc}") from None
    try:
        if account.tls == "starttls":
            client.starttls(context)
        if account.auth == "password":
            client.login(account.username, read_password(config, account))
        elif account.auth == "xoauth2":
            client.oauth2_login(account.username, fetch_token(account))
        else:
            client.oauthbearer_login(account.username, fetch_token(account))
    except LoginError as exc:
        _close(client)
        raise AccountError(f"login as {account.username} refused: {_text(exc)}") from None
    except AccountError:
        _close(client)
        raise
    except (OSError, IMAPClientError) as exc:
        _close(client)
        raise AccountError(f"{account.host}: {_text(exc)}") from None
    return client


def _text(exc: BaseException) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return text or type(exc).__name__


def _close(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:
        try:
            client.shutdown()
        except Exception:
            pass


class FolderWatcher:
    """One account's one folder: connect, settle what is new, wait, again."""

    def __init__(self, config: Config, account: ImapAccount, folder: str, spool: Spool,
                 ledger: ImapLedger, wake: Callable[[], None] | None = None, cluster: Cluster | None = None,
                 after: list[FolderWatcher] | None = None):
        """`after`: the watchers this one replaces (a reload changed its account), which it waits
        for before it takes the folder."""
        self.config = config
        self.cluster = cluster
        self.lease = f"imap:{account.name}/{folder}"
        self.account = account
        self.folder = folder
        self.spool = spool
        self.ledger = ledger
        self.name = f"{account.name}/{folder}"
        self._stop = threading.Event()
        self._wake_spool = wake
        self._thread = threading.Thread(target=self._run, name=f"imap {self.name}", daemon=True)
        self.last_error: str | None = None
        self._failures = 0  # consecutive failed attempts, reset by a successful sync
        self._suspects: set[int] = set()  # UIDs fetched during a dropped connection
        self._after = list(after or [])
        self._synced_from: int | None = None  # the ledger's UIDVALIDITY when the present sync began

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the watcher thread --------------------------------------------
    def _run(self) -> None:
        # The watchers this one replaces end after their current batch and then let the folder's
        # lease go: taken before that, the lease (held by this node either way) would be let go
        # under this watcher, for another node to take while this one watches.
        for earlier in self._after:
            while earlier.alive() and not self._stop.is_set():
                earlier.join(0.5)
        if self._stop.is_set():
            return  # stopped before it watched: the lease is not its own to let go
        self._after = []
        try:
            self._watching()
        finally:
            if self.cluster is not None:
                try:
                    self.cluster.release(self.lease)
                except RegistryUnavailable:
                    pass  # it expires on its own

    def waits_for(self) -> list[FolderWatcher]:
        """The watchers a replacement of this one must see end: itself, and those it still waits for
        (a second reload within one batch replaces a watcher that has not started yet)."""
        return [self, *self._after]

    def _leased(self) -> bool:
        """Hold the folder's lease, or wait while another node holds it (True once held)."""
        if self.cluster is None:
            return True
        waited = False
        while not self._stop.is_set():
            try:
                if self.cluster.acquire(self.lease):
                    if waited:
                        log.info("%s: taken over from another node", self.name)
                    return True
            except RegistryUnavailable as exc:
                log.warning("%s: cannot take the folder's lease: %s", self.name, exc)
                self._stop.wait(self.cluster.takeover.total_seconds() / 3)
                continue
            if not waited:
                log.info("%s: watched by another node; this one takes over if that one stops", self.name)
                waited = True
            self._stop.wait(self.cluster.takeover.total_seconds() / 3)
        return False

    def _watching(self) -> None:
        settings = self.config.model.imap
        while not self._stop.is_set():
            if not self._leased():
                return
            client: IMAPClient | None = None
            try:
                client = connect(self.config, self.account)
                if self.cluster is not None and client.has_capability("ID"):
                    client.id_({"name": "correspondence-gateway", "x-node": self.cluster.name})
                self._watch(client)
            except LeaseLost as exc:
                log.warning("%s: %s", self.name, exc)
            except (AccountError, RegistryUnavailable, IMAPClientError, OSError) as exc:
                self._failures += 1
                failures = self._failures
                if isinstance(exc, AccountError | RegistryUnavailable):
                    reason = str(exc)
                elif isinstance(exc, IMAPClientAbortError | OSError):
                    reason = f"connection lost: {_text(exc)}"
                else:
                    reason = f"server error: {_text(exc)}"
                delay = min(settings.reconnect_max_seconds, settings.reconnect_min_seconds * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)  # jitter: many watchers must not reconnect in step
                # Logged once per change of reason, then every tenth attempt: no flood.
                if reason != self.last_error or failures % 10 == 0:
                    log.error("%s%s: %s; retrying in %.0f s (attempt %d)",
                              "ALERT " if isinstance(exc, TokenError) else "", self.name, reason, delay, failures)
                self.last_error = reason
                self.ledger.failed(self.account.name, self.folder, reason)
                self._stop.wait(delay)
            except Exception as exc:  # a bug must not end the watcher
                self._failures += 1
                failures = self._failures
                log.exception("%s: unexpected error", self.name)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.ledger.failed(self.account.name, self.folder, self.last_error)
                self._stop.wait(settings.reconnect_max_seconds if failures > 3 else settings.reconnect_min_seconds)
            finally:
                if client is not None:
                    _close(client)

    def _watch(self, client: IMAPClient) -> None:
        settings = self.config.model.imap
        use_idle = self.account.idle and client.has_capability("IDLE")
        if self.account.idle and not use_idle:
            log.info("%s: the server offers no IDLE; polling every %.0f s", self.name, self.account.poll_seconds)
        while not self._stop.is_set():
            # Before every sync as after it: the lease can run out while this watcher waits for its
            # next poll (its node cut off from the registry), and another node watch the folder since.
            self._still_held()
            self._sync(client)
            self._still_held()
            if self._failures:
                log.info("%s: working again after %d failed attempt(s)", self.name, self._failures)
                self._failures = 0
            self.last_error = None
            if not use_idle:
                self._stop.wait(self.account.poll_seconds)
                client.noop()  # keeps the connection honest: a dead one raises here
                continue
            # IDLE until the server announces a message, the poll interval passes (a safety
            # net for servers that forget to tell), or the renewal time is reached.
            limit = min(self.account.poll_seconds, settings.idle_renew_seconds)
            try:
                client.idle()
            except IMAPClientError as exc:
                log.warning("%s: IDLE refused (%s); polling every %.0f s instead", self.name, _text(exc),
                            self.account.poll_seconds)
                use_idle = False
                continue
            started = time.monotonic()
            try:
                while not self._stop.is_set() and time.monotonic() - started < limit:
                    responses = client.idle_check(timeout=1)
                    if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                        break
            finally:
                client.idle_done()

    def _still_held(self) -> None:
        if self.cluster is not None and not self.cluster.holds(self.lease):
            raise LeaseLost("another node watches this folder now; this one lets it go")

    # -- settling a folder ---------------------------------------------
    def _sync(self, client: IMAPClient) -> None:
        account = self.account
        info = client.select_folder(self.folder)
        uidvalidity = int(info[b"UIDVALIDITY"])
        state = self.ledger.folder(account.name, self.folder)
        self._synced_from = state.uidvalidity if state is not None else None
        if state is not None and state.uidvalidity == uidvalidity and (
                undone := self.ledger.pending_actions(account.name, self.folder, uidvalidity)):
            # Spooled at an earlier sync, whose action on the server failed or was cut short.
            if orphans := self._spooled_elsewhere(uidvalidity, undone):
                undone = {uid: action for uid, action in undone.items() if uid not in orphans}
            if undone:
                log.info("%s: doing the server's action (%s) left undone on %d message(s)", self.name,
                         ", ".join(sorted(set(undone.values()))), len(undone))
                self._act(client, uidvalidity, undone)
        if state is not None and state.uidvalidity != uidvalidity:
            # The folder was recreated or the server rebuilt its index: its UIDs mean nothing now.
            # Every message is looked at again (the registry knows the ones it has by their bytes),
            # within the first import's scope and as backlog, like the first import: what was
            # registered, or left out by the first import, must not be answered as new mail.
            # With first_import = "unseen", read mail that came in since the last sync is taken too
            # (from the day before it, to be safe). That day is kept in the ledger with the import's
            # position: an import resumed on another connection must search the same scope, or read
            # mail that arrived since the last sync would be passed over for good.
            everything = client.search(["ALL"])
            log.warning("%s: UIDVALIDITY changed from %d to %d; checking the %d message(s) in the folder again "
                        "as backlog (no receipts)", self.name, state.uidvalidity, uidvalidity, len(everything))
            # Actions left undone under the old UIDVALIDITY can never be done by those UIDs: they
            # are closed out, and a message still there gets its action under the new one.
            if void := self.ledger.void_actions(account.name, self.folder, uidvalidity):
                log.warning("%s: the server's action (%s) left undone on %d message(s) under UIDVALIDITY %d is "
                            "void; those still in the folder get it now", self.name,
                            ", ".join(f"{action}: {count}" for action, count in sorted(void.items())),
                            sum(void.values()), state.uidvalidity)
            seen_since = state.seen_since  # a reset in the middle of a reset's import keeps the earlier day
            if state.last_poll_at is not None:
                since = state.last_poll_at.astimezone(timezone.utc).date() - timedelta(days=1)
                seen_since = since if seen_since is None else min(seen_since, since)
            newest = max(everything, default=0) or None
            state = FolderState(uidvalidity, 0, newest, backlog_until=newest, seen_since=seen_since)
        elif state is None:
            everything = client.search(["ALL"])
            newest = max(everything, default=0) or None
            state = FolderState(uidvalidity, 0, newest, backlog_until=newest)
            log.info("%s: first sync of %d message(s), importing %s", self.name, len(everything),
                     {"all": "all of them", "unseen": "the unseen ones",
                      "since": f"those since {account.import_since}"}[account.first_import])
        if state.importing_until:
            # The first import: what the account chose, up to the newest UID seen at its start.
            # Resumable: the position records how far it got.
            criteria_for: dict[str, list[Any]] = {"all": [], "unseen": ["UNSEEN"],
                                                  "since": ["SINCE", account.import_since]}
            criteria = criteria_for[account.first_import]
            if state.seen_since is not None and account.first_import == "unseen":
                criteria = ["OR", "UNSEEN", "SINCE", state.seen_since]  # ("since" takes such mail anyway)
            # No CHARSET argument: many servers refuse one, and these criteria are ASCII.
            found = client.search([*criteria, "UID", f"{state.last_uid + 1}:{state.importing_until}"])
            uids = sorted(u for u in found if state.last_uid < u <= state.importing_until)
            self._settle_all(client, uidvalidity, uids, state, backlog=True)
            if self._stop.is_set():
                return
            state = FolderState(uidvalidity, state.importing_until, None, backlog_until=state.backlog_until)
            self.ledger.settle(account.name, self.folder, uidvalidity, [], last_uid=state.last_uid, backlog=0,
                               backlog_until=state.backlog_until, was=self._synced_from)
            log.info("%s: first import done", self.name)
        found = client.search(["UID", f"{state.last_uid + 1}:*"])
        uids = sorted(u for u in found if u > state.last_uid)
        self._settle_all(client, uidvalidity, uids, state, backlog=False)

    def _spooled_elsewhere(self, uidvalidity: int, undone: dict[int, str]) -> list[int]:
        """Messages with their action still to do, spooled by another node (or an earlier state
        directory) whose spool never registered them: that node stopped or died between its spool
        and its action, and its spool may never come back. Doing the action now (a move, a delete)
        would leave them only there: they are fetched and spooled again here first (this sync's
        next pass takes them, as it takes a failed fetch), and should that node come back, the
        registry recognises its copy by the source key."""
        unregistered = self.ledger.unregistered(self.account.name, self.folder, uidvalidity, sorted(undone))
        held = self.spool.held() if unregistered else set()
        orphans = sorted(uid for uid, item in unregistered.items()
                         if item not in held and not self.spool.quarantines(item))
        if orphans:
            log.warning("%s: %d message(s) spooled elsewhere and not registered are fetched again before their "
                        "action", self.name, len(orphans))
            self.ledger.fetch_again(self.account.name, self.folder, uidvalidity, orphans,
                                    "spooled on another node (or state directory) and not registered: fetched again")
        return orphans

    def _settle_all(self, client: IMAPClient, uidvalidity: int, uids: list[int], state: FolderState,
                    *, backlog: bool) -> None:
        retrying = self.ledger.attempts(self.account.name, self.folder, uidvalidity)
        todo = sorted(set(uids) | set(retrying))
        last_uid, remaining = state.last_uid, len(todo)
        if not todo:
            self.ledger.settle(self.account.name, self.folder, uidvalidity, [], last_uid=last_uid, backlog=0,
                               importing_until=state.importing_until, backlog_until=state.backlog_until,
                               seen_since=state.seen_since, was=self._synced_from)
            return
        for batch in _chunks(todo, self.config.model.imap.fetch_batch):
            if self._stop.is_set():
                return
            self._still_held()  # a long import outlasts a fail-over, after which another node may hold the folder
            remaining -= len(batch)
            last_uid = max(last_uid, max(batch))
            self._settle_batch(client, uidvalidity, batch, retrying, backlog=backlog, last_uid=last_uid,
                               remaining=remaining, state=state)

    def _settle_batch(self, client: IMAPClient, uidvalidity: int, uids: list[int], retrying: dict[int, tuple[int, str]],
                      *, backlog: bool, last_uid: int, remaining: int, state: FolderState) -> None:
        account, limit = self.account, self.config.model.imap.max_message_bytes
        max_attempts = self.config.model.imap.max_attempts
        floor = self.config.model.spool.min_free_bytes
        if floor and self.spool.free_bytes() < floor:
            # Nothing is fetched, so nothing is flagged, moved or deleted: the messages wait on the
            # server, and the next attempt after the backoff takes them once space has returned.
            raise AccountError(f"the spool's disk has less than min_free_bytes ({floor}) free; "
                               "messages stay on the server until space returns")
        # Messages that broke the connection too often are not fetched again.
        failing: dict[int, tuple[int, str]] = {
            u: retrying[u] for u in uids if u in retrying and retrying[u][0] >= max_attempts}
        uids = [u for u in uids if u not in failing]
        # Size and body in one round trip; the body is cut at the limit, so an oversize
        # message is never downloaded whole (its headers are fetched on their own).
        partial = b"BODY[]<0>"
        found, failing_bodies, gone = self._fetch(
            client, uidvalidity, uids, [b"RFC822.SIZE", f"BODY.PEEK[]<0.{limit + 1}>".encode()], partial, retrying)
        failing.update(failing_bodies)
        sizes = {uid: int(data[b"RFC822.SIZE"]) for uid, data in found.items()}
        # RFC822.SIZE is the server's word, and some servers give an estimate: the body is asked for
        # up to limit + 1 bytes, so one that came back longer than the limit was cut, whatever the
        # size said. Such a message is oversize too (headers only, its original never deleted).
        oversize = [uid for uid, data in found.items() if sizes[uid] > limit or len(data[partial]) > limit]
        for uid in oversize:
            sizes[uid] = max(sizes[uid], len(found[uid][partial]))
        bodies = {uid: data[partial] for uid, data in found.items() if uid not in oversize}
        found_heads, failing_heads, gone_heads = self._fetch(client, uidvalidity, oversize, [b"BODY.PEEK[HEADER]"],
                                                             _HEADERS, retrying)
        heads = {uid: data[_HEADERS] for uid, data in found_heads.items()}
        failing.update(failing_heads)
        gone |= gone_heads

        items: list[tuple[int, SpoolItem]] = []
        try:
            for uid, raw in [*bodies.items(), *heads.items()]:
                # A message of the first import (or of the import after a UIDVALIDITY change) is
                # backlog also when it is fetched only later, in a new-mail pass that retries it.
                in_import = state.backlog_until is not None and uid <= state.backlog_until
                flags = ["backlog"] if backlog or in_import else []
                if uid in heads:
                    flags.append("oversize")
                    log.warning("ALERT %s: UID %d is %d bytes, over the %d-byte limit: registered from its "
                                "headers only, flagged 'oversize'; the full message stays on the server",
                                self.name, uid, sizes[uid], limit)
                items.append((uid, self._spool_item(uidvalidity, uid, raw, flags, sizes[uid])))
        except SpoolError as exc:
            for _, item in items:
                self.spool.discard(item)
            raise AccountError(f"cannot spool: {exc}") from None
        # Whatever could not be fetched, time after time, is set aside and the folder moves on.
        given_up = {uid: reason for uid, (attempts, reason) in failing.items() if attempts >= max_attempts}
        for uid, reason in given_up.items():
            del failing[uid]
            self._quarantine_unfetchable(uidvalidity, uid, reason)

        # One sync makes the whole batch durable; then it is the spool workers' to register.
        if items:
            try:
                self.spool.sync()
            except OSError as exc:
                for _, item in items:
                    self.spool.discard(item)
                raise AccountError(f"cannot make the spool durable: {exc}") from None
            self.spool.release_all([item for _, item in items])
            if self._wake_spool is not None:
                self._wake_spool()
        # Recorded as spooled, with the server's action still to do, before it is done: should the
        # action fail (a folder over quota) or the process stop before it, the messages are not
        # fetched and spooled again at every sync; the action is done again at the next one.
        planned = self._planned([uid for uid, _ in items], oversize=set(heads))
        if moving := [uid for uid, action in planned.items() if action == "move"]:
            # Fetched again after another node's spool was lost in the middle of its move: its copy
            # may be in move_to already, looked for there as a begun COPY's, not made twice.
            for uid in self.ledger.copies_begun(account.name, self.folder, uidvalidity, moving):
                planned[uid] = "copy"
        settled = [Settled(uid, "spooled", planned[uid] if planned[uid] == "keep" else PENDING + planned[uid], None,
                           item.id, sizes.get(uid)) for uid, item in items]
        settled += [Settled(uid, "unfetchable", "none", reason=reason) for uid, reason in given_up.items()]
        # A message that was failing and is gone from the server now (expunged, moved away) is
        # settled as gone: otherwise it would be retried, and counted as failing, for ever.
        settled += [Settled(uid, "gone", "none", reason="no longer on the server")
                    for uid in sorted(gone) if uid in retrying]
        recorded = self.ledger.settle(account.name, self.folder, uidvalidity, settled, last_uid=last_uid,
                                      backlog=remaining, failing=failing, importing_until=state.importing_until,
                                      backlog_until=state.backlog_until, seen_since=state.seen_since,
                                      was=self._synced_from)
        checkpoint("before-imap-action")
        # The batch's fetch may have outlasted the folder's lease (a long batch, the registry cut off
        # meanwhile): the node watching the folder now does the actions recorded as still to do.
        # Done here as well, a move without MOVE would put each message into move_to twice.
        self._still_held()
        # Done on this connection's UIDs, which its session keeps valid, whatever the ledger says now.
        self._act(client, uidvalidity, {uid: action for uid, action in planned.items() if action != "keep"})
        if not recorded:
            raise LeaseLost(f"the folder was synced meanwhile under a new UIDVALIDITY (this sync's is {uidvalidity}): "
                            "its position is not set back; this sync ends here")
        self._suspects.difference_update(planned)
        self._suspects.difference_update(given_up)
        self._suspects.difference_update(gone)
        if planned or given_up:
            log.info("%s: %d message(s) taken, %d still to do%s", self.name, len(planned), remaining,
                     f", {len(failing)} failing" if failing else "")

    def _fetch(self, client: IMAPClient, uidvalidity: int, uids: list[int], what: list[bytes], key: bytes,
               retrying: dict[int, tuple[int, str]]
               ) -> tuple[dict[int, dict[bytes, Any]], dict[int, tuple[int, str]], set[int]]:
        """Fetch a batch so that one bad message fails alone; returns each UID's data, the UIDs
        that failed (attempts, reason) and those that are gone.

        A batch the server refuses is fetched again one message at a time. A
        batch during which the server drops the connection marks its messages
        as suspects, fetched one at a time from then on, so the one that
        drops it is found, counted in the ledger, and in the end given up.
        A UID that is simply gone (expunged since the search) is in the third result only.
        """
        if not uids:
            return {}, {}, set()
        singles = [u for u in uids if u in self._suspects or u in retrying]
        batch = [u for u in uids if u not in singles]
        got: dict[int, dict[bytes, Any]] = {}
        if batch:
            try:
                data = client.fetch(batch, what)
            except (IMAPClientAbortError, OSError):  # a reset or a timeout is an OSError, not an abort
                self._suspects.update(batch)
                raise
            except IMAPClientError:
                singles += batch
            else:
                got = {uid: d for uid, d in data.items() if d.get(key) is not None}
                singles += [u for u in batch if u not in got]
        failing: dict[int, tuple[int, str]] = {}
        gone: set[int] = set()
        for uid in sorted(singles):
            attempts = retrying.get(uid, (0, ""))[0] + 1
            try:
                one = client.fetch([uid], what).get(uid, {})
                if one.get(key) is not None:
                    got[uid] = one
                    continue
                if uid not in client.search(["UID", str(uid)]):
                    gone.add(uid)  # expunged meanwhile
                    continue
                reason = "the server returned no content"
            except (IMAPClientAbortError, OSError) as exc:
                reason = f"the server dropped the connection fetching it: {_text(exc)}"
                log.warning("%s: UID %d could not be fetched (attempt %d of %d): %s", self.name, uid, attempts,
                            self.config.model.imap.max_attempts, reason)
                self.ledger.failing(self.account.name, self.folder, uidvalidity, uid, attempts, reason)
                raise
            except IMAPClientError as exc:
                reason = f"the server refused to deliver it: {_text(exc)}"
            log.warning("%s: UID %d could not be fetched (attempt %d of %d): %s", self.name, uid, attempts,
                        self.config.model.imap.max_attempts, reason)
            failing[uid] = (attempts, reason)
        return got, failing, gone

    def _spool_item(self, uidvalidity: int, uid: int, raw: bytes, flags: list[str], size: int) -> SpoolItem:
        source_key = f"imap:{self.account.name}:{self.folder}:{uidvalidity}:{uid}"
        meta: dict[str, Any] = {
            "channel": "email", "intake": "imap", "source_key": source_key, "flags": flags,
            "imap": {"account": self.account.name, "folder": self.folder, "uidvalidity": uidvalidity,
                     "uid": uid, "size": size},
        }
        if self.account.department:
            meta["department_hint"] = self.account.department
        if not self.account.authentication_results:
            # Recorded with the item: a mailbox outside the organisation's MTAs proves no sender.
            meta["imap"]["authentication_results"] = False
        writer = self.spool.writer(meta)
        writer.write(raw)
        # Made durable by one sync for the whole batch.
        return writer.commit(claim=True, durable=False)

    def _quarantine_unfetchable(self, uidvalidity: int, uid: int, reason: str) -> None:
        # Nothing to keep but the fact: a spool quarantine entry makes it visible
        # next to the other items an operator must look at, with the server identity.
        meta = {"channel": "email", "intake": "imap",
                "source_key": f"imap:{self.account.name}:{self.folder}:{uidvalidity}:{uid}",
                "imap": {"account": self.account.name, "folder": self.folder, "uidvalidity": uidvalidity,
                         "uid": uid}}
        why = f"IMAP {self.name} UID {uid} could not be fetched: {reason}"
        self.spool.quarantine_new(b"", meta, why)
        log.error("ALERT %s: UID %d given up after %d attempts and quarantined (the message stays on the "
                  "server): %s", self.name, uid, self.config.model.imap.max_attempts, reason)

    def _planned(self, uids: list[int], *, oversize: set[int]) -> dict[int, str]:
        """The account's action for each message now safe with us; an oversize message, of which
        only the headers are ours, is never deleted (it is marked \\Seen instead)."""
        after = self.account.after
        return {uid: "seen" if after == "delete" and uid in oversize else after for uid in uids}

    def _act(self, client: IMAPClient, uidvalidity: int, planned: dict[int, str]) -> None:
        """Apply the planned actions on the server, then record them done. "expunge" is what is
        left of a move without MOVE whose COPY was done: the originals' expunge; "copy" a move
        without MOVE whose COPY was begun, perhaps done, and not recorded done."""
        by_action: dict[str, list[int]] = {}
        for uid, action in sorted(planned.items()):
            by_action.setdefault(action, []).append(uid)
        found: dict[int, tuple[int, int]] = {}
        if seen := by_action.get("seen"):
            client.add_flags(seen, [b"\\Seen"], silent=True)
        begun = by_action.get("copy", [])
        if moved := sorted([*by_action.get("move", []), *begun]):
            target = self.account.move_to
            assert target is not None
            if not client.folder_exists(target):
                try:
                    client.create_folder(target)
                    log.info("%s: created folder %s", self.name, target)
                except IMAPClientError:
                    if not client.folder_exists(target):  # another watcher may have just made it
                        raise
            # A COPY may have been done without being recorded (cut off, or the registry gone, right
            # after it), or a move cut off between its COPY and the expunge was closed out when the
            # folder got a new UIDVALIDITY: such a message is in move_to already, and its original
            # is only expunged. Copied (or moved) again, it would be in move_to twice.
            found = self._copied_before(client, uidvalidity, moved, target, begun=set(begun))
            if found:
                moved = [uid for uid in moved if uid not in found]
                by_action.setdefault("expunge", []).extend(found)
            if moved and client.has_capability("MOVE"):
                client.move(moved, target)
            elif moved:
                # Recorded before the COPY, and again once it is done: cut off in between, the next
                # sync looks in move_to before copying again.
                self.ledger.actions_done(self.account.name, self.folder, uidvalidity,
                                         {uid: PENDING + "copy" for uid in moved})
                client.copy(moved, target)
                # Recorded before the expunge: cut off before it, the next sync must not copy again
                # (a second copy of each message in move_to), only expunge.
                self.ledger.actions_done(self.account.name, self.folder, uidvalidity,
                                         {uid: PENDING + "expunge" for uid in moved})
                by_action.setdefault("expunge", []).extend(moved)
        if copied := by_action.get("expunge"):
            self._expunge(client, sorted(copied))
            if earlier := {uid: key for uid, key in found.items() if key[0] != uidvalidity}:
                self.ledger.copies_found(self.account.name, self.folder, uidvalidity, earlier)
        if deleted := by_action.get("delete"):
            self._expunge(client, deleted)
        if planned:
            done = {uid: "move" if action in ("expunge", "copy") else action for uid, action in planned.items()}
            self.ledger.actions_done(self.account.name, self.folder, uidvalidity, done)

    def _copied_before(self, client: IMAPClient, uidvalidity: int, uids: list[int], target: str,
                       *, begun: set[int]) -> dict[int, tuple[int, int]]:
        """Those of `uids` whose copy is in `target` already: UID -> that copy's (UIDVALIDITY, UID)
        in the ledger. Looked for are the copies of `begun` (a COPY begun and not recorded done), and
        those a move cut off under an earlier UIDVALIDITY left there. Known by size, then by the
        SHA-256 of the bytes on both sides (of the headers, for a message over max_message_bytes,
        which is never downloaded whole); each copy answers for one original. Nothing to look at
        (one query) unless there is such a copy."""
        copies = self.ledger.void_copies(self.account.name, self.folder, uidvalidity)
        there_then: int | None = None
        if copies:
            # Only a message that was in the folder when its UIDVALIDITY changed can be the original
            # of such a copy: mail that arrived since is never looked for in move_to.
            state = self.ledger.folder(self.account.name, self.folder)
            if state is not None and state.uidvalidity == uidvalidity:
                there_then = state.backlog_until
        uids = [uid for uid in uids if uid in begun or (there_then is not None and uid <= there_then)]
        if not uids:
            return {}
        sizes = {uid: int(data[b"RFC822.SIZE"]) for uid, data in client.fetch(uids, [b"RFC822.SIZE"]).items()}
        copies.update({(uidvalidity, uid): sizes[uid] for uid in begun if uid in sizes})
        waiting: dict[int, list[tuple[int, int]]] = {}
        for key, size in sorted(copies.items()):
            waiting.setdefault(size, []).append(key)
        candidates = [uid for uid in uids if sizes.get(uid) in waiting]
        if not candidates:
            return {}
        mine = self._fingerprints(client, {uid: sizes[uid] for uid in candidates})
        there: Counter[str] = Counter()
        client.select_folder(target, readonly=True)
        try:
            for size in sorted({sizes[uid] for uid in candidates}):
                same = client.search(["LARGER", str(size - 1), "SMALLER", str(size + 1)])
                there.update(self._fingerprints(client, dict.fromkeys(same, size)).values())
        finally:
            info = client.select_folder(self.folder)
        if int(info[b"UIDVALIDITY"]) != uidvalidity:
            raise AccountError(f"the folder's UIDVALIDITY changed during the sync (from {uidvalidity} to "
                               f"{int(info[b'UIDVALIDITY'])})")
        found = {}
        # A begun COPY's own copy first; then those of earlier UIDVALIDITYs, whichever of that size.
        for uid in sorted(candidates, key=lambda u: u not in begun):
            pool = waiting[sizes[uid]]
            mate = (uidvalidity, uid) if uid in begun else next((k for k in pool if k[0] != uidvalidity), None)
            if mate is not None and mate in pool and (digest := mine.get(uid)) and there[digest] > 0:
                there[digest] -= 1
                pool.remove(mate)
                found[uid] = mate
        if found:
            log.info("%s: %d message(s) are in %s already, copied by an earlier attempt: their originals are "
                     "only expunged", self.name, len(found), target)
        return found

    def _fingerprints(self, client: IMAPClient, sizes: dict[int, int]) -> dict[int, str]:
        """The SHA-256 of each message's bytes (of its headers, with its size, when over the limit)."""
        limit = self.config.model.imap.max_message_bytes
        digests: dict[int, str] = {}
        for part, key, uids in ((b"BODY.PEEK[]", b"BODY[]", [u for u, s in sizes.items() if s <= limit]),
                                (b"BODY.PEEK[HEADER]", _HEADERS, [u for u, s in sizes.items() if s > limit])):
            if uids:
                for uid, data in client.fetch(uids, [part]).items():
                    if data.get(key) is not None:
                        digests[uid] = hashlib.sha256(b"%d\n" % sizes[uid] + data[key]).hexdigest()
        return digests

    def _expunge(self, client: IMAPClient, uids: list[int]) -> None:
        client.add_flags(uids, [b"\\Deleted"], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
            return
        # Without UIDPLUS, EXPUNGE removes every message flagged \\Deleted in the folder, also one a
        # person flagged that the gateway has not fetched yet (or left out): it would be gone
        # unregistered. Such messages lose the flag for the moment of the EXPUNGE and get it back
        # right after. Cut off in between, one stays on the server without its flag: nothing is
        # lost, and it is fetched as usual if it is in the folder's scope.
        ours = set(uids)
        others = [u for u in client.search(["DELETED"]) if u not in ours]
        if others:
            client.remove_flags(others, [b"\\Deleted"], silent=True)
        try:
            client.expunge()
        finally:
            if others:
                client.add_flags(others, [b"\\Deleted"], silent=True)


class ImapIntake:
    """All the watchers; started and stopped by the daemon."""

    def __init__(self, config: Config, spool: Spool, ledger: ImapLedger,
                 wake: Callable[[], None] | None = None, *, cluster: Cluster | None = None):
        self.cluster = cluster
        self.spool = spool
        self.ledger = ledger
        self._wake = wake
        self.config = config
        self.watchers: dict[tuple[str, str], tuple[ImapAccount, FolderWatcher]] = {}

    def start(self) -> list[str]:
        for account in self.config.model.imap.accounts:
            for folder in account.folders:
                self._start(account, folder)
        return [w.name for _, w in self.watchers.values()]

    def _start(self, account: ImapAccount, folder: str, after: list[FolderWatcher] | None = None) -> None:
        watcher = FolderWatcher(self.config, account, folder, self.spool, self.ledger, self._wake, self.cluster,
                                after)
        self.watchers[(account.name, folder)] = (account, watcher)
        watcher.start()

    def reload(self, config: Config) -> None:
        """Restart the watchers whose account changed; start new ones, stop removed ones."""
        self.config = config
        wanted = {(a.name, f): a for a in config.model.imap.accounts for f in a.folders}
        replaced: dict[tuple[str, str], list[FolderWatcher]] = {}
        for key, (account, watcher) in list(self.watchers.items()):
            if wanted.get(key) != account:
                # Not joined here: the old watcher ends after its current batch, and its
                # replacement waits for that in its own thread.
                watcher.stop()
                replaced[key] = watcher.waits_for()
                del self.watchers[key]
        for key, account in wanted.items():
            if key not in self.watchers:
                self._start(account, key[1], replaced.get(key))
        for _, watcher in self.watchers.values():
            watcher.config = config

    def stop_soon(self) -> None:
        """Tell every watcher to end after its current batch; `stop` waits for them."""
        for _, watcher in self.watchers.values():
            watcher.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every watcher, waiting at most `timeout` seconds in all. A watcher still in a batch
        then (a slow server, a large message) keeps its folder's lease when the node hands back what
        it holds: it may still fetch, move or expunge until the process ends, and another node
        syncing the folder beside it could copy a message into move_to a second time. The lease
        expires `takeover_seconds` after the node's last beat, when this process has long ended."""
        self.stop_soon()
        deadline = time.monotonic() + timeout
        # Also the watchers a reload replaced that are still finishing their batch: their
        # replacements, told to stop while waiting for them, end at once.
        watching = [w for _, watcher in self.watchers.values() for w in watcher.waits_for()]
        for watcher in watching:
            watcher.join(max(0.0, deadline - time.monotonic()))
        for watcher in watching:
            if watcher.alive():
                log.warning("%s: still busy after the stop's wait of %.0f s; its folder is left to expire, not "
                            "handed over while it may still be acted on", watcher.name, timeout)
                if self.cluster is not None:
                    self.cluster.keep(watcher.lease)

    def alive(self) -> bool:
        return all(w.alive() for _, w in self.watchers.values())

