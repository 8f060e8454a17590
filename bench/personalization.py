"""Personalization benchmarks on IU X-ray: shared model vs each reader's active adapter.

Run: .venv/bin/python bench/personalization.py [--bench styles|real|both] [--quick] [options]

Runs ``bench/simulate.py`` (the app's own code): reports imported, feedback
stored through the app's save path, pairs built, the nightly job (train, gate, promote), and test
drafts written with each reader's active adapter. Writes ``bench/out/<bench>/results.json``, the
learning curve (``learning_curve.svg`` / ``.html``) and ``bench/out/personalization.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from simulate import add_arguments  # noqa: E402
from simulate import main as simulate_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return simulate_main(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
