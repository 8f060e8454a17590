"""``backup`` and ``restore``: a consistent copy of the database, and putting one back."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from core.adapters.registry import sync_pointers, versions_without_files
from core.cli.common import existing_store
from core.config import settings
from core.store.database import Store


def _os_actor(args) -> str:
    """Who runs a backup or restore, for the audit log: ``--actor``, else the OS user."""
    if args.actor:
        return args.actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): the uid still names someone
        return f"uid:{os.getuid()}"


def cmd_backup(args) -> int:
    store = existing_store(args)
    counts = store.backup(args.dest)
    store.audit(_os_actor(args), "backup", {"to": Path(args.dest).name, **counts})
    print(f"backup written to {args.dest}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    return 0


def cmd_restore(args) -> int:
    """Restore a backup (checked completely first). The live database is never opened, so a
    good backup also restores over a damaged one: no ``open_store`` (which migrates).

    A backup holds the database, not the adapter files: the pointer files of this database's
    adapters folder are rewritten from the restored database, and a warning names the versions
    whose files are not there (e.g. a backup of another database: its versions' folders are
    that database's, never used here)."""
    store = Store(settings().db_path)
    args.cleanup.callback(store.close)
    result = store.restore(args.src, actor=_os_actor(args))
    print(f"restored {args.src}: " + ", ".join(f"{v:,} {k}" for k, v in result.counts.items())
          + (f" (previous database kept as {result.kept_as})" if result.kept_as else ""))
    sync_pointers(store)
    _warn_adapters_not_restored(versions_without_files(store))
    return 0


def _warn_adapters_not_restored(missing: list[dict]) -> None:
    """One line on stderr naming the adapter versions whose files a restore did not bring."""
    if not missing:
        return
    named = ", ".join(f"{m['reader']} v{m['version']} (written to {m['written_to']})"
                      for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
    folder = Path(missing[0]["here"]).parent.parent
    print(f"warning: the adapter files were not restored (a backup holds the database only): "
          f"{len(missing)} adapter version(s) are not in {folder}: {named}; copy each version's "
          f"folder to {folder}/<reader>/v<N> to use it (until then it cannot be promoted, and an "
          f"active one drafts as the shared base)", file=sys.stderr)


def add_backup(sub) -> None:
    p = sub.add_parser("backup", help="consistent copy of the database (safe while the app runs)")
    p.add_argument("dest", help="new backup file, e.g. backups/2026-11-23.duckdb")
    p.add_argument("--actor", help="who backs up, for the audit log (default: the OS user)")
    p.set_defaults(func=cmd_backup)


def add_restore(sub) -> None:
    p = sub.add_parser("restore", help="replace the database with a backup (checked first; "
                                       "the replaced one is kept as <db>.before-restore-<time>)")
    p.add_argument("src")
    p.add_argument("--actor", help="who restores, for the audit log (default: the OS user)")
    p.set_defaults(func=cmd_restore)
