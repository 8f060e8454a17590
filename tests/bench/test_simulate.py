"""The personalization simulator (bench/simulate.py) end to end without a model: a seeded synthetic
IU-format CSV, feedback through the app's save path, memory-only nights, and the honesty checks
(the test part never reaches feedback, memory or the nightly held-out slice; the shared baseline
is the same pipeline without an adapter)."""

from __future__ import annotations

import csv
import json

import pytest

from bench import simulate  # noqa: E402  (bench/ is a folder of scripts; the repository root is on sys.path)


def _csv(path, n: int = 90, seed: int = 3):
    from core.ingest.demo import synthetic_reports

    headers = ["Xray Chest PA and Lateral", "PA and lateral chest x-XXXX", "Chest 2V frontal/lateral"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
                    "impression"])
        for i, r in enumerate(synthetic_reports(n, seed=seed)):
            w.writerow([i + 1, "normal", "normal", headers[i % 3] + (" XXXX" if i % 2 else ""),
                        r.indication, r.comparison, r.findings, r.impression])
    return path


def test_styles_are_consistent_and_keep_findings():
    abnormal = "1. Mild cardiomegaly. 2. There is a small right pleural effusion."
    assert simulate.style_numbered(abnormal) == "1. Mild cardiomegaly. 2. Small right pleural effusion."
    assert simulate.style_prose_recommend(abnormal).endswith("Recommend clinical correlation and "
                                                            "follow-up as needed.")
    assert "R pleural effusion" in simulate.style_abbreviated(abnormal)
    normal = "No acute cardiopulmonary abnormality."
    outs = {name: fn(normal) for name, fn in simulate.STYLES.items()}
    assert len(set(outs.values())) == len(outs)  # every reader has their own normal phrase
    assert simulate.normalize_header("Xray Chest PA and Lateral XXXX") == \
        simulate.normalize_header("XRAY CHEST PA AND LATERAL")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["styles", "real"])
def test_simulator_end_to_end_without_model(tmp_path, kind):
    # a tiny run: 24 items leave ~5 held-out reports, so the gate's evidence rule is set to match
    # (with the default 10 the nightly job rightly skips such readers)
    cfg = simulate.SimConfig(points=[8, 24], lora_points=[], test_size=5, real_readers=2,
                             style_readers=2, csv=_csv(tmp_path / "reports.csv"),
                             out=tmp_path / "out", lora=False, min_heldout=2)
    res = simulate.run_bench(kind, cfg, log=lambda _: None)
    assert res["leak_check"] == {"feedback_on_test": 0, "memory_on_test": 0, "heldout_on_test": 0}
    n_readers = 2
    assert len(res["readers"]) == n_readers
    for r in res["readers"]:
        assert r["test"] == len(res["test_uids"][r["reader"]]) > 0
        assert r["has_lora"] is False  # memory-only nights never claim LoRA weights
        if r["version"] is None:  # shared model served: same pipeline, same numbers
            assert r["personal_rougeL"] == r["shared_rougeL"]
    # the curve has one row per reader and point; the plot files exist
    assert len(res["curve"]) == n_readers * 2
    assert (tmp_path / "out" / kind / "learning_curve.svg").read_text().startswith("<svg")
    saved = json.loads((tmp_path / "out" / kind / "results.json").read_text())
    assert saved["macro"] == res["macro"]
    assert "Leak check" in simulate.markdown(res)
    if kind == "styles":
        # the same reports for every simulated reader; a reader's own memory beats the shared model
        assert len({tuple(v) for v in res["test_uids"].values()}) == 1
        assert res["ablation_macro"]["memory_only"]["rougeL"] > res["macro"]["shared_rougeL"]
