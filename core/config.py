"""Where Impressionist keeps its files, read from the environment once.

Every path can be overridden with an environment variable so that tests, the demo and a
department's deployment use the same code:

    IMPRESSIONIST_DB          database file            (default data/impressionist.duckdb)
    IMPRESSIONIST_DATA        data folder              (default data/)
    IMPRESSIONIST_MODEL       base model checkpoint    (default data/models/smollm2-135m-instruct)
    IMPRESSIONIST_ADAPTERS    versioned LoRA adapters  (default data/adapters)
    IMPRESSIONIST_BACKEND     generation backend       (default transformers; vllm on a GPU node)
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


def _path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: _path("IMPRESSIONIST_DATA", ROOT / "data"))
    db_path: Path = field(default_factory=lambda: _path(
        "IMPRESSIONIST_DB", _path("IMPRESSIONIST_DATA", ROOT / "data") / "impressionist.duckdb"))
    model_path: Path = field(default_factory=lambda: _path(
        "IMPRESSIONIST_MODEL",
        _path("IMPRESSIONIST_DATA", ROOT / "data") / "models" / "smollm2-135m-instruct"))
    adapters_dir: Path = field(default_factory=lambda: _path(
        "IMPRESSIONIST_ADAPTERS", _path("IMPRESSIONIST_DATA", ROOT / "data") / "adapters"))
    backend: str = field(default_factory=lambda: os.environ.get("IMPRESSIONIST_BACKEND", "transformers"))


def settings() -> Settings:
    """Read the settings from the environment (cheap; call it where needed)."""
    return Settings()
