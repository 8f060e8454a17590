"""Human evaluation studies: design, blinded rating queues, progress, results and exports.

A study rates *units*: one impression text per (item, arm). Items are reports sampled from the
database (stratified normal/abnormal by :func:`core.clinical.checks.label` and by source, with a seed
recorded with the study); arms are where the text comes from:

=====================  ==========================================================================
``original``           the report's own impression
``base``               the base model's generation (style ``default``, no adapter)
``adapter:<name>``     a personalised adapter's generation (generations.adapter = name)
``style:<style>``      the base model in another output style (brief, bullets, comprehensive)
``typos``              the base model run on findings with injected typos (rate per study,
                       ``typos:<rate>`` for another rate; stored with style ``typos-<rate>``)
``external``           the base model on reports of another source (e.g. ``chexpert-plus``):
                       item *i* of this arm is the *i*-th report sampled from that source, so
                       it is compared with the other arms unpaired
=====================  ==========================================================================

Texts come from the ``generations`` table. Missing texts are made by an injected function
``make_texts(reports, arm) -> list[str]`` (tests pass a fake; the CLI passes
:func:`model_text_maker`), stored as generations, and snapshotted into the study's units so a
running study never changes under its raters.

Blinding: raters get units in a seeded random order and see only a case number, the findings
and an opaque label ("text B"); the arm, the model and the report's source never reach a
rater's screen. The unblinded key (which arm each unit is) is only used by results and exports,
and those are refused until the study is closed. Ratings after close (or while paused) are
refused here, in core.

Statistics come from :mod:`core.studies.stats`; assignment and blinding from :mod:`core.studies.design`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

from core.accounts.auth import User, authorize
from core.errors import NotFound, PermissionDenied, ValidationError
from core.store.database import Store
from core.store.feedback import Case
from core.util import safe_csv
from core.errors import StudyError, StudyClosed, StudyPaused, StudyBlinded  # noqa: F401 (defined in core.errors)

COORDINATORS = ("coordinator", "admin")
RATERS = ("radiologist", "admin")  # who may open a study queue; tasks exist only for raters
RATER_ROLE = "radiologist"         # who may be assigned as a study rater
STYLES = ("brief", "bullets", "comprehensive")
DEFAULT_TYPO_RATE = 0.03
MAX_LABELLED_CANDIDATES = 10_000   # larger pools are subsampled (seeded) before stratifying
MAX_GUIDELINE = 20_000


# ---------------------------------------------------------------------------------------------
# Arms, scales, questions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """Where the texts of one arm come from.

    ``name`` is canonical (``original``, ``base``, ``adapter:dr_lee``, ``style:brief``, ``typos``,
    ``typos:0.05``, ``external``); ``style``/``adapter`` select rows of the generations table.
    """

    name: str
    kind: str
    style: str = "default"
    adapter: str | None = None
    typo_rate: float | None = None

    @property
    def paired(self) -> bool:
        """True when the arm rates the study's own reports (all but ``external``)."""
        return self.kind != "external"


def typo_style(rate: float) -> str:
    """Generation style under which typo-arm texts are stored, e.g. ``typos-0.03``."""
    return f"typos-{rate:g}"


def parse_arm(name: str, typo_rate: float = DEFAULT_TYPO_RATE) -> Arm:
    """Parse an arm name.

    Args:
        name: ``original``, ``base``, ``adapter:<name>``, ``style:<brief|bullets|
            comprehensive>``, ``typos``, ``typos:<rate>`` or ``external``.
        typo_rate: the rate of a bare ``typos`` arm.
    Returns:
        The :class:`Arm`.
    Raises:
        StudyError: naming the arm when it is not one of the above.
    """
    raw = str(name).strip()
    kind, _, arg = raw.partition(":")
    kind = kind.lower()
    if kind in ("original", "base", "external") and not arg:
        return Arm(kind, kind)
    if kind == "style" and arg in STYLES:
        return Arm(f"style:{arg}", "style", style=arg)
    if kind == "adapter" and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", arg or ""):
        return Arm(f"adapter:{arg}", "adapter", adapter=arg)
    if kind == "typos":
        try:
            rate = float(arg) if arg else float(typo_rate)
        except ValueError:
            raise StudyError(f"arm {raw!r}: typo rate {arg!r} is not a number") from None
        if not 0.0 < rate <= 0.5:
            raise StudyError(f"arm {raw!r}: typo rate {rate!r} must be in (0, 0.5]")
        return Arm(f"typos:{rate:g}" if arg else "typos", "typos", style=typo_style(rate),
                   typo_rate=rate)
    raise StudyError(
        f"arm {raw!r}: expected original, base, adapter:<name>, style:<{'|'.join(STYLES)}>, "
        f"typos[:<rate>] or external")


@dataclass(frozen=True)
class Scale:
    """The rating scale of a study. Values are integers in -2..2 (stored in feedback.rating);
    ratings >= 0 count as "neutral or better". ``reference``: raters also see the report's
    original impression and rate the text relative to it."""

    name: str
    values: tuple[int, ...]
    labels: tuple[str, ...]
    question: str
    reference: bool = False

    def __post_init__(self) -> None:
        if len(self.values) != len(self.labels) or len(self.values) < 2:
            raise StudyError(f"scale {self.name!r}: needs >= 2 values, one label each "
                             f"(got {len(self.values)} values, {len(self.labels)} labels)")
        if list(self.values) != sorted(set(self.values)) or not all(
                isinstance(v, int) and -2 <= v <= 2 for v in self.values):
            raise StudyError(f"scale {self.name!r}: values {list(self.values)} must be "
                             f"increasing distinct integers in -2..2")

    def label_of(self, value: int) -> str:
        return dict(zip(self.values, self.labels)).get(int(value), str(value))

    @classmethod
    def from_dict(cls, data: dict) -> "Scale":
        return cls(data["name"], tuple(int(v) for v in data["values"]), tuple(data["labels"]),
                   data["question"], bool(data.get("reference", False)))


SCALES: dict[str, Scale] = {
    "absolute": Scale("absolute", (-2, -1, 0, 1, 2),
                      ("Unacceptable", "Poor", "Acceptable", "Good", "Excellent"),
                      "How good is this impression for these findings?"),
    "relative": Scale("relative", (-2, -1, 0, 1, 2),
                      ("Much worse", "Worse", "Equivalent", "Better", "Much better"),
                      "How does this impression compare with the reference impression?",
                      reference=True),
    "acceptability": Scale("acceptability", (-1, 0, 1),
                           ("Unacceptable", "Acceptable with minor changes", "Acceptable as is"),
                           "Could this impression be signed for these findings?"),
}


@dataclass(frozen=True)
class Question:
    """A question asked with every rating. Keys ``factual_error``, ``omission``,
    ``style_issue`` and ``critical_missed`` are yes/no and stored in feedback's own columns;
    other keys are stored in ``study_answers``. kind: yesno | choice | text."""

    key: str
    text: str
    kind: str = "yesno"
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", self.key):
            raise StudyError(f"question key {self.key!r}: use lower-case letters, digits and _")
        if self.kind not in ("yesno", "choice", "text"):
            raise StudyError(f"question {self.key!r}: kind {self.kind!r} must be yesno, "
                             f"choice or text")
        if self.key in FEEDBACK_FLAGS and self.kind != "yesno":
            raise StudyError(f"question {self.key!r} is stored as a yes/no feedback column")
        if self.kind == "choice" and len(self.options) < 2:
            raise StudyError(f"question {self.key!r}: a choice needs at least 2 options")
        if not str(self.text).strip():
            raise StudyError(f"question {self.key!r} has no text")

    @property
    def builtin(self) -> bool:
        return self.key in FEEDBACK_FLAGS

    @classmethod
    def from_dict(cls, data: dict) -> "Question":
        return cls(data["key"], data["text"], data.get("kind", "yesno"),
                   tuple(data.get("options") or ()))


