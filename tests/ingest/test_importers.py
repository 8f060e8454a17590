"""Tests of core.ingest.formats: every format on small synthetic files, every validation error
(file, row and field named), the real IU X-ray file and broken copies of it, and a property
test of generic CSV round-trips."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ImportValidationError
from core.ingest.common import ImportedReports, ReportRecord, normalize_text
from core.ingest.formats import FORMATS, detect_format, read_reports
from core.ingest.mimic_cxr import header_kind, parse_sections

IU_FILE = Path(__file__).resolve().parents[3] / "shared/data/iu_xray/reports.csv"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MIMIC_FOLDER = FIXTURES / "mimic_cxr" / "files"
CHEXPERT_SAMPLE = FIXTURES / "chexpert_plus" / "df_chexpert_plus_sample.csv"
IU_HEADER = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
             "impression"]


def write_csv(path: Path, header: list[str], rows: list[list[str]], **kw) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8", **kw)
    return path


def raises_at(path, row, field, *fragments, **kw) -> ImportValidationError:
    """read_reports(path) must raise naming this file, row and field."""
    with pytest.raises(ImportValidationError) as info:
        read_reports(path, **kw)
    err = info.value
    assert err.file == str(path)
    assert err.row == row, str(err)
    assert err.field == field, str(err)
    msg = str(err)
    assert msg.startswith(str(path)), msg
    if row is not None:
        assert f"row {row}" in msg
    if field is not None:
        assert f"field '{field}'" in msg
    for frag in fragments:
        assert frag in msg, msg
    return err


# -- IU X-ray --------------------------------------------------------------------------------------
def iu_rows() -> list[list[str]]:
    return [
        ["1", "normal", "normal", "Xray Chest PA and Lateral", "Positive TB test", "None.",
         "The cardiac silhouette is  normal.\n There are no XXXX of effusion.",
         "Normal chest x-XXXX."],
        ["2", "Cardiomegaly/borderline;Pulmonary Artery/enlarged", "Cardiomegaly;Pulmonary Artery",
         "  PA and lateral chest x-XXXX XXXX at XXXX hours. ", "", "",
         "Borderline cardiomegaly, enlarged pulmonary arteries.", "No acute findings."],
    ]


def test_iu_xray_synthetic(tmp_path):
    path = write_csv(tmp_path / "iu.csv", IU_HEADER, iu_rows())
    assert detect_format(path) == "iu-xray"
    recs = read_reports(path)
    assert isinstance(recs, ImportedReports) and recs.format == "iu-xray" and recs.skipped == []
    assert recs[0] == ReportRecord(
        source="iu-xray", external_id="1",
        findings="The cardiac silhouette is normal. There are no XXXX of effusion.",
        impression="Normal chest x-XXXX.", indication="Positive TB test", comparison="None.",
        author="Xray Chest PA and Lateral", row=2,
        extra={"mesh": ["normal"], "problems": ["normal"]})
    second = recs[1]
    assert second.author == "PA and lateral chest x-XXXX XXXX at XXXX hours."
    assert second.indication is None and second.comparison is None
    assert second.extra == {"mesh": ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"],
                            "problems": ["Cardiomegaly", "Pulmonary Artery"]}
    # The first record spans lines 2-3 (a line break in its findings); a spreadsheet shows the
    # second record as row 3 all the same.
    assert second.row == 3
    # An explicit source overrides the format name.
    assert read_reports(path, source="iu-test")[0].source == "iu-test"


def test_iu_requires_uid_column(tmp_path):
    header = [h for h in IU_HEADER if h != "uid"]
    path = write_csv(tmp_path / "iu.csv", header, [r[1:] for r in iu_rows()])
    raises_at(path, None, "uid", "missing required column", fmt="iu-xray")


# -- MIMIC-CXR -------------------------------------------------------------------------------------
MIMIC_REPORT = """\
 WET READ: ___ ___ ___ 10:24 AM
  No acute process.
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  Chest radiograph from ___.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.
 LUNGS: Clear.
 BONES: Chronic deformity of the posterior left sixth and seventh ribs.

 IMPRESSION:

 No acute cardiopulmonary process.

 NOTIFICATION:  The findings were discussed with Dr. ___ at 10:30 AM.
