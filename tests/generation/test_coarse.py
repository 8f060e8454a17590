"""The coarse stage on its own: retrieval (self-exclusion, the on-disk cache) and the vote. The
fast ROUGE-L the vote relies on is pinned to ``rouge_score`` in tests/evaluation/test_rouge_l.py."""

from __future__ import annotations

import pytest

from core.errors import RetrievalError
from core.generation.pipeline import C2FConfig, CoarseToFine
from core.generation.retrieval import RetrievalConfig, RetrievalIndex, index_for_store
from core.ingest.common import ReportRecord

DOCS = [
    {"uid": "a", "findings": "Small right pleural effusion. Heart size normal.",
     "impression": "Small right pleural effusion.", "author": "dr_a"},
    {"uid": "b", "findings": "Small right pleural effusion. Heart size normal. No pneumothorax.",
     "impression": "Right pleural effusion, small.", "author": "dr_b"},
    {"uid": "c", "findings": "Lungs are clear. Heart size normal. No effusion.",
     "impression": "No acute cardiopulmonary abnormality.", "author": "dr_a"},
    {"uid": "d", "findings": "Lungs are clear. No pleural effusion or pneumothorax.",
     "impression": "No acute disease.", "author": "dr_b"},
    {"uid": "e", "findings": "Left lower lobe consolidation. Heart size normal.",
     "impression": "Left lower lobe pneumonia.", "author": "dr_a"},
]


@pytest.fixture(scope="module")
def index():
    return RetrievalIndex.build(DOCS, RetrievalConfig())


def test_search_ranks_by_similarity_and_excludes_the_query_itself(index):
    query = dict(DOCS[0])
    with_self = index.search([query], k=3)[0]
    assert with_self[0].uid == "a" and with_self[0].score == pytest.approx(1.0, abs=1e-6)
    assert [n.score for n in with_self] == sorted((n.score for n in with_self), reverse=True)
    without = index.search([query], k=3, exclude_self=True)[0]
    assert "a" not in {n.uid for n in without} and without[0].uid == "b"
    banned = index.search([query], k=5, exclude_uids=[["a", "b"]])[0]
    assert {n.uid for n in banned} == {"c", "d", "e"}


def test_search_refuses_blank_findings_and_a_bad_k(index):
    with pytest.raises(RetrievalError, match="blank findings"):
        index.search([{"uid": "x", "findings": "  "}])
    with pytest.raises(RetrievalError, match="k must be"):
        index.search([DOCS[0]], k=0)


def _import(store, rows):
    store.import_reports([ReportRecord("test", r["uid"], r["findings"], r["impression"])
                          for r in rows], file="docs.csv", fmt="generic-csv", actor="test")


def test_the_store_index_is_cached_on_disk_and_rebuilt_after_an_import(store, tmp_path,
                                                                        monkeypatch):
    _import(store, DOCS[:4])
    builds = []
    real = RetrievalIndex.build.__func__

    def counting(cls, reports, config=None):
        reports = list(reports)
        builds.append(len(reports))
        return real(cls, reports, config)

    monkeypatch.setattr(RetrievalIndex, "build", classmethod(counting))
    cache = tmp_path / "cache"
    first = index_for_store(store, cache_dir=cache)
    again = index_for_store(store, cache_dir=cache)
    assert builds == [4] and len(again) == len(first) == 4
    assert len(list(cache.glob("index-*.pkl"))) == 1
    _import(store, DOCS[4:])
    grown = index_for_store(store, cache_dir=cache)
    assert builds == [4, 5] and len(grown) == 5
    for p in cache.glob("index-*.pkl"):
        p.write_bytes(b"not a pickle")
    assert len(index_for_store(store, cache_dir=cache)) == 5  # a broken cache file is rebuilt
    assert builds[-1] == 5 and len(builds) == 3


def _vote(findings: str, neighbours: list[tuple[str, float]], author: str | None = None,
          config: C2FConfig | None = None) -> str:
    """The vote's text for ``findings`` among (impression, similarity) neighbours."""
    from core.generation.retrieval import Neighbour

    nbs = [Neighbour(row=i, score=s, findings="", impression=t, uid=str(i),
                     author="me" if t.startswith("Mine:") else "other")
           for i, (t, s) in enumerate(neighbours)]
    pipe = CoarseToFine(RetrievalIndex.build(DOCS, RetrievalConfig()), None, config or C2FConfig())
    return pipe._vote({"findings": findings, "author": author}, nbs)["text"]


def test_the_vote_takes_the_consensus_of_close_neighbours():
    text = _vote("Lungs are clear.", [("No acute disease.", 0.9), ("No acute disease.", 0.8),
                                      ("Mild cardiomegaly.", 0.85)])
    assert text == "No acute disease."


def test_the_vote_prefers_a_text_stating_this_reports_findings_over_one_they_contradict():
    findings = "Small right pleural effusion. No pneumothorax."
    # the closest neighbours agree on a normal text, but it says nothing of the effusion; a
    # text naming a pneumothorax the findings negate loses too
    text = _vote(findings, [("No acute disease.", 0.9), ("No acute disease.", 0.88),
                            ("Right pneumothorax.", 0.87), ("Small right pleural effusion.", 0.86)],
                 config=C2FConfig(coverage_bonus=1.0))
    assert text == "Small right pleural effusion."
    neutral = _vote(findings, [("Right pneumothorax.", 0.9), ("No acute disease.", 0.85)],
                    config=C2FConfig(contradiction_penalty=5.0))
    assert neutral == "No acute disease."


def test_the_readers_own_phrasing_wins_a_tie():
    pair = [("No acute disease.", 0.8), ("Mine: no acute disease.", 0.8)]
    assert _vote("Lungs are clear.", pair, author="me", config=C2FConfig(own_bonus=0.5)) == \
        "Mine: no acute disease."
    assert _vote("Lungs are clear.", pair, author=None, config=C2FConfig(own_bonus=0.5)) == \
        "No acute disease."