FEEDBACK_FLAGS = {
    "factual_error": "Factual error",
    "omission": "Omits a relevant finding",
    "style_issue": "Style problem (wording, length)",
    "critical_missed": "Misses a critical finding",
}
DEFAULT_QUESTIONS: tuple[Question, ...] = tuple(Question(k, t) for k, t in FEEDBACK_FLAGS.items())
DIMENSIONS = {"factual_error": "factual error", "omission": "omission",
              "style_issue": "style", "critical_missed": "critical finding missed"}

DEFAULT_GUIDELINE = (
    "Read the findings, then rate the impression shown as if it were going into the report. "
    "Judge clinical correctness first (does it state what the findings support, and nothing "
    "they do not?), then completeness (are the relevant findings summarised?), then wording. "
    "Each text is rated on its own: you do not know how it was written, and several texts "
    "for the same case may appear in your queue in any order. Tick every problem that applies: "
    "a factual error states something the findings do not support; an omission leaves out a "
    "relevant finding; a style problem is wording, length or structure you would change."
)


def parse_questions(spec: Sequence[Any] | None) -> tuple[Question, ...]:
    """Questions from Question objects, dicts, or ``"key: text"`` strings (custom yes/no).

    Args:
        spec: None for the default questions.
    Returns:
        Validated questions with distinct keys.
    """
    if spec is None:
        return DEFAULT_QUESTIONS
    out: list[Question] = []
    for i, q in enumerate(spec):
        if isinstance(q, Question):
            out.append(q)
        elif isinstance(q, dict):
            out.append(Question.from_dict(q))
        elif isinstance(q, str) and q.strip():
            key, sep, text = q.partition(":")
            key = key.strip()
            if not sep:
                if key in FEEDBACK_FLAGS:
                    out.append(Question(key, FEEDBACK_FLAGS[key]))
                    continue
                raise StudyError(f"questions[{i}] {q!r}: expected 'key: question text'")
            out.append(Question(key, text.strip()))
        else:
            raise StudyError(f"questions[{i}] {q!r} is not a question")
    keys = [q.key for q in out]
    for key in keys:
        if keys.count(key) > 1:
            raise StudyError(f"question key {key!r} is used twice")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Design
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


MakeTexts = Callable[[list[dict], str], list[Any]]
"""``make_texts(reports, arm) -> texts``: one str (or {"text", "model", "flags"}) per report."""


def _hkey(*parts: Any) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_normal(text: str | None) -> bool:
    """Normal = the labeler's "No Finding" is POSITIVE, or no observation is POSITIVE."""
    from core.clinical.checks import Label, label

    labels = label(text or "")
    if labels.get("No Finding") is Label.POSITIVE:
        return True
    return not any(v is Label.POSITIVE for k, v in labels.items() if k != "No Finding")


def _scale(scale: str | Scale | dict) -> Scale:
    if isinstance(scale, Scale):
        return scale
    if isinstance(scale, dict):
        return Scale.from_dict(scale)
    if scale not in SCALES:
        raise StudyError(f"scale {scale!r}: choose one of {', '.join(SCALES)}")
    return SCALES[scale]


def _sample(rows: list[dict], n: int, seed: int, strata: Sequence[str], what: str) -> list[dict]:
    from core.studies.design import sample_reports

    if len(rows) < n:
        raise StudyError(f"{what}: only {len(rows)} reports with findings and an impression; "
                         f"the study asks for {n}")
    if len(rows) > MAX_LABELLED_CANDIDATES:
        rows = sorted(rows, key=lambda r: _hkey(seed, "pool", r["id"]))[:MAX_LABELLED_CANDIDATES]
    if "normal" in strata:
        for r in rows:
            r["normal"] = is_normal(r["impression"])
    by_id = {r["id"]: r for r in rows}
    ids = sample_reports(rows, n, seed, strata=tuple(strata))
    return [by_id[i] for i in ids]


def _typo_reports(reports: list[dict], rate: float, seed: int) -> list[dict]:
    from core.evaluation.metrics import inject_typos

    out = []
    for r in reports:
        typo_seed = _hkey(seed, "typos", r["id"]) % (2**31)
        out.append({**r, "findings": inject_typos(r["findings"], rate=rate, seed=typo_seed),
                    "typo_seed": typo_seed})
    return out


def _arm_texts(store: Store, arm: Arm, reports: list[dict], design: StudyDesign,
               make_texts: MakeTexts | None, model_name: str) -> dict[int, tuple[int | None, str]]:
    """report_id -> (generation_id, text) for one arm, generating what is missing."""
    if arm.kind == "original":
        return {r["id"]: (None, r["impression"]) for r in reports}
    ids = [r["id"] for r in reports]
    found = store.latest_generations(ids, style=arm.style, adapter=arm.adapter,
                                     model=design.model)
    missing = [r for r in reports if r["id"] not in found]
    if missing:
        if make_texts is None:
            raise StudyError(
                f"arm {arm.name!r}: {len(missing)} of {len(reports)} sampled reports have no "
                f"stored text (generations with style={arm.style!r}, adapter={arm.adapter!r}"
                + (f", model={design.model!r}" if design.model else "") + "); generate them "
                "first (python -m core study create ... --generate) or choose other arms")
        inputs = (_typo_reports(missing, arm.typo_rate, design.seed) if arm.kind == "typos"
                  else missing)
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
        gen_ids = store.add_generations(rows)
        for row, gid in zip(rows, gen_ids):
            found[row["report_id"]] = {"generation_id": gid, "text": row["text"]}
    return {rid: (found[rid]["generation_id"], found[rid]["text"]) for rid in ids}


def _resolve_raters(store: Store, usernames: Sequence[str], what: str = "raters") -> list:
    out = []
    seen = set()
    for name in usernames:
        name = str(name).strip()
        if name in seen:
            raise StudyError(f"{what}: {name!r} is listed twice")
        seen.add(name)
        try:
            reader = store.get_reader(name)
        except NotFound:
            raise StudyError(f"{what}: no user named {name!r}") from None
        if reader.role != RATER_ROLE or not reader.active:
            raise StudyError(f"{what}: {name!r} is {'a disabled' if not reader.active else 'a'} "
                             f"{reader.role}; study raters must be active radiologists")
        out.append(reader)
    return out


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
    import pandas as pd

    from core.feedback.annotate import clean_text
    from core.studies.design import blind_label

    authorize(store, user, *COORDINATORS)
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
    for a in names:
        if names.count(a) > 1:
            raise StudyError(f"arms: {a!r} is listed twice")
    scale = _scale(design.scale)
    if scale.reference and "original" in names:
        raise StudyError("arms: 'original' cannot be rated on a scale that shows the original "
                         "impression as the reference (it would be identical to it)")
    questions = parse_questions(design.questions)
    guideline = clean_text(design.guideline, "guideline", MAX_GUIDELINE) or ""
    strata = tuple(design.strata)
    bad = [s for s in strata if s not in ("normal", "source")]
    if bad:
        raise StudyError(f"strata {bad}: choose from 'normal' and 'source'")
    external = "external" in names
    if external and not design.external_source:
        raise StudyError("arms: 'external' needs external_source (e.g. chexpert-plus)")
    if design.sources and design.external_source in design.sources:
        raise StudyError(f"sources: {design.external_source!r} is the external source")
    if design.raters:
        _resolve_raters(store, design.raters)  # fail before any text is generated
        if not 1 <= design.k <= len(design.raters):
            raise StudyError(f"k={design.k}: must be between 1 and the number of raters "
                             f"({len(design.raters)})")

    exclude = [design.external_source] if design.external_source else None
    reports = _sample(store.study_candidate_reports(design.sources, exclude), n, design.seed,
                      strata, f"sources {list(design.sources) if design.sources else 'all'}")
    ext_reports: list[dict] = []
    if external:
        ext_reports = _sample(store.study_candidate_reports([design.external_source]), n,
                              design.seed, [s for s in strata if s == "normal"],
                              f"external source {design.external_source!r}")
    model_name = model_name or getattr(make_texts, "model_name", None) or "study-generator"
    rows = []
    for arm in arms:
        items = reports if arm.paired else ext_reports
        texts = _arm_texts(store, arm, items, design, make_texts, model_name)
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
                      key=lambda rid: (_hkey(design.seed, "case", rid), rid))
    case_of = {rid: i + 1 for i, rid in enumerate(in_study)}
    for row in rows:
        row["case_number"] = case_of[row["report_id"]]
    units = pd.DataFrame(rows).astype({"generation_id": "Int64", "normal": "boolean"})
    config = {"strata": list(strata), "sources": list(design.sources or []),
              "external_source": design.external_source, "typo_rate": design.typo_rate,
              "model": design.model, "generated_with": model_name if make_texts else None}
    study_id = store.insert_study(
        {"name": name, "seed": design.seed, "k": design.k if design.raters else None,
         "n_items": n, "arms": names, "scale": asdict(scale),
         "questions": [asdict(q) for q in questions], "guideline": guideline,
         "config": config}, units, actor=user.username)
    if design.raters:
        assign_raters(store, user, study_id, design.raters, design.k)
    return study_id


