"""Where each arm's texts come from: stored generations, or an injected ``make_texts``.

Texts come from the ``generations`` table. Missing texts are made by an injected function
``make_texts(reports, arm) -> list[str]`` (tests pass a fake; the CLI passes
:func:`model_text_maker`, the app :func:`stored_style_maker`), stored as generations, and
snapshotted into the study's units so a running study never changes under its raters.
"""

from __future__ import annotations

from typing import Any, Callable

from core.errors import StudyError
from core.evaluation.metrics import inject_typos
from core.generation import pipeline
from core.generation.models import BATCH_SIZE
from core.generation.personal import reader_adapter
from core.generation.styles import apply_style
from core.store.database import Store
from core.studies.design import seeded_key
from core.studies.protocol import Arm, parse_arm

MakeTexts = Callable[[list[dict], str], list[Any]]
"""``make_texts(reports, arm) -> texts``: one str (or {"text", "model", "flags"}) per report."""

def typo_reports(reports: list[dict], rate: float, seed: int) -> list[dict]:
    """The reports with typos injected into their findings (seeded per study and report)."""
    out = []
    for r in reports:
        typo_seed = seeded_key(seed, "typos", r["id"]) % (2**31)
        out.append({**r, "findings": inject_typos(r["findings"], rate=rate, seed=typo_seed),
                    "typo_seed": typo_seed})
    return out


def arm_texts(store: Store, arm: Arm, reports: list[dict], seed: int, model: str | None,
              make_texts: MakeTexts | None, model_name: str) -> dict[int, tuple[int | None, str]]:
    """report_id -> (generation_id, text) for one arm, generating (and storing) what is missing.

    Args:
        seed: the study seed (typo arms derive their typos from it).
        model: only use stored generations of this model (None: the newest of any).
        make_texts: makes the missing texts (None: missing texts are an error).
        model_name: recorded as the model of generated texts without one of their own.
    """
    if arm.kind == "original":
        return {r["id"]: (None, r["impression"]) for r in reports}
    ids = [r["id"] for r in reports]
    found = store.latest_generations(ids, style=arm.style, adapter=arm.adapter, model=model)
    missing = [r for r in reports if r["id"] not in found]
    if missing:
        if make_texts is None:
            raise StudyError(
                f"arm {arm.name!r}: {len(missing)} of {len(reports)} sampled reports have no "
                f"stored text (generations with style={arm.style!r}, adapter={arm.adapter!r}"
                + (f", model={model!r}" if model else "") + "); generate them "
                "first (python -m core study create ... --generate) or choose other arms")
        rows = _generated_rows(arm, missing, seed, make_texts, model_name)
        for row, gid in zip(rows, store.add_generations(rows)):
            found[row["report_id"]] = {"generation_id": gid, "text": row["text"]}
    return {rid: (found[rid]["generation_id"], found[rid]["text"]) for rid in ids}


def _generated_rows(arm: Arm, missing: list[dict], seed: int, make_texts: MakeTexts,
                    model_name: str) -> list[dict]:
    """Generation rows for the reports an arm has no stored text for."""
    inputs = typo_reports(missing, arm.typo_rate, seed) if arm.kind == "typos" else missing
    texts = list(make_texts([dict(r) for r in inputs], arm.name))
    if len(texts) != len(missing):
        raise StudyError(f"arm {arm.name!r}: the text generator returned {len(texts)} texts "
                         f"for {len(missing)} reports")
    rows = []
    for r, item in zip(inputs, texts):
        # An item is the text, or {"text", optional "model", optional "flags"}.
        extra = item if isinstance(item, dict) else {}
        text = extra.get("text") if extra else item
        if not isinstance(text, str) or not text.strip():
            raise StudyError(f"arm {arm.name!r}: the text generator returned an empty text "
                             f"for report {r['id']}")
        flags: dict[str, Any] = {"made_for": "study", "arm": arm.name,
                                 **(extra.get("flags") or {})}
        if arm.kind == "typos":
            flags.update(typo_rate=arm.typo_rate, typo_seed=r["typo_seed"])
        rows.append({"report_id": r["id"], "model": extra.get("model") or model_name,
                     "adapter": arm.adapter, "style": arm.style, "text": text.strip(),
                     "flags": flags})
    return rows


def _styled(arm: Arm, report: dict, base_text: str) -> str:
    return apply_style(base_text, arm.style, findings=report.get("findings"),
                       indication=report.get("indication"), comparison=report.get("comparison"))