"""


def test_mimic_single_report(tmp_path):
    path = tmp_path / "s50414267.txt"
    path.write_text(MIMIC_REPORT, encoding="utf-8")
    assert detect_format(path) == "mimic-cxr"
    [rec] = read_reports(path)
    assert rec.source == "mimic-cxr" and rec.external_id == "s50414267" and rec.row is None
    assert rec.findings == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
        "opacities that most likely represent nipple shadows. The cardiomediastinal silhouette "
        "is normal. LUNGS: Clear. BONES: Chronic deformity of the posterior left sixth and "
        "seventh ribs.")
    assert rec.impression == "No acute cardiopulmonary process."  # NOTIFICATION ends it
    assert rec.indication == "___F with new onset ascites // eval for infection"
    assert rec.comparison == "Chest radiograph from ___."
    # Sections that are no field of ours are kept, not dropped; the "FINAL REPORT" title and
    # the ruler line are layout, not text.
    assert rec.extra == {"path": "s50414267.txt", "examination": "CHEST (PA AND LAT)",
                         "technique": "Chest PA and lateral",
                         "sections": {"WET READ": "___ ___ ___ 10:24 AM No acute process.",
                                      "NOTIFICATION": "The findings were discussed with Dr. ___ "
                                                      "at 10:30 AM."}}


def test_mimic_section_variants():
    text = ("FINAL REPORT\nCLINICAL HISTORY: Cough.\nReason for exam: fever\n"
            "Findings: Heart size: normal. ET tube: 4 cm above carina.\n"
            "Impression: Stable.\nImpression: Tube OK.\nRECOMMENDATION(S): none\n")
    sections = parse_sections(text)
    assert sections["FINDINGS"] == "Heart size: normal. ET tube: 4 cm above carina."
    assert sections["IMPRESSION"] == "Stable. Tube OK."
    assert sections["CLINICAL HISTORY"] == "Cough."
    assert sections["REASON FOR EXAM"] == "fever"
    assert sections["RECOMMENDATION(S)"] == "none"


def test_mimic_crlf_and_cr_line_endings(tmp_path):
    for name, eol in (("s1.txt", "\r\n"), ("s2.txt", "\r")):
        path = tmp_path / name
        path.write_bytes(MIMIC_REPORT.replace("\n", eol).encode("utf-8"))
        [rec] = read_reports(path)
        assert rec.impression == "No acute cardiopulmonary process."
        assert rec.findings.startswith("There is no focal consolidation")


def test_mimic_history_as_indication(tmp_path):
    path = tmp_path / "s1.txt"
    path.write_text("HISTORY: Chest pain.\nFINDINGS: Clear lungs.\nIMPRESSION: Normal.\n",
                    encoding="utf-8")
    [rec] = read_reports(path, fmt="mimic-cxr")
    assert rec.indication == "Chest pain." and rec.comparison is None


def test_mimic_folder_recursive_sorted(tmp_path):
    root = tmp_path / "files"
    for rel in ["p11/p11000001/s59000002.txt", "p10/p10000032/s50414267.txt",
                "p10/p10000032/s50000001.txt"]:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(MIMIC_REPORT, encoding="utf-8")
    (root / "p10" / "._s50414267.txt").write_bytes(b"\x00\x05\x16\x07 junk")  # macOS fork
    (root / "p10" / "notes.md").write_text("not a report", encoding="utf-8")
    assert detect_format(root) == "mimic-cxr"
    recs = read_reports(root)
    assert [r.external_id for r in recs] == ["s50000001", "s50414267", "s59000002"]
    assert recs[0].extra["path"] == "p10/p10000032/s50000001.txt"
    assert recs[0].extra["patient"] == "p10000032"


def test_mimic_errors(tmp_path):
    root = tmp_path / "files"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    ok = MIMIC_REPORT
    (root / "a" / "s1.txt").write_text(ok, encoding="utf-8")
    no_findings = root / "a" / "s2.txt"
    no_findings.write_text("FINAL REPORT\nINDICATION: Cough.\nIMPRESSION: Normal.\n",
                           encoding="utf-8")
    with pytest.raises(ImportValidationError) as info:
        read_reports(root)
    err = info.value
    assert err.file == str(root / "a" / "s2.txt") and err.field == "findings"
    assert "sections found: INDICATION, IMPRESSION" in str(err)

    recs = read_reports(root, skip_empty_findings=True)
    assert [r.external_id for r in recs] == ["s1"] and recs.skipped == ["a/s2.txt"]

    no_findings.unlink()
    no_imp = root / "b" / "s3.txt"
    no_imp.write_text("FINDINGS: Clear lungs.\n", encoding="utf-8")
    raises_at(no_imp, None, "impression", "no IMPRESSION section")
    recs = read_reports(root, require_impression=False)
    assert [r.impression for r in recs] == [
        "No acute cardiopulmonary process.", None]

    (root / "b" / "s1.txt").write_text(ok, encoding="utf-8")  # same study id in another folder
    with pytest.raises(ImportValidationError) as info:
        read_reports(root, require_impression=False)
    assert info.value.file == str(root / "b" / "s1.txt")
    assert "a/s1.txt" in str(info.value) and "b/s1.txt" in str(info.value)

    bad = tmp_path / "s9.txt"
    bad.write_bytes(b"FINDINGS: Clear.\nIMPRESSION: Caf\xe9 normal.\n")
    raises_at(bad, 2, None, "byte offset 32", "UTF-8")

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    raises_at(empty_dir, None, None, "no .txt report files")
    with pytest.raises(ImportValidationError, match="mapping"):
        read_reports(bad, mapping={"findings": "x"})


# -- MIMIC-CXR: the real section layouts (tests/fixtures/mimic_cxr) --------------------------------
# file stem -> (layout it stands for, expected fields); "extra" lists only the keys checked.
MIMIC_FIXTURES = {
    "s50000001": ("modern layout, sub-headings inside FINDINGS, WET READ and NOTIFICATION", dict(
        findings="HEART AND MEDIASTINUM: The cardiac silhouette is within normal limits. The "
                 "mediastinal contour is unchanged. LUNGS AND PLEURA: Mild patchy opacity at "
                 "the left base, likely atelectasis. No large effusion. No pneumothorax. ETT: "
                 "Tip projects about 4 cm above the carina. NG TUBE: Courses below the "
                 "diaphragm, tip out of view. OSSEOUS: No acute osseous abnormality.",
        impression="Endotracheal tube in standard position. Mild left basilar atelectasis.",
        indication="___ year old man intubated for airway protection // ETT position?",
        comparison="Radiograph from earlier the same day.",
        extra={"examination": "CHEST (PORTABLE AP)",
               "technique": "Single portable frontal view of the chest",
               "sections": {"WET READ": "___ ___ ___ 9:12 PM Tube tip about 4 cm above the "
                                        "carina. No pneumothorax.",
                            "NOTIFICATION": "The tube position was communicated to the ICU "
                                            "team by phone at 9:15 PM."}})),
    "s50000002": ("FINDINGS AND IMPRESSION:", dict(
        findings="The lungs are well expanded and clear. Heart size is normal. No pleural "
                 "effusion or pneumothorax. No acute cardiopulmonary process.",
        impression="The lungs are well expanded and clear. Heart size is normal. No pleural "
                   "effusion or pneumothorax. No acute cardiopulmonary process.",
        indication="___ with cough for two weeks.", comparison="None.",
        extra={"combined": "FINDINGS AND IMPRESSION"})),
    "s50000003": ("FINDINGS/IMPRESSION:", dict(
        findings="Mild pulmonary vascular congestion without frank edema. Small bilateral "
                 "pleural effusions. Stable mild cardiomegaly.",
        impression="Mild pulmonary vascular congestion without frank edema. Small bilateral "
                   "pleural effusions. Stable mild cardiomegaly.",
        indication="Shortness of breath.", comparison="___.",
        extra={"combined": "FINDINGS/IMPRESSION"})),
    "s50000004": ("CHEST, TWO VIEWS: titling the findings, HISTORY:", dict(
        findings="Comparison is made to the prior study from ___. There is a new right lower "
                 "lobe opacity. The left lung is clear. The heart is normal in size. No "
                 "pneumothorax.",
        impression="Right lower lobe pneumonia.", indication="Fever, evaluate for pneumonia.",
        comparison=None, extra={"examination": "CHEST, TWO VIEWS"})),
    "s50000005": ("CHEST, PA AND LATERAL: as an empty title before INDICATION", dict(
        findings="The lungs are clear. The cardiomediastinal silhouette and hila are normal. "
                 "No effusion.",
        impression="No acute intrathoracic process.", indication="Chest pain.",
        comparison="Chest radiograph of ___.", extra={"examination": "CHEST, PA AND LATERAL"})),
    "s50000006": ("TYPE OF EXAMINATION:, CLINICAL INFORMATION:, COMPARISON EXAM:", dict(
        findings="A 9 mm nodule in the right upper lobe is unchanged. No new nodules. No "
                 "consolidation.",
        impression="Stable right upper lobe nodule.",
        indication="___ with known lung nodule, follow up.", comparison="CT chest from ___.",
        extra={"examination": "Chest PA and lateral."})),
    "s50000008": ("REASON FOR EXAMINATION: + CLINICAL HISTORY:, COMPARISONS:, CONCLUSION:, "
                  "RECOMMENDATION(S):", dict(
        findings="Moderate cardiomegaly is unchanged. Interstitial edema has improved. Small "
                 "left pleural effusion persists.",
        impression="Improving interstitial edema.",
        indication="Evaluate for interval change. Congestive heart failure.",
        comparison="___ and ___.",
        extra={"sections": {"RECOMMENDATION(S)": "Follow-up radiograph after diuresis."}})),
    "s50000009": ("PORTABLE AP CHEST RADIOGRAPH: titling the findings, REASON FOR EXAM:", dict(
        findings="Low lung volumes. Diffuse bilateral hazy opacities, new since the prior "
                 "study. No pneumothorax.",
        impression="New diffuse bilateral opacities, possibly edema or infection.",
        indication="Hypoxia.", comparison=None,
        extra={"examination": "PORTABLE AP CHEST RADIOGRAPH"})),
    "s50000010": ("mixed-case headers, 'Heart size:' inside findings, ADDENDUM:", dict(
        findings="The right pleural effusion has decreased. Heart size: normal. Mediastinum: "
                 "unremarkable.",
        impression="Decreasing right pleural effusion.", indication="Follow-up of effusion.",
        comparison="Radiograph from ___.",
        extra={"sections": {"ADDENDUM": "The comparison date was corrected."}})),
    "s50000011": ("EXAM:, PATIENT HISTORY:, REFERENCE EXAM:, misspelt IMPRESSON:", dict(
        findings="LINES AND TUBES: Right chest tube in place. Sternotomy wires intact. LUNGS: "
                 "Small residual right apical pneumothorax.",
        impression="Small right apical pneumothorax with chest tube in place.",
        indication="Post-operative check.", comparison="Radiograph from ___.",
        extra={"examination": "Chest, single frontal view."})),
    "s50000012": ("PERTINENT HISTORY:, COMPARISON FILM:, FINAL IMPRESSION:", dict(
        findings="No displaced rib fracture is seen. The lungs are clear.",
        impression="No acute displaced rib fracture.", indication="Trauma, rib pain.",
        comparison="None.", extra={})),
}
MIMIC_NO_FINDINGS = "p10/p10000002/s50000007.txt"  # INDICATION, COMPARISON, IMPRESSION only


def test_mimic_fixture_layouts():
    recs = read_reports(MIMIC_FOLDER, skip_empty_findings=True)
    assert recs.skipped == [MIMIC_NO_FINDINGS] and recs.rows == 12
    got = {r.external_id: r for r in recs}
    assert sorted(got) == sorted(MIMIC_FIXTURES)
    for stem, (layout, want) in MIMIC_FIXTURES.items():
        rec = got[stem]
        for name in ("findings", "impression", "indication", "comparison"):
            assert getattr(rec, name) == want[name], (stem, layout, name)
        for key, value in want["extra"].items():
            assert rec.extra[key] == value, (stem, layout, key)
        assert rec.extra["patient"] == Path(rec.extra["path"]).parent.name


def test_mimic_folder_without_findings_is_refused_naming_the_flag():
    err = raises_at(MIMIC_FOLDER / MIMIC_NO_FINDINGS, None, "findings", "no FINDINGS section",
                    "sections found: INDICATION, COMPARISON, IMPRESSION",
                    "--skip-empty-findings")
    assert "skip_empty_findings" not in str(err) and "=True" not in str(err)
    with pytest.raises(ImportValidationError) as info:
        read_reports(MIMIC_FOLDER)
    assert info.value.file == str(MIMIC_FOLDER / MIMIC_NO_FINDINGS)


def test_mimic_missing_impression_names_the_flag(tmp_path):
    path = tmp_path / "s1.txt"
    path.write_text(" FINDINGS: Lungs clear.\n NOTIFICATION: Called.\n", encoding="utf-8")
    err = raises_at(path, None, "impression", "--allow-missing-impression")
    assert "require_impression" not in str(err)


@pytest.mark.parametrize("label,in_body,kind", [
    ("FINDINGS AND IMPRESSION", False, "both"), ("FINDINGS / IMPRESSION", True, "both"),
    ("CHEST, TWO VIEWS", False, "findings"), ("CHEST, TWO VIEWS", True, None),
    ("CLINICAL INFORMATION", False, "indication"), ("COMPARISON EXAM", False, "comparison"),
    ("TYPE OF EXAMINATION", False, "examination"), ("Reason for exam", True, "indication"),
    ("FINAL IMPRESSION", True, "impression"), ("RECOMMENDATION(S)", True, "other"),
    ("HEART AND MEDIASTINUM", True, None), ("LUNGS AND PLEURA", True, None),
    ("ETT", True, None), ("NG TUBE", True, None), ("OSSEOUS", True, None),
    ("LINES/TUBES", True, None), ("Heart size", True, None), ("CHEST WALL", True, None),
])
def test_mimic_header_kinds(label, in_body, kind):
    found = header_kind(label, in_body)
    assert (found and found[0]) == kind


# -- CheXpert Plus ---------------------------------------------------------------------------------
CHEX_HEADER = ["path_to_image", "deid_patient_id", "section_clinical_history", "section_history",
               "section_comparison", "section_findings", "section_impression", "split"]


def chex_rows() -> list[list[str]]:
    return [
        ["train/patient00001/study1/view1_frontal.jpg", "patient00001", "", "Fever.", "None.",
         "Lungs are clear.", "1. No acute disease.", "train"],
        ["train/patient00001/study1/view2_lateral.jpg", "patient00001", "", "Fever.", "None.",
         "Lungs are clear.", "1. No acute disease.", "train"],
        ["train/patient00002/study1/view1_frontal.jpg", "patient00002", "Trauma.", "Old.", "",
         "", "No fracture.", "train"],
        ["valid/patient00003/study2/view1_frontal.jpg", "patient00003", "", "", "",
         "Small left effusion.", "Small effusion.", "valid"],
    ]


def test_chexpert_plus(tmp_path):
    path = write_csv(tmp_path / "df_chexpert_plus.csv", CHEX_HEADER, chex_rows())
    assert detect_format(path) == "chexpert-plus"
    err = raises_at(path, 4, "section_findings", "empty findings", "--skip-empty-findings")
    assert "skip_empty_findings" not in str(err)
    recs = read_reports(path, skip_empty_findings=True)
    assert recs.skipped == [4]
    assert [r.external_id for r in recs] == ["train/patient00001/study1",
                                             "valid/patient00003/study2"]
    first = recs[0]
    assert first.source == "chexpert-plus" and first.row == 2
    assert first.indication == "Fever." and first.comparison == "None."
    assert first.impression == "1. No acute disease."
    assert first.extra == {"deid_patient_id": "patient00001", "split": "train",
                           "images": ["train/patient00001/study1/view1_frontal.jpg",
                                      "train/patient00001/study1/view2_lateral.jpg"]}


def test_chexpert_clinical_history_preferred_and_conflict(tmp_path):
    rows = chex_rows()
    rows[2][5] = "Clear."
    rows[1][6] = "Different impression."
    path = write_csv(tmp_path / "chex.csv", CHEX_HEADER, rows)
    raises_at(path, 3, "path_to_image", "rows 2 and 3", "different report")
    del rows[1]
    recs = read_reports(write_csv(tmp_path / "chex2.csv", CHEX_HEADER, rows))
    assert recs[1].indication == "Trauma."  # section_clinical_history wins over section_history


def test_chexpert_study_id_column(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["study_id", "section_findings", "section_impression"],
                     [["S1", "Clear.", "Normal."], ["S2", "Effusion.", "Effusion."]])
    recs = read_reports(path)
    assert [(r.external_id, r.extra) for r in recs] == [("S1", {"images": []}),
                                                        ("S2", {"images": []})]
    path = write_csv(tmp_path / "d.csv", ["section_findings", "section_impression"],
                     [["Clear.", "Normal."]])
    raises_at(path, None, "path_to_image", "missing required column")


def test_chexpert_plus_fixture_27_columns(tmp_path):
    """One row per image, multi-line ALL-CAPS cells, studies without section_findings."""
    assert len(next(csv.reader(CHEXPERT_SAMPLE.open(encoding="utf-8")))) == 27
    assert detect_format(CHEXPERT_SAMPLE) == "chexpert-plus"
    err = raises_at(CHEXPERT_SAMPLE, 4, "section_findings", "empty findings",
                    "--skip-empty-findings")
    assert "skip_empty_findings" not in str(err)
    recs = read_reports(CHEXPERT_SAMPLE, skip_empty_findings=True)
    assert recs.skipped == [4, 6, 7] and recs.rows == 7  # spreadsheet rows, one per image
    got = {r.external_id: r for r in recs}
    assert list(got) == ["train/patient00001/study1", "train/patient00002/study2",
                         "valid/patient00004/study1"]
    first = got["train/patient00001/study1"]
    assert first.row == 2
    assert first.findings == (
        "1.LINES AND TUBES: RIGHT PICC TIP PROJECTS OVER THE LOWER SVC. 2.HEART AND "
        "MEDIASTINUM: NORMAL SIZE AND CONTOUR. 3.LUNGS AND PLEURA: NO FOCAL CONSOLIDATION. NO "
        "PNEUMOTHORAX.")
    assert first.impression == ("1.RIGHT PICC IN SATISFACTORY POSITION. 2.NO ACUTE "
                                "CARDIOPULMONARY DISEASE.")
    assert first.indication == "55 years Male, PICC placement"
    assert first.comparison == "3/1/2010."
    assert first.extra["images"] == ["train/patient00001/study1/view1_frontal.jpg",
                                     "train/patient00001/study1/view2_lateral.jpg"]
    assert first.extra["section_narrative"] == "Chest 2 Views, 3-2-2010"
    assert first.extra["section_end_of_impression"].startswith("1-NORMAL I have personally")
    assert first.extra["section_accession_number"] == "1000001"
    assert "report" not in first.extra and "age" not in first.extra
    second = got["train/patient00002/study2"]
    assert second.row == 5
    assert second.indication == "71 years Female, cough"
    assert second.extra["section_history"] == "PRIOR LEFT LOWER LOBE PNEUMONIA."  # kept
    fourth = got["valid/patient00004/study1"]
    assert fourth.findings == ("ETT: TIP 3 CM ABOVE THE CARINA. NG TUBE: TIP IN THE STOMACH. "
                               "OSSEOUS: NO ACUTE FRACTURE.")
    assert fourth.extra["section_technique"] == "PORTABLE AP UPRIGHT."
    assert fourth.extra["section_procedure_comments"] == "Portable exam performed at the bedside."


def test_chexpert_plus_error_rows_match_the_spreadsheet(tmp_path):
    """The multi-line cells above put row 8 on a much later line; the message says row 8."""
    rows = list(csv.reader(CHEXPERT_SAMPLE.open(encoding="utf-8", newline="")))
    rows[7][rows[0].index("section_impression")] = "  "
    path = write_csv(tmp_path / "df_chexpert_plus.csv", rows[0], rows[1:])
    text = path.read_text(encoding="utf-8")
    line = text[:text.index("valid/patient00004")].count("\n") + 1
    assert line > 30  # the physical line: what the importer used to report
    raises_at(path, 8, "section_impression", "empty impression", "--allow-missing-impression",
              skip_empty_findings=True)


# -- generic CSV -----------------------------------------------------------------------------------
def test_generic_csv_defaults(tmp_path):
    path = write_csv(tmp_path / "reports.csv",
                     ["ID", "Findings", "Impression", "Reader", "Indication", "site"],
                     [["r1", "Clear lungs.", "Normal.", "dr_a", "Cough", "north"],
                      ["r2", "Effusion.", "Left effusion.", "", "", ""]])
    assert detect_format(path) == "csv"
    recs = read_reports(path)
    assert recs[0] == ReportRecord(source="csv", external_id="r1", findings="Clear lungs.",
                                   impression="Normal.", indication="Cough", author="dr_a",
                                   row=2, extra={"site": "north"})
    assert recs[1].author is None and recs[1].extra == {}


def test_generic_csv_mapping_and_hash_ids(tmp_path):
    path = write_csv(tmp_path / "export.csv", ["FINDINGS_TEXT", "IMP", "DICTATED_BY"],
                     [["Clear lungs.", "Normal.", "Dr. A"], ["Effusion.", "", "Dr. B"]])
    mapping = {"findings": "FINDINGS_TEXT", "impression": "IMP", "author": "DICTATED_BY"}
    raises_at(path, 3, "IMP", "empty impression", mapping=mapping)
    recs = read_reports(path, mapping=mapping, require_impression=False)
    assert [r.impression for r in recs] == ["Normal.", None]
    assert [r.author for r in recs] == ["Dr. A", "Dr. B"]
    assert recs[0].external_id.startswith("sha1:") and len(recs[0].external_id) == 45
    assert recs[0].external_id == read_reports(path, mapping=mapping,
                                               require_impression=False)[0].external_id
    assert recs[0].external_id != recs[1].external_id
    # A mapped column that is missing, and an unknown field name.
    raises_at(path, None, "TEXT", "missing required column", mapping={"findings": "TEXT"})
    raises_at(path, None, "body", "unknown field", mapping={"body": "FINDINGS_TEXT"})
    # "id" is accepted as a spelling of external_id.
    path2 = write_csv(tmp_path / "e.csv", ["key", "findings", "impression"],
                      [["k1", "Clear.", "Normal."]])
    assert read_reports(path2, mapping={"id": "key"})[0].external_id == "k1"


def test_generic_csv_duplicate_content_without_ids(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["findings", "impression"],
                     [["Clear.", "Normal."], ["Effusion.", "Effusion."], ["Clear.", "Normal."]])
    raises_at(path, 4, "findings", "rows 2 and 4", "identical")


def test_csv_multiline_cells_row_is_spreadsheet_row(tmp_path):
    path = write_csv(tmp_path / "m.csv", ["id", "findings", "impression"],
                     [["a", "line one\nline two\nline three", "Normal."],
                      ["b", "Clear.", ""]])
    err = raises_at(path, 3, "impression", "empty impression", "--allow-missing-impression")
    assert "require_impression" not in str(err)
    recs = read_reports(path, require_impression=False)
    assert [r.row for r in recs] == [2, 3]
    assert recs[0].findings == "line one line two line three"


def test_csv_bom_crlf_and_blank_rows(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfuid,findings,impression\r\n1,Clear.,Normal.\r\n\r\n,,\r\n"
                     b"2,\"Effusion,\r\nsmall.\",Effusion.\r\n")
    recs = read_reports(path)
    assert [(r.external_id, r.row, r.findings) for r in recs] == [
        ("1", 2, "Clear."), ("2", 5, "Effusion, small.")]


# -- validation errors (CSV) -----------------------------------------------------------------------
HEADER = ["uid", "findings", "impression"]


def test_error_missing_required_column(tmp_path):
    path = write_csv(tmp_path / "reports.csv", ["uid", "impression"], [["1", "Normal."]])
    err = raises_at(path, None, "findings", "missing required column 'findings'")
    assert "uid, impression" in str(err)
    path = write_csv(tmp_path / "noimp.csv", ["uid", "findings"], [["1", "Clear."]])
    err = raises_at(path, None, "impression", "missing required column")
    assert "'Accept reports without an impression'" in str(err)  # what to do about it
    assert read_reports(path, require_impression=False)[0].impression is None


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_semicolon_or_tab_separated_export_is_read(tmp_path, sep):
    """Spreadsheets in many locales save "CSV" with semicolons; cells may hold commas."""
    path = tmp_path / "export.csv"
    path.write_text(sep.join(["uid", "findings", "impression"]) + "\n"
                    + sep.join(["1", "Clear lungs, no effusion.", "Normal chest."]) + "\n")
    assert detect_format(path) == "csv"
    (rec,) = read_reports(path)
    assert (rec.external_id, rec.findings, rec.impression) == ("1", "Clear lungs, no effusion.",
                                                              "Normal chest.")


def test_a_pipe_separated_file_is_named_as_such(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("uid|findings|impression\n1|Lungs clear.|Normal chest.\n")
    err = raises_at(path, None, "findings", "missing required column 'findings'")
    assert "looks pipe-separated: save it as comma-separated CSV" in str(err)


def test_error_empty_findings(tmp_path):
    rows = [[str(i), f"Finding {i}.", "Normal."] for i in range(1, 20)]
    rows[15][1] = "   \n "
    path = write_csv(tmp_path / "reports.csv", HEADER, rows)
    err = raises_at(path, 17, "findings", "empty findings")
    assert str(err).startswith(f"{path}, row 17, field 'findings': empty findings")
    recs = read_reports(path, skip_empty_findings=True)
    assert len(recs) == 18 and recs.skipped == [17]


def test_error_empty_impression_and_id(tmp_path):
    path = write_csv(tmp_path / "r.csv", HEADER, [["1", "Clear.", "Normal."], ["2", "Clear.", ""]])
    raises_at(path, 3, "impression", "empty impression")
    path = write_csv(tmp_path / "r2.csv", HEADER, [["1", "Clear.", "Normal."], [" ", "C.", "N."]])
    raises_at(path, 3, "uid", "empty id")


def test_error_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    text = "uid,findings,impression\n1,Clear.,Normal.\n2,Caf\u00e9 effusion.,Small.\n"
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    raises_at(path, 3, "findings", f"byte offset {offset}", "byte 0xe9",
              "re-save the file as UTF-8", "Windows-1252")
    # The same text in UTF-8, with a BOM, is fine.
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_reports(path)[1].findings == "Caf\u00e9 effusion."
    # UTF-16 is recognised in the hint.
    path.write_bytes(text.encode("utf-16"))
    raises_at(path, 1, None, "UTF-16", fmt="csv")


def test_error_unterminated_quote_at_eof(tmp_path):
    path = tmp_path / "cut.csv"
    path.write_text('uid,findings,impression\n1,Clear.,Normal.\n2,"Small effusion, and',
                    encoding="utf-8")
    raises_at(path, 3, "findings", "unterminated quoted field")


def test_error_stray_quote_midfile(tmp_path):
    path = tmp_path / "stray.csv"
    path.write_text('uid,findings,impression\n1,Clear.,Normal.\n2,Clear.,"Normal.\n3,A,B\n',
                    encoding="utf-8")
    raises_at(path, 3, "impression", "unterminated quoted field")
    path.write_text('uid,findings,impression\n1,"Clear" lungs,Normal.\n', encoding="utf-8")
    raises_at(path, 2, "findings", "malformed quoting")


def test_error_field_counts(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("uid,findings,impression\n1,Clear.,Normal.\n2,Clear.\n", encoding="utf-8")
    raises_at(path, 3, "impression", "2 fields but the header has 3", "truncated")
    path.write_text("uid,findings,impression\n1,Clear, lungs.,Normal.\n", encoding="utf-8")
    raises_at(path, 2, None, "4 fields but the header has 3", "unquoted comma")


def test_error_no_data_rows_and_empty(tmp_path):
    path = tmp_path / "header_only.csv"
    path.write_text("uid,findings,impression\n\n", encoding="utf-8")
    raises_at(path, None, None, "no data rows")
    path.write_text("", encoding="utf-8")
    raises_at(path, None, None, "empty")
    jl = tmp_path / "empty.jsonl"
    jl.write_text("\n\n", encoding="utf-8")
    raises_at(jl, None, None, "no data rows")


def test_error_duplicate_ids(tmp_path):
    rows = [[str(i), "Clear.", "Normal."] for i in range(1, 8)]
    rows[5][0] = "3"
    path = write_csv(tmp_path / "dup.csv", HEADER, rows)
    raises_at(path, 7, "uid", "duplicate id '3'", "rows 4 and 7")


def test_error_duplicate_column(tmp_path):
    path = write_csv(tmp_path / "dupcol.csv", ["uid", "findings", "Findings", "impression"],
                     [["1", "a", "b", "c"]])
    raises_at(path, 1, "findings", "appears 2 times")


def test_detect_format_and_bad_arguments(tmp_path):
    odd = tmp_path / "reports.xlsx"
    odd.write_bytes(b"PK\x03\x04")
    raises_at(odd, None, None, "cannot tell the report format", ".xlsx")
    missing = tmp_path / "nope.csv"
    raises_at(missing, None, None, "file not found")
    raises_at(missing, None, None, "file not found", fmt="csv")
    path = write_csv(tmp_path / "r.csv", HEADER, [["1", "Clear.", "Normal."]])
    raises_at(path, None, "format", "unknown format", fmt="xml")
    assert FORMATS == ("auto", "iu-xray", "mimic-cxr", "chexpert-plus", "csv", "jsonl")
    (tmp_path / "x.ndjson").write_text('{"findings": "a", "impression": "b"}\n')
    assert detect_format(tmp_path / "x.ndjson") == "jsonl"


def test_error_type_contract():
    err = ImportValidationError("reports.csv", 17, "findings", "empty findings")
    assert str(err) == "reports.csv, row 17, field 'findings': empty findings"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.file, again.row, again.field, str(again)) == (
        "reports.csv", 17, "findings", str(err))
    assert str(ImportValidationError("a.csv", None, None, "x")) == "a.csv: x"


# -- JSONL -----------------------------------------------------------------------------------------
def write_jsonl(path: Path, objs: list, tail: str = "") -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n"
                    + tail, encoding="utf-8")
    return path


def test_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"id": 7, "findings": "Clear\tlungs.", "impression": "Normal.", "author": "dr_a",
         "labels": ["normal"]},
        "",
        {"id": "x8", "findings": "Effusion.", "impression": "Effusion.", "comparison": None},
    ])
    assert detect_format(path) == "jsonl"
    recs = read_reports(path)
    assert recs[0] == ReportRecord(source="jsonl", external_id="7", findings="Clear lungs.",
                                   impression="Normal.", author="dr_a", row=1,
                                   extra={"labels": ["normal"]})
    assert recs[1].row == 3 and recs[1].comparison is None
    mapped = write_jsonl(tmp_path / "m.jsonl", [{"text": "Clear.", "imp": "Normal."}])
    [rec] = read_reports(mapped, mapping={"findings": "text", "impression": "imp"})
    assert rec.external_id.startswith("sha1:")


def test_jsonl_errors(tmp_path):
    good = {"id": 1, "findings": "Clear.", "impression": "Normal."}
    path = write_jsonl(tmp_path / "cut.jsonl", [good], tail='{"id": 2, "findings": "Eff')
    raises_at(path, 2, None, "invalid JSON", "truncated")
    path = write_jsonl(tmp_path / "list.jsonl", [good, [1, 2]])
    raises_at(path, 2, None, "expected a JSON object")
    path = write_jsonl(tmp_path / "type.jsonl", [good, {"id": 2, "findings": ["a"],
                                                        "impression": "b"}])
    raises_at(path, 2, "findings", "expected a string")
    path = write_jsonl(tmp_path / "key.jsonl", [good, {"id": 2, "impression": "b"}])
    raises_at(path, 2, "findings", "missing key")
    path = write_jsonl(tmp_path / "emptyf.jsonl", [good, {"id": 2, "findings": " ",
                                                          "impression": "b"}])
    raises_at(path, 2, "findings", "empty findings")
    path = write_jsonl(tmp_path / "dup.jsonl", [good, {**good, "findings": "Other."}])
    raises_at(path, 2, "id", "duplicate id '1'", "rows 1 and 2")
    path = write_jsonl(tmp_path / "mixed.jsonl", [good, {"findings": "a", "impression": "b"}])
    raises_at(path, 2, "external_id", "no id but line 1")
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"id": 1, "findings": "ok", "impression": "ok"}\n'
                    b'{"id": 2, "findings": "caf\xe9", "impression": "ok"}\n')
    raises_at(bad, 2, None, "not valid UTF-8", "re-save")


# -- into the database: re-imports through another format, all-or-nothing, the CLI flags ---------
def test_reimport_through_another_format_is_skipped_and_counted(store):
    from core.ingest.reports import import_file

    first = import_file(store, MIMIC_FOLDER, skip_empty_findings=True)
    assert (first.imported, first.skipped, first.duplicates, first.empty_findings) == (
        11, 0, 0, 1)
    assert first.rows == 12 and first.skipped_where == (MIMIC_NO_FINDINGS,)
    assert "1 file without findings skipped (p10/p10000002/s50000007.txt)" in first.summary()
    export = FIXTURES / "export_of_mimic.csv"
    # Two of its three reports are MIMIC fixtures again, in other case and line breaks.
    again = import_file(store, export, mapping={"id": "accession"})
    assert (again.imported, again.skipped, again.duplicates) == (1, 0, 2)
    assert again.duplicate_sources == ("mimic-cxr",)
    assert "2 skipped as" in again.summary() and "--allow-duplicates" in again.summary()
    assert store.count_reports() == 12
    # The same file once more: nothing new, the duplicates are still recognised as such.
    third = import_file(store, export, mapping={"id": "accession"})
    assert (third.imported, third.skipped, third.duplicates) == (0, 1, 2)
    forced = import_file(store, export, mapping={"id": "accession"}, allow_duplicates=True)
    assert (forced.imported, forced.skipped, forced.duplicates) == (2, 1, 0)
    assert store.count_reports() == 14


def test_the_imports_table_counts_every_report_left_out(store):
    """Admin's "Recent imports" (the ``imports`` table): rows read, imported, and skipped for
    any reason: no findings (--skip-empty-findings), already imported, the same content from
    another format."""
    from core.ingest.reports import import_file

    def last() -> tuple[int, int, int]:
        row = store.imports()[0]
        return row["n_rows"], row["n_imported"], row["n_skipped"]

    import_file(store, MIMIC_FOLDER, skip_empty_findings=True)
    assert last() == (12, 11, 1)  # one report file without findings
    import_file(store, CHEXPERT_SAMPLE, skip_empty_findings=True)
    assert last() == (7, 3, 3)  # spreadsheet rows: rows 4, 6 and 7 have no findings
    export = FIXTURES / "export_of_mimic.csv"
    import_file(store, export, mapping={"id": "accession"})
    assert last() == (3, 1, 2)  # two MIMIC reports again, through a CSV export
    import_file(store, export, mapping={"id": "accession"})
    assert last() == (3, 0, 3)  # one already imported, two duplicates
    audit = store.df("SELECT detail FROM audit_log WHERE action = 'import' ORDER BY id")
    assert json.loads(audit["detail"].iloc[1])["empty_findings"] == 3


def test_identical_texts_within_one_source_are_not_duplicates(store, tmp_path):
    """Two studies may share a templated normal report: only another source's copy counts."""
    from core.ingest.reports import import_file

    path = write_csv(tmp_path / "a.csv", HEADER, [["1", "Lungs clear.", "Normal."],
                                                  ["2", "Lungs clear.", "Normal."]])
    assert import_file(store, path).imported == 2
    more = write_csv(tmp_path / "b.csv", HEADER, [["3", "LUNGS  clear.", "normal."]])
    result = import_file(store, more)
    assert (result.imported, result.duplicates) == (1, 0)


