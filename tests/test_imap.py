"""IMAP intake against a real Dovecot started by the fixtures."""
from __future__ import annotations

import json
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Daemon, Gateway, Notify, make_message, wait_for
from dovecot_server import DovecotServer

pytestmark = pytest.mark.timeout(300)


def account(dovecot: DovecotServer, user: str, name: str = "liaison", *, password_file: Path | None = None,
            **settings: object) -> str:
    """One [[imap.accounts]] table, polling fast by default."""
    values: dict[str, object] = {"name": name, "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
                                 "username": user, "idle": False, "poll_seconds": 0.5}
    if password_file is not None:
        values["password_file"] = str(password_file)
    values.update(settings)
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n[[imap.accounts]]\n" + "\n".join(lines) + "\n"


IMAP_SETTINGS = """
[imap]
reconnect_min_seconds = 0.2
reconnect_max_seconds = 2
max_attempts = 2
"""


class Mailbox:
    """A fresh Dovecot user with a password file for the gateway."""

    def __init__(self, dovecot: DovecotServer, tmp: Path):
        self.dovecot = dovecot
        self.user = f"u{uuid.uuid4().hex[:10]}"
        self.password = uuid.uuid4().hex
        dovecot.add_user(self.user, self.password)
        self.password_file = tmp / f"{self.user}.pass"
        self.password_file.write_text(self.password + "\n")

    def account(self, name: str = "liaison", **settings: object) -> str:
        return account(self.dovecot, self.user, name, password_file=self.password_file, **settings)

    def deliver(self, raw: bytes, folder: str = "INBOX", flags: tuple[str, ...] = ()) -> int:
        return self.dovecot.deliver(self.user, raw, folder, flags)

    def flags(self, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
        with self.dovecot.client(self.user) as imap:
            if not imap.folder_exists(folder):
                return {}
            imap.select_folder(folder, readonly=True)
            return {uid: tuple(f) for uid, f in imap.get_flags(imap.search(["ALL"])).items()}

    def subjects(self, folder: str = "INBOX") -> list[str]:
        with self.dovecot.client(self.user) as imap:
            imap.select_folder(folder, readonly=True)
            data = imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
            return sorted(d[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().split(":", 1)[1].strip()
                          for d in data.values())


@pytest.fixture
def mailbox(dovecot: DovecotServer, tmp_path: Path) -> Mailbox:
    return Mailbox(dovecot, tmp_path)


def configure(tmp_path: Path, *accounts: str, settings: str = IMAP_SETTINGS) -> Gateway:
    return Gateway(tmp_path, extra=settings + "".join(accounts))


def start(gateway: Gateway, notify: Notify, **env: str) -> Daemon:
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path), **env)
    notify.wait_for("READY=1")
    return daemon


def letters_by_subject(gateway: Gateway) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for letter in gateway.list_json():
        out.setdefault(str(letter["subject"]), []).append(letter)
    return out


def wait_letters(gateway: Gateway, count: int, timeout: float = 60) -> dict[str, list[dict]]:
    wait_for(lambda: len(gateway.list_json()) >= count, timeout, f"{count} letter(s)")
    return letters_by_subject(gateway)


def status(gateway: Gateway) -> dict:
    return json.loads(gateway.run("status", "--json", check=False).stdout)


SEEN = b"\\Seen"