def _study(store: Store, study_id: int) -> dict:
    study = store.get_study(int(study_id))
    if study is None:
        raise StudyError(f"no study with id {study_id}")
    return study


def effective_k(store: Store, study_id: int) -> int | None:
    """Raters per unit: k at assignment plus the extra overlap of every extension."""
    k = None
    for e in store.study_events(study_id):
        if e["event"] == "assigned":
            k = int(e["detail"].get("k", 0))
        elif e["event"] == "extended" and k is not None:
            k += int(e["detail"].get("extra_k", 0))
    return k


def assign_raters(store: Store, user: User, study_id: int, raters: Sequence[str], k: int) -> int:
    """Assign a draft study's units to raters: each unit to ``k`` of them, balanced.

    Args:
        raters: usernames of active radiologists.
        k: raters per unit, 1 <= k <= len(raters).
    Returns:
        The number of tasks created.
    """
    import pandas as pd

    from core.studies.design import assign

    authorize(store, user, *COORDINATORS)
    study = _study(store, study_id)
    if study["status"] != "draft":
        raise StudyError(f"study {study_id} is {study['status']}, not a draft: raters were "
                         f"assigned already (use extend to add raters)")
    readers = _resolve_raters(store, raters)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(readers):
        raise StudyError(f"k={k!r}: must be between 1 and the number of raters ({len(readers)})")
    ids = {r.username: r.id for r in readers}
    plan = assign(list(range(study["n_items"])), study["arms"], [r.username for r in readers],
                  k, study["seed"])
    frame = pd.DataFrame({"slot": [a.item_id for a in plan], "arm": [a.arm for a in plan],
                          "reader_id": [ids[a.rater] for a in plan],
                          "position": [a.position for a in plan]})
    return store.add_study_tasks(study_id, frame, [r.id for r in readers], 0, "assigned",
                                 user.username, {"k": k, "raters": [r.username for r in readers],
                                                 "n_tasks": len(frame)})


def _change_status(store: Store, user: User, study_id: int, event: str,
                   allowed: tuple[str, ...]) -> str:
    authorize(store, user, *COORDINATORS)
    with store.tx():
        study = _study(store, study_id)
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


def extend(store: Store, user: User, study_id: int, raters: Sequence[str],
           extra_k: int = 0) -> int:
    """Add raters to a running or paused study.

    Args:
        raters: usernames of radiologists not yet in the study.
        extra_k: 0 moves pending (unrated) tasks from the busiest raters to the new ones so
            everybody's remaining work is balanced; k > 0 keeps all current tasks and gives
            every unit ``extra_k`` more ratings, spread (balanced) over the new raters.
    Returns:
        The number of tasks added to the new raters.
    """
    import pandas as pd

    from core.studies.design import assign

    authorize(store, user, *COORDINATORS)
    if isinstance(extra_k, bool) or not isinstance(extra_k, int) or extra_k < 0:
        raise StudyError(f"extra_k={extra_k!r}: must be a non-negative integer")
    with store.tx():
        study = _study(store, study_id)
        if study["status"] not in ("running", "paused"):
            raise (StudyClosed if study["status"] == "closed" else StudyError)(
                f"study {study_id} is {study['status']}; only running or paused studies can "
                f"be extended" + (" (assign raters to a draft first)"
                                  if study["status"] == "draft" else ""))
        readers = _resolve_raters(store, raters)
        if not readers:
            raise StudyError("raters: name at least one new rater")
        current = {r["username"]: r for r in store.study_raters(study_id)}
        for r in readers:
            if r.username in current:
                raise StudyError(f"raters: {r.username!r} already rates study {study_id}")
        batch = max((r["batch"] for r in current.values()), default=0) + 1
        names = [r.username for r in readers]
        ids = {r.username: r.id for r in readers}
        if extra_k > 0:
            if extra_k > len(readers):
                raise StudyError(f"extra_k={extra_k}: at most the number of new raters "
                                 f"({len(readers)})")
            plan = assign(list(range(study["n_items"])), study["arms"], names, extra_k,
                          f"{study['seed']}:extend:{batch}")
            frame = pd.DataFrame({"slot": [a.item_id for a in plan], "arm": [a.arm for a in plan],
                                  "reader_id": [ids[a.rater] for a in plan],
                                  "position": [a.position for a in plan]})
            withdraw: list[int] = []
        else:
            frame, withdraw = _rebalance(store.study_tasks(study_id), ids, study["seed"], batch)
        return store.add_study_tasks(
            study_id, frame, [r.id for r in readers], batch, "extended", user.username,
            {"raters": names, "extra_k": extra_k, "n_tasks": len(frame),
             "moved": len(withdraw)}, withdraw=withdraw)


def _rebalance(tasks, new_ids: dict[str, int], seed: int, batch: int):
    """Move pending tasks to new raters until remaining loads differ by at most 1.

    Returns:
        (frame of new tasks: slot, arm, reader_id, position; ids of tasks to withdraw).
    """
    import pandas as pd

    active = tasks[tasks["active"]]
    holders: dict[tuple[int, str], set[int]] = {}
    for row in active.itertuples():
        holders.setdefault((row.slot, row.arm), set()).add(row.reader_id)
    pending: dict[int, list[tuple[int, int, str]]] = {}  # reader -> [(task_id, slot, arm)]
    for row in active[~active["done"]].itertuples():
        pending.setdefault(row.reader_id, []).append((row.task_id, row.slot, row.arm))
    raters = sorted(set(active["reader_id"]) | set(new_ids.values()))
    for r in raters:
        pending.setdefault(r, [])
    next_pos = {r: int(active.loc[active["reader_id"] == r, "position"].max()) + 1
                if (active["reader_id"] == r).any() else 0 for r in raters}
    tie = {r: _hkey(seed, "rebalance", batch, r) for r in raters}

    def arm_count(r: int, arm: str) -> int:
        return sum(1 for _, _, a in pending[r] if a == arm)

    # Entries are (id, slot, arm): a stored task id, or a negative id for a task created here.
    new_tasks: dict[int, list] = {}  # negative id -> [reader, slot, arm]
    withdraw: list[int] = []
    stuck: set[int] = set()
    while True:
        load = {r: len(pending[r]) for r in raters}
        cands = [r for r in raters if r not in stuck]
        if not cands:
            break
        top = max(cands, key=lambda r: (load[r], tie[r]))
        if load[top] - min(load.values()) <= 1:
            break
        moved = False
        for low in sorted(raters, key=lambda r: (load[r], tie[r])):
            if load[top] - load[low] <= 1:
                break
            options = [t for t in pending[top] if low not in holders[(t[1], t[2])]]
            if not options:
                continue
            pick = max(options, key=lambda t: (arm_count(top, t[2]) - arm_count(low, t[2]),
                                               _hkey(seed, "move", batch, t[0])))
            pending[top].remove(pick)
            tid, slot, arm = pick
            if tid >= 0:
                withdraw.append(tid)
                tid = -1 - len(new_tasks)
                new_tasks[tid] = [low, slot, arm]
            else:
                new_tasks[tid][0] = low
            pending[low].append((tid, slot, arm))
            holders[(slot, arm)].discard(top)
            holders[(slot, arm)].add(low)
            moved = True
            break
        if not moved:
            stuck.add(top)
    rows = []
    for reader in raters:
        mine = sorted([(s, a) for n, s, a in new_tasks.values() if n == reader],
                      key=lambda u: _hkey(seed, "queue", batch, reader, u[0], u[1]))
        for i, (slot, arm) in enumerate(mine):
            rows.append({"slot": slot, "arm": arm, "reader_id": reader,
                         "position": next_pos[reader] + i})
    frame = pd.DataFrame(rows, columns=["slot", "arm", "reader_id", "position"])
    return frame, withdraw