def test_refused_folder_writes_nothing(store):
    from core.ingest.reports import import_file

    before = (store.count_reports(), len(store.imports()))
    with pytest.raises(ImportValidationError, match="--skip-empty-findings"):
        import_file(store, MIMIC_FOLDER)
    assert (store.count_reports(), len(store.imports())) == before


def test_admin_import_checkboxes(store, users):
    from streamlit.testing.v1 import AppTest

    from core.accounts import admin

    result = admin.import_reports(store, users["admin"], CHEXPERT_SAMPLE,
                                  skip_empty_findings=True)
    assert (result.imported, result.empty_findings) == (3, 3)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "pages/admin.py"),
                           default_timeout=60)
    at.session_state["user"] = users["admin"]
    at.run()
    assert not at.exception, at.exception
    labels = {at.checkbox(key=k).label for k in ("admin_skip_empty_findings",
                                                  "admin_allow_missing_impression",
                                                  "admin_allow_duplicates")}
    # The error messages point at these boxes by name.
    assert {"Skip reports without findings", "Accept reports without an impression"} <= labels


@pytest.mark.slow
def test_cli_import_flags(store, tmp_path):
    import os
    import subprocess
    import sys

    store.close()  # the CLI is another process; let it have the file
    root = Path(__file__).resolve().parents[2]

    def run(*args):
        return subprocess.run([sys.executable, "-m", "core", "import", *args], cwd=root,
                              capture_output=True, text=True, env=dict(os.environ), timeout=120)

    refused = run(str(MIMIC_FOLDER))
    assert refused.returncode == 2, refused.stderr
    assert "s50000007.txt" in refused.stderr and "--skip-empty-findings" in refused.stderr
    assert "skip_empty_findings" not in refused.stderr
    done = run(str(MIMIC_FOLDER), "--skip-empty-findings")
    assert done.returncode == 0, done.stderr
    assert "11 reports imported" in done.stdout and "1 file without findings" in done.stdout
    export = str(FIXTURES / "export_of_mimic.csv")
    dup = run(export, "--map", "id=accession")
    assert dup.returncode == 0, dup.stderr
    assert "1 report imported" in dup.stdout and "2 skipped as" in dup.stdout
    forced = run(export, "--map", "id=accession", "--allow-duplicates")
    assert forced.returncode == 0 and "2 reports imported" in forced.stdout, forced.stdout


