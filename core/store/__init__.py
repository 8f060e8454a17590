"""The store: the only code that speaks SQL, one DuckDB file shared by the app and the nightly job.

Owns the schema and every query: the connection and the two-process rule, migrations, backup and
restore, reports and generations, feedback (append-only) and feedback imports, accounts, the
audit log, training runs and adapters, studies. Callers use one object, ``database.Store``.

Modules:
    database    the ``Store`` class, composed of the parts below
    connection  one connection per process, handed between processes; ``tx`` and query helpers
    lock        the fair in-process lock and the file lock with its queue of tickets
    migrations  the schema's versions, applied in order
    backup      backup, restore, and the check that a database file is whole
    accounts    readers (users) and the sign-in throttle's attempts
    audit       the append-only audit log
    reports     imported reports (staged, then published whole) and their generations
    feedback    the annotation queue, feedback rows, chunked feedback imports
    training    training runs, adapter versions, the active adapter per reader, held-out reports
    studies     study designs, units, tasks, events and answers

May import: config, errors, util.
"""
