"""``generate --reader`` uses the reader's *active* (promoted) adapter, never merely the newest
version folder (a rejected candidate must not draft their impressions)."""

from __future__ import annotations

import pytest

import json

from core.adapters import registry as adapters
from core.generation.personal import BONUS_GRID, reader_adapter


def _version(store, reader: str, lora: bool = True) -> int:
    """A committed version folder with (fake) LoRA files."""
    version, tmp = adapters.allocate_version(store, reader)
    if lora:
        (tmp / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        (tmp / "adapter_model.safetensors").write_bytes(b"")
    adapters.write_memory(tmp, [])
    adapters.commit_version(store, reader, version, tmp, None, "dpo", {"rougeL": 1.0})
    return version


def test_reader_adapter_is_the_active_version_not_the_newest(store, users):
    from core.config import settings

    assert reader_adapter("rad1", store=store) is None  # nothing yet: the shared model
    assert reader_adapter("rad1") is None
    v1 = _version(store, "rad1")
    # a candidate that was never promoted is not used
    assert reader_adapter("rad1", store=store) is None
    assert reader_adapter("rad1") is None
    adapters.promote(store, "rad1", v1, actor="test")
    v2 = _version(store, "rad1")
    store.set_adapter_status(store.get_reader("rad1").id, v2, "rejected")
    root = settings().adapters_dir
    assert (root / "rad1" / f"v{v2}" / "adapter_config.json").is_file()  # newest folder exists
    assert reader_adapter("rad1", store=store) == root / "rad1" / f"v{v1}"
    assert reader_adapter("rad1") == root / "rad1" / f"v{v1}"  # via the ACTIVE.json pointer
    # rolled back to the shared model: no adapter at all
    adapters.rollback(store, "rad1", actor="test")
    assert reader_adapter("rad1", store=store) is None
    assert reader_adapter("rad1") is None
    # another reader is unaffected; an unknown reader has none
    assert reader_adapter("rad2", store=store) is None
    assert reader_adapter("nobody", store=store) is None


def test_memory_only_active_version_has_no_lora(store, users):
    v1 = _version(store, "rad1", lora=False)
    adapters.promote(store, "rad1", v1, actor="test")
    assert reader_adapter("rad1", store=store) is None
    assert reader_adapter("rad1") is None


def test_generate_csv_for_a_reader_drafts_from_their_memory(store, users, tmp_path, capsys):
    """`generate --reader` takes the app's path: the reader's accepted impressions are the
    neighbours and candidates of the vote, so the draft follows their wording."""
    import csv

    from core.ingest.demo import synthetic_reports
    from core.generation.csvfile import generate_csv

    store.import_reports(synthetic_reports(30, seed=5), file="s", fmt="demo")
    findings = "Heart size normal. Lungs are clear. No pneumothorax or effusion."
    mine = "Normal chest, rad1 wording."  # same (no) findings as the shared text: the guard lets it be
    version, tmp = adapters.allocate_version(store, "rad1")
    adapters.write_memory(tmp, [{"report_id": i, "external_id": f"m{i}", "findings": findings,
                                 "impression": mine} for i in range(5)])
    adapters.commit_version(store, "rad1", version, tmp, None, "memory", {"rougeL": 1.0})
    adapters.promote(store, "rad1", version, actor="test")
    cases = tmp_path / "cases.csv"
    cases.write_text(f"uid,findings\nq1,{findings}\n")
    out = {}
    for reader in ("rad1", "rad2", None):
        path = tmp_path / f"{reader}.csv"
        assert generate_csv(cases, path, generator=None, reader=reader, store=store) == 0
        out[reader] = next(csv.DictReader(path.open()))["prediction"]
    assert "RAD1 WORDING" in out["rad1"].upper()
    assert "RAD1 WORDING" not in out["rad2"].upper() and out["rad2"] == out[None]
    assert generate_csv(cases, tmp_path / "x.csv", reader="nobody", store=store) == 2
    assert "nobody" in capsys.readouterr().err


def test_the_guard_keeps_a_personal_draft_that_states_a_finding_the_shared_text_missed(
        store, users, tmp_path):
    """The shared index here knows only normal studies; rad1's memory names the effusion that
    the Findings state. The guard must not swap their correct draft for the shared 'normal'."""
    import csv

    from core.ingest.demo import synthetic_reports
    from core.generation.csvfile import generate_csv

    store.import_reports(synthetic_reports(30, seed=5), file="s", fmt="demo")
    findings = "Small left pleural effusion. Heart size normal. No pneumothorax."
    version, tmp = adapters.allocate_version(store, "rad1")
    adapters.write_memory(tmp, [{"report_id": i, "external_id": f"m{i}", "findings": findings,
                                 "impression": "Small left pleural effusion."} for i in range(5)]
                          + [{"report_id": 9, "external_id": "m9", "findings": findings,
                              "impression": "Small left effusion and a right pneumothorax."}])
    adapters.commit_version(store, "rad1", version, tmp, None, "memory", {"rougeL": 1.0})
    adapters.promote(store, "rad1", version, actor="test")
    cases = tmp_path / "cases.csv"
    cases.write_text(f"uid,findings\nq1,{findings}\n")
    out = tmp_path / "rad1.csv"
    assert generate_csv(cases, out, generator=None, reader="rad1", store=store) == 0
    text = next(csv.DictReader(out.open()))["prediction"].lower()
    assert "effusion" in text and "pneumothorax" not in text


def _styled_memory(reports, style):
    return [{"report_id": r["id"], "external_id": r["external_id"], "findings": r["findings"],
             "impression": style(r["impression"])} for r in reports]


@pytest.mark.slow
def test_memory_bonus_is_tuned_by_leave_one_out_and_each_version_drafts_with_its_own(store):
    from core.adapters.registry import AdapterVersion
    from core.generation.personal import Drafter, tune_memory_bonus
    from core.ingest.demo import synthetic_reports

    store.import_reports(synthetic_reports(60, seed=11), file="s", fmt="demo")
    reports = [r for r in store.reports() if (r.get("impression") or "").strip()]
    drafter = Drafter(None, reports)
    # a reader with a style of their own (every impression rewritten the same way)
    from core.config import settings

    own = settings().adapters_dir / "t_own"
    own.mkdir(parents=True)
    adapters.write_memory(own, _styled_memory(reports[:40], lambda t: f"IMPRESSION ZULU: {t}"))
    av = AdapterVersion("t_own", 1, 1, own)
    tuned = tune_memory_bonus(drafter, av)
    scores = {float(b): v for b, v in tuned["loo_rougeL"].items()}
    assert tuned["loo_n"] == 40 and set(scores) == set(BONUS_GRID)
    # the best bonus, ties to the smaller one (closer to the shared model)
    best = max(scores.values())
    assert tuned["memory_bonus"] == min(b for b, v in scores.items() if v == best)
    # leave-one-out: a report never retrieves its own accepted impression (which would score
    # ~100 for every bonus that lets the memory win)
    assert max(scores.values()) < 90
    # too small a memory to judge: the configured default
    tiny = settings().adapters_dir / "t_tiny"
    tiny.mkdir()
    adapters.write_memory(tiny, _styled_memory(reports[:3], str.upper))
    assert tune_memory_bonus(drafter, AdapterVersion("t_tiny", 2, 1, tiny))["memory_bonus"] == \
        drafter.config.memory_bonus
    # the version's draft.json decides its bonus in retrieval (memory scores raised by it)
    from core.generation.personal import RoutedIndex

    query = [dict(reports[50], id=None, uid="q-new")]
    raised = {}
    for bonus in (0.0, 0.5):
        adapters.write_draft_settings(own, {"memory_bonus": bonus})
        drafter.forget(av)
        key = drafter._memory_key(av)
        routed = RoutedIndex(None, {key: drafter._indexes[key]}, memory_bonus=0.3,
                             bonuses=drafter._bonuses)
        raised[bonus] = routed.search([{**query[0], "_memory": key}], k=3)[0][0].score
    assert abs(raised[0.5] - raised[0.0] - 0.5) < 1e-6
    # a version without draft.json drafts with the configured bonus
    (own / adapters.DRAFT_SETTINGS_FILE).unlink()
    drafter.forget(av)
    assert drafter._memory_key(av) not in drafter._bonuses