# -- the real IU X-ray file ------------------------------------------------------------------------
def real_iu() -> Path:
    if not IU_FILE.exists():
        pytest.skip(f"{IU_FILE} absent")
    return IU_FILE


def test_real_iu_file_imports_all():
    path = real_iu()
    assert detect_format(path) == "iu-xray"
    recs = read_reports(path)
    assert len(recs) == 2809
    assert all(r.findings and r.impression and r.author for r in recs)
    assert len({r.external_id for r in recs}) == 2809
    assert all(r.source == "iu-xray" for r in recs)
    assert sum("XXXX" in r.findings for r in recs) > 100  # de-identification marks kept
    assert recs[0].external_id == "1" and recs[0].row == 2
    assert recs[0].impression == "Normal chest x-XXXX."
    assert all(r.author == normalize_text(r.author) for r in recs)
    assert all(isinstance(r.extra["mesh"], list) for r in recs)


def real_lines() -> list[str]:
    return real_iu().read_text(encoding="utf-8").splitlines(keepends=True)


def test_real_iu_truncated_mid_row(tmp_path):
    lines = real_lines()
    rows = list(csv.reader(lines))
    # A row whose findings cell is quoted (contains a comma): cut the file inside that cell.
    i = next(i for i in range(1500, len(rows)) if "," in rows[i][6])
    findings = rows[i][6]
    cut_at = lines[i].index('"' + findings[:20]) + 10
    path = tmp_path / "reports.csv"
    path.write_text("".join(lines[:i]) + lines[i][:cut_at], encoding="utf-8")
    raises_at(path, i + 1, "findings", "unterminated quoted field")
    # Cut in an unquoted part instead: the last row has too few fields.
    j = next(j for j in range(1200, len(rows)) if '"' not in lines[j]
             and len(rows[j][5]) >= 3)
    cut_at = len(",".join(rows[j][:5])) + 3  # inside the comparison cell
    path.write_text("".join(lines[:j]) + lines[j][:cut_at], encoding="utf-8")
    raises_at(path, j + 1, "findings", "6 fields but the header has 8", "truncated")


