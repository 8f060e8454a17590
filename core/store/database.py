"""The Store: one object for the whole database, composed of the store's parts.

Each part is a mixin holding the SQL of one concept; :class:`Store` puts them together. Every
query runs in :meth:`Store.tx` on the one connection this process shares with its threads, and
the file is handed between processes by the rule in :mod:`core.store.connection`.

* :mod:`core.store.connection`: the connection, the two-process hand-over, query helpers.
* :mod:`core.store.migrations`: the schema, versioned; ``migrate``.
* :mod:`core.store.backup`: backup, restore, the check that a database file is whole.
* :mod:`core.store.audit`, :mod:`core.store.accounts`, :mod:`core.store.reports`,
  :mod:`core.store.feedback`, :mod:`core.store.training`, :mod:`core.store.studies`: the tables
  of each concept.
"""

from __future__ import annotations

from core.store.accounts import AccountQueries
from core.store.audit import AuditQueries
from core.store.backup import Backups
from core.store.connection import StoreConnection
from core.store.feedback import FeedbackQueries
from core.store.migrations import Migrations
from core.store.reports import ReportQueries
from core.store.studies import StudyQueries
from core.store.training import TrainingQueries


class Store(StoreConnection, Migrations, Backups, AuditQueries, AccountQueries, ReportQueries,
            FeedbackQueries, TrainingQueries, StudyQueries):
    """A DuckDB database shared fairly between processes (see :mod:`core.store.connection`).

    Args:
        path: database file; ``":memory:"`` for a private in-memory database (tests).
        lock_timeout: seconds to wait for another process before raising
            :class:`~core.errors.StoreBusy`.
        linger: seconds an idle connection is kept open before the file is handed back.
        slice_s: while another process waits, keep the file at most this long for threads of
            this process already queued in ``tx()`` (one reopen per burst, not one per
            transaction: each hand-over costs a checkpoint and a reopen, 40-400 ms).

    >>> store = Store(":memory:"); store.migrate() > 0
    True
    """
