"""What a study asks: its arms (where each text comes from), its rating scale, its questions and
the guideline shown to raters.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from core.errors import StudyError

STYLES = ("brief", "bullets", "comprehensive")
DEFAULT_TYPO_RATE = 0.03
MAX_GUIDELINE = 20_000


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

    @property
    def key_offset(self) -> int | None:
        """What turns a stored value into the key a rater pressed (1 for the first label,
        ``len(values)`` for the last), or None when the values are not consecutive (no shift
        maps them; means then stay on the stored -2..2 values)."""
        first = self.values[0]
        consecutive = list(self.values) == list(range(first, first + len(self.values)))
        return 1 - first if consecutive else None

    @property
    def mean_unit(self) -> str:
        """How a mean rating is read: "1–5" (the keys raters pressed) or the stored range."""
        if self.key_offset is None:
            return f"stored value {self.values[0]}..{self.values[-1]}"
        return f"1–{len(self.values)}"

    @property
    def mean_note(self) -> str:
        """A sentence that says what a mean rating's numbers mean."""
        if self.key_offset is None:
            pairs = ", ".join(f"{v} = {lab}" for v, lab in zip(self.values, self.labels))
            return f"Means are on the stored values ({pairs})."
        n = len(self.values)
        return (f"Means are on the keys raters pressed: 1 = {self.labels[0]} … {n} = "
                f"{self.labels[-1]}; differences and offsets are in the same units.")

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



def scale_of(scale: str | Scale | dict) -> Scale:
    """A :class:`Scale` from itself, its stored dict, or a name in :data:`SCALES`."""
    if isinstance(scale, Scale):
        return scale
    if isinstance(scale, dict):
        return Scale.from_dict(scale)
    if scale not in SCALES:
        raise StudyError(f"scale {scale!r}: choose one of {', '.join(SCALES)}")
    return SCALES[scale]


def questions_of(study: dict) -> tuple[Question, ...]:
    """The questions stored with a study row."""
    return tuple(Question.from_dict(q) for q in study["questions"])
