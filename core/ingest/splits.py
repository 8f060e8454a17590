"""The fixed, uid-based split of IU X-ray (and any imported) reports: train / dev / test.

Rule (documented, never changes): ``bucket = int(sha256(uid)[:8], 16) % 10``, where ``uid`` is the
report's external id as a string (the IU X-ray ``uid`` column, e.g. ``"1"``, ``"2"``, ``"4"``).

- bucket 0 -> ``test``  (~10%): only ever used for the numbers reported in BENCHMARKS.md;
- bucket 1 -> ``dev``   (~10%): for choosing hyper-parameters (k, weights, prompt shots);
- buckets 2-9 -> ``train`` (~80%): the retrieval index when tuning, and the SFT data.

The final evaluation on ``test`` may retrieve from ``train`` + ``dev`` (everything that is not
test); SFT training uses ``train`` only. A hash of the uid (not the row order, not a random seed)
means the split does not depend on file order, on which other reports were imported, or on the
library versions installed: the same uid is always in the same split.

On the 2,809 reports of ``shared/data/iu_xray/reports.csv`` this gives 281 test, 286 dev and 2,242 train
reports (``python -m core.ingest.splits ../shared/data/iu_xray/reports.csv`` prints the counts).

>>> split_of("1"), split_of(1)
('train', 'train')
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from core.ingest.common import read_csv_table

SPLITS = ("train", "dev", "test")
TEST_BUCKETS = frozenset({0})
DEV_BUCKETS = frozenset({1})


def bucket(uid: object) -> int:
    """The split bucket (0-9) of one uid.

    Args:
        uid: the report's uid / external id (int or str; ints and their decimal string agree).

    Returns:
        ``int(sha256(str(uid).strip())[:8], 16) % 10``.
    """
    digest = hashlib.sha256(str(uid).strip().encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 10


def split_of(uid: object) -> str:
    """Which split a uid belongs to.

    Args:
        uid: the report's uid / external id.

    Returns:
        ``"test"``, ``"dev"`` or ``"train"``.
    """
    b = bucket(uid)
    if b in TEST_BUCKETS:
        return "test"
    if b in DEV_BUCKETS:
        return "dev"
    return "train"


def in_split(uid: object, split: str | Iterable[str]) -> bool:
    """Whether ``uid`` is in ``split`` (a name, or several names such as ``("train", "dev")``).

    Args:
        uid: the report's uid / external id.
        split: one of :data:`SPLITS`, or an iterable of them.

    Returns:
        True when the uid's split is among the given ones.

    Raises:
        ValueError: an unknown split name.
    """
    names = {split} if isinstance(split, str) else set(split)
    unknown = names - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected some of {SPLITS}")
    return split_of(uid) in names


def select(rows: Iterable[dict], split: str | Iterable[str], key: str = "uid") -> list[dict]:
    """The rows whose ``key`` (uid / external_id) falls in ``split``.

    Args:
        rows: dicts with a uid under ``key`` (``external_id`` for store rows).
        split: one split name or several.
        key: the dict key that holds the uid.

    Returns:
        The selected rows, in input order.
    """
    return [r for r in rows if in_split(r[key], split)]


def counts(uids: Iterable[object]) -> dict[str, int]:
    """How many uids fall in each split.

    Args:
        uids: uids / external ids.

    Returns:
        ``{"train": n, "dev": n, "test": n}``.
    """
    c = Counter(split_of(u) for u in uids)
    return {s: c.get(s, 0) for s in SPLITS}


def load_iu_csv(path, split: str | Iterable[str] | None = None) -> list[dict]:
    """Read an IU X-ray reports CSV as dicts (uid, findings, impression, indication, comparison,
    author), optionally only one split. Rows with blank findings or impression are dropped.

    Args:
        path: the CSV (columns uid, image, indication, comparison, findings, impression).
        split: a split name or names, or None for all rows.

    Returns:
        A list of dicts; missing optional fields are None; ``author`` is the exam header.

    Raises:
        ImportValidationError: the file is missing or malformed, or has no ``uid`` column
            (:func:`core.ingest.common.read_csv_table`).
    """
    table = read_csv_table(Path(path), str(path))
    col = {name: table.column([name], required=name == "uid", what=name)
           for name in ("uid", "findings", "impression", "indication", "comparison", "image")}
    out = []
    for _, cells in table.rows:
        get = {name: table.cell(cells, i) for name, i in col.items()}
        if not get["findings"] or not get["impression"]:
            continue
        if split is not None and not in_split(get["uid"], split):
            continue
        out.append({
            "uid": get["uid"], "findings": get["findings"], "impression": get["impression"],
            "indication": get["indication"] or None, "comparison": get["comparison"] or None,
            "author": " ".join(get["image"].split()) or None,
        })
    return out


if __name__ == "__main__":  # pragma: no cover - documentation helper
    import sys

    rows = load_iu_csv(sys.argv[1])
    print(counts(r["uid"] for r in rows))