def test_polling_registers_each_message_once_and_marks_it_seen(mailbox: Mailbox, tmp_path: Path,
                                                              notify: Notify) -> None:
    mailbox.deliver(make_message(1, subject="before start", to="orders@example.org"))
    gateway = configure(tmp_path, mailbox.account(department="business"))
    daemon = start(gateway, notify)
    try:
        letters = wait_letters(gateway, 1)
        mailbox.deliver(make_message(2, subject="after start", to="orders@example.org"))
        letters = wait_letters(gateway, 2)
        assert sorted(letters) == ["after start", "before start"]
        first, second = letters["before start"][0], letters["after start"][0]
        detail = gateway.show_json(str(first["number"]))
        assert detail["intake"] == "imap"
        # The mailbox's department hint applies when no department address is among the recipients.
        assert {first["department"], second["department"]} == {"business"}
        # A first import is a backlog (never answered automatically); later mail is not.
        assert "backlog" in detail["flags"]
        later = gateway.show_json(str(second["number"]))
        assert "backlog" not in later["flags"]
        assert {"reason": "backlog import"} in [e["details"] for e in detail["events"]
                                                 if e["action"] == "receipt-suppressed"]
        assert [m["recipient"] for m in detail["outbox"] if m["kind"] == "receipt"] == []
        assert [m["recipient"] for m in later["outbox"] if m["kind"] == "receipt"] == ["alice@partner.example"]
        wait_for(lambda: all(SEEN in f for f in mailbox.flags().values()), 20, "both marked \\Seen")
        health = status(gateway)["imap"]
        assert health[0]["account"] == "liaison" and health[0]["folder"] == "INBOX"
        assert health[0]["last_poll_at"] and health[0]["last_error"] is None and health[0]["backlog"] == 0
    finally:
        daemon.stop()
    # A restart does not bring anything in again.
    daemon = start(gateway, notify)
    try:
        mailbox.deliver(make_message(3, subject="third"))
        letters = wait_letters(gateway, 3)
        assert sorted(len(v) for v in letters.values()) == [1, 1, 1]
    finally:
        daemon.stop()


def test_idle_brings_a_message_in_without_waiting_for_a_poll(mailbox: Mailbox, tmp_path: Path,
                                                             notify: Notify) -> None:
    gateway = configure(tmp_path, mailbox.account(idle=True, poll_seconds=600))
    daemon = start(gateway, notify)
    try:
        wait_for(lambda: status(gateway)["imap"][0]["last_poll_at"], 30, "the first sync")
        mailbox.deliver(make_message(1, subject="pushed by IDLE"))
        letters = wait_letters(gateway, 1, timeout=20)
        assert list(letters) == ["pushed by IDLE"]
    finally:
        daemon.stop()


@pytest.mark.parametrize("after", ["move", "delete", "keep"])
def test_server_actions(after: str, mailbox: Mailbox, tmp_path: Path, notify: Notify) -> None:
    extra = {"move_to": "Registered/Done"} if after == "move" else {}
    for n in range(3):
        mailbox.deliver(make_message(n, subject=f"action {n}"))
    gateway = configure(tmp_path, mailbox.account(after=after, **extra))
    daemon = start(gateway, notify)
    try:
        wait_letters(gateway, 3)
        if after == "move":
            wait_for(lambda: len(mailbox.flags("Registered/Done")) == 3 and not mailbox.flags(), 20,
                     "three messages moved to a newly created folder")
            assert mailbox.subjects("Registered/Done") == ["action 0", "action 1", "action 2"]
        elif after == "delete":
            wait_for(lambda: not mailbox.flags(), 20, "the inbox emptied")
        else:
            wait_for(lambda: status(gateway)["imap"][0]["last_uid"] == 3, 20, "the position recorded")
            assert all(SEEN not in f for f in mailbox.flags().values())
    finally:
        daemon.stop()
    if after == "keep":
        # Left untouched, and still not imported twice after a restart.
        daemon = start(gateway, notify)
        try:
            mailbox.deliver(make_message(9, subject="action 9"))
            letters = wait_letters(gateway, 4)
            assert all(len(v) == 1 for v in letters.values())
            assert len(mailbox.flags()) == 4
        finally:
            daemon.stop()


def test_sigkill_between_spool_and_server_action_gives_no_duplicate(mailbox: Mailbox, tmp_path: Path,
                                                                    notify: Notify) -> None:
    for n in range(3):
        mailbox.deliver(make_message(n, subject=f"crash {n}"))
    gateway = configure(tmp_path, mailbox.account(after="seen"))
    crashing = gateway.start(GATEWAY_CRASH_AT="before-imap-action")
    assert crashing.wait(60) == -signal.SIGKILL
    # The letters are registered, but the server was not told: nothing is \Seen yet.
    assert all(SEEN not in f for f in mailbox.flags().values())
    daemon = start(gateway, notify)
    try:
        wait_for(lambda: all(SEEN in f for f in mailbox.flags().values()), 30, "all marked \\Seen after restart")
        # A message spooled but not yet registered when the process died is registered from the
        # spool after the restart, possibly a moment after the server was told.
        letters = wait_letters(gateway, 3)
        assert sorted(letters) == ["crash 0", "crash 1", "crash 2"]
        assert all(len(v) == 1 for v in letters.values())
    finally:
        daemon.stop()