# ---------------------------------------------------------------------------------------------
# The rater's side (blinded)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RaterStudy:
    """A study as one of its raters sees it: no arms, no models, only their own counts."""

    study_id: int
    name: str
    status: str
    guideline: str
    scale: Scale
    questions: tuple[Question, ...]
    done: int
    total: int


@dataclass(frozen=True)
class StudyTask:
    """One blinded unit to rate. ``reference`` is the original impression, given only on
    scales that rate relative to it. ``case_number`` is one per report of the study, in a
    seeded order (texts of the same findings share it; it is not the item slot)."""

    task_id: int
    study_id: int
    case_number: int
    label: str
    text: str
    findings: str
    indication: str | None
    comparison: str | None
    reference: str | None
    done: bool


def my_studies(store: Store, user: User) -> list[RaterStudy]:
    """The studies in which the signed-in rater has tasks (draft studies have none)."""
    authorize(store, user, *RATERS)
    return [RaterStudy(r["id"], r["name"], r["status"], "", _scale(r["scale"]),
                       tuple(Question.from_dict(q) for q in r["questions"]),
                       int(r["done"]), int(r["total"]))
            for r in store.studies_of_rater(user.id)]


def rater_study(store: Store, user: User, study_id: int) -> RaterStudy:
    """One of the rater's studies with its guideline, scale and questions."""
    authorize(store, user, *RATERS)
    done, total = store.study_rater_progress(int(study_id), user.id)
    study = store.get_study(int(study_id))
    if study is None or total == 0:
        raise PermissionDenied(f"{user.username} has no tasks in study {study_id}")
    return RaterStudy(study["id"], study["name"], study["status"], study["guideline"] or "",
                      _scale(study["scale"]),
                      tuple(Question.from_dict(q) for q in study["questions"]), done, total)


def _task(row: dict, scale: Scale) -> StudyTask:
    return StudyTask(int(row["task_id"]), int(row["study_id"]), int(row["case_number"]),
                     row["label"], row["text"], row["findings"], row["indication"],
                     row["comparison"], row["reference"] if scale.reference else None,
                     bool(row["done"]))


def next_task(store: Store, user: User, study_id: int) -> StudyTask | None:
    """The rater's next unrated task in queue order, or None when their queue is done."""
    authorize(store, user, *RATERS)
    study = store.get_study(int(study_id))
    row = store.next_study_task(int(study_id), user.id) if study else None
    if row is None:
        rater_study(store, user, study_id)  # refuses a study the user has no tasks in
        return None
    return _task(row, _scale(study["scale"]))


def _own_task(store: Store, user: User, task_id: int) -> dict:
    row = store.get_study_task(int(task_id))
    if row is None or row["reader_id"] != user.id:
        raise PermissionDenied(f"task {task_id} is not one of {user.username}'s study tasks")
    return row


def _check_open(store: Store, study_id: int) -> dict:
    study = _study(store, study_id)
    if study["status"] == "closed":
        raise StudyClosed(f"study {study_id} is closed; ratings are no longer accepted")
    if study["status"] == "paused":
        raise StudyPaused(f"study {study_id} is paused; try again when the coordinator "
                          f"resumes it")
    if study["status"] != "running":
        raise StudyError(f"study {study_id} is {study['status']}")
    return study


def _check_answers(questions: Sequence[Question], answers: dict | None) -> tuple[dict, dict]:
    """Split answers into feedback columns and custom answers, validating each."""
    import numpy as np

    from core.feedback.annotate import clean_text

    answers = dict(answers or {})
    by_key = {q.key: q for q in questions}
    unknown = set(answers) - set(by_key)
    if unknown:
        raise StudyError(f"answers: unknown question(s) {sorted(unknown)}; this study asks "
                         f"{sorted(by_key)}")
    flags: dict[str, bool] = {}
    custom: dict[str, Any] = {}
    for key, value in answers.items():
        q = by_key[key]
        if q.kind == "yesno":
            if value is None:
                continue
            if not isinstance(value, (bool, np.bool_)):
                raise StudyError(f"answer {key!r}: {value!r} must be true or false")
            (flags if q.builtin else custom)[key] = bool(value)
        elif q.kind == "choice":
            if value is not None and value not in q.options:
                raise StudyError(f"answer {key!r}: {value!r} is not one of {list(q.options)}")
            custom[key] = value
        else:
            custom[key] = clean_text(value, f"answer {key!r}", 2_000)
    for q in questions:  # unticked yes/no boxes are a "no", not a missing answer
        if q.kind == "yesno" and q.key not in flags and q.key not in custom:
            (flags if q.builtin else custom)[q.key] = False
    return flags, custom


def submit(store: Store, user: User, task_id: int, rating: int, answers: dict | None = None,
           comment: str | None = None, time_spent_ms: int | None = None,
           client_token: str | None = None) -> int:
    """Record the signed-in rater's rating of one of their tasks. Returns the feedback id.

    The rating goes to ``feedback`` (kind rating, blinded, with study_id) through
    :func:`core.feedback.annotate.submit_rating`; custom answers go to ``study_answers``.

    Args:
        task_id: the task (from :func:`next_task`).
        rating: one of the study scale's values.
        answers: question key -> answer (yes/no questions default to no).
        comment: free text.
        time_spent_ms: time on the task.
        client_token: makes a double submit harmless (the first row's id is returned).
    Raises:
        StudyClosed / StudyPaused: the study does not accept ratings now.
        PermissionDenied: the task is someone else's.
        StudyError: bad rating or answers, withdrawn or already rated task.
    """
    from core.feedback import annotate

    authorize(store, user, *RATERS)
    with store.tx():
        row = _own_task(store, user, task_id)
        study = _check_open(store, row["study_id"])
        if not row["active"]:
            raise StudyError(f"task {task_id} was moved to another rater")
        scale = _scale(study["scale"])
        if isinstance(rating, bool) or not isinstance(rating, int) or rating not in scale.values:
            raise StudyError(f"rating {rating!r}: must be one of {list(scale.values)} "
                             f"({scale.name} scale)")
        questions = [Question.from_dict(q) for q in study["questions"]]
        flags, custom = _check_answers(questions, answers)
        if row["done"]:
            prior = (store.feedback_id_for_token(client_token, user.id) if client_token
                     else None)
            if prior is not None:
                return prior
            raise StudyError(f"task {task_id} is already rated; undo it first to change it")
        case = Case(report_id=row["report_id"], generation_id=row["generation_id"], source="",
                    external_id="", findings=row["findings"], impression=None,
                    indication=None, comparison=None, ai_text=row["text"], model="",
                    adapter=None, style="", flags={})
        feedback_id = annotate.submit_rating(
            store, user, case, annotate.Rating(
                rating=rating, factual_error=flags.get("factual_error", False),
                omission=flags.get("omission", False), style_issue=flags.get("style_issue", False),
                critical_missed=flags.get("critical_missed", False), comment=comment,
                time_spent_ms=time_spent_ms, blinded=True),
            client_token=client_token, study_id=row["study_id"])
        store.add_study_answer(feedback_id, row["study_id"], row["task_id"], row["unit_id"],
                               user.id, custom)
    return feedback_id


def undo_last(store: Store, user: User, study_id: int) -> StudyTask | None:
    """Retract the rater's latest standing rating in this study; returns that task again."""
    from core.feedback import annotate

    authorize(store, user, *RATERS)
    with store.tx():
        study = _check_open(store, study_id)
        last = annotate.undo_last(store, user, study_id=int(study_id))
        if last is None:
            return None
        task_id = store.study_task_of_feedback(last["id"])
        row = store.get_study_task(task_id) if task_id is not None else None
    return _task(row, _scale(study["scale"])) if row else None


