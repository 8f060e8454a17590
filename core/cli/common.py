"""What every verb uses: the database of ``--db``, the CLI's own user, a plain-text table."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

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


# The verbs that may make a new database (the first step on a new server, or of `make run`):
# every other verb reads or changes data already there and opens it with existing_store.
CREATING_VERBS = ("setup", "demo", "import", "users add", "restore")


def existing_store(args) -> Store:
    """:func:`open_store` for commands that need data already there (every verb but those of
    :data:`CREATING_VERBS`): a missing file is bad input, instead of a new, empty database
    created by a typo in --db and an empty answer.

    Raises:
        ValidationError: naming the path.
    """
    db = settings().db_path
    if not db.is_file():
        what = "is not a file" if db.exists() else "does not exist"
        raise ValidationError(
            f"database {db} {what}: check --db (or IMPRESSIONIST_DB); only "
            f"{', '.join(CREATING_VERBS)} make a new one")
    return open_store(args)


def output_path(path: str | Path, option: str, inputs: tuple = ()) -> Path:
    """Check an output file before any work is done (a long run must not end in a traceback
    because its output cannot be written): not a folder, not one of the ``inputs``, its
    folder there (made if missing) and writable. Returns the path.

    Raises:
        ValidationError: naming the option and the reason.
    """
    p = Path(path).expanduser()
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        raise ValidationError(f"{option} {path}: is a folder; name a file in it")
    if any(Path(i).expanduser().resolve() == p.resolve() for i in inputs if i):
        raise ValidationError(f"{option} {path}: is also the input file; write to another file")
    parent = p.parent
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise ValidationError(f"{option} {path}: {up} is a file, not a folder")
            try:  # a real write (os.access says yes to root on a read-only or special file system)
                with tempfile.NamedTemporaryFile(dir=up, prefix=".impressionist-check-"):
                    pass
            except OSError as exc:
                raise ValidationError(f"{option} {path}: cannot write in {up} ({exc.strerror})") from None
            if p.exists() and not os.access(p, os.W_OK):
                raise ValidationError(f"{option} {path}: cannot overwrite it (permission denied)")
            break
    return p


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
