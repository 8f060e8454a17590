"""Sessions that survive a page refresh: a signed, expiring, revocable token in a cookie.

The browser keeps the token in a cookie (never in the URL); a new browser session (F5, a typed
URL, a second tab) sends it with its first request and :func:`restore` turns it back into the
:class:`core.accounts.auth.User`, or refuses it. A token is

- signed: HMAC-SHA256 with a key kept beside the database (``session.key``, mode 0600; a new
  key signs everyone out);
- expiring: at ``auth.SESSION_TTL`` after the sign-in it continues, and after
  ``auth.idle_timeout()`` without a page run (the page re-issues it while in use);
- revocable: signing out revokes it (audited as ``session_ended``), so does a password change
  (the token carries a fingerprint of the password hash), disabling the account or changing
  its role (``auth.revalidate``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from core.accounts.auth import SESSION_TTL, User, idle_timeout, revalidate
from core.config import settings
from core.store.database import Store

COOKIE = "impressionist_session"
ENDED = "session_ended"


def _key() -> bytes:
    """The signing key of this database's sessions, made on first use (0600)."""
    path = Path(settings().db_home) / "session.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".session.key.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(tmp, path)
        return bytes.fromhex(path.read_text().strip())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _fingerprint(store: Store, username: str) -> str:
    """Changes when the password does (8 bytes of a hash of the bcrypt hash)."""
    hashed = store.password_hash(username, active_only=False) or ""
    return hashlib.sha256(hashed.encode("ascii", "replace")).hexdigest()[:16]


def new_session_id() -> str:
    return secrets.token_hex(16)


def issue(store: Store, user: User, session_id: str, now: datetime | None = None) -> str:
    """A token for ``user``'s session ``session_id``, active at ``now``."""
    now = now or datetime.now(UTC)
    body = _b64(json.dumps({"u": user.id, "n": user.username, "r": user.role, "s": session_id,
                            "i": user.signed_in_at.timestamp(), "a": now.timestamp(),
                            "p": _fingerprint(store, user.username)},
                           separators=(",", ":")).encode())
    mac = hmac.new(_key(), body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def _payload(token: str) -> dict | None:
    """The token's content if its signature holds, else None."""
    try:
        body, mac = token.split(".")
        want = hmac.new(_key(), body.encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(want, _unb64(mac)):
            return None
        return json.loads(_unb64(body))
    except (ValueError, UnicodeError, TypeError):
        return None


def restore(store: Store, token: str | None,
            now: datetime | None = None) -> tuple[User, str] | None:
    """The (user, session id) a token stands for, or None: a bad signature, past the session's
    lifetime or idle limit, signed out, another password since, or the account disabled or
    its role changed. A restored session is audited (``session_restored``)."""
    data = _payload(token) if token else None
    if not data:
        return None
    now = now or datetime.now(UTC)
    try:
        signed_in = datetime.fromtimestamp(float(data["i"]), UTC)
        active = datetime.fromtimestamp(float(data["a"]), UTC)
        user = User(int(data["u"]), str(data["n"]), str(data["r"]), signed_in)
        sid = str(data["s"])
    except (KeyError, ValueError, TypeError, OverflowError):
        return None
    if now - signed_in > SESSION_TTL or now - active > idle_timeout() or active > now:
        return None
    if not hmac.compare_digest(str(data.get("p", "")), _fingerprint(store, user.username)):
        return None
    if is_revoked(store, user.username, sid, signed_in):
        return None
    if revalidate(store, user) is None:
        return None
    store.audit(user.username, "session_restored", {"session": sid})
    return user, sid


def is_revoked(store: Store, username: str, session_id: str, since: datetime) -> bool:
    ended = store.audit_log(limit=10_000, action=ENDED, actor=username,
                            since=since.replace(tzinfo=None))
    details = (r["detail"] for r in ended)
    return any((json.loads(d) if isinstance(d, str) else d or {}).get("session") == session_id
               for d in details)


def revoke(store: Store, username: str, session_id: str | None, why: str = "signed out") -> None:
    """End a session for good: its token is refused from now on."""
    if session_id:
        store.audit(username, ENDED, {"session": session_id, "why": why})
