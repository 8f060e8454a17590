"""Where Impressionist keeps its files, read from the environment once.

Every path can be overridden with an environment variable so that tests, the demo and a
department's deployment use the same code:

    IMPRESSIONIST_DB          database file            (default data/impressionist.duckdb)
    IMPRESSIONIST_DATA        data folder              (default data/)
    IMPRESSIONIST_MODEL       base model checkpoint    (default data/models/smollm2-135m-instruct)
    IMPRESSIONIST_ADAPTERS    versioned LoRA adapters  (default <database home>/adapters)
    IMPRESSIONIST_BACKEND     generation backend       (default transformers; vllm on a GPU node)

and a few knobs, each checked when read (a bad value is a :class:`core.errors.ConfigError`
naming the variable, exit 2 on the command line):

    IMPRESSIONIST_NIGHTLY_NICE     the nightly job's CPU priority, nice 0-19       (default 10)
    IMPRESSIONIST_IMPORT_NICE      CLI imports' CPU priority, nice 0-19            (default 10)
    IMPRESSIONIST_NIGHTLY_THREADS  the nightly job's torch threads (default: every core but one)
    IMPRESSIONIST_BCRYPT_ROUNDS    password hashing cost, 4-31 (default 12; tests use 4)
    IMPRESSIONIST_IDLE_MINUTES     a session with no page run for this long ends
                                   (default: core.accounts.auth.IDLE_TIMEOUT)

What belongs to one database (its adapters, the nightly lock, the retrieval cache, logs) lives
in that database's *home* folder, beside the file, so two databases never share state: a file
named ``impressionist.duckdb`` owns its folder (the default ``data/`` layout), any other file
``NAME.duckdb`` gets ``NAME-data/`` next to it. The model is shared by every database.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# Nothing may download from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


DB_NAME = "impressionist.duckdb"
BACKENDS = ("transformers", "vllm")


def _path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


def _number(var: str, kind: type, default, test: Callable, what: str):
    """The environment variable ``var`` read as a ``kind`` (``default`` when unset or blank).

    Raises:
        ConfigError: the value is not a number, or fails ``test``; the message names ``var``.
    """
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not test(value):
        raise ConfigError(f"{var}={raw!r}: must be {what}")
    return value


def _backend() -> str:
    value = os.environ.get("IMPRESSIONIST_BACKEND") or "transformers"
    if value not in BACKENDS:
        raise ConfigError(f"IMPRESSIONIST_BACKEND={value!r}: must be one of {', '.join(BACKENDS)}")
    return value


def _data_dir() -> Path:
    return _path("IMPRESSIONIST_DATA", ROOT / "data")


def _db_path() -> Path:
    return _path("IMPRESSIONIST_DB", _data_dir() / DB_NAME)


def database_home(db_path: str | os.PathLike) -> Path:
    """The folder holding everything that belongs to the database ``db_path``.

    Args:
        db_path: the database file.

    Returns:
        The file's folder when it is named ``impressionist.duckdb``, else ``<stem>-data/``
        beside it.

    >>> database_home("/srv/dept/impressionist.duckdb").as_posix()
    '/srv/dept'
    >>> database_home("/srv/trial.duckdb").as_posix()
    '/srv/trial-data'
    """
    db = Path(db_path)
    return db.parent if db.name == DB_NAME else db.parent / f"{db.stem}-data"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=_data_dir)
    db_path: Path = field(default_factory=_db_path)
    model_path: Path = field(default_factory=lambda: _path(
        "IMPRESSIONIST_MODEL", _data_dir() / "models" / "smollm2-135m-instruct"))
    adapters_dir: Path = field(default_factory=lambda: _path(
        "IMPRESSIONIST_ADAPTERS", database_home(_db_path()) / "adapters"))
    backend: str = field(default_factory=_backend)
    nightly_nice: int = field(default_factory=lambda: _number(
        "IMPRESSIONIST_NIGHTLY_NICE", int, 10, lambda v: 0 <= v <= 19, "a whole number 0-19"))
    import_nice: int = field(default_factory=lambda: _number(
        "IMPRESSIONIST_IMPORT_NICE", int, 10, lambda v: 0 <= v <= 19, "a whole number 0-19"))
    nightly_threads: int | None = field(default_factory=lambda: _number(
        "IMPRESSIONIST_NIGHTLY_THREADS", int, None, lambda v: v >= 1, "a whole number >= 1"))
    bcrypt_rounds: int = field(default_factory=lambda: _number(
        "IMPRESSIONIST_BCRYPT_ROUNDS", int, 12, lambda v: 4 <= v <= 31, "a whole number 4-31"))
    idle_minutes: float | None = field(default_factory=lambda: _number(
        "IMPRESSIONIST_IDLE_MINUTES", float, None, lambda v: v > 0,
        "a positive number of minutes"))

    @property
    def db_home(self) -> Path:
        """Where this database's nightly lock, retrieval cache and logs live (:func:`database_home`)."""
        return database_home(self.db_path)


_OVERRIDE: ContextVar[Settings | None] = ContextVar("impressionist_settings", default=None)


def settings() -> Settings:
    """The settings in force: those of an enclosing :func:`use_settings`, else read from the
    environment (cheap; call it where needed)."""
    return _OVERRIDE.get() or Settings()


@contextmanager
def use_settings(**fields):
    """Run a block with some settings replaced (e.g. a benchmark's own database and adapters
    folder), without touching ``os.environ``; fields not given keep their current values.

    >>> with use_settings(db_path=Path("/tmp/x.duckdb")) as s:
    ...     settings().db_path.as_posix()
    '/tmp/x.duckdb'
    """
    token = _OVERRIDE.set(replace(settings(), **fields))
    try:
        yield _OVERRIDE.get()
    finally:
        _OVERRIDE.reset(token)
