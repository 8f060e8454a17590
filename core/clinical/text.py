"""How the labeler reads report text: normalised, critical terms spelt right, split into
sentences and clauses.

Misspelt critical terms ("pnuemothorax", "efusion") are read as the term they misspell
(:data:`core.clinical.vocabulary.TYPO_TERMS`), so a typo cannot hide a finding that matters.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from core.clinical.vocabulary import KNOWN_WORDS, TYPO_TERMS

__all__ = ["correct_word", "correct_typos", "normalise", "sentences", "clauses", "ABBREVIATIONS"]

_CLAUSE_SPLIT = re.compile(
    r";|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhich\b|\bwhereas\b|\bexcept\b|\baside from\b|\bapart from\b"
    r"|\bwith the exception of\b|\bother than\b|\bsecondary to\b|\bdue to\b"
    r"|,(?=\s*(?:there (?:is|are|has|have)|the |stable |persistent |again |unchanged |otherwise ))"
    r"|\band (?=there (?:is|are)\b)",
    re.IGNORECASE,
)
# not after a title or a common abbreviation ("Dr. Smith", "vs. atelectasis", "approx. 2 cm")
ABBREVIATIONS = "".join(f"(?<!\\b{a}\\.)" for a in ("Dr", "dr", "Drs", "Mr", "Mrs", "Ms", "vs", "approx", "St"))
_SENT_SPLIT = re.compile(ABBREVIATIONS + r"(?<=[.!?])\s+|(?<=[a-z]{2}\.)(?=[A-Z])|\n+|(?<=\s)(?=\d{1,2}\.\s)")
_ENUM = re.compile(r"^\s*\d{1,2}[.)](?!\d)\s*,?\s*")  # not "1.0 cm nodule"
_TERM_SET = frozenset(TYPO_TERMS)


def _osa(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (edits incl. adjacent transposition), capped at limit+1."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


@functools.lru_cache(maxsize=1 << 16)
def correct_word(word: str) -> str:
    """The critical term a (lower-case) word misspells, or the word itself.

    >>> correct_word("pneumothroax"), correct_word("pnuemothorax"), correct_word("effusoin")
    ('pneumothorax', 'pneumothorax', 'effusion')
    >>> correct_word("enema"), correct_word("heart")
    ('enema', 'heart')
    """
    if len(word) < 4 or word in _TERM_SET or word in KNOWN_WORDS:
        return word
    found: list[tuple[int, str]] = []
    for term in TYPO_TERMS:
        limit = 2 if len(term) >= 10 else 1
        # one edit (at most two) leaves the first letter or the last two intact
        if abs(len(term) - len(word)) > limit or not (term[0] == word[0] or term[-2:] == word[-2:]):
            continue
        d = _osa(word, term, limit)
        if d <= limit:
            found.append((d, term))
    if not found:
        return word
    best = min(d for d, _ in found)
    terms = sorted({t for d, t in found if d == best}, key=len)
    # a tie between a term and its plural reads as the singular; any other tie is left alone
    return terms[0] if all(t.rstrip("s") == terms[0].rstrip("s") for t in terms) else word


_WORD = re.compile(r"[a-z]{4,}")


def correct_typos(text: str) -> str:
    """Lower-case text with misspelt critical terms spelt right (see :data:`TYPO_TERMS`).

    >>> correct_typos("small right pnuemothorax and a left efusion")
    'small right pneumothorax and a left effusion'
    """
    return _WORD.sub(lambda m: correct_word(m.group(0)), text)


def _fold(text: str) -> str:
    """Accents dropped ("cardiomégaly" -> "cardiomegaly"), typographic quotes made plain."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return text.translate(_PLAIN)


_PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                        "\u2014": "-", "\u00a0": " "})


def normalise(text: str) -> str:
    """Lower-case, read 'x-XXXX' as 'x-ray', squeeze whitespace, spell critical terms right."""
    t = text.lower() if text.isascii() else _fold(text).lower()
    t = re.sub(r"\bx-\s?xxxx\b", "x-ray", t)
    t = re.sub(r"\s+", " ", t)
    return correct_typos(t)


def sentences(text: str) -> list[str]:
    """The sentences of a text, list numbers ("1.") removed; pieces without a letter dropped."""
    out = []
    for s in _SENT_SPLIT.split(text or ""):
        s = _ENUM.sub("", s).strip()
        if s and re.search(r"[A-Za-z]", s):
            out.append(s)
    return out


def clauses(sentence: str) -> list[str]:
    """A sentence cut where a negation's scope ends (";", "but", "however", "which", ...)."""
    return [c for c in (p.strip(" ,") for p in _CLAUSE_SPLIT.split(sentence)) if c]