def test_uidvalidity_change_neither_reimports_nor_skips(mailbox: Mailbox, tmp_path: Path, notify: Notify) -> None:
    old = [make_message(n, subject=f"partner {n}") for n in range(2)]
    for raw in old:
        mailbox.deliver(raw, folder="Partners")
    gateway = configure(tmp_path, mailbox.account(folders=["Partners"], after="keep"))
    daemon = start(gateway, notify)
    try:
        wait_letters(gateway, 2)
        before = status(gateway)["imap"][0]["uidvalidity"]
        # The folder deleted and recreated: same messages, a new one, and a new UIDVALIDITY.
        with mailbox.dovecot.client(mailbox.user) as imap:
            imap.delete_folder("Partners")
        for raw in [*old, make_message(7, subject="partner new")]:
            mailbox.deliver(raw, folder="Partners")
        letters = wait_letters(gateway, 3)
        wait_for(lambda: status(gateway)["imap"][0]["uidvalidity"] != before, 20, "the new UIDVALIDITY")
        wait_for(lambda: status(gateway)["imap"][0]["last_uid"] == 3, 20, "the folder settled")
        letters = letters_by_subject(gateway)
        assert sorted(letters) == ["partner 0", "partner 1", "partner new"]
        assert all(len(v) == 1 for v in letters.values())
        # The old messages were recognised by their bytes and recorded as arrivals, not letters.
        events = [e["action"] for e in gateway.show_json(str(letters["partner 0"][0]["number"]))["events"]]
        assert "duplicate-arrival" in events
    finally:
        log = daemon.stop()
    assert "UIDVALIDITY changed" in log


def test_dovecot_restarted_mid_run(mailbox: Mailbox, tmp_path: Path, notify: Notify) -> None:
    gateway = configure(tmp_path, mailbox.account(idle=True, poll_seconds=2))
    daemon = start(gateway, notify)
    try:
        mailbox.deliver(make_message(1, subject="before restart"))
        wait_letters(gateway, 1)
        mailbox.dovecot.restart()
        mailbox.deliver(make_message(2, subject="after restart"))
        letters = wait_letters(gateway, 2)
        assert sorted(letters) == ["after restart", "before restart"]
    finally:
        log = daemon.stop()
    assert "working again" in log


def test_a_message_the_server_cannot_deliver_is_quarantined_and_the_rest_go_on(
        mailbox: Mailbox, tmp_path: Path, notify: Notify) -> None:
    for n in range(3):
        mailbox.deliver(make_message(n, subject=f"poison test {n}"))
    # Make the middle message unreadable to Dovecot's mail process: every FETCH of it fails.
    cur = sorted((mailbox.dovecot.user_dir(mailbox.user) / "Maildir" / "cur").iterdir())
    new = sorted((mailbox.dovecot.user_dir(mailbox.user) / "Maildir" / "new").iterdir())
    files = [*cur, *new]
    assert len(files) == 3
    [poison] = [f for f in files if b"Subject: poison test 1" in f.read_bytes()]
    poison.chmod(0)
    gateway = configure(tmp_path, mailbox.account(after="seen"))
    daemon = start(gateway, notify)
    try:
        letters = wait_letters(gateway, 2)
        assert sorted(letters) == ["poison test 0", "poison test 2"]
        wait_for(lambda: gateway.spool_files("quarantine"), 30, "the unfetchable message quarantined")
        quarantined = json.loads(gateway.run("quarantine", "list", "--json").stdout)
        assert len(quarantined) == 1 and "could not be fetched" in quarantined[0]["reason"]
        # The mailbox moved on: later mail still arrives.
        mailbox.deliver(make_message(5, subject="poison test 5"))
        wait_letters(gateway, 3)
        assert status(gateway)["imap"][0]["failing"] == 1
    finally:
        log = daemon.stop()
    assert "ALERT" in log and "given up" in log


