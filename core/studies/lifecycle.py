"""A study's life: created from a design (sample, texts, blinding, optionally raters), then
running, paused, resumed and closed; the list of studies and what the design form offers.

A study rates *units*: one impression text per (item, arm). Items are reports sampled from the
database (stratified normal/abnormal by the clinical labeler and by source, with a seed recorded
with the study); arms are described in :mod:`core.studies.protocol`, their texts collected by
:mod:`core.studies.texts`.

Blinding: raters get units in a seeded random order and see only a case number, the findings
and an opaque label ("text B"); the arm, the model and the report's source never reach a
rater's screen. The unblinded key (which arm each unit is) is only used by results and exports,
and those are refused until the study is closed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from core.accounts.auth import User, authorize
from core.clinical.labeler import is_normal
from core.errors import NotFound, StudyClosed, StudyError
from core.feedback.annotate import clean_text
from core.store.database import Store
from core.studies.access import COORDINATORS, RATER_ROLE, get_study
from core.studies.assignment import assign_raters, resolve_raters, seen_on_annotate
from core.studies.design import blind_label, sample_reports, seeded_key
from core.studies.protocol import (
    DEFAULT_GUIDELINE,
    DEFAULT_TYPO_RATE,
    MAX_GUIDELINE,
    STYLES,
    Arm,
    Question,
    Scale,
    parse_arm,
    parse_questions,
    scale_of,
)
from core.studies.texts import MakeTexts, arm_texts

MAX_LABELLED_CANDIDATES = 10_000   # larger pools are subsampled (seeded) before stratifying


# ---------------------------------------------------------------------------------------------
@dataclass
class StudyDesign:
    """What a coordinator chooses when creating a study.

    Attributes:
        name: shown to raters too: do not name the arms in it.
        arms: arm names (see :func:`parse_arm`).
        n_items: reports to sample (each is rated under every arm).
        seed: recorded with the study; sampling, assignment, order and labels derive from it.
        raters: usernames of radiologists; empty creates a draft to :func:`assign_raters` later.
        k: raters per unit (overlap).
        scale: a name in SCALES or a :class:`Scale`.
        questions: asked with every rating (default: the four error dimensions).
        guideline: text shown to raters.
        strata: "normal" (clinical labeler on the original impression) and/or "source".
        sources: report sources to sample from (default: all but ``external_source``).
        external_source: the source of the ``external`` arm's reports (e.g. chexpert-plus).
        typo_rate: character typo rate of the ``typos`` arm.
        model: only use stored generations of this model (default: newest of any model).
    """
    name: str
    arms: Sequence[str]
    n_items: int
    seed: int = 0
    raters: Sequence[str] = ()
    k: int = 2
    scale: str | Scale = "absolute"
    questions: Sequence[Any] | None = None
    guideline: str = DEFAULT_GUIDELINE
    strata: Sequence[str] = ("normal", "source")
    sources: Sequence[str] | None = None
    external_source: str | None = None
    typo_rate: float = DEFAULT_TYPO_RATE
    model: str | None = None



def _generates(make_texts: MakeTexts | None) -> bool:
    """Whether ``make_texts`` makes missing texts (the CLI's --generate), not only styles
    stored ones (:func:`core.studies.texts.stored_style_maker` without a fallback)."""
    return make_texts is not None and getattr(make_texts, "generates", True)


def _need(arms: Sequence[Arm], make_texts: MakeTexts | None) -> str:
    """What a candidate report needs besides findings and an impression (for the message)."""
    if _generates(make_texts) or all(a.kind == "original" for a in arms):
        return ""
    return (f" and a stored AI text for the arms {', '.join(a.name for a in arms if a.kind != 'original')}"
            " (generate texts first: python -m core generate, or study create --generate)")


def _sample(rows: list[dict], n: int, seed: int, strata: Sequence[str], what: str,
            need: str = "") -> list[dict]:
    if len(rows) < n:
        raise StudyError(f"{what}: only {len(rows)} reports with findings and an impression{need}; "
                         f"the study asks for {n}")
    if len(rows) > MAX_LABELLED_CANDIDATES:
        rows = sorted(rows, key=lambda r: seeded_key(seed, "pool", r["id"]))
        rows = rows[:MAX_LABELLED_CANDIDATES]
    if "normal" in strata:
        for r in rows:
            r["normal"] = is_normal(r["impression"])
    by_id = {r["id"]: r for r in rows}
    ids = sample_reports(rows, n, seed, strata=tuple(strata))
    return [by_id[i] for i in ids]


@dataclass(frozen=True)
class _Checked:
    """A design's fields once checked."""
    name: str
    arms: list[Arm]
    scale: Scale
    questions: tuple[Question, ...]
    guideline: str
    strata: tuple[str, ...]


def _check_design(store: Store, design: StudyDesign) -> _Checked:
    """Check every field of a design before anything is sampled or generated.

    Raises:
        StudyError: naming the offending field or arm.
    """
    name = clean_text(design.name, "name", 200)
    if not name:
        raise StudyError("name: a study needs a name")
    if isinstance(design.seed, bool) or not isinstance(design.seed, int) or not \
            -2**62 < design.seed < 2**62:
        raise StudyError(f"seed {design.seed!r}: must be an integer")
    n = design.n_items
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise StudyError(f"n_items {n!r}: must be a positive integer")
    arms = [parse_arm(a, design.typo_rate) for a in design.arms]
    if not arms:
        raise StudyError("arms: choose at least one arm")
    names = [a.name for a in arms]
    adapters = [a.adapter for a in arms if a.adapter]
    known = {k["adapter"] for k in store.generation_arms() if k["adapter"]} if adapters else set()
    for name in adapters:  # a typo names neither a radiologist nor any stored text
        if name not in known:
            try:
                store.get_reader(name)
            except NotFound:
                raise StudyError(f"arms: 'adapter:{name}': no radiologist named {name!r} and no "
                                 f"stored texts of such an adapter") from None
    for a in names:
        if names.count(a) > 1:
            raise StudyError(f"arms: {a!r} is listed twice")
    scale = scale_of(design.scale)
    if scale.reference and "original" in names:
        raise StudyError("arms: 'original' cannot be rated on a scale that shows the original "
                         "impression as the reference (it would be identical to it)")
    questions = parse_questions(design.questions)
    guideline = clean_text(design.guideline, "guideline", MAX_GUIDELINE) or ""
    strata = tuple(design.strata)
    bad = [s for s in strata if s not in ("normal", "source")]
    if bad:
        raise StudyError(f"strata {bad}: choose from 'normal' and 'source'")
    if "external" in names and not design.external_source:
        raise StudyError("arms: 'external' needs external_source (e.g. chexpert-plus)")
    if design.sources and design.external_source in design.sources:
        raise StudyError(f"sources: {design.external_source!r} is the external source")
    if design.raters:
        resolve_raters(store, design.raters)  # fail before any text is generated
        if not 1 <= design.k <= len(design.raters):
            raise StudyError(f"k={design.k}: must be between 1 and the number of raters "
                             f"({len(design.raters)})")
    return _Checked(name, arms, scale, questions, guideline, strata)


def _unseen(rows: list[dict], seen: set[int], n: int) -> list[dict]:
    """The candidates none of the study's raters has rated on Annotate, where at least ``n``
    are left; else all of them (assignment then keeps each rater off the reports they saw)."""
    unseen = [r for r in rows if r["id"] not in seen]
    return unseen if len(unseen) >= n else rows


def _with_texts(store: Store, rows: list[dict], arms: Sequence[Arm], model: str | None,
                make_texts: MakeTexts | None) -> list[dict]:
    """The candidates that have a stored text for every one of ``arms``, when ``make_texts``
    cannot generate one (the app, the CLI without ``--generate``): a study then samples only
    reports it can show, as Annotate does. A style arm is rendered from the stored base text."""
    if _generates(make_texts):
        return rows
    ids = [r["id"] for r in rows]
    ok = set(ids)
    for arm in arms:
        if arm.kind == "original":
            continue
        have = set(store.latest_generations(ids, style=arm.style, adapter=arm.adapter, model=model))
        if arm.kind == "style" and make_texts is not None:  # stored_style_maker styles the base
            have |= set(store.latest_generations(ids, style="default"))
        ok &= have
    return [r for r in rows if r["id"] in ok]


def _units(store: Store, design: StudyDesign, checked: _Checked,
           make_texts: MakeTexts | None, model_name: str):
    """The study's units (one row per item and arm), with their texts, labels and case numbers.

    Reports a named rater already rated on Annotate (AI and original shown by name) are left
    out of the sample while enough others remain (issue 14.3)."""
    import pandas as pd  # deferred: pandas takes a second to import and most commands never need it

    seen = set().union(*seen_on_annotate(
        store, [r.id for r in resolve_raters(store, design.raters)]).values())
    exclude = [design.external_source] if design.external_source else None
    paired = [a for a in checked.arms if a.paired]
    reports = _sample(_unseen(_with_texts(store, store.study_candidate_reports(design.sources, exclude),
                                          paired, design.model, make_texts), seen, design.n_items),
                      design.n_items, design.seed, checked.strata,
                      f"sources {list(design.sources) if design.sources else 'all'}",
                      _need(paired, make_texts))
    ext_reports: list[dict] = []
    if any(not arm.paired for arm in checked.arms):
        ext_reports = _sample(_unseen(store.study_candidate_reports([design.external_source]),
                                      seen, design.n_items),
                              design.n_items, design.seed,
                              [s for s in checked.strata if s == "normal"],
                              f"external source {design.external_source!r}")
    names = [a.name for a in checked.arms]
    rows = []
    for arm in checked.arms:
        items = reports if arm.paired else ext_reports
        texts = arm_texts(store, arm, items, design.seed, design.model, make_texts, model_name)
        for slot, rep in enumerate(items):
            gen_id, text = texts[rep["id"]]
            if not (text or "").strip():
                raise StudyError(f"arm {arm.name!r}: report {rep['id']} has an empty text")
            rows.append({"slot": slot, "report_id": rep["id"], "arm": arm.name,
                         "label": blind_label(design.seed, slot, arm.name, names),
                         "generation_id": gen_id, "text": text.strip(),
                         "normal": bool(rep["normal"]) if "normal" in rep else None})
    # Raters see a case number per report (not the slot): an external-arm text in slot i is
    # another report than slot i's, and sharing its number would single it out. Numbers run
    # 1..reports in a seeded order, so they say nothing about slot, arm or source either.
    in_study = sorted({row["report_id"] for row in rows},
                      key=lambda rid: (seeded_key(design.seed, "case", rid), rid))
    case_of = {rid: i + 1 for i, rid in enumerate(in_study)}
    for row in rows:
        row["case_number"] = case_of[row["report_id"]]
    return pd.DataFrame(rows).astype({"generation_id": "Int64", "normal": "boolean"})


def create_study(store: Store, user: User, design: StudyDesign,
                 make_texts: MakeTexts | None = None, model_name: str | None = None) -> int:
    """Create a study: sample reports, collect (or generate) each arm's texts, blind, assign.

    Args:
        store: the database.
        user: a coordinator or admin.
        design: the :class:`StudyDesign`.
        make_texts: ``make_texts(reports, arm) -> list[str]`` for texts not stored yet (report
            dicts with id, findings, indication, comparison, impression; for typo arms the
            findings already carry the typos). None: missing texts are an error.
        model_name: recorded as the model of generated texts (default ``make_texts.model_name``
            or "study-generator").
    Returns:
        The new study's id.
    Raises:
        StudyError: naming the offending field or arm.
    """
    authorize(store, user, *COORDINATORS)
    checked = _check_design(store, design)
    model_name = model_name or getattr(make_texts, "model_name", None) or "study-generator"
    units = _units(store, design, checked, make_texts, model_name)
    config = {"strata": list(checked.strata), "sources": list(design.sources or []),
              "external_source": design.external_source, "typo_rate": design.typo_rate,
              "model": design.model, "generated_with": model_name if make_texts else None}
    study_id = store.insert_study(
        {"name": checked.name, "seed": design.seed, "k": design.k if design.raters else None,
         "n_items": design.n_items, "arms": [a.name for a in checked.arms],
         "scale": asdict(checked.scale), "questions": [asdict(q) for q in checked.questions],
         "guideline": checked.guideline, "config": config}, units, actor=user.username)
    if design.raters:
        assign_raters(store, user, study_id, design.raters, design.k)
    return study_id


def _change_status(store: Store, user: User, study_id: int, event: str,
                   allowed: tuple[str, ...]) -> str:
    authorize(store, user, *COORDINATORS)
    with store.tx():
        study = get_study(store, study_id)
        if study["status"] not in allowed:
            raise (StudyClosed if study["status"] == "closed" else StudyError)(
                f"study {study_id} is {study['status']}; cannot {event.rstrip('d')} it")
        store.add_study_event(study_id, event, user.username, {})
    return store.study_status(study_id)


def pause(store: Store, user: User, study_id: int) -> str:
    """Pause a running study (raters' submissions are refused until resumed)."""
    return _change_status(store, user, study_id, "paused", ("running",))


def resume(store: Store, user: User, study_id: int) -> str:
    """Resume a paused study."""
    return _change_status(store, user, study_id, "resumed", ("paused",))


def close(store: Store, user: User, study_id: int) -> str:
    """Close a study for good: no more ratings; results and exports become available."""
    return _change_status(store, user, study_id, "closed", ("draft", "running", "paused"))


def list_studies(store: Store, user: User) -> list[dict]:
    """Every study with status and counts (coordinators and admins)."""
    authorize(store, user, *COORDINATORS)
    return store.list_studies()


def study_raters(store: Store, user: User, study_id: int) -> list[str]:
    """Usernames of a study's raters (coordinators and admins)."""
    authorize(store, user, *COORDINATORS)
    return [r["username"] for r in store.study_raters(int(study_id))]


@dataclass(frozen=True)
class DesignOptions:
    """What the design form offers: arms, report sources, radiologists, stored texts."""
    arms: list[str]
    sources: dict[str, int]
    radiologists: list[str]
    stored: list[str]
    base_texts: int = 0  # reports with a stored base text (what a study of base/style arms can use)


def design_options(store: Store, user: User) -> DesignOptions:
    """Arms worth offering (adapters that have generations, external when >1 source), the
    report sources with their sizes, active radiologists, and how many reports already have
    each kind of stored text."""
    authorize(store, user, *COORDINATORS)
    kinds = store.generation_arms()
    sources = {s["source"]: int(s["n"]) for s in store.study_report_sources()}
    arms = ["original", "base", *(f"style:{s}" for s in STYLES), "typos"]
    arms += sorted({f"adapter:{k['adapter']}" for k in kinds if k["adapter"]})
    if len(sources) > 1:
        arms.append("external")
    stored = []
    base_texts = 0
    for k in kinds:
        if not k["adapter"] and k["style"] == "default":
            base_texts = int(k["n"])
        if k["adapter"]:
            name = f"adapter:{k['adapter']}" + (f" ({k['style']})" if k["style"] != "default"
                                                else "")
        else:
            name = ("base" if k["style"] == "default" else
                    f"style:{k['style']}" if k["style"] in STYLES else k["style"])
        stored.append(f"{name}: {int(k['n']):,}")
    radiologists = [r.username for r in store.list_readers(RATER_ROLE) if r.active]
    return DesignOptions(arms, sources, radiologists, stored, base_texts)