# ---------------------------------------------------------------------------------------------
# Coordinators: progress (no ratings by arm, no key)
# ---------------------------------------------------------------------------------------------
@dataclass
class StudyProgress:
    """Progress of a study: per rater and per arm done/remaining and median seconds per task.

    ``alpha_so_far`` is Krippendorff's alpha over every unit rated so far (arms pooled: it
    reveals nothing about which arm did better).
    """

    study_id: int
    name: str
    status: str
    k: int | None
    n_items: int
    arms: list[str]
    total: int
    done: int
    per_rater: Any
    per_arm: Any
    events: list[dict]
    alpha_so_far: float = math.nan

    @property
    def remaining(self) -> int:
        return self.total - self.done


def _progress_table(tasks, by: str):
    import pandas as pd

    if tasks.empty:
        return pd.DataFrame(columns=[by, "assigned", "done", "remaining", "median_s"])
    g = tasks.groupby(by, sort=True)
    out = pd.DataFrame({
        "assigned": g.size(),
        "done": g["done"].sum().astype(int),
        "median_s": g["time_spent_ms"].median() / 1000.0,
    })
    out["remaining"] = out["assigned"] - out["done"]
    return out.reset_index()[[by, "assigned", "done", "remaining", "median_s"]]


def progress(store: Store, user: User, study_id: int) -> StudyProgress:
    """Progress dashboard data for coordinators and admins."""
    import numpy as np

    authorize(store, user, *COORDINATORS)
    study = _study(store, study_id)
    tasks = store.study_tasks(study["id"])
    active = tasks[tasks["active"]] if not tasks.empty else tasks
    per_rater = _progress_table(active, "rater")
    batches = {r["username"]: r["batch"] for r in store.study_raters(study["id"])}
    if not per_rater.empty:
        per_rater.insert(1, "batch", per_rater["rater"].map(batches))
    per_arm = _progress_table(active, "arm")
    if not per_arm.empty:
        order = {a: i for i, a in enumerate(study["arms"])}
        per_arm = per_arm.sort_values("arm", key=lambda s: s.map(order)).reset_index(drop=True)
    alpha = math.nan
    done_units = active[active["done"]] if not active.empty else active
    if len(done_units) >= 2:
        from core.studies.stats import krippendorff_alpha

        scores = store.study_scores(study["id"])  # rater, unit_id, rating (no arms)
        if not scores.empty:
            wide = scores.pivot(index="reader_id", columns="unit_id", values="rating")
            alpha = krippendorff_alpha(wide.to_numpy(dtype=float), "ordinal",
                                       value_domain=list(_scale(study["scale"]).values))
    return StudyProgress(study["id"], study["name"], study["status"],
                         effective_k(store, study["id"]), study["n_items"], study["arms"],
                         int(len(active)), int(active["done"].sum()) if len(active) else 0,
                         per_rater, per_arm, store.study_events(study["id"]),
                         float(alpha) if alpha is not None else np.nan)


def without_open_study_rows(store: Store, frame):
    """Drop feedback rows that belong to studies not closed yet.

    General feedback views (a reader's history, all feedback, their CSV exports) join each
    rating with its generation's model/adapter/style and the original impression, which would
    unblind a running study; its ratings are shown there only once it is closed.

    Args:
        frame: a DataFrame with a ``study_id`` column (e.g. ``Store.feedback_history``).
    Returns:
        The frame without those rows.
    """
    if frame is None or len(frame) == 0 or "study_id" not in frame:
        return frame
    open_ids = store.open_study_ids()
    if not open_ids:
        return frame
    return frame[~frame["study_id"].isin(open_ids)].reset_index(drop=True)


def list_studies(store: Store, user: User) -> list[dict]:
    """Every study with status and counts (coordinators and admins)."""
    authorize(store, user, *COORDINATORS)
    return store.list_studies()


def study_raters(store: Store, user: User, study_id: int) -> list[str]:
    """Usernames of a study's raters (coordinators and admins)."""
    authorize(store, user, *COORDINATORS)
    return [r["username"] for r in store.study_raters(int(study_id))]


def rater_progress(store: Store, user: User, study_id: int) -> tuple[int, int]:
    """(done, total) of the signed-in rater's own tasks in a study."""
    authorize(store, user, *RATERS)
    return store.study_rater_progress(int(study_id), user.id)


@dataclass(frozen=True)
class DesignOptions:
    """What the design form offers: arms, report sources, radiologists, stored texts."""

    arms: list[str]
    sources: dict[str, int]
    radiologists: list[str]
    stored: list[str]


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
    for k in kinds:
        if k["adapter"]:
            name = f"adapter:{k['adapter']}" + (f" ({k['style']})" if k["style"] != "default"
                                                else "")
        else:
            name = ("base" if k["style"] == "default" else
                    f"style:{k['style']}" if k["style"] in STYLES else k["style"])
        stored.append(f"{name}: {int(k['n']):,}")
    radiologists = [r.username for r in store.list_readers(RATER_ROLE) if r.active]
    return DesignOptions(arms, sources, radiologists, stored)


# ---------------------------------------------------------------------------------------------
# Results (after close)
# ---------------------------------------------------------------------------------------------
@dataclass
class StudyResults:
    """Everything the Results page, the CLI report and the HTML summary show.

    DataFrames:
        ratings: one row per standing rating, unblinded (rater, slot, arm, rating, flags...).
        distribution: arm, value, label, n, share.
        shares: arm, n_ratings, n_items, mean, share (neutral-or-better), lo, hi (Wilson 95%),
            boot_lo, boot_hi (bootstrap over items, which respects that raters share items).
        by_stratum: arm, normal, n_ratings, share, lo, hi.
        errors: arm, question, text, n, n_yes, rate, lo, hi (Wilson).
        paired: arm_a, arm_b, test, n, mean_a, mean_b, mean_diff, lo, hi, statistic, p_value,
            p_holm, effect (rank-biserial, positive when arm_a is rated higher).
        agreement: statistic, estimate, lo, hi, n_units, n_raters.
        pairwise: rater_a, rater_b, kappa, n_units.
        bias: rater, n, mean_offset, lo, hi.
        unit_metrics: slot, arm, n_ratings, mean_rating, <metric>... (texts vs original).
        correlations: metric, rho, p_value, n.
    """

    study: dict
    scale: Scale
    questions: tuple[Question, ...]
    ratings: Any
    distribution: Any
    shares: Any
    by_stratum: Any
    errors: Any
    paired: Any
    agreement: Any
    pairwise: Any
    bias: Any
    unit_metrics: Any
    correlations: Any
    notes: list[str] = field(default_factory=list)


MetricFn = Callable[[list[str], list[str]], list[float]]


def default_metric_fns(names: Sequence[str]) -> dict[str, MetricFn]:
    """Per-pair metric functions from :mod:`core.evaluation.metrics` (candidate vs original impression).

    Args:
        names: any of "rouge_l" (ROUGE-L F x 100), "bertscore" (F1, MiniLM, offline) and
            "label_f1" (clinical-label micro F1 of the pair).
    Returns:
        name -> f(candidates, references) -> one score per pair.
    """
    from core.evaluation import metrics

    def rouge_l(cands: list[str], refs: list[str]) -> list[float]:
        return [metrics.rouge([c], [r])["rougeL"] for c, r in zip(cands, refs)]

    def bertscore(cands: list[str], refs: list[str]) -> list[float]:
        return list(metrics.bertscore(list(cands), list(refs))["bertscore_f1_per_pair"])

    def label_f1(cands: list[str], refs: list[str]) -> list[float]:
        return [metrics.label_f1([c], [r])["micro_f1"] for c, r in zip(cands, refs)]

    known = {"rouge_l": rouge_l, "bertscore": bertscore, "label_f1": label_f1}
    out: dict[str, MetricFn] = {}
    for name in names:
        if name not in known:
            raise StudyError(f"metric {name!r}: choose rouge_l, bertscore or label_f1")
        out[name] = known[name]
    return out