def test_real_iu_blank_findings_and_bad_byte(tmp_path):
    rows = list(csv.reader(real_lines()))
    rows[1234][6] = " "
    path = write_csv(tmp_path / "reports.csv", rows[0], rows[1:])
    raises_at(path, 1235, "findings", "empty findings")
    assert len(read_reports(path, skip_empty_findings=True)) == 2808

    rows = list(csv.reader(real_lines()))
    data = bytearray(write_csv(tmp_path / "bad.csv", rows[0], rows[1:]).read_bytes())
    lines = bytes(data).split(b"\n")
    target = 2000
    pos = sum(len(line) + 1 for line in lines[:target]) + len(lines[target]) - 2
    data[pos] = 0xE9  # a Latin-1 byte inside the last cell (impression) of line 2001
    (tmp_path / "bad.csv").write_bytes(bytes(data))
    raises_at(tmp_path / "bad.csv", target + 1, "impression", f"byte offset {pos}", "UTF-8")


# -- property: generic CSV round-trips arbitrary text ----------------------------------------------
FRAGMENTS = [",", '"', "'", "\n", "\r", "\r\n", "\t", "\x00", "\x0b", "\x1b", "\x85", ";",
             "</td>", "'; DROP TABLE reports; --", "<script>alert(1)</script>", "\u2028",
             "\ufeff", "\u00a0", "XXXX", "___", "caf\u00e9", "\u80ba\u708e", "\U0001f9ea"]
