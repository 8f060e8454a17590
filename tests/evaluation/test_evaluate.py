"""``python -m core evaluate``: predictions joined with references by uid, scored, errors named."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

REFS = [  # uid, findings, impression (like the IU reports.csv, plus rows nobody predicted)
    ("1", "Heart size normal. Lungs are clear.", "No acute cardiopulmonary abnormality."),
    ("2", "Small right apical pneumothorax. Heart size normal.", "Small right pneumothorax."),
    ("3", "Cardiomegaly. Small bilateral pleural effusions.", "Cardiomegaly with small bilateral effusions."),
    ("4", "Lungs clear.", "Normal chest."),
    ("5", "Unused reference row.", "Never predicted."),
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ), timeout=180)


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def ref_csv(tmp_path):
    return write_csv(tmp_path / "reports.csv", ["uid", "image", "findings", "impression"],
                     [(u, "Xray Chest PA and Lateral", f, i) for u, f, i in REFS])


@pytest.mark.slow
def test_perfect_predictions_score_100_and_json_is_written(tmp_path, ref_csv):
    pred = write_csv(tmp_path / "pred.csv", ["uid", "prediction", "style", "needs_review", "flags"],
                     [(u, i, "default", 0, "{}") for u, _, i in REFS[:4]][::-1])  # any order
    out = tmp_path / "out" / "m.json"
    r = run("evaluate", "--pred", str(pred), "--ref", str(ref_csv), "--json", str(out), "--no-bertscore")
    assert r.returncode == 0, r.stderr
    assert "| ROUGE-L | 100.00 |" in r.stdout and "| Flagged for review | 0.000 |" in r.stdout
    res = json.loads(out.read_text())
    assert res["n"] == 4  # the unpredicted reference row 5 is left out
    assert res["rougeL"] == pytest.approx(100.0) and res["bleu"] == pytest.approx(100.0)
    assert res["label"]["micro_f1"] == pytest.approx(1.0)
    assert res["consistency_pred"] == pytest.approx(res["consistency_ref"])
    assert {x["label"] for x in res["label"]["per_label"]} >= {"Pneumothorax", "Cardiomegaly"}


@pytest.mark.slow
def test_wrong_predictions_score_lower_and_missed_pneumothorax_costs_consistency(tmp_path, ref_csv):
    good = write_csv(tmp_path / "good.csv", ["uid", "prediction"], [(u, i) for u, _, i in REFS[:3]])
    bad = write_csv(tmp_path / "bad.csv", ["uid", "prediction"],
                    [(u, "No acute cardiopulmonary abnormality.") for u, _, _ in REFS[:3]])
    results = {}
    for name, f in (("good", good), ("bad", bad)):
        out = tmp_path / f"{name}.json"
        r = run("evaluate", "--pred", str(f), "--ref", str(ref_csv), "--json", str(out), "--no-bertscore")
        assert r.returncode == 0, r.stderr
        results[name] = json.loads(out.read_text())
    assert results["bad"]["rougeL"] < results["good"]["rougeL"] - 30
    assert results["bad"]["label"]["micro_f1"] < results["good"]["label"]["micro_f1"]
    assert results["bad"]["consistency_pred"] < results["good"]["consistency_pred"]  # pneumothorax missed
    assert "needs_review_share" not in results["good"]


@pytest.mark.slow
def test_bertscore_is_reported_by_default(tmp_path, ref_csv):
    pred = write_csv(tmp_path / "pred.csv", ["uid", "prediction"], [("1", "No acute disease."), ("2", "Pneumothorax.")])
    out = tmp_path / "m.json"
    r = run("evaluate", "--pred", str(pred), "--ref", str(ref_csv), "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    if any("bertscore skipped" in n for n in res["notes"]):
        pytest.skip("MiniLM package absent")
    assert 0.3 < res["bertscore_f1"] < 1.0 and "BERTScore F1 (MiniLM)" in r.stdout


def test_no_findings_column_skips_consistency(tmp_path, capsys):
    ref = write_csv(tmp_path / "ref.csv", ["uid", "impression"], [("a", "Normal."), ("b", "Effusion.")])
    pred = write_csv(tmp_path / "pred.csv", ["uid", "prediction"], [("a", "Normal."), ("b", "Normal.")])
    out = tmp_path / "m.json"
    from core.cli.main import main

    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--json", str(out), "--no-bertscore"]) == 0
    assert "| ROUGE-L |" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert "consistency_pred" not in res and any("consistency not scored" in n for n in res["notes"])


@pytest.mark.parametrize("case, expect", [
    ("missing_pred_col", ["pred.csv", "field 'prediction'", "missing required column 'prediction'"]),
    ("missing_ref_col", ["ref.csv", "field 'impression'", "missing required column 'impression'"]),
    ("unknown_uid", ["pred.csv", "row 3", "uid 'zzz' is unknown"]),
    ("duplicate_pred", ["pred.csv", "row 3", "uid '1' is duplicated", "first at row 2"]),
    ("duplicate_ref", ["ref.csv", "row 3", "uid '1' is duplicated"]),
    ("blank_ref", ["ref.csv", "row 3", "field 'impression'", "reference of uid 2 is blank"]),
    ("blank_uid", ["pred.csv", "row 2", "field 'uid'", "the uid is blank"]),
    ("no_file", ["nowhere.csv", "file not found"]),
    ("not_utf8", ["pred.csv", "row 3", "field 'prediction'", "not valid UTF-8"]),
    ("unclosed_quote", ["ref.csv", "row 3", "field 'impression'", "unterminated quoted field"]),
])
def test_bad_input_exits_2_naming_file_row_field(tmp_path, capsys, case, expect):
    ref_rows = [("1", "F.", "Normal."), ("2", "F.", "Effusion.")]
    pred_rows = [("1", "Normal."), ("2", "Effusion.")]
    pred_header, ref_header = ["uid", "prediction"], ["uid", "findings", "impression"]
    if case == "missing_pred_col":
        pred_header = ["uid", "text"]
    elif case == "missing_ref_col":
        ref_header = ["uid", "findings", "summary"]
    elif case == "unknown_uid":
        pred_rows = [("1", "Normal."), ("zzz", "Effusion.")]
    elif case == "duplicate_pred":
        pred_rows = [("1", "Normal."), ("1", "Effusion.")]
    elif case == "duplicate_ref":
        ref_rows = [("1", "F.", "Normal."), ("1", "F.", "Effusion.")]
    elif case == "blank_ref":
        ref_rows = [("1", "F.", "Normal."), ("2", "F.", "")]
    elif case == "blank_uid":
        pred_rows = [("", "Normal.")]
    ref = write_csv(tmp_path / "ref.csv", ref_header, ref_rows)
    pred = write_csv(tmp_path / "pred.csv", pred_header, pred_rows)
    if case == "no_file":
        pred = tmp_path / "nowhere.csv"
    elif case == "not_utf8":  # one reader for every CSV: the importers' checks and messages
        pred.write_bytes(b"uid,prediction\n1,Normal.\n2,Epanchement pleural d\xe9crit.\n")
    elif case == "unclosed_quote":
        ref.write_text('uid,findings,impression\n1,F.,Normal.\n2,F.,"Effusion.\n')
    from core.cli.main import main  # in-process: same entry point as `python -m core`, faster

    code = main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--no-bertscore"])
    err = capsys.readouterr().err
    assert code == 2, err
    for part in expect:
        assert part in err, (part, err)


def test_custom_columns(tmp_path, capsys):
    ref = write_csv(tmp_path / "ref.csv", ["id", "gold"], [("x", "Small left effusion.")])
    pred = write_csv(tmp_path / "pred.csv", ["id", "text"], [("x", "Small left effusion.")])
    from core.evaluation.compare import evaluate_pairs, read_pairs

    pairs = read_pairs(pred, ref, pred_col="text", ref_col="gold", uid_col="id")
    assert pairs.uids == ["x"] and pairs.findings is None
    res = evaluate_pairs(pairs, with_bertscore=False)
    assert res["rougeL"] == pytest.approx(100.0)
    from core.cli.main import main

    code = main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--pred-col", "text", "--ref-col", "gold",
                 "--no-bertscore"])
    assert code == 2 and "missing required column 'uid'" in capsys.readouterr().err  # the CLI joins on uid


def test_generate_output_scores_against_iu_reports(tmp_path):
    """The real file: a few IU test-split rows, predictions in the `generate --out` format."""
    iu = ROOT.parent / "shared/data/iu_xray/reports.csv"
    if not iu.is_file():
        pytest.skip("IU X-ray reports.csv absent")
    from core.ingest.splits import load_iu_csv

    rows = load_iu_csv(iu, "test")[:5]
    pred = write_csv(tmp_path / "pred.csv", ["uid", "prediction", "style", "needs_review", "flags"],
                     [(r["uid"], r["impression"], "default", 1, "{}") for r in rows])
    out = tmp_path / "m.json"
    r = run("evaluate", "--pred", str(pred), "--ref", str(iu), "--json", str(out), "--no-bertscore")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["n"] == 5 and res["rougeL"] > 99 and res["needs_review_share"] == 1.0