def test_one_account_with_a_wrong_password_does_not_stop_another(dovecot: DovecotServer, tmp_path: Path,
                                                                  notify: Notify) -> None:
    good, bad = Mailbox(dovecot, tmp_path), Mailbox(dovecot, tmp_path)
    bad.password_file.write_text("not-the-password\n")
    good.deliver(make_message(1, subject="good account"))
    bad.deliver(make_message(2, subject="bad account"))
    gateway = configure(tmp_path, bad.account("broken"), good.account("working"))
    daemon = start(gateway, notify)
    try:
        letters = wait_letters(gateway, 1)
        assert list(letters) == ["good account"]
        wait_for(lambda: any(r["last_error"] for r in status(gateway)["imap"]), 20, "the failure in the status")
        rows = {r["account"]: r for r in status(gateway)["imap"]}
        assert "login" in rows["broken"]["last_error"] and "refused" in rows["broken"]["last_error"]
        assert rows["working"]["last_error"] is None and rows["working"]["last_poll_at"]
        shown = gateway.run("status", check=False)
        table = shown.stdout
        assert shown.returncode == 1 and "needs attention:\n  IMAP folder broken/INBOX failing since " in table, table
        assert "gateway status" not in table  # the table prints, the server's words in it as they came
        assert "[AUTHENTICATIONFAI" in table
    finally:
        log = daemon.stop()
    assert "broken/INBOX: login as" in log
    assert "not-the-password" not in log and good.password not in log


def test_password_from_the_environment(mailbox: Mailbox, tmp_path: Path, notify: Notify) -> None:
    text = account(mailbox.dovecot, mailbox.user, password_env="LIAISON_IMAP_PASSWORD")
    mailbox.deliver(make_message(1, subject="env password"))
    gateway = configure(tmp_path, text)
    daemon = start(gateway, notify, LIAISON_IMAP_PASSWORD=mailbox.password)
    try:
        assert list(wait_letters(gateway, 1)) == ["env password"]
    finally:
        log = daemon.stop()
    assert mailbox.password not in log


def test_oversize_is_registered_from_its_headers_and_left_on_the_server(mailbox: Mailbox, tmp_path: Path,
                                                                        notify: Notify) -> None:
    mailbox.deliver(make_message(1, subject="huge report", size=20_000))
    mailbox.deliver(make_message(2, subject="small note"))
    settings = IMAP_SETTINGS + "max_message_bytes = 8192\n"
    gateway = configure(tmp_path, mailbox.account(after="delete"), settings=settings)
    daemon = start(gateway, notify)
    try:
        letters = wait_letters(gateway, 2)
        huge = gateway.show_json(str(letters["huge report"][0]["number"]))
        assert "oversize" in huge["flags"]
        assert "oversize" not in gateway.show_json(str(letters["small note"][0]["number"]))["flags"]
        # The small one is deleted as configured; the oversize original stays, marked \Seen.
        wait_for(lambda: len(mailbox.flags()) == 1, 20, "the small message deleted")
        assert [SEEN in f for f in mailbox.flags().values()] == [True]
    finally:
        log = daemon.stop()
    assert "ALERT" in log and "over the 8192-byte limit" in log


def test_first_import_only_unseen(mailbox: Mailbox, tmp_path: Path, notify: Notify) -> None:
    mailbox.deliver(make_message(1, subject="old and read"), flags=("\\Seen",))
    mailbox.deliver(make_message(2, subject="old unread"))
    gateway = configure(tmp_path, mailbox.account(first_import="unseen", after="keep"))
    daemon = start(gateway, notify)
    try:
        assert list(wait_letters(gateway, 1)) == ["old unread"]
        # After the first import every new message counts, read or not.
        mailbox.deliver(make_message(3, subject="new but read"), flags=("\\Seen",))
        letters = wait_letters(gateway, 2)
        assert sorted(letters) == ["new but read", "old unread"]
    finally:
        daemon.stop()


