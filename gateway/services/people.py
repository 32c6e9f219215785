"""People: who they are, what they may do (roles and departments), how they sign in, and their
browsers' sessions. Every sign-in, failure, sign-out and change of rights is an audit row.

Rights come from two places: what is stored for a person (`gateway users`, the people page) and
what the configuration says of their addresses — a department's owners and members are its
members, its head is its head — so a department's people need no second list to keep in step."""
from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.addressing import canonical
from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.models import Person
from gateway.registry.store import utcnow

# registry = the registry office (收发室)
ROLES = ("registry", "member", "head", "leader", "auditor", "admin")
# Who approves destroying archive packages past retention: a leader of the organisation, a person
# of the register, named in the destruction record, in each letter's events and in the audit log.
DESTRUCTION_APPROVER = "leader"
LANGUAGES = ("zh", "en")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_LOGIN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Names the register already uses for who acted when no person did (the gateway itself, a sender
# on the rating page, an intake): a person of that name would be taken for it, or it for them.
RESERVED_LOGINS = frozenset({"gateway", "sender", "system", "file", "smtp", "imap", "fax-drop", "web", "paper"})
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")

if TYPE_CHECKING:
    from argon2 import PasswordHasher


@functools.cache
def _hasher() -> PasswordHasher:
    """Imported by the first password: the daemon and its helpers, which sign nobody in, never load it."""
    from argon2 import PasswordHasher

    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so that a wrong name takes as long as a wrong
    password. Made on the first sign-in, not at import: a command that never signs anyone in
    does not pay for a hash."""
    return _hasher().hash(secrets.token_hex(16))


@dataclass(frozen=True)
class Principal:
    """Who is acting, with their effective rights."""

    login: str
    name: str
    emails: frozenset[str]
    departments: frozenset[str]  # member or head of these
    roles: frozenset[str]
    headed: frozenset[str] = frozenset()  # head of these
    language: str | None = None
    person_id: int | None = None
    kind: str = "person"  # person | operator (a shell on the server: everything, audited)
    two_step: bool = False  # signs in with a password and an authenticator app's code

    def has(self, *roles: str) -> bool:
        return self.is_operator or bool(self.roles.intersection(roles))

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    @classmethod
    def operator(cls, login: str) -> Principal:
        return cls(login=login, name=login, emails=frozenset(), departments=frozenset(),
                   roles=frozenset(ROLES), kind="operator")


@dataclass(frozen=True)
class PersonRecord:
    login: str
    name: str
    emails: list[str]
    departments: list[str]
    roles: list[str]
    disabled: bool
    language: str | None
    has_password: bool
    created_at: datetime
    person_id: int
    two_step_since: datetime | None = None
    recovery_codes_left: int = 0
    two_step_pending: bool = False  # a secret was shown, no code has proved it yet


@dataclass(frozen=True)
class SessionInfo:
    principal: Principal
    csrf: str
    token_hash: str
    method: str = "password"  # how it signed in: password (with its code, if any) or oidc
    # A password sign-in of someone whose role requires two-step sign-in, not yet turned on: every
    # page but their account page sends them there.
    owes_two_step: bool = False


class SignInRefused(Exception):
    """Sign-in refused; the message is what the person is told (never which part was wrong)."""


class Throttled(SignInRefused):
    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class StepRefused(ValueError):
    """A step on a person's account not taken; `reason` lets a page say why in its language."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class PasswordRefused(StepRefused):
    """A password not taken; `reason`: short, long, differ, same, none."""


@dataclass(frozen=True)
class Browser:
    """One of a person's signed-in browsers, as their account page lists them."""

    address: str
    signed_in_at: datetime
    last_seen_at: datetime
    current: bool
    user_agent: str = ""


# Module-level names for the types: inside People, `list` is its method.
Names = list[str] | tuple[str, ...]
Records = list[PersonRecord]
Browsers = list[Browser]
Codes = list[str]

TOTP_ISSUER = "Correspondence register"
CODE_WAIT = timedelta(minutes=5)  # between the right password and its code
RECOVERY_CODES = 10
RESETS_PER_WINDOW = 3  # password reset links a person, within signin_window_minutes
_TWO_STEP_OFF: dict[str, Any] = {"totp_secret": None, "totp_enabled_at": None, "totp_last_step": None,
                                 "recovery_codes": []}


class TwoStepRefused(StepRefused):
    """A two-step sign-in step not taken; `reason`: on, off, none, code, required."""


def _matching_step(secret: str, code: str) -> int | None:
    """The time step (30 s) whose code this is, allowing one step either way for the phone's clock."""
    import pyotp

    code = re.sub(r"\s", "", code)
    if not re.fullmatch(r"[0-9]{6}", code):
        return None
    totp, now = pyotp.TOTP(secret), int(utcnow().timestamp()) // 30
    for step in (now, now - 1, now + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _recovery_codes() -> list[str]:
    """Ten codes of ten letters and digits (about 50 bits each), in two groups: xxxxx-xxxxx."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i to misread
    codes = ["".join(secrets.choice(alphabet) for _ in range(10)) for _ in range(RECOVERY_CODES)]
    return [f"{c[:5]}-{c[5:]}" for c in codes]


def _recovery_plain(code: str) -> str:
    plain = re.sub(r"[\s-]", "", code).lower()
    return f"{plain[:5]}-{plain[5:]}" if re.fullmatch(r"[a-z0-9]{10}", plain) else ""


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _person_id(info: SessionInfo) -> int:
    if info.principal.person_id is None:  # open_session gives sessions to people only
        raise ValueError("a session without a person")
    return info.principal.person_id


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _record(person: Person) -> PersonRecord:
    return PersonRecord(login=person.login, name=person.name, emails=list(person.emails),
                        departments=list(person.departments), roles=list(person.roles), disabled=person.disabled,
                        language=person.language, has_password=bool(person.password_hash),
                        created_at=person.created_at, person_id=person.id,
                        two_step_since=person.totp_enabled_at, recovery_codes_left=len(person.recovery_codes or ()),
                        two_step_pending=person.totp_enabled_at is None and person.totp_secret is not None)


class People:
    def __init__(self, config: Config, registry: Registry):
        self.config = config
        self.registry = registry
        self.web = config.model.web

    # -- the people -----------------------------------------------------
    def count(self) -> int:
        return self.registry.people_count()

    def list(self) -> Records:
        return [_record(p) for p in self.registry.people()]

    def get(self, login: str) -> PersonRecord | None:
        person = self.registry.person(login)
        return _record(person) if person else None

    def add(self, login: str, *, name: str = "", emails: Names = (),
            departments: Names = (), roles: Names = (),
            password: str | None = None, language: str | None = None, actor: str,
            address: str = "") -> PersonRecord:
        """Raises ValueError naming what is wrong."""
        login = login.strip().lower()
        if not _LOGIN.match(login):
            raise ValueError(f"sign-in name {login!r}: use lower-case letters, digits, '.', '_' or '-' "
                             "(at most 64, starting with a letter or digit)")
        if login in RESERVED_LOGINS:
            raise ValueError(f"sign-in name {login!r} is the register's own name for who acted when no person did: "
                             "choose another")
        values = self._checked(name=name or login, emails=emails, departments=departments, roles=roles,
                               language=language)
        if password is not None:
            values["password_hash"] = self._hash(password)
        person = self.registry.add_person(
            {"login": login, "disabled": False, **values},
            audit=self._audit(actor, "person-added", login, address,
                              {k: v for k, v in values.items() if k != "password_hash"}))
        return _record(person)

    def update(self, login: str, *, name: str | None = None, emails: Names | None = None,
               departments: Names | None = None, roles: Names | None = None,
               language: str | None = None, actor: str, address: str = "") -> PersonRecord:
        """None leaves a field as it is; a language of "" sets the register's default again.
        Raises LookupError and ValueError."""
        current = self._person(login)
        values = self._checked(name=current.name if name is None else name,
                               emails=current.emails if emails is None else emails,
                               departments=current.departments if departments is None else departments,
                               roles=current.roles if roles is None else roles,
                               # None: as it is; "": the register's default again
                               language=current.language if language is None else (language or None))
        changed = {k: v for k, v in values.items() if getattr(current, k) != v}
        if actor == login and ({"roles", "departments"} & set(changed)):
            # An administrator who could widen their own rights could read what the roles keep from them.
            raise ValueError("no one changes their own roles or departments: another administrator must")
        if actor == login and set(values["emails"]) - set(current.emails):
            # An address carries rights too: the departments the configuration gives it, and the
            # letters assigned to it (a confidential one's owner reads it).
            raise ValueError("no one adds e-mail addresses to themselves: another administrator must")
        self.registry.update_person(login, values, audit=self._audit(actor, "person-changed", login, address, changed))
        return self._person(login)

    def set_password(self, login: str, password: str, *, actor: str, address: str = "") -> None:
        """A new password; the person's browsers are signed out. Raises LookupError and ValueError."""
        self._person(login)
        self.registry.update_person(login, {"password_hash": self._hash(password)}, end_sessions=True,
                                    audit=self._audit(actor, "password-set", login, address, {}))

    def set_disabled(self, login: str, disabled: bool, *, actor: str, address: str = "") -> None:
        """Disabling signs the person out everywhere at once. Raises LookupError."""
        self._person(login)
        self.registry.update_person(login, {"disabled": disabled}, end_sessions=disabled,
                                    audit=self._audit(actor, "person-disabled" if disabled else "person-enabled",
                                                      login, address, {}))

    def set_language(self, login: str, language: str) -> None:
        if language not in LANGUAGES:
            raise ValueError(f"language {language!r}: one of {', '.join(LANGUAGES)}")
        self.registry.update_person(login, {"language": language}, audit=None)

    def grant(self, login: str, *, roles: Names = (),
              departments: Names = (), letter: str | None = None, reason: str = "",
              revoke: bool = False, actor: str, address: str = "") -> Names:
        """Add (or with `revoke` take away) roles, departments, or the content of one letter.
        Returns what changed, in words. Raises LookupError and ValueError."""
        person = self._person(login)
        changes: list[str] = []
        if actor == login:
            raise ValueError("no one grants rights to themselves: another administrator must")
        if roles or departments:
            new_roles = self._merge(person.roles, roles, revoke)
            new_departments = self._merge(person.departments, departments, revoke)
            self.update(login, roles=new_roles, departments=new_departments, actor=actor, address=address)
            for label, before, after in (("role", person.roles, new_roles),
                                         ("department", person.departments, new_departments)):
                changes += [f"+{label} {v}" for v in after if v not in before]
                changes += [f"-{label} {v}" for v in before if v not in after]
        if letter:
            row = self.registry.letter(letter)
            if row is None:
                raise LookupError(f"no letter {letter}")
            if self.registry.set_grant(person.person_id, row.id, granted_by=actor, reason=reason, revoke=revoke,
                                       audit={**self._audit(actor, "grant-revoked" if revoke else "grant", login,
                                                            address, {"reason": reason} if reason else {}),
                                              "letter_id": row.id}):
                changes.append(f"{'-' if revoke else '+'}content of {letter}")
        return changes

    def operator(self, named: str | None, login: str) -> Principal:
        """The operator at the server's shell (every right), under the name a command was given
        (`--by`), else their login. A name given is their own, never someone else's: not a person's
        sign-in name (a person acts as themselves, with their rights) nor one the register gives
        whoever acted when no person did (the sender, the gateway), so that a letter's events and
        the audit log never say someone did or read what they did not. Raises ValueError."""
        if named is None or named == login:
            # The daemon's own user is named `gateway`: a command run as it, without sudo, would
            # record the operator's steps as the gateway's own.
            if login.lower() in RESERVED_LOGINS:
                raise ValueError(f"not given, and the login {login!r} is the register's own name for who acted "
                                 "when no person did")
            return Principal.operator(login)
        # Recorded as written in events and audit rows: a blank name names no one, and a line break
        # or another control character would let a name pass for more than one.
        if not named.strip():
            raise ValueError("no name given")
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in named):
            raise ValueError(f"{named!r} holds a control character")
        named = named.strip()
        key = named.lower()
        if key in RESERVED_LOGINS:
            raise ValueError(f"{named!r} is the register's own name for who acted when no person did")
        if self.registry.person(key) is not None:
            raise ValueError(f"{named!r} is a person of the web register, who acts as themselves")
        return Principal.operator(named)

    def principal(self, login: str) -> Principal | None:
        person = self.registry.person(login)
        return self._principal(person) if person and not person.disabled else None

    def approver(self, named: str, role: str) -> Principal:
        """The enabled person signed in as `named` (in any case) who holds `role`: who approves a
        step recorded in their name. Raises LookupError saying why they cannot."""
        person = self.principal(named.strip().lower())
        if person is None:
            raise LookupError(f"no enabled person named {named!r}")
        if role not in person.roles:
            raise LookupError(f"{person.login} ({person.name}) does not have the {role} role")
        return person

    def principal_by_email(self, address: str) -> Principal | None:
        """The enabled person with this address, or, for an address the configuration names as a
        department's owner, head or member and no person holds, its rights alone (answers by mail)."""
        address = canonical(address)
        for person in self.registry.people():
            if not person.disabled and address in (canonical(e) for e in person.emails):
                return self._principal(person)
        departments, headed = self._configured(frozenset({address}))
        if not departments:
            return None
        roles = {"member"} | ({"head"} if headed else set())
        return Principal(login=address, name=address, emails=frozenset({address}), departments=departments,
                         roles=frozenset(roles), headed=headed)

    def department_addresses(self) -> dict[str, set[str]]:
        """For each department, the addresses whose mail may act on its letters: the owners, head
        and members [[departments]] names, and every enabled person of the department."""
        out = {d.id: {a.lower() for a in (*d.owners, d.head, *d.members) if a} for d in self.config.model.departments}
        for person in self.registry.people():
            if person.disabled:
                continue
            principal = self._principal(person)
            for department in principal.departments & set(out):
                out[department] |= principal.emails
        return out

    def disabled_addresses(self) -> set[str]:
        """Addresses of disabled people that no enabled person has and the configuration does not
        name: a letter such a person still owns gives them no authority by mail."""
        named = {a.lower() for d in self.config.model.departments for a in (*d.owners, d.head, *d.members) if a}
        enabled: set[str] = set()
        disabled: set[str] = set()
        for person in self.registry.people():
            (disabled if person.disabled else enabled).update(canonical(e) for e in person.emails)
        return disabled - enabled - named

    # -- signing in -----------------------------------------------------
    def authenticate(self, login: str, password: str, *, address: str) -> Principal:
        """Check a name and password, throttled per account and per client address. Raises
        SignInRefused (generic message) or Throttled."""
        login = login.strip().lower()[:64]
        self._throttle(login, address)
        dummy = _dummy_hash()  # before the look-up: the first sign-in pays for it whatever the name
        person = self.registry.person(login)
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

        try:
            _hasher().verify(person.password_hash if person and person.password_hash else dummy, password)
            ok = person is not None and bool(person.password_hash) and not person.disabled
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok or person is None:
            why = "unknown name" if person is None else "disabled" if person.disabled else \
                "no password" if not person.password_hash else "wrong password"
            self.registry.audit([self._audit(login, "sign-in-failed", login, address, {"reason": why})])
            raise SignInRefused("wrong name or password")
        if person.password_hash and _hasher().check_needs_rehash(person.password_hash):
            self.registry.update_person(login, {"password_hash": _hasher().hash(password)}, audit=None)
        return self._principal(person)

    def principal_for_oidc(self, claims: dict[str, Any], *, address: str) -> Principal:
        """The person single sign-on vouches for: matched by a verified e-mail address; the
        provider never creates people or grants rights. Raises SignInRefused."""
        email = canonical(str(claims.get("email") or ""))
        # Verified only when the provider says so: a claim left out (or "false") proves nothing,
        # and anyone may give a provider someone else's address. Some send it as text.
        verified = claims.get("email_verified")
        if not email or not (verified is True or (isinstance(verified, str) and verified.lower() == "true")):
            self.registry.audit([self._audit(email or "(none)", "sign-in-failed", email, address,
                                             {"reason": "no verified e-mail from single sign-on"})])
            raise SignInRefused("single sign-on gave no verified e-mail address")
        for person in self.registry.people():
            if email in (canonical(e) for e in person.emails) and not person.disabled:
                return self._principal(person)
        self.registry.audit([self._audit(email, "sign-in-failed", email, address,
                                         {"reason": "no person with this address", "method": "oidc"})])
        raise SignInRefused(f"no one with the address {email} may sign in here; ask an administrator")

    def _throttle(self, login: str, address: str) -> None:
        """Raises Throttled after too many failed sign-ins to this account, or from this address."""
        window = timedelta(minutes=self.web.signin_window_minutes)
        since = utcnow() - window
        if (self.registry.failures_since(since, actor=login) >= self.web.signin_failures_per_account
                or self.registry.failures_since(since, address=address) >= self.web.signin_failures_per_address):
            self.registry.audit([self._audit(login, "sign-in-throttled", login, address, {})])
            raise Throttled("too many failed sign-ins; try again later",
                            retry_after=int(window.total_seconds()))

    def change_own_password(self, info: SessionInfo, present: str, new: str, repeated: str, *,
                            address: str) -> None:
        """A person's own new password, given with their present one: a browser left signed in is
        not enough to take the account over. A wrong present password is a failed sign-in, audited
        and throttled alike. Their other browsers are signed out; this one stays signed in.
        Raises Throttled, SignInRefused and PasswordRefused."""
        login = info.principal.login
        self._present_password(login, present, address, "changing it")
        if new != repeated:
            raise PasswordRefused("differ", "the new password and its repetition differ")
        if new == present:
            raise PasswordRefused("same", "the new password is the present one")
        self.registry.update_person(login, {"password_hash": self._hash(new)}, end_sessions=True,
                                    keep_session=info.token_hash,
                                    audit=self._audit(login, "password-changed", login, address, {}))

    def _present_password(self, login: str, present: str, address: str, doing: str) -> Person:
        """The person, once their present password proves it is them; a wrong one is a failed
        sign-in, audited and throttled alike. Raises Throttled, SignInRefused and PasswordRefused."""
        person = self.registry.person(login)
        if person is None or not person.password_hash:
            raise PasswordRefused("none", "there is no password (signing in is through single sign-on); "
                                          "an administrator can set one")
        self._throttle(login, address)
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

        try:
            _hasher().verify(person.password_hash, present)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            self.registry.audit([self._audit(login, "sign-in-failed", login, address,
                                             {"reason": f"wrong present password when {doing}"})])
            raise SignInRefused("the present password is wrong") from None
        return person

    # -- two-step sign-in (TOTP) ---------------------------------------------
    def start_two_step(self, info: SessionInfo) -> None:
        """A new authenticator secret for the person to scan (two_step_uri); it counts once a code
        proves it (turn_on_two_step). Raises TwoStepRefused."""
        person = self._person_row(info)
        if person.totp_enabled_at is not None:
            raise TwoStepRefused("on", "two-step sign-in is on already")
        import pyotp

        self.registry.update_person(person.login, {"totp_secret": pyotp.random_base32(32), "totp_last_step": None},
                                    audit=None)

    def two_step_uri(self, info: SessionInfo) -> str | None:
        """The otpauth:// URI of the secret waiting to be proved, for the QR code; None if none waits."""
        person = self._person_row(info)
        if person.totp_secret is None or person.totp_enabled_at is not None:
            return None
        import pyotp

        return pyotp.TOTP(person.totp_secret).provisioning_uri(name=person.login, issuer_name=TOTP_ISSUER)

    def turn_on_two_step(self, info: SessionInfo, present: str, code: str, *, address: str) -> Codes:
        """Two-step sign-in on, once the present password and a code from the app are right; the
        person's other browsers are signed out. Returns the recovery codes, shown once. Raises
        Throttled, SignInRefused, PasswordRefused and TwoStepRefused."""
        login = info.principal.login
        person = self._present_password(login, present, address, "turning on two-step sign-in")
        if person.totp_enabled_at is not None:
            raise TwoStepRefused("on", "two-step sign-in is on already")
        if person.totp_secret is None:
            raise TwoStepRefused("none", "no secret was shown: start again")
        step = _matching_step(person.totp_secret, code)
        if step is None:
            self.registry.audit([self._audit(login, "sign-in-failed", login, address,
                                             {"reason": "wrong code when turning on two-step sign-in"})])
            raise TwoStepRefused("code", "the code is not the app's present one")
        codes = _recovery_codes()
        self.registry.update_person(login, {"totp_enabled_at": utcnow(), "totp_last_step": step,
                                            "recovery_codes": [_code_hash(c) for c in codes]},
                                    end_sessions=True, keep_session=info.token_hash,
                                    audit=self._audit(login, "two-step-on", login, address, {}))
        return codes

    def renew_recovery_codes(self, info: SessionInfo, present: str, *, address: str) -> Codes:
        """New recovery codes in place of the old ones. Raises Throttled, SignInRefused,
        PasswordRefused and TwoStepRefused."""
        login = info.principal.login
        person = self._present_password(login, present, address, "renewing recovery codes")
        if person.totp_enabled_at is None:
            raise TwoStepRefused("off", "two-step sign-in is not on")
        codes = _recovery_codes()
        self.registry.update_person(login, {"recovery_codes": [_code_hash(c) for c in codes]},
                                    audit=self._audit(login, "recovery-codes-renewed", login, address, {}))
        return codes

    def turn_off_two_step(self, info: SessionInfo, present: str, code: str, *, address: str) -> None:
        """Two-step sign-in off, with the present password and a code (or a recovery code); not for
        someone whose role requires it. Raises Throttled, SignInRefused, PasswordRefused and
        TwoStepRefused."""
        login = info.principal.login
        if self.two_step_required(info.principal):
            raise TwoStepRefused("required", "your role requires two-step sign-in")
        person = self._present_password(login, present, address, "turning off two-step sign-in")
        if person.totp_enabled_at is None:
            raise TwoStepRefused("off", "two-step sign-in is not on")
        if not self._second_factor(person, code):
            self.registry.audit([self._audit(login, "sign-in-failed", login, address,
                                             {"reason": "wrong code when turning off two-step sign-in"})])
            raise TwoStepRefused("code", "the code is not the app's present one, nor a recovery code")
        self.registry.update_person(login, _TWO_STEP_OFF,
                                    audit=self._audit(login, "two-step-off", login, address, {}))

    def reset_two_step(self, login: str, *, actor: str, address: str = "") -> None:
        """An administrator (or the operator) turns someone's two-step sign-in off, when their phone
        is lost; their browsers are signed out. Not one's own. Raises LookupError and ValueError."""
        person = self._person(login)
        if actor == login:
            raise ValueError("no one turns off their own two-step sign-in here: another administrator must")
        if person.two_step_since is None and not person.two_step_pending:
            raise ValueError(f"{login} has no two-step sign-in")
        self.registry.update_person(login, _TWO_STEP_OFF, end_sessions=True,
                                    audit=self._audit(actor, "two-step-reset", login, address, {}))

    def two_step_required(self, principal: Principal) -> bool:
        return bool(principal.roles & set(self.web.two_step_roles))

    def awaiting_code(self, token: str) -> SessionInfo | None:
        """The sign-in of a cookie whose password was right and whose code is still due, if it is
        not too old (CODE_WAIT)."""
        if not token or len(token) > 200:
            return None
        hashed = token_hash(token)
        row = self.registry.web_session(hashed)
        if (row is None or row.ended_at is not None or not row.awaiting_code
                or utcnow() - row.created_at > CODE_WAIT):
            return None
        person = self.registry.person_by_id(row.person_id)
        if person is None or person.disabled:
            return None
        return SessionInfo(self._principal(person), row.csrf, hashed, row.method)

    def second_step(self, token: str, code: str, *, address: str) -> Principal:
        """The code after the password: the app's present code (each used once) or a recovery code
        (struck off). A wrong one is a failed sign-in. Raises Throttled and SignInRefused."""
        info = self.awaiting_code(token)
        if info is None:
            raise SignInRefused("the sign-in has lapsed; sign in again")
        login = info.principal.login
        self._throttle(login, address)
        person = self._person_row(info)
        how = self._second_factor(person, code)
        if how is None:
            self.registry.audit([self._audit(login, "sign-in-failed", login, address, {"reason": "wrong code"})])
            raise SignInRefused("wrong code")
        if not self.registry.admit_web_session(info.token_hash, self._audit(
                login, "sign-in", login, address, {"method": f"password+{how}"})):
            raise SignInRefused("the sign-in has lapsed; sign in again")
        return info.principal

    def _second_factor(self, person: Person, code: str) -> str | None:
        """How a code proves the second step ("code" or "recovery-code"), or None. A code of the
        app's is used up, and so is a recovery code."""
        if person.totp_secret is None or person.totp_enabled_at is None:
            return None
        step = _matching_step(person.totp_secret, code)
        if step is not None:
            return "code" if self.registry.use_totp_step(person.id, step) else None
        plain = _recovery_plain(code)
        if plain and self.registry.use_recovery_code(person.id, _code_hash(plain)) is not None:
            return "recovery-code"
        return None

    def _person_row(self, info: SessionInfo) -> Person:
        person = self.registry.person_by_id(_person_id(info))
        if person is None:
            raise LookupError(f"no person named {info.principal.login!r}")
        return person

    def browsers(self, info: SessionInfo) -> Browsers:
        """The browsers a person is signed in on, this one first."""
        now = utcnow()
        out = [Browser(row.address, row.created_at, row.last_seen_at, row.token_hash == info.token_hash, row.user_agent)
               for row in self.registry.open_web_sessions(_person_id(info))
               if not self._lapsed(row.created_at, row.last_seen_at, now)]
        return sorted(out, key=lambda b: not b.current)

    def sign_out_elsewhere(self, info: SessionInfo, *, address: str) -> int:
        """Sign a person out of every browser but this one; returns how many."""
        login = info.principal.login
        return self.registry.end_other_web_sessions(_person_id(info), info.token_hash,
                                                    self._audit(login, "signed-out-elsewhere", login, address, {}))

    # -- forgotten passwords ------------------------------------------------------
    @property
    def reset_offered(self) -> bool:
        """A reset link needs the address people open ([web] base_url) to point to."""
        return bool(self.web.base_url) and self.web.reset_minutes > 0

    def ask_password_reset(self, given: str, *, address: str) -> None:
        """"Forgot your password?": a link mailed to the person's first address, when `given` (a
        sign-in name or one of their addresses) is someone enabled with a password. The page says
        the same whatever happened, so that it tells no one who has an account here. At most
        RESETS_PER_WINDOW links a person in signin_window_minutes. Raises Throttled (too many asked
        from this client address) and ValueError (not offered here)."""
        if not self.reset_offered:
            raise ValueError("password reset links need [web] base_url and reset_minutes")
        given = given.strip()[:254]
        since = utcnow() - timedelta(minutes=self.web.signin_window_minutes)
        if self.registry.failures_since(since, address=address, action="password-reset-asked") \
                >= self.web.signin_failures_per_address:
            raise Throttled("too many password resets asked; try again later",
                            retry_after=self.web.signin_window_minutes * 60)
        person = self._reset_person(given)
        if person is None or self.registry.password_resets_since(person.id, since) >= RESETS_PER_WINDOW:
            self.registry.audit([self._audit(person.login if person else given[:64], "password-reset-asked",
                                             person.login if person else given, address,
                                             {"mailed": False, "why": "too many" if person else "no such person"})])
            return
        from gateway.stages.route import new_mail

        token = secrets.token_urlsafe(32)
        mail = new_mail(self.config, "password-reset", person.emails[0], login=person.login,
                        name=person.name or person.login, language=person.language or self.web.language,
                        link=f"{self.web.base_url}/signin/reset/{token}", minutes=self.web.reset_minutes,
                        asked_from=address)
        self.registry.ask_password_reset(person.id, token_hash(token), address, mail, self._audit(
            person.login, "password-reset-asked", person.login, address, {"mailed": True, "to": person.emails[0]}))

    def _reset_person(self, given: str) -> Person | None:
        login = given.lower()
        wanted = canonical(given) if "@" in given else ""
        for person in self.registry.people():
            if person.disabled or not person.password_hash or not person.emails:
                continue
            if person.login == login or (wanted and wanted in (canonical(e) for e in person.emails)):
                return person
        return None

    def reset_link_person(self, token: str) -> PersonRecord | None:
        """Whose a reset link is, while it works."""
        if not token or len(token) > 200:
            return None
        person = self.registry.password_reset(token_hash(token), self._reset_since())
        return _record(person) if person is not None and not person.disabled else None

    def reset_password(self, token: str, new: str, repeated: str, *, address: str) -> str:
        """The new password a reset link allows, once; every browser of theirs is signed out (two-step
        sign-in, if on, still asks for its code). Returns the login. Raises SignInRefused (the link is
        used, lapsed or unknown) and PasswordRefused."""
        person = self.reset_link_person(token)
        if person is None:
            raise SignInRefused("the link is used, too old, or not one")
        if new != repeated:
            raise PasswordRefused("differ", "the new password and its repetition differ")
        if not self.registry.use_password_reset(token_hash(token), self._reset_since(), self._hash(new),
                                                self._audit(person.login, "password-reset", person.login,
                                                            address, {})):
            raise SignInRefused("the link is used, too old, or not one")
        return person.login

    def _reset_since(self) -> datetime:
        return utcnow() - timedelta(minutes=self.web.reset_minutes)

    def _lapsed(self, created_at: datetime, last_seen_at: datetime, now: datetime) -> bool:
        return (now - last_seen_at > timedelta(minutes=self.web.session_idle_minutes)
                or now - created_at > timedelta(hours=self.web.session_absolute_hours))

    # -- sessions -------------------------------------------------------
    def open_session(self, principal: Principal, *, address: str, method: str = "password",
                     user_agent: str = "") -> tuple[str, str]:
        """A new session (sign-in). Returns (cookie token, CSRF token); only the token's hash is stored."""
        if principal.person_id is None:
            raise ValueError("only a person can have a session")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        # A password is the first step only for someone with two-step sign-in: the session opens
        # no page until second_step(), whose sign-in is audited then. That the password was right is
        # audited now: someone who knows it and not the code is worth an auditor's notice.
        awaiting = principal.two_step and method == "password"
        self.registry.open_web_session(token_hash(token), principal.person_id, csrf, address, method=method,
                                       awaiting_code=awaiting, user_agent=user_agent,
                                       audit=self._audit(principal.login, "sign-in-awaiting-code" if awaiting
                                                         else "sign-in", principal.login, address,
                                                         {"method": method}))
        return token, csrf

    def session(self, token: str) -> SessionInfo | None:
        """The signed-in person of a cookie, or None when it is unknown, ended, idle too long or too old."""
        if not token or len(token) > 200:
            return None
        hashed = token_hash(token)
        row = self.registry.web_session(hashed)
        if row is None or row.ended_at is not None or row.awaiting_code:
            return None
        now = utcnow()
        if self._lapsed(row.created_at, row.last_seen_at, now):
            self.registry.end_web_session(hashed, audit=None)
            return None
        person = self.registry.person_by_id(row.person_id)
        if person is None or person.disabled:
            return None
        # Written at most once a minute: every page view need not be a write transaction.
        if now - row.last_seen_at > timedelta(seconds=60):
            self.registry.touch_web_session(hashed, now)
        principal = self._principal(person)
        return SessionInfo(principal, row.csrf, hashed, row.method,
                           owes_two_step=row.method == "password" and not principal.two_step
                           and self.two_step_required(principal))

    def close_session(self, token: str, *, address: str) -> None:
        info = self.session(token)
        if info is not None:
            self.registry.end_web_session(info.token_hash, audit=self._audit(info.principal.login, "sign-out",
                                                                             info.principal.login, address, {}))

    # -- helpers --------------------------------------------------------
    def _person(self, login: str) -> PersonRecord:
        record = self.get(login)
        if record is None:
            raise LookupError(f"no person named {login!r}")
        return record

    def _principal(self, person: Person) -> Principal:
        emails = frozenset(canonical(e) for e in person.emails)
        configured, headed = self._configured(emails)
        stored_departments = frozenset(person.departments)
        roles = set(person.roles)
        if configured:
            roles.add("member")
        if headed:
            roles.add("head")
        if "head" in person.roles:  # a head by role heads the departments stored for them
            headed |= stored_departments
        return Principal(login=person.login, name=person.name or person.login, emails=emails,
                         departments=stored_departments | configured, roles=frozenset(roles), headed=headed,
                         language=person.language, person_id=person.id,
                         two_step=person.totp_enabled_at is not None)

    def _configured(self, emails: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
        """(departments, headed) the configuration gives these addresses."""
        member, head = set(), set()
        for department in self.config.model.departments:
            if emails.intersection(department.owners) or emails.intersection(department.members):
                member.add(department.id)
            if department.head in emails:
                member.add(department.id)
                head.add(department.id)
        return frozenset(member), frozenset(head)

    def _checked(self, *, name: str, emails: Any, departments: Any, roles: Any, language: str | None) -> dict[str, Any]:
        emails = [canonical(e) for e in emails if e.strip()]  # as the configuration keeps its people
        if bad := [e for e in emails if not _EMAIL.match(e)]:
            raise ValueError(f"{bad[0]!r} is not an e-mail address")
        known = self.config.departments
        departments = [*dict.fromkeys(d.strip() for d in departments if d.strip())]
        if bad := [d for d in departments if d not in known]:
            raise ValueError(f"no department {bad[0]!r} (known: {', '.join(sorted(known))})")
        roles = [*dict.fromkeys(r.strip() for r in roles if r.strip())]
        if bad := [r for r in roles if r not in ROLES]:
            raise ValueError(f"no role {bad[0]!r} (roles: {', '.join(ROLES)})")
        if language is not None and language not in LANGUAGES:
            raise ValueError(f"language {language!r}: one of {', '.join(LANGUAGES)}")
        name = name.strip()
        if not name or len(name) > 200:
            raise ValueError("a name of 1 to 200 characters is needed")
        return {"name": name, "emails": emails, "departments": departments, "roles": roles, "language": language}

    @staticmethod
    def _merge(current: Names, change: Names, revoke: bool) -> Names:
        return [v for v in current if v not in change] if revoke else [*dict.fromkeys([*current, *change])]

    @staticmethod
    def _hash(password: str) -> str:
        if len(password) < MIN_PASSWORD:
            raise PasswordRefused("short", f"a password needs at least {MIN_PASSWORD} characters")
        if len(password) > MAX_PASSWORD:
            raise PasswordRefused("long", f"a password of at most {MAX_PASSWORD} characters")
        return _hasher().hash(password)

    @staticmethod
    def _audit(actor: str, action: str, subject: str, address: str, details: dict[str, Any]) -> dict[str, Any]:
        return {"actor": actor, "action": action, "subject": subject, "address": address, "details": details}
