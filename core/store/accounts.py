"""Accounts: readers (every user, whatever the role) and sign-in attempts (part of the store).

Passwords, roles and sessions are decided in :mod:`core.accounts`; this module only stores them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core import util
from core.errors import NotFound, StoreError


@dataclass(frozen=True)
class Reader:
    """One account: a radiologist, a coordinator or an admin (the password hash stays in the
    store; see :meth:`AccountQueries.password_hash`)."""

    id: int
    username: str
    role: str
    active: bool


class AccountQueries:
    """The ``readers`` table and the sign-in throttle (mixed into
    :class:`core.store.database.Store`)."""

    def add_reader(self, username: str, role: str, password_hash: str) -> Reader:
        with self.tx() as con:
            exists = con.execute("SELECT 1 FROM readers WHERE username = ?",
                                 [username]).fetchall()
            if exists:
                raise StoreError(f"user {username!r} already exists")
            con.execute("INSERT INTO readers (username, role, password_hash, created_at) "
                        "VALUES (?, ?, ?, ?)", [username, role, password_hash, util.now()])
        return self.get_reader(username)

    def get_reader(self, username: str) -> Reader:
        row = self._one("SELECT id, username, role, active FROM readers WHERE username = ?",
                        [username])
        if row is None:
            raise NotFound(f"no user named {username!r}")
        return Reader(**row)

    def get_reader_by_id(self, reader_id: int) -> Reader:
        row = self._one("SELECT id, username, role, active FROM readers WHERE id = ?", [reader_id])
        if row is None:
            raise NotFound(f"no user with id {reader_id}")
        return Reader(**row)

    def password_hash(self, username: str, active_only: bool = True) -> str | None:
        return self._scalar("SELECT password_hash FROM readers WHERE username = ?"
                            + (" AND active" if active_only else ""), [username])

    def set_password_hash(self, username: str, password_hash: str) -> None:
        with self.tx() as con:
            con.execute("UPDATE readers SET password_hash = ? WHERE username = ?",
                        [password_hash, username])

    def set_reader_active(self, username: str, active: bool) -> None:
        with self.tx() as con:
            con.execute("UPDATE readers SET active = ? WHERE username = ?", [active, username])

    def list_readers(self, role: str | None = None) -> list[Reader]:
        sql = "SELECT id, username, role, active FROM readers"
        params: list[Any] = []
        if role:
            sql += " WHERE role = ?"
            params.append(role)
        return [Reader(**r) for r in self._rows(sql + " ORDER BY username", params)]

    def begin_signin(self, actor: str, client: str | None, since: datetime,
                     max_per_name: int, max_per_client: int) -> int | None:
        """Count recent sign-in attempts and record this one, in ONE transaction.

        An attempt counts against the limits from the moment it starts (before its password is
        checked), so parallel attempts cannot all pass a check made before any of them failed.
        Per name: attempts since ``since`` and since the name's last successful sign-in. Per
        client: attempts since ``since`` that did not succeed (a ward's shared address is not
        throttled for its successful sign-ins).

        Returns:
            The attempt's audit id (name it in :meth:`end_signin`), or None when a limit is
            reached (then a ``signin_throttled`` row is written instead).
        """
        detail = json.dumps({"client": client} if client else {})
        with self.tx() as con:
            by_name = con.execute(
                "SELECT count(*) FROM audit_log WHERE action = 'signin_attempt' AND actor = ? "
                "AND created_at >= ? AND id > coalesce((SELECT max(id) FROM audit_log WHERE "
                "action = 'signin' AND actor = ?), 0)", [actor, since, actor]).fetchall()[0][0]
            by_client = 0
            if client:
                by_client = con.execute(
                    "SELECT count(*) FROM audit_log a WHERE a.action = 'signin_attempt' AND "
                    "a.created_at >= ? AND json_extract_string(a.detail, '$.client') = ? AND NOT "
                    "EXISTS (SELECT 1 FROM audit_log s WHERE s.action = 'signin' AND s.actor = "
                    "a.actor AND json_extract_string(s.detail, '$.attempt') = "
                    "CAST(a.id AS VARCHAR))", [since, client]).fetchall()[0][0]
            action = ("signin_throttled" if by_name >= max_per_name or
                      by_client >= max_per_client else "signin_attempt")
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES "
                        "(?, ?, ?, ?)", [util.now(), actor, action, detail])
            if action == "signin_throttled":
                return None
            return con.execute("SELECT currval('audit_id_seq')").fetchall()[0][0]
