"""Passwords, sign-in and the permission checks that every core call goes through.

Roles: ``radiologist`` rates and edits (only their own feedback), ``coordinator`` runs
studies and sees everyone's feedback, ``admin`` does everything a coordinator does plus
imports, users and adapters. Checks live here, in core, not only in which pages are shown.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from core.config import settings
from core.errors import AuthError, NotFound, PermissionDenied, ValidationError
from core.store.accounts import Reader
from core.store.database import Store

ROLES = ("radiologist", "coordinator", "admin")
MIN_PASSWORD_LENGTH = 8
# "aaaaaaaaA" and "11112222" are long enough and still guessed in seconds.
MIN_DISTINCT_CHARACTERS = 5
MAX_FAILED_SIGNINS = 5
# Failures from one client (browser address) over every name it tries: password spraying.
MAX_FAILED_PER_CLIENT = 20
THROTTLE_WINDOW = timedelta(minutes=15)
SESSION_TTL = timedelta(hours=8)
# A session with no page run for this long ends (IMPRESSIONIST_IDLE_MINUTES overrides it).
IDLE_TIMEOUT = timedelta(minutes=30)
# The id of no account: the command line's ``User`` (whoever can run the CLI can open the
# database file); :func:`authorize` has no account to re-read for it.
SYSTEM_ID = 0
_USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Refused whatever the other rules say (lower-cased comparison).
COMMON_PASSWORDS = frozenset({
    "password", "password1", "password12", "password123", "passw0rd", "p@ssw0rd", "p@ssword",
    "12345678", "123456789", "1234567890", "87654321", "11111111", "00000000", "qwertyui",
    "qwerty123", "qwertyuiop", "1q2w3e4r", "1qaz2wsx", "abcd1234", "abc12345", "iloveyou",
    "letmein1", "welcome1", "welcome123", "changeme", "changeme1", "admin123", "administrator",
    "radiology", "radiology1", "radiologist", "hospital", "hospital1", "impressionist",
    "sunshine1", "trustno1", "football1", "monkey123", "dragon123",
})


@dataclass(frozen=True)
class User:
    """The signed-in person, as pages and core functions receive it."""

    id: int
    username: str
    role: str
    signed_in_at: datetime

    @property
    def expired(self) -> bool:
        return datetime.now(timezone.utc) - self.signed_in_at > SESSION_TTL


def hash_password(password: str) -> str:
    import bcrypt  # on first use: only sign-in and user admin hash, most commands never do

    # 12 rounds (~0.25 s) in production; tests lower it (IMPRESSIONIST_BCRYPT_ROUNDS).
    rounds = settings().bcrypt_rounds
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def verify_password(password: str, hashed: str) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password.encode("utf-8"), hashed.encode("ascii"))
    except ValueError:
        return False


def check_password_rules(password: str, username: str | None = None) -> None:
    """Raise :class:`AuthError` for a password that is too weak.

    Rules: at least ``MIN_PASSWORD_LENGTH`` characters and at most 72 bytes (bcrypt's limit); no
    leading/trailing spaces; not only lower-case letters; not only digits (a date such as
    ``20241231``); at least ``MIN_DISTINCT_CHARACTERS`` different characters (not
    ``aaaaaaaaA``); not a well-known password; not mostly the username (what is left after
    removing it must still be long enough).

    Args:
        password: the proposed password (never logged or put in a message).
        username: the account's name, for the last rule.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    try:
        n_bytes = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        raise AuthError("password contains characters that cannot be typed (lone surrogates)") \
            from None
    if n_bytes > 72:
        # bcrypt only reads the first 72 bytes; refuse rather than silently truncate.
        raise AuthError("password must be at most 72 bytes")
    if password.strip() != password or password.lower() == password and password.isalpha():
        raise AuthError("password must not start/end with spaces and must not be only "
                        "lower-case letters")
    if password.isdigit():
        raise AuthError("password must not be only digits (a date or a number is guessed "
                        "first)")
    if len(set(password)) < MIN_DISTINCT_CHARACTERS:
        raise AuthError(f"password must have at least {MIN_DISTINCT_CHARACTERS} different "
                        f"characters")
    if password.lower() in COMMON_PASSWORDS:
        raise AuthError("password is a well-known password; choose another")
    if username and username.lower() in password.lower() and \
            len(password) - len(username) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password must not be mostly the username; it needs at least "
                        f"{MIN_PASSWORD_LENGTH} other characters")


