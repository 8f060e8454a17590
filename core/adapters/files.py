"""Checking a PEFT adapter folder on disk without loading it (the registry, the model loader and
the nightly job all refuse a damaged adapter before PEFT touches a model)."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import AdapterError


def check_adapter_files(path: str | Path) -> None:
    """Check a PEFT adapter folder without loading it: a readable ``adapter_config.json`` and,
    when present, a complete ``adapter_model.safetensors`` (header and every tensor's bytes).

    Args:
        path: the adapter directory.

    Raises:
        AdapterError: naming the damaged file (e.g. a truncated weights file after a crash or a
            full disk). Checked before PEFT touches the model: a failed PEFT load would leave
            LoRA layers injected into the base model.
    """
    path = Path(path)
    config = path / "adapter_config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{path} is not a PEFT adapter directory: adapter_config.json is "
                           f"missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"adapter file {config} is damaged: {exc}") from None
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        try:
            from safetensors import safe_open  # deferred: heavy

            with safe_open(str(weights), "pt") as fh:  # validates header and file coverage
                keys = list(fh.keys())
        except Exception as exc:  # SafetensorError is not a subclass of a builtin error
            raise AdapterError(f"adapter file {weights} is damaged: {exc}") from None
        if not keys:
            raise AdapterError(f"adapter file {weights} holds no tensors")
