"""Generate AI impressions for reports and store them.

First version: zero-shot with the embedded model. The coarse-to-fine pipeline (retrieval,
refinement, styles, clinical check) replaces :func:`impressions_for` in its own issue; the
store-facing :func:`fill_missing` stays the one path used by the CLI and the app.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from core.store import Store


@dataclass
class GenerationOutput:
    text: str
    latency_ms: float
    flags: dict = field(default_factory=dict)


_PREFIX = re.compile(r"^\s*(impression|final impression)\s*:\s*", re.I)


def clean_output(text: str) -> str:
    """Trim a model's answer to the impression itself (no heading, no trailing chatter)."""
    text = _PREFIX.sub("", text.strip())
    text = text.split("\n\n")[0].strip()
    return text or "No impression generated."


def impressions_for(generator, reports: list[dict], batch_size: int = 8,
                    max_new_tokens: int = 64, progress: bool = False) -> list[GenerationOutput]:
    """Zero-shot impressions for report dicts (findings, indication, comparison)."""
    from core.prompts import impression_messages

    prompts = [impression_messages(r["findings"], r.get("indication"), r.get("comparison"))
               for r in reports]
    results = generator.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 progress=progress)
    return [GenerationOutput(clean_output(res.text), res.latency_s * 1000) for res in results]


def fill_missing(store: Store, generator, limit: int | None = None, batch_size: int = 8,
                 chunk: int = 64, progress: bool = True) -> int:
    """Generate and store impressions for reports that have none yet. Returns how many.

    Works in chunks so that each chunk is stored (and visible in the app) as soon as it is
    done, and the database is held only for the short insert.
    """
    from tqdm.auto import tqdm

    todo = store.reports_without_generation(limit=limit)
    bar = tqdm(total=len(todo), desc="generate", unit="report", disable=not progress)
    done = 0
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        t0 = time.perf_counter()
        outputs = impressions_for(generator, part, batch_size=batch_size)
        per = (time.perf_counter() - t0) * 1000 / max(len(part), 1)
        store.add_generations({"report_id": r["id"], "model": generator.name, "text": o.text,
                               "flags": o.flags, "latency_ms": o.latency_ms or per}
                              for r, o in zip(part, outputs))
        done += len(part)
        bar.update(len(part))
    bar.close()
    return done