def create_user(store: Store, username: str, role: str, password: str,
                actor: str | None = None, check_rules: bool = True) -> Reader:
    """Create a user with a bcrypt-hashed password.

    >>> create_user(store, "dr_lee", "radiologist", "s3cret-pass")  # doctest: +SKIP
    """
    username = username.strip()
    if not _USERNAME.fullmatch(username):
        raise ValidationError(
            f"username {username!r}: use 1-64 ASCII letters, digits, '.', '_' or '-'")
    taken = next((r.username for r in store.list_readers() if r.username.lower() == username.lower()), None)
    if taken is not None:  # "DR_LEE" beside "dr_lee" would be two people to the eye, one to a reader
        raise ValidationError(f"username {username!r} is already taken"
                              + (f" (as {taken!r})" if taken != username else ""))
    if role not in ROLES:
        raise ValidationError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    if check_rules:
        check_password_rules(password, username)
    reader = store.add_reader(username, role, hash_password(password))
    store.audit(actor, "user_added", {"username": username, "role": role})
    return reader


_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    """A bcrypt hash of nothing anyone knows, checked for unknown users so that a wrong
    username takes as long as a wrong password (no user enumeration by timing)."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(os.urandom(16).hex())
    return _DUMMY_HASH


def _digest(text: str) -> str:
    """A short one-way name for text that must not be logged (16 hex digits of SHA-256)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def audit_name(store: Store, username: str) -> str:
    """How a sign-in attempt names its actor in the audit log: the username when such a user
    exists, else ``unknown:<hash>``. A password typed into the username box (a common slip)
    must never land in the log; the hash still lets throttling count the attempts."""
    if _USERNAME.fullmatch(username or "") and store.password_hash(username, active_only=False) is not None:
        return username
    return f"unknown:{_digest(username or '')}"


def client_key(address: str | None) -> str | None:
    """How the audit log names the client a sign-in came from: a hash of its address (a
    staff member's address is personal data; the hash still lets throttling count it)."""
    if not isinstance(address, str) or not address:
        return None
    return f"client:{_digest(address)}"


def sign_in(store: Store, username: str, password: str, client: str | None = None) -> User:
    """Check credentials (with throttling) and return the :class:`User`.

    At most ``MAX_FAILED_SIGNINS`` attempts per name since its last successful sign-in, and
    ``MAX_FAILED_PER_CLIENT`` unsuccessful ones per client address over all names, within
    ``THROTTLE_WINDOW``; then every attempt (even with the right password) is refused until the
    window has passed. The attempt is counted and recorded in one transaction before the
    password is checked (``Store.begin_signin``), so 30 parallel guesses cannot all pass the
    limit. Every attempt is audited (``signin_attempt``, then ``signin`` or ``signin_failed``;
    or ``signin_throttled``) without the password, an unknown name only as a hash (see
    :func:`audit_name`) and the client only as a hash (see :func:`client_key`).

    Args:
        client: the browser's address (``st.context.ip_address``), or None (CLI, localhost).

    Raises:
        AuthError: unknown user, wrong password or too many recent attempts. The message does
            not tell which of the first two it was.
    """
    now = datetime.now(timezone.utc)
    actor = audit_name(store, username)
    ckey = client_key(client)
    detail = {"client": ckey} if ckey else {}
    since = (now - THROTTLE_WINDOW).replace(tzinfo=None)
    attempt = store.begin_signin(actor, ckey, since, MAX_FAILED_SIGNINS, MAX_FAILED_PER_CLIENT)
    if attempt is None:
        raise AuthError("too many failed sign-ins; try again in 15 minutes")
    hashed = store.password_hash(username, active_only=False) if actor == username else None
    ok = verify_password(password, hashed if hashed is not None else _dummy_hash())
    if hashed is None or not ok:
        store.audit(actor, "signin_failed", {"attempt": attempt, **detail})
        raise AuthError("unknown user or wrong password")
    reader = store.get_reader(username)
    if not reader.active:
        # Only someone who knows the password learns this; everyone else sees the line above.
        store.audit(username, "signin_failed", {"attempt": attempt, "why": "account disabled",
                                                **detail})
        raise AuthError("this account is disabled: ask an administrator to enable it")
    store.audit(username, "signin", {"role": reader.role, "attempt": attempt, **detail})
    return User(reader.id, reader.username, reader.role, now)