def _require_closed(store: Store, user: User, study_id: int, what: str) -> dict:
    authorize(store, user, *COORDINATORS)
    study = _study(store, study_id)
    if study["status"] != "closed":
        raise StudyBlinded(f"study {study_id} is {study['status']}: {what} reveal which arm "
                           f"produced each text and are available only after the study is "
                           f"closed (progress is available now)")
    return study


def _ratings_frame(store: Store, study: dict, scale: Scale):
    ratings = store.study_ratings(study["id"])
    if not ratings.empty:
        ratings["answers"] = ratings["answers"].map(lambda a: json.loads(a) if isinstance(a, str)
                                                    else (a or {}))
        ratings["rating"] = ratings["rating"].astype(int)
        ratings["rating_label"] = ratings["rating"].map(scale.label_of)
        ratings["unit"] = ratings["slot"].astype(str) + ":" + ratings["arm"]
    return ratings


def mean_pairwise_kappa(m, labels: Sequence[int]) -> float:
    """Mean quadratic-weighted Cohen's kappa over rater pairs of a raters x units matrix.

    Equal to averaging :func:`core.studies.stats.pairwise_cohen` (``weights="quadratic"``) over the
    pairs where kappa is defined, but vectorised with numpy (used inside bootstraps).
    """
    import numpy as np

    m = np.asarray(m, dtype=float)
    lab = np.asarray(labels, dtype=float)
    n_lab = len(lab)
    codes = np.full(m.shape, -1, dtype=np.int64)
    for i, v in enumerate(lab):
        codes[m == v] = i
    w = (np.arange(n_lab)[:, None] - np.arange(n_lab)[None, :]) ** 2.0
    ks = []
    for i in range(m.shape[0]):
        for j in range(i + 1, m.shape[0]):
            both = (codes[i] >= 0) & (codes[j] >= 0)
            n = int(both.sum())
            if n < 2:
                continue
            conf = np.bincount(codes[i][both] * n_lab + codes[j][both],
                               minlength=n_lab * n_lab).reshape(n_lab, n_lab).astype(float)
            expected = np.outer(conf.sum(axis=1), conf.sum(axis=0)) / n
            denom = float((w * expected).sum())
            if denom == 0.0:
                continue
            ks.append(1.0 - float((w * conf).sum()) / denom)
    return float(np.mean(ks)) if ks else math.nan


def _holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * len(pvalues)
    running = 0.0
    m = len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def _unpaired(a: Sequence[float], b: Sequence[float], n_boot: int, seed: int) -> dict:
    """Mann-Whitney U of two independent samples, rank-biserial effect, bootstrap mean diff."""
    import numpy as np
    from scipy import stats as sps

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    res = sps.mannwhitneyu(x, y, alternative="two-sided")
    effect = 2.0 * float(res.statistic) / (len(x) * len(y)) - 1.0
    rng = np.random.default_rng(seed)
    diffs = [rng.choice(x, len(x)).mean() - rng.choice(y, len(y)).mean() for _ in range(n_boot)]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"test": "Mann-Whitney U", "n": int(min(len(x), len(y))), "mean_a": float(x.mean()),
            "mean_b": float(y.mean()), "mean_diff": float(x.mean() - y.mean()),
            "lo": float(lo), "hi": float(hi), "statistic": float(res.statistic),
            "p_value": float(res.pvalue), "effect": effect}


