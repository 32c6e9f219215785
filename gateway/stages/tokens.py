"""Signed reply addresses and the signed loop marker.

Every notification, reminder and escalation is sent with a reply address of its own,

    Reply-To: <local>+<number>.<token>@<domain>      (local and domain from [outbound] from_address)

where the token is a key id and an HMAC-SHA256 over the letter number and the recipient's
address, in lower-case base32 (address-safe, and mail systems that change the case of a local
part do not break it). An answer carries it back in its envelope recipient or in To/Cc; it is
obeyed only when the token is valid for *that* letter and was issued to the authenticated
sender (gateway.registry.decisions). The number in the address only finds the letter; the
HMAC is what vouches for it. The address is taken in the form addresses are compared in
(gateway.addressing.canonical): 李明@例子.中国 and 李明@xn--fsqu00a.xn--fiqs8s are one.

The loop marker, `X-Gateway-Loop: <loop_id>; kind=<kind>; token=<token>; content=<token>`,
holds two HMACs: one over the kind of mail and the Message-ID of the mail it is on, one over
those and what the mail says (loop_content: its From, To, Subject, letter and every part's
content). Only a marker of mail we send inside the organisation (notification, reminder,
escalation, refused-command, ...) whose both MACs verify against the mail it is on means "our
own mail came back" and spares the owners another notification. Anyone who has seen one (its
recipient, or whoever they forward it to) can copy the marker and the Message-ID onto a new
mail: the first MAC still verifies, the second does not, and the letter is only flagged. Our
own mail come back changed on the way looks the same and its owners are told; what they are told
carries "after=copied", its first MAC over another label, and that come back changed again is
flagged but told to nobody, so that no rewriting relay can keep a loop going. A relay that gives
our mail a Message-ID of its own leaves a marker that verifies against nothing, taken for forged
and its owners told; what they are told carries "after=forged" and a third MAC, over its kind and
the letter it is about (X-Gateway-Letter) only, and that come back under yet another Message-ID is
flagged but told to nobody: that loop too ends after one round. A delivery
report returning only the headers of our mail is known by the first. A receipt's or feedback's
marker is in an outsider's hands, so it stops only the automatic reply. A marker that names our
loop id but does not verify is forged, suppresses nothing and is flagged.

The secret: <state>/keys/replies.json (mode 0600, its folder 0700), created the first time it
is needed, holding the current key and the previous ones with when they were retired.
`gateway keys rotate` makes a new current key; a retired key is still accepted for
[replies] previous_key_grace_days. The daemon, the registrar helper and the CLI read the same
file, re-reading it when it changes (by inode, mtime and size).
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from gateway.addressing import canonical
from gateway.config import Config
from gateway.spool.durable import make_dirs, writing

KEY_ID_CHARS = 4
MAC_CHARS = 16  # 80 bits of HMAC-SHA256: guessing one is hopeless, and the address stays short
TOKEN_CHARS = KEY_ID_CHARS + MAC_CHARS
_BASE32 = "a-z2-7"
# A letter number goes into the reply address only when it is made of characters every mail
# system keeps as they are; otherwise the answer's subject or In-Reply-To names the letter.
_ADDRESS_SAFE_NUMBER = re.compile(r"[A-Za-z0-9_-]{1,40}")
_LOOP_TOKEN = re.compile(rf"\btoken=([{_BASE32}]{{{TOKEN_CHARS}}})\b", re.I)
_LOOP_CONTENT = re.compile(rf"\bcontent=([{_BASE32}]{{{TOKEN_CHARS}}})\b", re.I)
_LOOP_LETTER = re.compile(rf"\bletter=([{_BASE32}]{{{TOKEN_CHARS}}})\b", re.I)


@dataclass(frozen=True)
class Key:
    id: str
    secret: bytes | None  # None once its grace period is over and it was dropped at a rotation
    created_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True)
class Keyring:
    current: Key
    previous: tuple[Key, ...]

    def as_json(self) -> dict[str, Any]:
        def one(key: Key) -> dict[str, Any]:
            return {"id": key.id, "secret": key.secret.hex() if key.secret is not None else None,
                    "created_at": key.created_at.isoformat(),
                    "retired_at": key.retired_at.isoformat() if key.retired_at else None}
        return {"current": one(self.current), "previous": [one(k) for k in self.previous]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Keyring:
        def one(item: dict[str, Any]) -> Key:
            secret = item.get("secret")
            return Key(str(item["id"]).lower(), bytes.fromhex(secret) if secret else None,
                       datetime.fromisoformat(item["created_at"]),
                       datetime.fromisoformat(item["retired_at"]) if item.get("retired_at") else None)
        return cls(one(data["current"]), tuple(one(k) for k in data.get("previous", [])))


class KeyFileError(Exception):
    """The key file exists but cannot be read as one: never replaced silently, or every reply
    address sent so far would stop counting."""


def keys_path(config: Config) -> Path:
    return config.state_dir / "keys" / "replies.json"


_cache: dict[Path, tuple[tuple[int, int, int], Keyring]] = {}
_cache_lock = threading.Lock()


def keyring(config: Config) -> Keyring:
    """The keys in force, read again only when the file changed; created if there are none."""
    path = keys_path(config)
    ring = _read(path)
    if ring is None:
        with _exclusive(config):
            ring = _read(path)  # another process may have created it while we waited
            if ring is None:
                ring = Keyring(_new_key(), ())
                _write(path, ring)
    return ring


def _read(path: Path) -> Keyring | None:
    """The key file's keys (cached by inode, mtime and size); None when there is no file.

    Takes no lock, so that a holder of the lock (rotate) may call it."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
    stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    try:
        ring = Keyring.from_json(json.loads(path.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
    with _cache_lock:
        _cache[path] = (stamp, ring)
    return ring


def rotate(config: Config, *, now: datetime | None = None) -> tuple[Keyring, Key]:
    """Make a new current key; the old one is accepted for the grace period. Keys past their
    grace lose their secret (kept by id, so that an answer using one is told why it failed).
    Returns the new keyring and the key retired (on a fresh installation, a first key made
    only to be retired)."""
    now = now or datetime.now(timezone.utc)
    grace = timedelta(days=config.model.replies.previous_key_grace_days)
    path = keys_path(config)
    with _exclusive(config):
        # Read without keyring(): it would take this same lock on another descriptor and
        # wait for ever when there is no file yet.
        old = _read(path) or Keyring(_new_key(), ())
        retired = Key(old.current.id, old.current.secret, old.current.created_at, now)
        previous = [retired] + [k if k.retired_at is None or now - k.retired_at <= grace
                                else Key(k.id, None, k.created_at, k.retired_at) for k in old.previous]
        taken = {k.id for k in previous}
        new = _new_key()
        while new.id in taken:
            new = _new_key()
        ring = Keyring(new, tuple(previous))
        _write(path, ring)
    return ring, retired


def _new_key() -> Key:
    key_id = base64.b32encode(secrets.token_bytes(5)).decode().lower()[:KEY_ID_CHARS]
    return Key(key_id, secrets.token_bytes(32), datetime.now(timezone.utc), None)


@contextmanager
def _exclusive(config: Config) -> Iterator[None]:
    """One writer of the key file at a time, across processes (the daemon, the registrar, the CLI)."""
    folder = keys_path(config).parent
    make_dirs(folder)
    os.chmod(folder, 0o700)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, ring: Keyring) -> None:
    with writing(path) as out:
        os.fchmod(out.fileno(), 0o600)  # before a byte of the secret is in it
        out.write(json.dumps(ring.as_json(), indent=2).encode() + b"\n")


def _mac(secret: bytes, *parts: str) -> str:
    digest = hmac.new(secret, "\x00".join(parts).encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:MAC_CHARS]


def _usable_key(config: Config, key_id: str, now: datetime | None) -> tuple[Key | None, str | None]:
    """The key a token names, or why it may not be used."""
    ring = keyring(config)
    if key_id == ring.current.id:
        return ring.current, None
    grace_days = config.model.replies.previous_key_grace_days
    for key in ring.previous:
        if key.id != key_id:
            continue
        retired = key.retired_at or key.created_at
        if key.secret is None or (now or datetime.now(timezone.utc)) - retired > timedelta(days=grace_days):
            return None, (f"its key {key_id} was retired on {retired:%Y-%m-%d %H:%M} UTC, more than "
                          f"{grace_days:g} day(s) ago")
        return key, None
    return None, f"its key {key_id} is not one of this gateway's"


# -- reply addresses ----------------------------------------------------------
@dataclass(frozen=True)
class ReplyToken:
    """A reply token found on an incoming mail."""

    number: str | None  # the letter number the address names, if it names one
    token: str  # key id + MAC, lower-case


def reply_token(config: Config, number: str, recipient: str) -> str:
    key = keyring(config).current
    assert key.secret is not None
    return key.id + _mac(key.secret, "reply", number, canonical(recipient))


def reply_address(config: Config, number: str, recipient: str) -> str:
    """The address `recipient` answers letter `number` at."""
    local, _, domain = config.model.outbound.from_address.rpartition("@")
    numbered = f"{number}." if _ADDRESS_SAFE_NUMBER.fullmatch(number) else ""
    return f"{local}+{numbered}{reply_token(config, number, recipient)}@{domain}"


def _reply_pattern(config: Config) -> re.Pattern[str]:
    local, _, domain = config.model.outbound.from_address.rpartition("@")
    return re.compile(rf"{re.escape(local)}\+(?:(?P<number>{_ADDRESS_SAFE_NUMBER.pattern})\.)?"
                      rf"(?P<token>[{_BASE32}]{{{TOKEN_CHARS}}})@{re.escape(domain)}", re.I)


def find_reply_tokens(config: Config, addresses: Iterable[str]) -> list[ReplyToken]:
    """The reply tokens among a mail's addresses (envelope recipients, To, Cc), each once."""
    pattern, found = _reply_pattern(config), []
    for address in addresses:
        match = pattern.fullmatch(address.strip())
        if match:
            token = ReplyToken(match.group("number"), match.group("token").lower())
            if token not in found:
                found.append(token)
    return found


def check_reply_token(config: Config, token: ReplyToken, number: str, address: str,
                      now: datetime | None = None) -> str | None:
    """None when `token` was issued for letter `number` to `address`; else why it does not count."""
    if token.number is not None and token.number.lower() != number.lower():
        return f"the reply token is for letter {token.number}, not {number}"
    key, reason = _usable_key(config, token.token[:KEY_ID_CHARS], now)
    if key is None or key.secret is None:
        return f"the reply token does not count: {reason}"
    if not hmac.compare_digest(_mac(key.secret, "reply", number, canonical(address)), token.token[KEY_ID_CHARS:]):
        return f"the reply token was not issued to {canonical(address)} for {number}"
    return None



# -- the loop marker ------------------------------------------------------------
# Mail we send only inside the organisation: when one comes back, nobody needs telling again.
INTERNAL_KINDS = frozenset({"notification", "reminder", "escalation", "refused-command", "sender-notice", "approval",
                            "circulation", "borrowing", "password-reset"})
# Mail we send to outside senders: its marker is in their hands, and anyone may copy it with
# the Message-ID onto a new mail, so it may stop an automatic reply but never a notification.
TO_SENDER_KINDS = frozenset({"receipt", "feedback", "request", "sender-reply"})
_LOOP_KIND = re.compile(r"\bkind=([a-z-]{1,40})\b", re.I)


def _message_id(value: str) -> str:
    return value.strip().strip("<>").strip()


# A marker on mail about a letter that came in with a copied marker (copied-loop-marker) says so,
# under its first MAC: that mail, come back changed, is not notified of again (the loop breaker).
AFTER_COPY = "after=copied"
# Mail about a letter that came in with a forged marker (forged-loop-marker) says so, under a MAC
# over its kind and letter number, not its Message-ID: a relay that gives each mail passing through
# a new Message-ID (and so made the first marker "forged") does the same to this one.
AFTER_FORGED = "after=forged"


def loop_marker(config: Config, message_id: str, *, kind: str, content: str | None = None,
                after_copy: bool = False, after_forged: str | None = None) -> str:
    """The X-Gateway-Loop value for the mail of this kind with this Message-ID; `content`: the
    mail's loop_content, once it is written (without it, its marker is never taken as ours);
    `after_copy`: the mail is about a letter flagged copied-loop-marker; `after_forged`: the number
    of the letter flagged forged-loop-marker it is about (its X-Gateway-Letter)."""
    if kind not in INTERNAL_KINDS | TO_SENDER_KINDS:
        raise ValueError(f"no loop marker for mail of kind {kind!r}")
    key = keyring(config).current
    assert key.secret is not None
    mid = _message_id(message_id)
    label, after = ("loop-after-copy", f"; {AFTER_COPY}") if after_copy else ("loop", "")
    marker = f"{config.loop_id}; kind={kind}{after}; token={key.id}{_mac(key.secret, label, kind, mid)}"
    if after_forged is not None and kind in INTERNAL_KINDS:
        marker += f"; {AFTER_FORGED}; letter={key.id}{_mac(key.secret, 'loop-after-forged', kind, after_forged)}"
    if content is not None:
        marker += f"; content={key.id}{_mac(key.secret, 'loop-content', kind, mid, content)}"
    return marker


def has_loop_marker(config: Config, headers: dict[str, list[str]]) -> bool:
    """Does the mail carry an X-Gateway-Loop naming our loop id (verified or not)?"""
    return any(config.loop_id.lower() in v.lower() for v in headers.get("x-gateway-loop", []))


def loop_content(raw: bytes) -> str:
    """What the loop marker's second MAC covers of a mail (hex SHA-256): its From, To, Subject and
    X-Gateway-Letter, decoded, and each part's type and content, decoded, with a message attached to
    it (a notification's original) by its header fields too. Whitespace is left out everywhere: a
    mail system passing our mail back may fold a header again, re-encode a part or change its line
    ends without changing a word of it. "" for what cannot be read."""
    from gateway.stages.normalise.bounded import Budget, parse
    from gateway.stages.normalise.model import Limits

    digest = hashlib.sha256()

    def add(label: str, text: str) -> None:
        data = "".join(text.split()).encode("utf-8", "surrogateescape")
        digest.update(f"{label}\x00{len(data)}\x00".encode())
        digest.update(data)
    try:
        message = parse(raw, Budget(Limits()))
        for name in ("from", "to", "subject", "x-gateway-letter"):
            add(f"header {name}", "\x00".join(_decoded(v) for v in message.get_all(name, [])))
        for part in message.walk():
            kind = part.get_content_type()
            add("part", kind)
            payload = part.get_payload()
            if kind in ("message/rfc822", "message/global") and isinstance(payload, list) and payload \
                    and isinstance(payload[0], Message):
                for name, value in payload[0].items():
                    add(f"attached {name.lower()}", _decoded(value))
            if part.is_multipart():
                continue
            data = part.get_payload(decode=True)
            data = data if isinstance(data, bytes) else b""
            if part.get_content_maintype() == "text":
                try:
                    add("text", data.decode(part.get_content_charset() or "us-ascii", "replace"))
                except LookupError:
                    add("text", data.decode("latin-1"))
            else:
                add("data", base64.b64encode(data).decode())
    except Exception:  # a hostile mail the parser gives up on says nothing of ours
        return ""
    return digest.hexdigest()


def _decoded(value: Any) -> str:
    try:
        return str(make_header(decode_header(str(value))))
    except Exception:  # an encoded-word Python cannot decode: compared as written
        return str(value)


# "ours": our own internal mail came back (a forward, an owner's rule): nobody is notified again.
# "copied": an internal mail's marker and Message-ID on a mail that does not say what ours said:
#   no automatic reply (it verified as our mail's), but the owners are told as of any letter.
# "recopied": the same on mail about a letter that came in so ("after=copied"): flagged, but nobody
#   is told again. Our notification of such a letter may come back changed on the way (a footer
#   added by a relay); telling of it again would send one more, changed again, for ever.
# "to-sender": a receipt or feedback of ours came back, or its marker was copied: no automatic
#   reply, but the owners are told as of any letter.
# "reforged": nothing verifies against its Message-ID, but it is our internal mail about a letter that
#   came in with a forged marker ("after=forged"), its letter MAC verifying against its
#   X-Gateway-Letter: flagged as forged, but nobody is told again (the loop breaker, as "recopied").
# "forged": it names our loop id and nothing verifies.
LoopMarker = Literal["ours", "copied", "recopied", "to-sender", "reforged", "forged"]
# Of several markers the one that tells most: "copied" above "recopied", so that a copy of a
# second-round marker beside a first-round one does not spare the owners.
_RANK: dict[LoopMarker, int] = {"forged": 0, "reforged": 1, "to-sender": 2, "recopied": 3, "copied": 4, "ours": 5}


def loop_marker_state(config: Config, headers: dict[str, list[str]], *, content: str | None,
                      now: datetime | None = None) -> LoopMarker | None:
    """What a mail's X-Gateway-Loop says, verified against its Message-ID and the kind it names
    (both under the MAC), and for an internal kind against `content`, the mail's loop_content;
    None when there is no marker of ours (another system's X-Gateway-Loop is none of our
    business). `content` None: only the headers are at hand (those a delivery report returns),
    and the first MAC is all that can be checked."""
    values = [v for v in headers.get("x-gateway-loop", []) if config.loop_id.lower() in v.lower()]
    if not values:
        return None
    message_ids = [_message_id(m) for m in headers.get("message-id", []) if m.strip()]
    letters = [v.strip() for v in headers.get("x-gateway-letter", []) if v.strip()]
    found: LoopMarker = "forged"
    for value in values:
        kind_match = _LOOP_KIND.search(value)
        kind = kind_match.group(1).lower() if kind_match else ""
        if kind not in INTERNAL_KINDS | TO_SENDER_KINDS:
            continue
        for match in _LOOP_TOKEN.finditer(value):
            after_copy = False
            mid = _verified(config, match.group(1), now, message_ids, "loop", kind)
            if mid is None:
                after_copy = True
                mid = _verified(config, match.group(1), now, message_ids, "loop-after-copy", kind)
            if mid is None:
                continue
            state: LoopMarker = "to-sender"
            if kind in INTERNAL_KINDS:
                state = "ours" if content is None or any(
                    _verified(config, c.group(1), now, [mid], "loop-content", kind, content)
                    for c in _LOOP_CONTENT.finditer(value)) else "recopied" if after_copy else "copied"
            if _RANK[state] > _RANK[found]:
                found = state
        if found == "forged" and kind in INTERNAL_KINDS and any(
                _verified(config, match.group(1), now, letters, "loop-after-forged", kind)
                for match in _LOOP_LETTER.finditer(value)):
            found = "reforged"
    return found


def _verified(config: Config, token: str, now: datetime | None, message_ids: list[str], label: str, kind: str,
              *after: str) -> str | None:
    """The Message-ID among `message_ids` for which `token` is the MAC over (label, kind, the
    Message-ID, *after), if any."""
    token = token.lower()
    key, _ = _usable_key(config, token[:KEY_ID_CHARS], now)
    if key is None or key.secret is None:
        return None
    secret = key.secret
    return next((mid for mid in message_ids
                 if hmac.compare_digest(_mac(secret, label, kind, mid, *after), token[KEY_ID_CHARS:])), None)
