"""The audit log: who did what, when; append-only (part of the store)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from core import util


class AuditQueries:
    """The ``audit_log`` table (mixed into :class:`core.store.database.Store`)."""

    def audit(self, actor: str | None, action: str, detail: dict | None = None) -> None:
        """Append an audit record. ``detail`` must never hold patient text or secrets."""
        with self.tx() as con:
            con.execute("INSERT INTO audit_log (created_at, actor, action, detail) VALUES "
                        "(?, ?, ?, ?)", [util.now(), actor, action, json.dumps(detail or {})])

    def audit_log(self, limit: int = 200, action: str | None = None,
                  actor: str | None = None, since: datetime | None = None) -> list[dict]:
        sql = "SELECT id, created_at, actor, action, detail FROM audit_log WHERE 1=1"
        params: list[Any] = []
        if action:
            sql += " AND action = ?"
            params.append(action)
        if actor:
            sql += " AND actor = ?"
            params.append(actor)
        if since:
            sql += " AND created_at >= ?"
            params.append(since)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return self._rows(sql, params)