def compute_results(study: dict, ratings, n_boot: int = 1000, seed: int = 0,
                    metric_fns: dict[str, MetricFn] | None = None) -> StudyResults:
    """Every result of a study from its unblinded ratings (pure: no store, no permissions).

    Args:
        study: the study row (``get_study``), with arms, scale and questions.
        ratings: DataFrame as :meth:`Store.study_ratings` returns it (plus ``answers`` parsed).
        n_boot: bootstrap resamples for every interval.
        seed: bootstrap seed.
        metric_fns: automatic metrics to compute (name -> f(candidates, references)).
    Returns:
        :class:`StudyResults`.
    """
    import numpy as np
    import pandas as pd

    from core.studies import stats

    scale = _scale(study["scale"])
    questions = tuple(Question.from_dict(q) for q in study["questions"])
    arms = list(study["arms"])
    parsed = {a: parse_arm(a) for a in arms}
    notes: list[str] = []
    r = ratings
    if not r.empty and "unit" not in r:
        r = r.assign(unit=r["slot"].astype(str) + ":" + r["arm"])

    # -- per arm ---------------------------------------------------------------------------------
    dist_rows, share_rows, strat_rows, err_rows = [], [], [], []
    for arm in arms:
        ra = r[r["arm"] == arm] if not r.empty else r
        vals = [int(v) for v in ra["rating"]] if len(ra) else []
        for v, lab in zip(scale.values, scale.labels):
            n_v = sum(1 for x in vals if x == v)
            dist_rows.append({"arm": arm, "value": v, "label": lab, "n": n_v,
                              "share": n_v / len(vals) if vals else math.nan})
        share, lo, hi = stats.share_neutral_or_better(vals)
        b_lo = b_hi = math.nan
        if len(ra):
            per_item = ra.groupby("slot")["rating"].agg(
                succ=lambda s: int((s >= 0).sum()), n="count")
            _, b_lo, b_hi = stats.bootstrap_ci(
                lambda t: float(t[0].sum() / t[1].sum()),
                (per_item["succ"].to_numpy(), per_item["n"].to_numpy()),
                n_boot=n_boot, seed=seed)
        share_rows.append({"arm": arm, "n_ratings": len(vals),
                           "n_items": int(ra["slot"].nunique()) if len(ra) else 0,
                           "mean": float(np.mean(vals)) if vals else math.nan,
                           "share": share, "lo": lo, "hi": hi, "boot_lo": b_lo, "boot_hi": b_hi})
        if len(ra) and ra["normal"].notna().any():
            for normal, rs in ra.groupby("normal"):
                s, l, h = stats.share_neutral_or_better([int(v) for v in rs["rating"]])
                strat_rows.append({"arm": arm, "normal": bool(normal), "n_ratings": len(rs),
                                   "share": s, "lo": l, "hi": h})
        for q in questions:
            if q.kind != "yesno":
                continue
            if len(ra):
                col = (ra[q.key] if q.builtin else ra["answers"].map(lambda a: a.get(q.key)))
                col = col.dropna().astype(bool)
            else:
                col = pd.Series([], dtype=bool)
            n_yes, n_q = int(col.sum()), int(len(col))
            _, lo_q, hi_q = stats.wilson_interval(n_yes, n_q)
            err_rows.append({"arm": arm, "question": q.key,
                             "text": DIMENSIONS.get(q.key, q.text), "n": n_q, "n_yes": n_yes,
                             "rate": n_yes / n_q if n_q else math.nan, "lo": lo_q, "hi": hi_q})

    # -- paired (and unpaired) comparisons -------------------------------------------------------
    pair_rows = []
    if not r.empty:
        item_means = r.groupby(["arm", "slot"])["rating"].mean()
        for a, b in combinations(arms, 2):
            if a not in item_means.index.get_level_values(0) or \
                    b not in item_means.index.get_level_values(0):
                continue
            ma, mb = item_means[a], item_means[b]
            if parsed[a].paired and parsed[b].paired:
                common = ma.index.intersection(mb.index)
                if len(common) == 0:
                    continue
                pc = stats.paired_comparison(ma[common].to_numpy(), mb[common].to_numpy(),
                                             n_boot=n_boot, seed=seed)
                pair_rows.append({"arm_a": a, "arm_b": b, "test": "Wilcoxon signed-rank",
                                  "n": pc.n, "mean_a": float(ma[common].mean()),
                                  "mean_b": float(mb[common].mean()), "mean_diff": pc.mean_diff,
                                  "lo": pc.mean_diff_lo, "hi": pc.mean_diff_hi,
                                  "statistic": pc.statistic, "p_value": pc.p_value,
                                  "effect": pc.rank_biserial})
            elif len(ma) >= 1 and len(mb) >= 1:
                pair_rows.append({"arm_a": a, "arm_b": b,
                                  **_unpaired(ma.to_numpy(), mb.to_numpy(), n_boot, seed)})
    paired = pd.DataFrame(pair_rows, columns=["arm_a", "arm_b", "test", "n", "mean_a", "mean_b",
                                              "mean_diff", "lo", "hi", "statistic", "p_value",
                                              "effect"])
    paired.insert(paired.columns.get_loc("p_value") + 1, "p_holm",
                  _holm([float(p) for p in paired["p_value"]]))

    # -- agreement -------------------------------------------------------------------------------
    labels = list(scale.values)
    agree_rows, pair_kappa_rows = [], []
    raters = sorted(r["rater"].unique()) if not r.empty else []
    if not r.empty:
        m, raters, units = stats.reliability_matrix(r, "rater", "unit", "rating")
        n_multi = int(((~np.isnan(m)).sum(axis=0) >= 2).sum())

        def kripp(x):
            return stats.krippendorff_alpha(x, "ordinal", value_domain=labels)

        def fleiss(x):
            return stats.fleiss_kappa(x.T, categories=labels)

        def mean_cohen(x):
            ks = [p.kappa for p in stats.pairwise_cohen(x, weights="quadratic", labels=labels)
                  if not math.isnan(p.kappa)]
            return float(np.mean(ks)) if ks else math.nan

        for name, fn, boot_fn in (
                ("Krippendorff's alpha (ordinal)", kripp, kripp),
                ("Fleiss' kappa", fleiss, fleiss),
                # sklearn per pair costs ~2 ms; the bootstrap uses an equal numpy version
                ("Mean pairwise Cohen's kappa (quadratic)", mean_cohen,
                 lambda x: mean_pairwise_kappa(x, labels))):
            with np.errstate(all="ignore"):
                est = fn(m)
                _, lo, hi = (stats.bootstrap_ci(boot_fn, m, n_boot=n_boot, seed=seed,
                                                over="items")
                             if n_multi >= 2 else (est, math.nan, math.nan))
            agree_rows.append({"statistic": name, "estimate": est, "lo": lo, "hi": hi,
                               "n_units": n_multi, "n_raters": len(raters)})
        for p in stats.pairwise_cohen(m, raters=raters, weights="quadratic", labels=labels):
            pair_kappa_rows.append({"rater_a": p.rater_a, "rater_b": p.rater_b,
                                    "kappa": p.kappa, "n_units": p.n_items})
        if n_multi == 0:
            notes.append("No unit was rated by two raters: agreement is undefined (k = 1).")
    agreement = pd.DataFrame(agree_rows, columns=["statistic", "estimate", "lo", "hi", "n_units",
                                                  "n_raters"])
    pairwise = pd.DataFrame(pair_kappa_rows, columns=["rater_a", "rater_b", "kappa", "n_units"])
    bias_rows = []
    if not r.empty:
        for b in stats.per_rater_bias(r, "rater", ("slot", "arm"), "rating"):
            bias_rows.append({"rater": b.rater, "n": b.n, "mean_offset": b.mean_offset,
                              "lo": b.lo, "hi": b.hi})
    bias = pd.DataFrame(bias_rows, columns=["rater", "n", "mean_offset", "lo", "hi"])

    # -- automatic metrics -----------------------------------------------------------------------
    metric_fns = metric_fns or {}
    unit_metrics = pd.DataFrame(columns=["slot", "arm", "n_ratings", "mean_rating",
                                         *metric_fns])
    corr_rows = []
    if not r.empty:
        units_df = (r.groupby(["slot", "arm"], sort=True)
                    .agg(n_ratings=("rating", "count"), mean_rating=("rating", "mean"),
                         text=("text", "first"), original=("original", "first"))
                    .reset_index())
        units_df = units_df[units_df["arm"] != "original"].reset_index(drop=True)
        for name, fn in metric_fns.items():
            try:
                units_df[name] = fn(list(units_df["text"]), list(units_df["original"])) \
                    if len(units_df) else []
            except Exception as exc:  # a metric that cannot run (e.g. no local model) is noted
                units_df[name] = math.nan
                notes.append(f"{name} could not be computed: {exc}")
            rho, p = stats.spearman(units_df[name].astype(float), units_df["mean_rating"])
            corr_rows.append({"metric": name, "rho": rho, "p_value": p,
                              "n": int(units_df[name].notna().sum())})
        unit_metrics = units_df.drop(columns=["text", "original"])
    correlations = pd.DataFrame(corr_rows, columns=["metric", "rho", "p_value", "n"])

    summary = {"id": study["id"], "name": study["name"], "seed": study["seed"],
               "status": study["status"], "n_items": study["n_items"], "arms": arms,
               "k": study.get("effective_k", study.get("k")),
               "n_ratings": int(len(r)), "raters": list(raters),
               "created_at": str(study.get("created_at", "")),
               "scale": scale.name, "guideline": study.get("guideline") or ""}
    return StudyResults(summary, scale, questions, r, pd.DataFrame(dist_rows),
                        pd.DataFrame(share_rows), pd.DataFrame(
                            strat_rows, columns=["arm", "normal", "n_ratings", "share", "lo",
                                                 "hi"]),
                        pd.DataFrame(err_rows), paired, agreement, pairwise, bias, unit_metrics,
                        correlations, notes)


def results(store: Store, user: User, study_id: int, n_boot: int = 1000, seed: int = 0,
            metrics: Sequence[str] = ("rouge_l", "label_f1"),
            metric_fns: dict[str, MetricFn] | None = None) -> StudyResults:
    """Results of a closed study (coordinators and admins).

    Args:
        n_boot: bootstrap resamples for intervals.
        seed: bootstrap seed.
        metrics: automatic metrics from core.evaluation.metrics (rouge_l, bertscore, label_f1); ignored
            when ``metric_fns`` is given.
        metric_fns: name -> f(candidates, references) -> scores (tests inject these).
    Raises:
        StudyBlinded: the study is not closed yet.
    """
    study = _require_closed(store, user, study_id, "results")
    study["effective_k"] = effective_k(store, study["id"])
    scale = _scale(study["scale"])
    ratings = _ratings_frame(store, study, scale)
    if metric_fns is None:
        metric_fns = default_metric_fns(metrics) if metrics else {}
    return compute_results(study, ratings, n_boot=n_boot, seed=seed, metric_fns=metric_fns)


# ---------------------------------------------------------------------------------------------
# Exports (after close; every one is written to the audit log)
# ---------------------------------------------------------------------------------------------
EXPORT_COLUMNS = [
    "study_id", "feedback_id", "created_at", "rater", "slot", "case_number", "label", "arm",
    "report_id", "source", "external_id", "normal", "model", "adapter", "style", "rating",
    "rating_label", "neutral_or_better", "factual_error", "omission", "style_issue",
    "critical_missed", "answers", "comment", "time_spent_ms", "text", "original",
]


def ratings_table(store: Store, user: User, study_id: int):
    """Every standing rating with the unblinded key, as exported (closed studies only)."""
    import pandas as pd

    study = _require_closed(store, user, study_id, "ratings with the key")
    scale = _scale(study["scale"])
    r = _ratings_frame(store, study, scale)
    if r.empty:
        return pd.DataFrame(columns=EXPORT_COLUMNS)
    r = r.assign(study_id=study["id"],
                 neutral_or_better=r["rating"] >= 0,
                 answers=r["answers"].map(lambda a: json.dumps(a, sort_keys=True)))
    return r[EXPORT_COLUMNS].reset_index(drop=True)


def _audit_export(store: Store, user: User, study_id: int, fmt: str, path: Path | None,
                  rows: int) -> None:
    store.audit(user.username, "study_export",
                {"study_id": int(study_id), "format": fmt, "rows": int(rows),
                 "file": path.name if path else None})


