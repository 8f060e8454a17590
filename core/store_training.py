"""SQL for training runs, adapters and the nightly job (mixed into core.store.Store)."""

from __future__ import annotations

# Migrations 10-29 belong to training runs, adapters and personalization; core.store
# registers them.
TRAINING_MIGRATIONS: list[tuple[int, str, str]] = []


class TrainingQueries:
    """Training/adapters queries; uses Store's ``tx``/``_rows``/``_one``/``_scalar`` helpers."""