def stored_style_maker(store: Store, fallback: MakeTexts | None = None) -> MakeTexts:
    """``make_texts`` that renders style arms from each report's stored base impression with
    :mod:`core.generation.styles` (rules, no model: the app may use it); other arms, and reports
    without a stored base text, go to ``fallback`` (None: they are an error).

    Args:
        store: where the base generations are.
        fallback: e.g. :func:`model_text_maker` (the CLI's ``--generate``).
    """
    def make(reports: list[dict], arm_name: str) -> list[Any]:
        arm = parse_arm(arm_name)
        if arm.kind != "style":
            if fallback is None:
                raise StudyError(
                    f"arm {arm.name!r}: {len(reports)} sampled reports have no stored text "
                    f"(generations with style={arm.style!r}, adapter={arm.adapter!r}); generate "
                    f"them first (python -m core study create ... --generate) or choose other arms")
            return list(fallback(reports, arm_name))
        return _styled_from_base(store, arm, reports, fallback)

    make.model_name = getattr(fallback, "model_name", None) or "core.generation.styles"  # type: ignore
    make.generates = fallback is not None  # type: ignore  # without one: only stored texts
    return make


def _styled_from_base(store: Store, arm: Arm, reports: list[dict],
                      fallback: MakeTexts | None) -> list[dict]:
    """A style arm's texts: each report's stored (else newly made) base text, restyled."""
    found = store.latest_generations([r["id"] for r in reports], style="default")
    missing = [r for r in reports if r["id"] not in found]
    made: dict[int, dict] = {}
    if missing:
        if fallback is None:
            raise StudyError(
                f"arm {arm.name!r}: {len(missing)} sampled reports have no stored base text "
                f"to style; generate them first (python -m core study create ... --generate)")
        for r, item in zip(missing, fallback(missing, "base")):
            made[r["id"]] = item if isinstance(item, dict) else {"text": item}
    out = []
    for r in reports:
        if r["id"] in found:
            g = found[r["id"]]
            base = {"text": g["text"], "model": g["model"],
                    "flags": {"styled_from": int(g["generation_id"])}}
        else:
            base = {**made[r["id"]], "flags": {"styled_from": "new base text"}}
        out.append({"text": _styled(arm, r, base["text"]), "model": base.get("model"),
                    "flags": {**base.get("flags", {}), "style_rules": "core.generation.styles"}})
    return out


def model_text_maker(generator, batch_size: int = BATCH_SIZE, max_new_tokens: int = 96,
                     progress: bool = False, store: Store | None = None) -> MakeTexts:
    """``make_texts`` backed by a loaded :class:`core.generation.models.Generator`.

    Base, typo and external arms are the pipeline's impressions
    (:func:`core.generation.pipeline.impressions_for`; with ``store`` it retrieves from that
    database like the app's stored texts, else the model writes alone). Style arms are the
    pipeline's impressions in that style. Adapter arms (``adapter:<radiologist>``) load that
    radiologist's active LoRA adapter (:func:`core.generation.personal.reader_adapter`: the
    database with ``store``, else the pointer file) into the generator once and draft with it.

    Args:
        generator: the loaded model.
        batch_size: model batch size.
        max_new_tokens: token budget per impression.
        progress: show progress bars.
        store: the database to retrieve from and to find active adapters in (optional).
    Returns:
        ``make_texts(reports, arm)``.
    """
    cache: dict[tuple[int, str], str] = {}  # (report id, findings) -> base text

    def run(reports: list[dict], **extra: Any) -> list[str]:
        return [o.text for o in pipeline.impressions_for(
            generator, reports, batch_size=batch_size, max_new_tokens=max_new_tokens,
            progress=progress, store=store, **extra)]

    def base(reports: list[dict]) -> list[str]:
        todo = [r for r in reports if (r["id"], r["findings"]) not in cache]
        for r, text in zip(todo, run(todo) if todo else []):
            cache[(r["id"], r["findings"])] = text
        return [cache[(r["id"], r["findings"])] for r in reports]

    def make(reports: list[dict], arm_name: str) -> list[str]:
        arm = parse_arm(arm_name)
        if arm.kind == "style":
            return run(reports, style=arm.style)
        if arm.kind == "adapter":
            # the radiologist's own reports rank first in retrieval
            return run(reports, adapter=_loaded_adapter(generator, arm, store),
                       reader=arm.adapter)
        return base(reports)

    make.model_name = generator.name  # type: ignore[attr-defined]
    return make


def _loaded_adapter(generator, arm: Arm, store: Store | None) -> str:
    """The arm's adapter, loaded into the generator once (PEFT forbids "." in names)."""
    gen_name = str(arm.adapter).replace(".", "__dot__")
    if gen_name in (getattr(generator, "adapters", None) or {}):
        return gen_name
    path = reader_adapter(str(arm.adapter), store=store)
    if path is None:
        raise StudyError(
            f"arm {arm.name!r}: {arm.adapter!r} has no active adapter with LoRA weights "
            f"(promote one on the Adapters page, or let the nightly job draft these texts)")
    generator.load_adapter(gen_name, path)
    return gen_name