nasty = st.lists(st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                   max_size=12),
                           st.sampled_from(FRAGMENTS)),
                 min_size=1, max_size=10).map("".join)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(nasty, nasty), min_size=1, max_size=5))
def test_property_csv_roundtrip(tmp_path, pairs):
    rows = [[f"id{i}", f, imp] for i, (f, imp) in enumerate(pairs)]
    path = tmp_path / "prop.csv"
    buf = io.StringIO()
    csv.writer(buf).writerows([HEADER, *rows])
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    try:
        recs = read_reports(path, fmt="csv", require_impression=False)
    except ImportValidationError as err:
        # The only acceptable failure: a row whose findings normalise to nothing.
        assert err.field == "findings" and "empty findings" in str(err)
        assert any(not normalize_text(f) for f, _ in pairs)
        return
    assert [r.external_id for r in recs] == [r[0] for r in rows]
    for rec, (f, imp) in zip(recs, pairs):
        assert rec.findings == normalize_text(f)
        assert rec.findings == " ".join(f.translate(
            {c: " " for c in range(32)} | {127: " "} | {c: " " for c in range(0x80, 0xA0)}
        ).split())
        assert rec.impression == (normalize_text(imp) or None)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10_000), junk=st.sampled_from(
    [b"", b'"', b",", b"\n", b"\xe9", b"\x00", b'"\n', b"\xef\xbb\xbf"]))
def test_property_truncated_csv_fails_cleanly(tmp_path, cut, junk):
    """A CSV cut at any byte (plus a stray byte) either imports a prefix of the original
    records or raises ImportValidationError naming a row inside the file; nothing else."""
    rows = [[f"r{i}", f"Finding {i}, with \"quotes\",\nand a line break.", f"Impression {i}."]
            for i in range(40)]
    full = write_csv(tmp_path / "full.csv", HEADER, rows).read_bytes()
    path = tmp_path / "cut.csv"
    data = full[:cut % (len(full) + 1)] + junk
    path.write_bytes(data)
    n_lines = data.count(b"\n") + 1
    try:
        recs = read_reports(path)
    except ImportValidationError as err:
        assert err.file == str(path)
        assert err.row is None or 1 <= err.row <= n_lines
        str(err).encode("utf-8")  # printable: no lone surrogates from bad bytes
        return
    expected = read_reports(tmp_path / "full.csv")
    assert [r.external_id for r in recs] == [r.external_id for r in expected[:len(recs)]]
    assert all(a == b for a, b in zip(recs[:-1], expected))
