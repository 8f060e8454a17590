"""What every verb uses: the database of ``--db``, the CLI's own user, a plain-text table."""

from __future__ import annotations

from datetime import UTC, datetime

from core.accounts.auth import User
from core.config import settings
from core.errors import ValidationError
from core.store.database import Store


def open_store(args) -> Store:
    """The database of ``--db`` (main() has made it the configured one), migrated; main()
    closes it when the command ends, also on an error (an open DuckDB handle at exit prints
    ``nanobind: leaked ...`` and can abort the interpreter)."""
    store = Store(settings().db_path)
    args.cleanup.callback(store.close)
    store.migrate()
    return store


def existing_store(args) -> Store:
    """:func:`open_store` for commands that need data already there: a missing file is bad
    input (instead of a new, empty database created by a typo in --db)."""
    db = settings().db_path
    if not db.is_file():
        raise ValidationError(f"database {db} does not exist: import reports first "
                              f"(python -m core --db {db} import FILE)")
    return open_store(args)


def cli_user() -> User:
    """Whoever can run the CLI can open the database file: an admin named "cli"."""
    return User(0, "cli", "admin", datetime.now(UTC))


def table(rows: list[tuple], header: tuple[str, ...]) -> str:
    """Rows as left-aligned columns under a header (plain text, for the terminal).

    >>> print(table([("dr_lee", "radiologist")], ("user", "role")))
    user    role
    dr_lee  radiologist
    """
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
