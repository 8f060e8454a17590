"""python -m core <command>: everything Impressionist does, from the shell.

Examples:

    python -m core setup                      # migrate, prepare the embedded model, demo data
    python -m core import ../shared/data/iu_xray/reports.csv
    python -m core import reports/ --format mimic-cxr
    python -m core import export.csv --format csv --map findings=FINDINGS_TEXT
    python -m core generate --limit 200
    echo 'a-long-password' | python -m core users add dr_lee --role radiologist
    python -m core users list
    python -m core --db trial.duckdb users list   # another database (its files: trial-data/)

Import formats (import --format; auto picks one from the file name and header):
    iu-xray        IU X-ray / Open-i CSV: uid, MeSH, Problems, image, indication, comparison,
                   findings, impression
    mimic-cxr      a MIMIC-CXR report .txt (FINDINGS:, IMPRESSION: ... sections) or a folder
    chexpert-plus  CheXpert Plus CSV, one row per image (section_findings, section_impression)
    csv, jsonl     any CSV / JSON Lines; name your columns with --map findings=COLUMN ...

Every command works on the database given by --db (default: $IMPRESSIONIST_DB, else
data/impressionist.duckdb). What belongs to a database (its adapters, the nightly lock, the
retrieval cache, logs) lives beside it: in its folder for impressionist.duckdb, else in
NAME-data/ next to NAME.duckdb. Only setup, demo, import, users add and restore make a new
database; every other command refuses one that does not exist (a typo in --db), with status 2.
Add --help after a command for its options.

Exit status: 0 on success, 2 on bad input (the message names the file, row and field, the
option, or the IMPRESSIONIST_* setting: a file that is not what the command needs, such as a
restore of a file that is no Impressionist database, or a request that lacks the option it
needs, such as adapters promote of a version the nightly gate rejected without
--override-gate), 1 on any other failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path

from core.cli import accounts, data, demo, generation, learning, store, studies
from core.config import settings
from core.errors import AuthError, ImpressionistError, NotFound, ValidationError

# The verbs, in the order `python -m core --help` lists them: each adds its sub-parser.
VERBS = (data.add_import, generation.add_generate, accounts.add_users, demo.add_demo,
         demo.add_prepare_model, store.add_backup, store.add_restore, studies.add_study,
         learning.add_pairs, learning.add_nightly, learning.add_adapters, data.add_feedback,
         data.add_evaluate, learning.add_train_sft, demo.add_setup)

# Bad input that is not one of our ValidationErrors: a failed sign-in or weak password, an
# unknown user, study or report, a missing file, a ValueError from a library.
_BAD_INPUT = (ValueError, AuthError, NotFound, FileNotFoundError, IsADirectoryError,
              NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="database file (default: $IMPRESSIONIST_DB or "
                                     "data/impressionist.duckdb); its adapters, locks, caches "
                                     "and logs live beside it")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in VERBS:
        add(sub)
    return parser


@contextlib.contextmanager
def _database(db: str | None):
    """Make ``--db`` the configured database while the command runs, for every module that
    reads :func:`core.config.settings` and every process the command starts (so adapters, the
    nightly lock, caches and logs follow it); restored afterwards, for in-process callers."""
    if not db:
        yield
        return
    before = os.environ.get("IMPRESSIONIST_DB")
    os.environ["IMPRESSIONIST_DB"] = str(Path(db).expanduser().absolute())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("IMPRESSIONIST_DB", None)
        else:
            os.environ["IMPRESSIONIST_DB"] = before


def _exit_status(exc: Exception) -> int:
    """Print one line for ``exc`` on stderr and return the exit status: 2 for bad input (a
    :class:`ValidationError`, which includes a bad configuration value, or the other bad input
    of ``_BAD_INPUT``; a file that is not UTF-8), 1 for anything else (another
    ``ImpressionistError``, a database error; a traceback first when it is not one of ours)."""
    if isinstance(exc, UnicodeDecodeError):
        print(f"error: a file is not UTF-8 text ({exc}); save it as UTF-8", file=sys.stderr)
        return 2
    if isinstance(exc, (ValidationError, *_BAD_INPUT)):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, ImpressionistError):
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, OSError) and exc.filename:  # a file the command could not read or write
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    duckdb = sys.modules.get("duckdb")  # loaded if the command opened a database
    if duckdb is not None and isinstance(exc, duckdb.Error):
        # e.g. the disk is full: the transaction was rolled back, nothing was written.
        print(f"error: the database refused the change ({type(exc).__name__}: {exc}); "
              f"nothing was written", file=sys.stderr)
        return 1
    traceback.print_exception(exc)
    print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


# Verbs that read and check whole files on the CPU while radiologists may be rating on the
# same server: as a process of their own they run at IMPRESSIONIST_IMPORT_NICE (default 10),
# so the app's threads get the cores first (the nightly job lowers its own priority too).
BACKGROUND_VERBS = ("import", "feedback")


def main(argv: list[str] | None = None, process: bool = False) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input, 1 anything else).

    The one place that turns errors into exit statuses, and that closes what the command
    opened (databases, progress bars), on success and on every error.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        process: this is a process of its own (``python -m core``): a background verb may
            lower the process's CPU priority (never done to a caller's process, e.g. a test).
    """
    args = build_parser().parse_args(argv)  # a bad option exits 2 here, before anything loads
    if process and args.command in BACKGROUND_VERBS:
        os.nice(max(0, settings().import_nice - os.nice(0)))
    with _database(args.db), contextlib.ExitStack() as cleanup:
        args.cleanup = cleanup
        try:
            return args.func(args)
        except KeyboardInterrupt:
            # Every write is a whole transaction (an import publishes all or nothing; a
            # feedback import resumes where it stopped when run again): say so, no traceback.
            print(f"\ninterrupted: {args.command} stopped (Ctrl-C). Nothing is half-written: what "
                  f"it had saved stays, the rest was not written; run it again to finish",
                  file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - mapped to an exit status, see _exit_status
            return _exit_status(exc)
