"""SQL for human-evaluation studies (part of the store: mixed into core.store.Store)."""

from __future__ import annotations

# Migrations 30-39 belong to studies; core.store registers them.
STUDY_MIGRATIONS: list[tuple[int, str, str]] = []


class StudyQueries:
    """Study queries; uses Store's ``tx``/``_rows``/``_one``/``_scalar`` helpers."""