def token_command(tmp_path: Path, token: str) -> list[str]:
    """A token helper such as a site would configure: prints a fresh access token."""
    path = tmp_path / "token.txt"
    path.write_text(token + "\n")
    return [sys.executable, "-c", f"print(open({str(path)!r}).read().strip())"]


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_oauth2_login_checked_by_the_server(mechanism: str, mailbox: Mailbox, tmp_path: Path,
                                            notify: Notify) -> None:
    token = mailbox.dovecot.issue_token(mailbox.user)
    mailbox.deliver(make_message(1, subject=f"via {mechanism}"))
    text = account(mailbox.dovecot, mailbox.user, auth=mechanism, token_command=token_command(tmp_path, token))
    gateway = configure(tmp_path, text)
    daemon = start(gateway, notify)
    try:
        assert list(wait_letters(gateway, 1)) == [f"via {mechanism}"]
    finally:
        log = daemon.stop()
    assert token not in log


def test_a_failing_token_command_is_an_alert_and_retried(mailbox: Mailbox, tmp_path: Path,
                                                         notify: Notify) -> None:
    revoked = mailbox.dovecot.issue_token(mailbox.user)
    mailbox.dovecot.revoke(revoked)
    failing = [sys.executable, "-c", "import sys; sys.exit('token service down')"]
    text = (account(mailbox.dovecot, mailbox.user, "tokenless", auth="xoauth2", token_command=failing)
            + account(mailbox.dovecot, mailbox.user, "revoked", auth="xoauth2",
                      token_command=token_command(tmp_path, revoked), folders=["Other"]))
    gateway = configure(tmp_path, text)
    daemon = start(gateway, notify)
    try:
        wait_for(lambda: sum(1 for r in status(gateway)["imap"] if r["last_error"]) == 2, 30, "both failing")
    finally:
        log = daemon.stop()
    assert "ALERT tokenless/INBOX: token command" in log and "token service down" in log
    assert "revoked/Other: login as" in log
    assert log.count("tokenless/INBOX: token command") < 10  # not one line per attempt


def test_imap_configuration_errors_name_the_key(tmp_path: Path, dovecot: DovecotServer) -> None:
    bad = (account(dovecot, "x", "a", host="imap.example.org", password_env="X")
           + account(dovecot, "y", "b", after="move", password_env="Y", department="nobody")
           + account(dovecot, "z", "a", password_env="Z", password_file="/nonexistent"))
    gateway = configure(tmp_path, bad)
    proc = gateway.run("check-config", check=False)
    assert proc.returncode == 1
    err = proc.stderr
    assert "imap.accounts[0]: tls = \"plain\" is allowed only towards loopback" in err
    assert "imap.accounts[1]: after = \"move\" needs move_to" in err
    assert "imap.accounts[2]: give exactly one of password_env and password_file" in err


def test_imap_department_and_duplicate_names_are_checked(tmp_path: Path, dovecot: DovecotServer) -> None:
    bad = (account(dovecot, "x", "same", password_env="X", department="nobody")
           + account(dovecot, "y", "same", password_env="Y"))
    proc = configure(tmp_path, bad).run("check-config", check=False)
    assert "imap.accounts[0].department: no department with id 'nobody'" in proc.stderr
    assert "imap.accounts[1].name: duplicate account name 'same'" in proc.stderr



@pytest.fixture(scope="module")
def plain_dovecot() -> Iterator[DovecotServer]:
    """A server that offers neither IDLE nor MOVE (nor UIDPLUS), as some still do."""
    server = DovecotServer(capabilities="IMAP4rev1 LITERAL+ SASL-IR NAMESPACE")
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def test_without_idle_or_move_it_polls_and_copies_then_expunges(plain_dovecot: DovecotServer, tmp_path: Path,
                                                                 notify: Notify) -> None:
    box = Mailbox(plain_dovecot, tmp_path)
    with plain_dovecot.client(box.user) as imap:
        assert not imap.has_capability("IDLE") and not imap.has_capability("MOVE")
    box.deliver(make_message(1, subject="no idle 1"))
    gateway = configure(tmp_path, box.account(idle=True, poll_seconds=1, after="move", move_to="Done"))
    daemon = start(gateway, notify)
    try:
        wait_letters(gateway, 1)
        box.deliver(make_message(2, subject="no idle 2"))
        assert sorted(wait_letters(gateway, 2)) == ["no idle 1", "no idle 2"]
        wait_for(lambda: len(box.flags("Done")) == 2 and not box.flags(), 20, "both copied and expunged")
    finally:
        log = daemon.stop()
    assert "the server offers no IDLE; polling every 1 s" in log


