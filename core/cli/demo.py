"""``setup``, ``demo`` and ``prepare-model``: a working install, with demo data where it may go."""

from __future__ import annotations

from core.accounts.auth import create_user
from core.adapters.base import SHARED_READER
from core.cli.common import open_store
from core.cli.flags import nonnegative_int, positive_int
from core.cli.generation import pipeline
from core.config import settings
from core.errors import StoreError, ValidationError
from core.generation.checkpoint import prepare_default_model
from core.generation.models import BATCH_SIZE
from core.generation.personal import fill_missing
from core.generation.pipeline import C2FConfig
from core.ingest.demo import synthetic_reports

DEMO_USERS = (
    ("radiologist", "radiologist", "demo-radiologist"),
    ("radiologist2", "radiologist", "demo-radiologist2"),
    ("coordinator", "coordinator", "demo-coordinator"),
    ("admin", "admin", "demo-admin"),
)


def _not_a_demo_database(store) -> str | None:
    """Why demo data must stay out of this database (None: it is new or a demo database).

    A department's database holds reports from other sources than the demo, or accounts other
    than the demo ones: demo reports would mix with its data and demo accounts, with published
    passwords, would open it to anyone.
    """
    real = store.count_reports() - len(store.reports(source="demo"))
    people = [r.username for r in store.list_readers()
              if r.username not in {n for n, _, _ in DEMO_USERS} | {SHARED_READER}]
    if real:
        return f"{store.path} holds {real:,} reports that are not demo reports"
    if people:
        return f"{store.path} has accounts of its own ({', '.join(people[:3])}...)"
    return None


def _write_demo(store, n_reports: int) -> int:
    """The demo accounts and ``n_reports`` synthetic reports (idempotent); returns how many
    reports are new."""
    existing = {r.username for r in store.list_readers()}
    for name, role, password in DEMO_USERS:
        if name not in existing:
            try:
                create_user(store, name, role, password, actor="demo", check_rules=False)
            except StoreError:
                pass
    imported, _ = store.import_reports(synthetic_reports(n_reports, seed=0), file="demo",
                                       fmt="demo", actor="demo")
    print(f"demo data: {imported} new synthetic reports, accounts: "
          + ", ".join(f"{n}/{p}" for n, _, p in DEMO_USERS))
    return imported


def _draft_demo(store, limit: int, model: str | None = None) -> None:
    """AI impressions (retrieval and vote; the model drafts with --model) for at most ``limit``
    demo reports that have none yet."""
    made = pipeline(store, C2FConfig(), model, needs_model=bool(model))
    n = fill_missing(store, made.generator, limit=limit, batch_size=BATCH_SIZE, pipeline=made)
    print(f"generated {n} AI impressions for the demo queue")


def cmd_demo(args) -> int:
    """Create the demo accounts and demo reports (idempotent: existing data is kept), only in a
    new or demo database."""
    store = open_store(args)
    why = _not_a_demo_database(store)
    if why:
        raise ValidationError(f"{why}: demo data goes only into a new or demo database "
                              f"(python -m core --db demo.duckdb demo)")
    _write_demo(store, args.reports)
    if args.generate:
        _draft_demo(store, args.reports, args.model)
    return 0


def _prepare_model(dest=None, force: bool = False) -> None:
    path = prepare_default_model(dest=dest or settings().model_path, force=force)
    print(f"embedded model ready at {path}")


def cmd_prepare_model(args) -> int:
    _prepare_model(args.dest, args.force)
    return 0


def cmd_setup(args) -> int:
    """Migrate the database, prepare the embedded model, and (in a new or demo database) write
    the demo data and draft at most --limit of its impressions; quick when run again."""
    _prepare_model()
    store = open_store(args)
    print(f"database {store.path} at schema version {store.schema_version()}")
    why = _not_a_demo_database(store)
    if why:
        print(f"no demo data: {why} (drafts: python -m core generate --limit N)")
        return 0
    _write_demo(store, args.reports)
    _draft_demo(store, args.limit)
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="demo accounts and synthetic reports (new or demo "
                                    "database only)")
    p.add_argument("--reports", type=positive_int, default=60)
    p.add_argument("--generate", action="store_true",
                   help="also draft their AI impressions (retrieval and vote)")
    p.add_argument("--model", help="with --generate: let this checkpoint draft too")
    p.set_defaults(func=cmd_demo)


def add_prepare_model(sub) -> None:
    p = sub.add_parser("prepare-model", help="convert the embedded GGUF model to safetensors")
    p.add_argument("--dest")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prepare_model)


def add_setup(sub) -> None:
    p = sub.add_parser("setup", help="migrate, prepare the model, write demo data (new or "
                                     "demo database only)")
    p.add_argument("--reports", type=positive_int, default=60, help="demo reports")
    p.add_argument("--limit", type=nonnegative_int, default=60,
                   help="draft AI impressions for at most this many demo reports")
    p.set_defaults(func=cmd_setup)