def revalidate(store: Store, user: User | None) -> User | None:
    """The session's user if it still stands, else None.

    A session is revoked at once (not at expiry) when an admin disables the account or changes
    its role: pages call this on every run, and every feedback write checks the account too
    (``Store.add_feedback``). A revoked session is audited as ``session_revoked``.
    """
    if user is None or user.expired:
        return None
    try:
        reader = store.get_reader_by_id(user.id)
    except NotFound:
        reader = None
    if reader is None or not reader.active or reader.role != user.role or \
            reader.username != user.username:
        store.audit(user.username, "session_revoked",
                    {"reason": "account removed" if reader is None else
                     "account disabled" if not reader.active else "role changed"})
        return None
    return user


def require(user: User | None, *roles: str) -> User:
    """Raise :class:`PermissionDenied` unless ``user`` is signed in with one of ``roles``."""
    if user is None:
        raise PermissionDenied("sign in first")
    if user.expired:
        raise PermissionDenied("your session has expired; sign in again")
    if roles and user.role not in roles:
        raise PermissionDenied(f"{user.username} ({user.role}) may not do this; needs "
                               f"{' or '.join(roles)}")
    return user


def authorize(store: Store, user: User | None, *roles: str) -> User:
    """:func:`require`, then the account as it is *now* in the store: it must still exist
    under the same name, be active and have the role the session was opened with.

    Core functions that act for a person call this instead of trusting the ``User`` object a
    page holds: a disabled account's old object, or one from before a role change, is refused
    here even if no page run has revalidated the session since. The command line's user
    (``SYSTEM_ID``) has no account to re-read.

    Raises:
        PermissionDenied: not signed in, expired, wrong role, or the account changed.
    """
    require(user, *roles)
    if user.id == SYSTEM_ID:
        return user
    try:
        reader = store.get_reader_by_id(user.id)
    except NotFound:
        reader = None
    if reader is None or reader.username != user.username:
        raise PermissionDenied(f"the account {user.username!r} no longer exists; sign in again")
    if not reader.active:
        raise PermissionDenied(f"the account {user.username!r} is disabled; nothing was done")
    if reader.role != user.role:
        raise PermissionDenied(f"the role of {user.username!r} changed to {reader.role}; sign "
                               f"in again")
    return user


def idle_timeout() -> timedelta:
    """How long a session may go without a page run (``IMPRESSIONIST_IDLE_MINUTES``, default
    ``IDLE_TIMEOUT``: 30 minutes).

    Raises:
        ConfigError: the variable is not a positive number of minutes.
    """
    minutes = settings().idle_minutes
    return IDLE_TIMEOUT if minutes is None else timedelta(minutes=minutes)


def idle_expired(last_active: datetime | None, now: datetime | None = None) -> bool:
    """True when a session last active at ``last_active`` has been idle too long.

    >>> from datetime import datetime, timedelta, timezone
    >>> idle_expired(datetime.now(timezone.utc) - timedelta(hours=1))
    True
    """
    if last_active is None:
        return False
    now = now or datetime.now(timezone.utc)
    return now - last_active > idle_timeout()


def check_idle(store: Store, user: User, last_active: datetime | None,
               now: datetime | None = None) -> bool:
    """True when ``user``'s session is still active; False (audited as ``session_idle``) when
    it has been idle longer than :func:`idle_timeout` and must end."""
    if not idle_expired(last_active, now):
        return True
    store.audit(user.username, "session_idle", {"idle_minutes": round(
        ((now or datetime.now(timezone.utc)) - last_active).total_seconds() / 60, 1)})
    return False


def require_self_or(user: User, reader_id: int, *roles: str) -> None:
    """Allow a user to act on their own data, or on anyone's with one of ``roles``."""
    require(user)
    if user.id != reader_id and user.role not in roles:
        raise PermissionDenied(f"{user.username} may not see or change another reader's data")


def lookup_user(store: Store, username: str) -> Reader:
    try:
        return store.get_reader(username)
    except NotFound:
        raise ValidationError(f"no user named {username!r}") from None
