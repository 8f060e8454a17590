"""Where Impressionist keeps its files, read from the environment once.

Every path can be overridden with an environment variable so that tests, the demo and a
department's deployment use the same code:

    IMPRESSIONIST_DB          database file            (default data/impressionist.duckdb)
    IMPRESSIONIST_DATA        data folder              (default data/)
    IMPRESSIONIST_MODEL       base model checkpoint    (default data/models/smollm2-135m-instruct)
    IMPRESSIONIST_ADAPTERS    versioned LoRA adapters  (default <database home>/adapters)
    IMPRESSIONIST_BACKEND     generation backend       (default transformers; vllm on a GPU node)

What belongs to one database (its adapters, the nightly lock, the retrieval cache, logs) lives
in that database's *home* folder, beside the file, so two databases never share state: a file
named ``impressionist.duckdb`` owns its folder (the default ``data/`` layout), any other file
``NAME.duckdb`` gets ``NAME-data/`` next to it. The model is shared by every database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Nothing may download from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


DB_NAME = "impressionist.duckdb"


def _path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


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
    backend: str = field(default_factory=lambda: os.environ.get("IMPRESSIONIST_BACKEND", "transformers"))

    @property
    def db_home(self) -> Path:
        """Where this database's nightly lock, retrieval cache and logs live (:func:`database_home`)."""
        return database_home(self.db_path)


def settings() -> Settings:
    """Read the settings from the environment (cheap; call it where needed)."""
    return Settings()
