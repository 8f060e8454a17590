"""``python -m core <command>``: everything Impressionist does, from the shell.

Examples::

    python -m core setup                      # migrate, prepare the embedded model, demo data
    python -m core import ../shared/data/iu_xray/reports.csv
    python -m core import reports/ --format mimic-cxr
    python -m core import export.csv --format csv --map findings=FINDINGS_TEXT
    python -m core generate --limit 200
    echo 'a-long-password' | python -m core users add dr_lee --role radiologist
    python -m core users list

Exit status: 0 on success, 2 on bad input (with a message naming the file, row and field),
1 on any other failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import settings

DEMO_USERS = (
    ("radiologist", "radiologist", "demo-radiologist"),
    ("radiologist2", "radiologist", "demo-radiologist2"),
    ("coordinator", "coordinator", "demo-coordinator"),
    ("admin", "admin", "demo-admin"),
)


def _store(args):
    from core.store import Store

    store = Store(args.db or settings().db_path)
    store.migrate()
    return store


def _mapping(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--map {pair!r}: expected FIELD=COLUMN, e.g. findings=FINDINGS")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# -- commands -------------------------------------------------------------------------------------
def cmd_import(args) -> int:
    from core.ingest import import_file

    store = _store(args)
    result = import_file(store, args.file, fmt=args.format, mapping=_mapping(args.map),
                         require_impression=not args.allow_missing_impression, actor="cli")
    print(result.summary())
    return 0


def _generator(model: str | None):
    from core.models import ModelSpec, load_generator

    path = Path(model) if model else settings().model_path
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path}: run `make setup` (or pass --model PATH)")
    return load_generator(ModelSpec(path=str(path)))


def cmd_generate(args) -> int:
    from core import generate

    if args.inp or args.out:
        if not (args.inp and args.out):
            print("error: --in and --out go together", file=sys.stderr)
            return 2
        return generate.generate_csv(args.inp, args.out, generator=_generator(args.model),
                                     style=args.style, reader=args.reader,
                                     batch_size=args.batch_size)
    store = _store(args)
    n = generate.fill_missing(store, _generator(args.model), limit=args.limit,
                              batch_size=args.batch_size)
    print(f"generated {n} impressions")
    return 0


def cmd_users(args) -> int:
    from core import auth

    store = _store(args)
    if args.users_cmd == "add":
        password = sys.stdin.readline().rstrip("\n")
        reader = auth.create_user(store, args.name, args.role, password, actor="cli")
        print(f"added {reader.username} ({reader.role})")
    elif args.users_cmd == "list":
        for r in store.list_readers():
            print(f"{r.username:24} {r.role:12} {'active' if r.active else 'disabled'}")
    elif args.users_cmd == "disable":
        store.set_reader_active(args.name, False)
        store.audit("cli", "user_disabled", {"username": args.name})
        print(f"disabled {args.name}")
    return 0


def cmd_demo(args) -> int:
    """Create the demo accounts and demo reports (idempotent: existing data is kept)."""
    from core import auth
    from core.demo import synthetic_reports
    from core.errors import StoreError

    store = _store(args)
    existing = {r.username for r in store.list_readers()}
    for name, role, password in DEMO_USERS:
        if name not in existing:
            try:
                auth.create_user(store, name, role, password, actor="demo", check_rules=False)
            except StoreError:
                pass
    imported, _ = store.import_reports(synthetic_reports(args.reports, seed=0), file="demo",
                                       fmt="demo", actor="demo")
    print(f"demo data: {imported} new synthetic reports, accounts: "
          + ", ".join(f"{n}/{p}" for n, _, p in DEMO_USERS))
    if args.generate:
        from core import generate

        n = generate.fill_missing(store, _generator(args.model), batch_size=8)
        print(f"generated {n} AI impressions for the demo queue")
    return 0


def cmd_prepare_model(args) -> int:
    from core.models import prepare_default_model

    path = prepare_default_model(dest=args.dest or settings().model_path, force=args.force)
    print(f"embedded model ready at {path}")
    return 0


def cmd_setup(args) -> int:
    """Migrate the database, prepare the embedded model and write the demo data."""
    cmd_prepare_model(argparse.Namespace(dest=None, force=False))
    store = _store(args)
    print(f"database {store.path} at schema version {store.schema_version()}")
    store.close()
    return cmd_demo(argparse.Namespace(db=args.db, reports=args.reports, generate=True,
                                       model=None))


def cmd_backup(args) -> int:
    store = _store(args)
    counts = store.backup(args.dest)
    store.audit("cli", "backup", {"to": Path(args.dest).name, **counts})
    print(f"backup written to {args.dest}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    return 0


def cmd_restore(args) -> int:
    store = _store(args)
    counts = store.restore(args.src)
    print(f"restored {args.src}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items())
          + f" (previous database kept as {store.path}.before-restore)")
    return 0


# -- more command functions: helpers insert above this line, one function each --


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="database file (default: $IMPRESSIONIST_DB or "
                                     "data/impressionist.duckdb)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="import reports from a file or folder")
    p.add_argument("file")
    p.add_argument("--format", default="auto",
                   choices=["auto", "iu-xray", "mimic-cxr", "chexpert-plus", "csv", "jsonl"])
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                   help="column mapping for generic CSV/JSONL (repeatable)")
    p.add_argument("--allow-missing-impression", action="store_true",
                   help="accept reports without an impression")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("generate", help="generate AI impressions")
    p.add_argument("--limit", type=int, help="at most this many reports")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", help="local Hugging Face checkpoint (default: embedded model)")
    p.add_argument("--in", dest="inp", help="CSV with uid, findings[, indication, comparison]")
    p.add_argument("--out", help="CSV to write uid, prediction, style, flags")
    p.add_argument("--style", default="default")
    p.add_argument("--reader", help="use this radiologist's active adapter")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("users", help="manage users")
    us = p.add_subparsers(dest="users_cmd", required=True)
    a = us.add_parser("add", help="add a user; the password is read from stdin")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=["radiologist", "coordinator", "admin"])
    us.add_parser("list")
    d = us.add_parser("disable")
    d.add_argument("name")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("demo", help="demo accounts and synthetic reports")
    p.add_argument("--reports", type=int, default=60)
    p.add_argument("--generate", action="store_true", help="also generate AI impressions")
    p.add_argument("--model")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("prepare-model", help="convert the embedded GGUF model to safetensors")
    p.add_argument("--dest")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prepare_model)

    p = sub.add_parser("backup", help="consistent copy of the database (safe while the app runs)")
    p.add_argument("dest", help="new backup file, e.g. backups/2026-11-23.duckdb")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="replace the database with a backup")
    p.add_argument("src")
    p.set_defaults(func=cmd_restore)

    # -- more commands: helpers insert their sub-parsers above this line, one block each --

    p = sub.add_parser("setup", help="migrate, prepare the model, write demo data")
    p.add_argument("--reports", type=int, default=60)
    p.set_defaults(func=cmd_setup)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.errors import AuthError, ImpressionistError, ValidationError

    try:
        from core.importers import ImportValidationError
    except ImportError:  # pragma: no cover - importers are part of the package
        ImportValidationError = ValidationError  # type: ignore

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ImportValidationError, ValidationError, AuthError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ImpressionistError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