def export_ratings(store: Store, user: User, study_id: int, path: str | Path,
                   fmt: str | None = None) -> Path:
    """Write every rating with the unblinded key to CSV or Parquet.

    Args:
        path: output file; ``fmt`` defaults to its suffix (.csv or .parquet).
    Returns:
        The path written.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("csv", "parquet"):
        raise StudyError(f"export {path}: format {fmt!r} must be csv or parquet")
    table = ratings_table(store, user, study_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        safe_csv(table, path)
    else:
        table.to_parquet(path, index=False)
    _audit_export(store, user, study_id, fmt, path, len(table))
    return path


def preference_pairs(store: Store, user: User, study_id: int, min_margin: float = 0.0,
                     conversational: bool = True) -> list[dict]:
    """Preference pairs in TRL's format from items where two arms got different mean ratings.

    Only arms rating the same report are paired (not ``external``); identical texts are skipped.

    Args:
        min_margin: keep pairs whose mean ratings differ by more than this.
        conversational: prompt as chat messages (system + user, as the model is prompted) and
            chosen/rejected as assistant messages; False gives plain strings.
    Returns:
        dicts with exactly "prompt", "chosen", "rejected".
    """
    from core.generation.prompts import impression_messages, report_text

    study = _require_closed(store, user, study_id, "preference pairs")
    r = _ratings_frame(store, study, _scale(study["scale"]))
    if r.empty:
        return []
    paired_arms = [a for a in study["arms"] if parse_arm(a).paired]
    r = r[r["arm"].isin(paired_arms)]
    means = r.groupby(["slot", "arm"]).agg(mean=("rating", "mean"), text=("text", "first"),
                                           findings=("findings", "first"),
                                           indication=("indication", "first"),
                                           comparison=("comparison", "first")).reset_index()
    out = []
    for slot, g in means.groupby("slot", sort=True):
        rows = g.to_dict("records")
        for x, y in combinations(rows, 2):
            if abs(x["mean"] - y["mean"]) <= min_margin or x["text"].strip() == y["text"].strip():
                continue
            chosen, rejected = (x, y) if x["mean"] > y["mean"] else (y, x)
            if conversational:
                prompt = impression_messages(x["findings"], x["indication"], x["comparison"])
                out.append({"prompt": prompt,
                            "chosen": [{"role": "assistant", "content": chosen["text"]}],
                            "rejected": [{"role": "assistant", "content": rejected["text"]}]})
            else:
                out.append({"prompt": report_text(x["findings"], x["indication"],
                                                  x["comparison"]) + "\nIMPRESSION:",
                            "chosen": " " + chosen["text"], "rejected": " " + rejected["text"]})
    return out


def export_preferences(store: Store, user: User, study_id: int, path: str | Path,
                       min_margin: float = 0.0, conversational: bool = True) -> int:
    """Write :func:`preference_pairs` as JSONL. Returns the number of pairs."""
    pairs = preference_pairs(store, user, study_id, min_margin, conversational)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    _audit_export(store, user, study_id, "jsonl", path, len(pairs))
    return len(pairs)


def export_html(store: Store, user: User, study_id: int, path: str | Path | None = None,
                res: StudyResults | None = None, n_boot: int = 1000,
                metrics: Sequence[str] = ("rouge_l", "label_f1")) -> str:
    """A self-contained one-page HTML summary (tables and inline SVG figures, no scripts).

    Args:
        path: where to write it (None: only return the HTML).
        res: results already computed (else computed here).
    Returns:
        The HTML text.
    """
    from core.studies.report import summary_html

    _require_closed(store, user, study_id, "summaries")
    res = res or results(store, user, study_id, n_boot=n_boot, metrics=metrics)
    html = summary_html(res)
    p = Path(path) if path else None
    if p:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(html, encoding="utf-8")
    _audit_export(store, user, study_id, "html", p, len(res.ratings))
    return html


# ---------------------------------------------------------------------------------------------
# The real text generator (CLI)
# ---------------------------------------------------------------------------------------------
def _styled(arm: Arm, reports: list[dict], base_texts: list[str]) -> list[str]:
    from core.generation.styles import apply_style

    return [apply_style(text, arm.style, findings=r.get("findings"),
                        indication=r.get("indication"), comparison=r.get("comparison"))
            for r, text in zip(reports, base_texts)]


def stored_style_maker(store: Store, fallback: MakeTexts | None = None) -> MakeTexts:
    """``make_texts`` that renders style arms from each report's stored base impression with
    :mod:`core.generation.styles` (rules, no model: the app may use it); other arms, and reports without
    a stored base text, go to ``fallback`` (None: they are an error).

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
            text = _styled(arm, [r], [base["text"]])[0]
            out.append({"text": text, "model": base.get("model"),
                        "flags": {**base.get("flags", {}), "style_rules": "core.generation.styles"}})
        return out

    make.model_name = getattr(fallback, "model_name", None) or "core.generation.styles"  # type: ignore
    return make


def model_text_maker(generator, batch_size: int = 8, max_new_tokens: int = 96,
                     progress: bool = False, store: Store | None = None) -> MakeTexts:
    """``make_texts`` backed by a loaded :class:`core.generation.models.Generator` via core.generation.pipeline.

    Base, typo and external arms are the pipeline's impressions
    (:func:`core.generation.pipeline.impressions_for`; with ``store`` it retrieves from that database like
    the app's stored texts, else the model writes alone). Style arms are the base impression
    rendered by :mod:`core.generation.styles`, unless ``impressions_for`` takes a ``style`` itself.
    Adapter arms (``adapter:<radiologist>``) load that radiologist's active LoRA adapter
    (:func:`core.generation.pipeline.reader_adapter`: the database with ``store``, else the pointer file)
    into the generator once and draft with it.

    Args:
        generator: the loaded model.
        batch_size: model batch size.
        max_new_tokens: token budget per impression.
        progress: show progress bars.
        store: the database to retrieve from and to find active adapters in (optional).
    Returns:
        ``make_texts(reports, arm)``.
    """
    from core.generation import pipeline as generate

    params = inspect.signature(generate.impressions_for).parameters
    cache: dict[tuple[int, str], str] = {}  # (report id, findings) -> base text

    def run(reports: list[dict], **extra: Any) -> list[str]:
        kwargs: dict[str, Any] = {"batch_size": batch_size, "max_new_tokens": max_new_tokens,
                                  **extra}
        if "progress" in params:
            kwargs["progress"] = progress
        if store is not None and "store" in params:
            kwargs["store"] = store
        return [o.text for o in generate.impressions_for(generator, reports, **kwargs)]

    def base(reports: list[dict]) -> list[str]:
        todo = [r for r in reports if (r["id"], r["findings"]) not in cache]
        for r, text in zip(todo, run(todo) if todo else []):
            cache[(r["id"], r["findings"])] = text
        return [cache[(r["id"], r["findings"])] for r in reports]

    def adapter_name(arm: Arm) -> str:
        """The arm's adapter loaded into the generator (PEFT forbids "." in names)."""
        gen_name = str(arm.adapter).replace(".", "__dot__")
        if gen_name in (getattr(generator, "adapters", None) or {}):
            return gen_name
        path = generate.reader_adapter(str(arm.adapter), store=store)
        if path is None:
            raise StudyError(
                f"arm {arm.name!r}: {arm.adapter!r} has no active adapter with LoRA weights "
                f"(promote one on the Adapters page, or let the nightly job draft these texts)")
        generator.load_adapter(gen_name, path)
        return gen_name

    def make(reports: list[dict], arm_name: str) -> list[str]:
        arm = parse_arm(arm_name)
        if arm.kind == "style":
            if "style" in params:
                return run(reports, style=arm.style)
            return _styled(arm, reports, base(reports))
        if arm.kind == "adapter":
            if "adapter" not in params:
                raise StudyError(f"arm {arm.name!r}: core.generation.pipeline.impressions_for cannot use "
                                 f"an adapter; generate the adapter's texts first")
            extra: dict[str, Any] = {"adapter": adapter_name(arm)}
            if "reader" in params:
                extra["reader"] = arm.adapter      # the radiologist's own reports rank first
            return run(reports, **extra)
        return base(reports)

    make.model_name = generator.name  # type: ignore[attr-defined]
    return make