def test_what_the_server_sees_peek_no_charset_and_idle_renewed(mailbox: Mailbox, tmp_path: Path,
                                                               notify: Notify) -> None:
    """Checked in Dovecot's own record of the session (rawlog), not in the gateway's."""
    rawlog = mailbox.dovecot.record_traffic(mailbox.user)
    mailbox.deliver(make_message(1, subject="watched"))
    settings = IMAP_SETTINGS + "idle_renew_seconds = 1\n"
    gateway = configure(tmp_path, mailbox.account(idle=True, poll_seconds=600, first_import="since",
                                                  import_since="2026-01-01"), settings=settings)
    daemon = start(gateway, notify)
    try:
        wait_letters(gateway, 1)
        try:
            wait_for(lambda: sum(p.read_text().count(" IDLE\n") for p in rawlog.glob("*.in")) >= 3, 20,
                     "IDLE issued again after the renewal time")
        except AssertionError:
            raise AssertionError({p.name: p.read_text()[-500:] for p in rawlog.iterdir()}) from None
    finally:
        daemon.stop()
    sent = "".join(p.read_text() for p in sorted(rawlog.glob("*.in")))
    commands = [line.split(" ", 1)[1] for line in sent.splitlines() if " " in line]
    fetches = [c for c in commands if c.startswith("UID FETCH")]
    assert fetches and all("BODY.PEEK[" in c or "BODY[" not in c for c in fetches), fetches
    searches = [c for c in commands if c.startswith("UID SEARCH")]
    assert searches and not any("CHARSET" in c for c in searches), searches
    assert any("SINCE" in c for c in searches)
    # \Seen is set only after the message was fetched (and made durable).
    store = next(i for i, c in enumerate(commands) if c.startswith("UID STORE") and "\\Seen" in c)
    assert store > next(i for i, c in enumerate(commands) if c.startswith("UID FETCH") and "BODY.PEEK[]" in c)
    assert sent.count("\nDONE\n") >= 2


def test_a_mailbox_at_an_outside_provider_proves_no_sender_by_authentication_results(
        dovecot: DovecotServer, tmp_path: Path, notify: Notify) -> None:
    """The organisation's MTAs remove incoming Authentication-Results naming their authserv-id, so
    at the top of mail they delivered such a header is theirs. A mailbox at an outside provider
    gets mail nobody cleaned: a sender there writes the organisation's verdict at the top of
    their mail, and it must prove nothing. The same mail in an account of the organisation's own
    servers is proven by it."""
    own, outside = Mailbox(dovecot, tmp_path), Mailbox(dovecot, tmp_path)
    trust = '\n[trust]\ntrusted_authserv_ids = ["mx.example.org"]\nnameservers = ["127.0.0.1:9"]\n'
    gateway = configure(tmp_path, own.account("own"), outside.account("outside", authentication_results=False),
                        settings=IMAP_SETTINGS + trust)
    for box, subject in ((own, "through our MTA"), (outside, "from the outside mailbox")):
        box.deliver(b"Authentication-Results: mx.example.org; dmarc=pass header.from=example.org\r\n"
                    + make_message(1, subject=subject, sender="Head <business.head@example.org>"))
    daemon = start(gateway, notify)
    try:
        letters = wait_letters(gateway, 2)
        proven = gateway.show_json(str(letters["through our MTA"][0]["number"]))
        assert proven["trust"]["authenticated"] and proven["trust"]["method"] == "authentication-results"
        forged = gateway.show_json(str(letters["from the outside mailbox"][0]["number"]))
        trust_seen = forged["trust"]
        assert not trust_seen["authenticated"] and trust_seen["method"] is None
        assert "unverified-internal-sender" in forged["flags"]
        [ignored] = trust_seen["authentication_results"]["ignored"]
        assert ignored["authserv_id"] == "mx.example.org"
        assert ignored["reason"].startswith("fetched from a mailbox not behind the organisation's MTAs")
    finally:
        daemon.stop()
