"""The clinical verifier (core.clinical.verifier.verify) on hand-made cases, one per rule, and the pipeline
paths that must go through it (issue 13)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from core.clinical.labeler import label
from core.clinical.text import correct_typos, correct_word
from core.clinical.verifier import major_findings, verify
from core.clinical.vocabulary import Label
from core.evaluation.mesh import mesh_findings, mesh_score, named_findings
from core.generation.pipeline import C2FConfig, CoarseToFine
from core.generation.check import checked_text
from core.generation.retrieval import RetrievalIndex
from core.generation.styles import apply_style


# -- rule 3: a normal statement beside a stated major finding ---------------------------------
def test_no_acute_disease_for_a_stated_effusion_is_repaired():
    v = verify("Heart size normal. Small bilateral pleural effusions.", "No acute disease.")
    assert "No acute disease" not in v.text
    assert label(v.text).get("Pleural Effusion") is Label.POSITIVE
    assert v.added == ["Small bilateral pleural effusions."]
    assert not v.needs_review


def test_no_acute_disease_is_flagged_when_repair_is_off():
    v = verify("Small bilateral pleural effusions.", "No acute disease.", repair=False)
    assert v.needs_review and v.normal_despite == ["Pleural Effusion"]
    assert v.text == "No acute disease."


@pytest.mark.parametrize("findings, obs", [
    ("There is a small left pneumothorax.", "Pneumothorax"),
    ("Right lower lobe consolidation.", "Consolidation"),
    ("Mild pulmonary edema.", "Edema"),
    ("The heart is enlarged.", "Cardiomegaly"),
    ("A 2 cm nodule in the right upper lobe.", "Nodule"),
    ("Acute fracture of the left 6th rib.", "Fracture"),
    ("Free air under the right hemidiaphragm.", "Free Air"),
    ("Right IJ central line tip in the SVC.", "Support Devices"),
])
def test_every_major_finding_beats_a_normal_statement(findings, obs):
    assert obs in major_findings(findings)
    v = verify(findings, "No acute cardiopulmonary abnormality.")
    assert obs in {k for k, x in label(v.text).items() if x is not Label.NEGATIVE} or v.needs_review


@pytest.mark.parametrize("findings", [
    "Calcified nodule in the left upper lobe. Lungs otherwise clear.",  # a granuloma
    "Old healed left rib fracture. Lungs clear.",
    "Median sternotomy wires. Lungs clear.",  # wires are not lines or tubes
    "Small granulomatous nodule in the right base.",
])
def test_benign_findings_do_not_count_as_major(findings):
    assert not major_findings(findings)
    assert not verify(findings, "No acute cardiopulmonary abnormality.").needs_review


@pytest.mark.parametrize("findings, text, expected", [
    ("Right IJ central line tip in the SVC. Lungs clear.", "No acute cardiopulmonary abnormality.",
     "Right IJ central line tip in the SVC. No acute cardiopulmonary abnormality."),
    ("The heart is mildly enlarged. Lungs clear.", "1. No evidence of active disease.",
     "1. The heart is mildly enlarged. 2. No evidence of active disease."),
    ("Small right upper lobe nodule. No effusion.", "Clear lungs. No acute disease.",
     "Clear lungs. Small right upper lobe nodule. No acute disease."),
])
def test_a_statement_of_no_acute_disease_stays_beside_a_chronic_finding_or_a_device(findings, text, expected):
    """Radiologists write "PICC tip in the SVC. No acute cardiopulmonary abnormality.": beside
    cardiomegaly, a nodule or a line, no *acute* disease is true. The finding is added before it,
    and nothing is left to flag."""
    v = verify(findings, text)
    assert v.text == expected and not v.needs_review and not v.removed


@pytest.mark.parametrize("findings, text, expected", [
    ("The heart is enlarged. Lungs clear.", "Normal chest.", "The heart is enlarged."),  # not qualified
    ("Right IJ central line tip in the SVC. Small left effusion.", "No acute disease.",
     "Right IJ central line tip in the SVC. Small left effusion."),  # an acute finding too
    ("The heart is enlarged.", "No cardiomegaly. No acute disease.",  # negates the finding itself
     "The heart is enlarged. No acute disease."),
    # a malpositioned tube or line is critical, not a device in place
    ("Endotracheal tube terminates in the right mainstem bronchus. Lungs clear.", "No acute disease.",
     "Endotracheal tube terminates in the right mainstem bronchus."),
    ("Nasogastric tube is coiled in the esophagus.", "No acute disease.", "Nasogastric tube is coiled in the esophagus."),
    # anything acute in the findings, stated by the text or not, makes "no acute disease" false
    ("Endotracheal tube in place. Small left pneumothorax.", "1. Small left pneumothorax. 2. No acute disease.",
     "1. Small left pneumothorax. 2. Endotracheal tube in place."),
    ("Heart is enlarged. Bibasilar airspace opacities.", "No acute disease.", "Heart is enlarged."),
    ("Cardiomegaly with mild pulmonary vascular congestion.", "No acute disease.",
     "Cardiomegaly with mild pulmonary vascular congestion."),
    # every normal statement of a numbered item or sentence must speak only of acute disease
    ("Right PICC line tip in the SVC.", "1. No acute disease. Normal chest.", "1. Right PICC line tip in the SVC."),
    ("The heart is enlarged.", "Normal chest radiograph without acute abnormality.", "The heart is enlarged."),
])
def test_a_false_statement_still_goes_beside_a_chronic_finding(findings, text, expected):
    v = verify(findings, text)
    assert v.text == expected and v.removed and not v.needs_review
    assert verify(findings, text, repair=False).normal_despite  # shown unrepaired, it is flagged


@pytest.mark.parametrize("findings, text, expected", [
    ("Small left apical pneumothorax. Heart size normal.", "Small left pneumothorax. No acute disease.",
     "Small left pneumothorax."),
    ("Small left apical pneumothorax.", "1. Small left pneumothorax. 2. No acute cardiopulmonary process.",
     "1. Small left pneumothorax."),
    ("Mildly displaced fracture of the mid right clavicle.", "Clavicle fracture. No acute disease.",
     "Clavicle fracture."),
    ("Endotracheal tube terminates in the right mainstem bronchus.",
     "Endotracheal tube in the right mainstem bronchus. No acute disease.",
     "Endotracheal tube in the right mainstem bronchus."),
    ("Small left pneumothorax.", "Small left pneumothorax. No acute cardiopulmonary or other abnormality.",
     "Small left pneumothorax."),
])
def test_a_normal_statement_beside_an_acute_finding_the_text_states_goes(findings, text, expected):
    """The text names the finding itself and then calls the exam normal: the normal statement is
    false and goes; nothing has to be added."""
    v = verify(findings, text)
    assert v.text == expected and v.removed and not v.added and not v.needs_review
    assert verify(findings, text, repair=False).needs_review  # shown unrepaired, it is flagged


@pytest.mark.parametrize("findings, text", [
    ("Small left apical pneumothorax.", "Small left pneumothorax. Otherwise no acute disease."),
    # IU radiologists scope it to the heart and lungs beside a fracture (uid 1782)
    ("Mildly displaced fracture of the mid right clavicle.",
     "Mildly displaced fracture of the mid right clavicle. No acute pulmonary findings."),
    ("Endotracheal tube with tip 4 cm above the carina.", "Endotracheal tube in place. No acute disease."),
])
def test_a_normal_statement_that_stays_true_beside_the_texts_own_finding_stays(findings, text):
    v = verify(findings, text)
    assert v.text == text and not v.removed and not v.needs_review


def test_a_fracture_is_added_before_a_statement_of_no_acute_cardiopulmonary_disease():
    """The statement speaks of the heart and lungs: beside a rib fracture it stays true, after
    the fracture; an unscoped "no acute disease" goes, and an effusion makes either false."""
    findings = "Acute displaced fracture of the right 6th rib. Lungs clear."
    v = verify(findings, "No acute cardiopulmonary disease.")
    assert v.text == "Acute displaced fracture of the right 6th rib. No acute cardiopulmonary disease."
    assert not v.removed and not v.needs_review
    assert verify(findings, "No acute disease.").text == "Acute displaced fracture of the right 6th rib."
    both = verify("Acute displaced fracture of the right 6th rib. Small right effusion.",
                  "No acute cardiopulmonary disease.")
    assert both.removed == ["No acute cardiopulmonary disease."]


@pytest.mark.parametrize("findings, text, expected", [
    # another patient's endotracheal tube beside this patient's coiled NG tube
    ("Nasogastric tube coiled in the esophagus with tip at the level of the carina. Lungs clear.",
     "1. Endotracheal tube tip 1 cm above the carina.",
     "1. Nasogastric tube coiled in the esophagus with tip at the level of the carina."),
    # a PICC in the jugular vein is not "an IJ catheter in the right atrium"
    ("Right PICC tip projects over the right internal jugular vein. Lungs clear. No pneumothorax.",
     "Right IJ catheter tip in right atrium, recommend retraction.",
     "Right PICC tip projects over the right internal jugular vein."),
    # naming the tube without its malposition does not state the critical finding, and the
    # sentence that puts it in place goes (a PICC in place stays)
    ("Nasogastric tube coiled in the esophagus. Lungs clear.", "NG tube in place.",
     "Nasogastric tube coiled in the esophagus."),
    ("Nasogastric tube coiled in the esophagus. Right PICC tip in the SVC.",
     "NG tube in place. PICC in the SVC.", "PICC in the SVC. Nasogastric tube coiled in the esophagus."),
])
def test_a_tube_or_line_is_checked_by_its_kind_and_position(findings, text, expected):
    v = verify(findings, text)
    assert v.text == expected and not v.needs_review
    assert verify(findings, text, repair=False).needs_review


@pytest.mark.parametrize("findings, text, expected", [
    # short names are devices, and a pacing lead nearby hides no malposition (review cases)
    ("ETT tip in the right mainstem bronchus. Lungs clear.", "No acute disease.",
     "ETT tip in the right mainstem bronchus."),
    ("Right IJ central line tip terminates in the right ventricle near the pacing lead.",
     "Right IJ line in place. No acute disease.",
     "Right IJ central line tip terminates in the right ventricle near the pacing lead."),
    ("The feeding tube is coiled in the esophagus and could lead to aspiration.", "Feeding tube in place.",
     "The feeding tube is coiled in the esophagus and could lead to aspiration."),
    ("Nasogastric tube tip in the stomach.", "ETT in good position. NG tube in stomach.", "NG tube in stomach."),
    ("Endotracheal tube in the right mainstem bronchus.", "Tubes and lines in place. No pneumothorax.",
     "No pneumothorax. Endotracheal tube in the right mainstem bronchus."),
])
def test_tubes_named_short_generic_or_beside_a_pacemaker(findings, text, expected):
    v = verify(findings, text)
    assert v.text == expected and not v.needs_review
    assert verify(findings, text, repair=False).needs_review


@pytest.mark.parametrize("findings, text", [
    ("The endotracheal tube has been repositioned and now terminates 4 cm above the carina.",
     "Endotracheal tube in standard position. No acute disease."),
    ("NG tube in stomach, no endotracheal tube.", "NG tube in stomach."),
    ("Small left pneumothorax.", "Small left pneumothorax. No acute disease elsewhere."),
])
def test_a_repositioned_tube_a_negated_device_and_elsewhere_stay(findings, text):
    v = verify(findings, text)
    assert v.text == text and not v.needs_review


@pytest.mark.parametrize("text", ["1. Small left pneumothorax. No acute disease.",
                                  "Small left pneumothorax, no acute disease."])
def test_a_normal_statement_in_the_findings_own_sentence_or_item_is_flagged(text):
    assert verify("Small left pneumothorax.", text).needs_review


@pytest.mark.parametrize("findings", [
    "Cardiac generator over the left hemithorax with a lead terminating in the right ventricle.",
    "A single cardiac defibrillator lead projects over the right ventricle, in stable position.",
])
def test_a_pacemaker_lead_in_the_right_ventricle_is_not_malpositioned(findings):
    assert not verify(findings, "No acute cardiopulmonary findings.", repair=False).missing_critical


def test_another_patients_port_goes_and_a_second_pass_states_this_ones_chest_tube():
    """Removing the port leaves a text that no longer names the report's chest tube: the
    second pass adds it instead of flagging the text."""
    v = verify("Right chest tube in place. No pneumothorax.", "Left chest port catheter tip in the SVC. No pneumothorax.")
    assert v.text == "No pneumothorax. Right chest tube in place." and not v.needs_review
    assert v.removed == ["Left chest port catheter tip in the SVC."]


def test_no_lines_or_tubes_denies_a_stated_device():
    v = verify("Right PICC line with tip in the SVC. Lungs clear.", "No lines or tubes.")
    assert v.text == "Right PICC line with tip in the SVC." and v.removed == ["No lines or tubes."]


def test_no_acute_disease_beside_an_unstated_device_is_flagged_when_repair_is_off():
    v = verify("Right PICC line tip in the SVC.", "No acute disease.", repair=False)
    assert v.needs_review and v.normal_despite == ["Support Devices"]


def test_negation_of_a_stated_finding_is_replaced():
    v = verify("Small right pleural effusion.", "No pleural effusion. Heart size normal.")
    assert "No pleural effusion" not in v.text and "Small right pleural effusion." in v.text
    assert not v.needs_review


# -- rules 1-2: findings this report never states ---------------------------------------------
def test_another_patients_chest_tube_is_removed():
    findings = "The lungs are clear. No pneumothorax. Heart size is normal."
    v = verify(findings, "Right chest tube in place. Elevated right hemidiaphragm. No pneumothorax.")
    assert v.text == "No pneumothorax."
    assert set(v.removed) == {"Right chest tube in place.", "Elevated right hemidiaphragm."}
    assert not v.needs_review


def test_a_finding_stated_in_the_indication_is_supported():
    v = verify("Lungs are clear.", "Chest tube in place.", indication="Chest tube placement.")
    assert v.text == "Chest tube in place." and not v.removed


def test_a_text_made_only_of_unsupported_findings_is_flagged_not_emptied():
    v = verify("The lungs are clear.", "Right chest tube in place.")
    assert v.text == "Right chest tube in place."
    assert v.needs_review and v.unsupported == ["Support Devices"]
    assert any("Support Devices" in r for r in v.reasons)


# -- typos in the critical vocabulary ----------------------------------------------------------
MISSPELT = [  # hand-made: (findings with a misspelt critical term, the observation)
    ("Small right apical pneumothroax.", "Pneumothorax"),
    ("Large left pnuemothorax with mediastinal shift.", "Pneumothorax"),
    ("There is a small left pleural efusion.", "Pleural Effusion"),
    ("Moderate right pleural effusoin.", "Pleural Effusion"),
    ("Right lower lobe consolidaton.", "Consolidation"),
    ("Mild interstitial pulmonary edmea.", "Edema"),
    ("Findings consistent with pnuemonia in the left base.", "Pneumonia"),
    ("Marked cardiomegally.", "Cardiomegaly"),
    ("Displaced fratcure of the right 7th rib.", "Fracture"),
    ("Free intraperitoneal air: pneumoperitonuem.", "Free Air"),
]


@pytest.mark.parametrize("findings, obs", MISSPELT)
def test_misspelt_critical_findings_are_found(findings, obs):
    assert label(findings).get(obs) is Label.POSITIVE
    v = verify(findings, "No acute cardiopulmonary abnormality.")
    assert v.needs_review or label(v.text).get(obs) in (Label.POSITIVE, Label.UNCERTAIN)


def test_typo_correction_leaves_real_words_alone():
    assert [correct_word(w) for w in ("enema", "mention", "heart", "module", "pleura", "features")] == \
        ["enema", "mention", "heart", "module", "pleura", "features"]
    assert correct_typos("no pnuemothorax or efusion") == "no pneumothorax or effusion"
    assert correct_word("consolidatino") == "consolidation"  # nearest of three near terms


# -- styles ------------------------------------------------------------------------------------
def test_brief_atelectasis_phrase_is_not_read_as_negated():
    findings = "Mild left basilar atelectasis."
    text = apply_style("Left basilar atelectasis.", "brief", findings)
    assert label(text).get("Atelectasis") is Label.POSITIVE
    assert not verify(findings, text, repair=False).needs_review


def test_comprehensive_clinical_question_states_no_finding_it_does_not_have():
    findings = "Lungs are clear. Heart size normal. No pneumothorax."
    text = apply_style("No acute disease.", "comprehensive", findings, indication="Rib pain after fall.")
    v = verify(findings, text, indication="Rib pain after fall.", repair=False)
    assert not v.unsupported


# -- the pipeline: every shown text is checked; a model draft never clears a flag -------------
def _index():
    rows = [{"uid": str(i), "findings": f, "impression": imp} for i, (f, imp) in enumerate([
        ("Right chest tube. Lungs clear.", "Right chest tube in place. No pneumothorax."),
        ("Right chest tube. Lungs are clear.", "Right chest tube in place. No pneumothorax."),
        ("Lungs clear. Heart normal.", "No acute disease."),
        ("Lungs are clear. Heart is normal.", "No acute disease."),
    ])]
    return RetrievalIndex.build(rows)


def test_pipeline_removes_the_neighbours_chest_tube():
    out = CoarseToFine(_index(), None, C2FConfig(k=2)).generate(
        [{"uid": "q", "findings": "Right chest tube removed. Lungs are clear."}])[0]
    assert "chest tube" not in out.text.lower()
    assert out.flags["removed"] == ["Right chest tube in place."]


def test_pipeline_repairs_normal_text_for_an_effusion_in_every_style():
    report = {"uid": "q", "findings": "Lungs clear. Heart normal. Small bilateral pleural effusions."}
    for style in ("default", "brief", "bullets", "comprehensive"):
        out = CoarseToFine(_index(), None, C2FConfig(k=2)).generate([report], style=style)[0]
        v = verify(report["findings"], out.text, repair=False)
        assert not v.normal_despite or out.flags["needs_review"], (style, out.text)
        assert label(out.text).get("Pleural Effusion") in (Label.POSITIVE, Label.UNCERTAIN), (style, out.text)


class _Drafts:
    """A stand-in model that answers every prompt with one fixed text."""

    def __init__(self, text):
        self.text = text
        self.tokenizer = lambda s, add_special_tokens=False: {"input_ids": s.split()}

    def format_chat(self, messages):
        return " ".join(m["content"] for m in messages)

    def generate(self, prompts, adapters=None, max_new_tokens=48, batch_size=8, progress=False,
                 length_hint=None):
        return [SimpleNamespace(text=self.text, new_tokens=3, truncated=False, prompt_tokens=9) for _ in prompts]


def test_a_model_draft_never_clears_a_review_flag():
    rows = [{"uid": str(i), "findings": f"Finding number {i} in the lungs.", "impression": imp}
            for i, imp in enumerate(["Alpha.", "Beta gamma.", "Delta epsilon zeta.", "Eta."])]
    index = RetrievalIndex.build(rows)
    report = [{"uid": "q", "findings": "Finding number 9 in the lungs."}]
    plain = CoarseToFine(index, None, C2FConfig(k=4)).generate(report)[0]
    assert plain.flags["low_confidence"] and plain.flags["needs_review"]
    drafted = CoarseToFine(index, _Drafts("No acute disease."), C2FConfig(k=4, llm="always")).generate(report)[0]
    assert drafted.flags["llm"]
    assert drafted.flags["needs_review"], "the model's draft must not clear the low-agreement flag"


def test_checked_text_flags_mean_the_same_in_every_path():
    report = {"findings": "The lungs are clear.", "indication": None, "comparison": None}
    text, flags = checked_text(report, "Right chest tube in place.", "default")
    assert flags["needs_review"] and flags["unsupported"] == ["Support Devices"]
    text, flags = checked_text(report, "Lungs clear. Right chest tube in place.", "brief")
    assert not flags["needs_review"] and flags["removed"]


# -- the independent MeSH score ----------------------------------------------------------------
def test_mesh_score_reads_human_labels_not_our_rules():
    assert mesh_findings("Pleural Effusion/left/small;Cardiomegaly/borderline;Nodule/lung") == \
        {"effusion", "nodule or mass"}
    assert named_findings("No pneumothorax. Small left effusion. Possible pneumonia.") == \
        {"effusion", "airspace disease"}
    s = mesh_score(["Small left effusion.", "Cardiomegaly.", "No acute disease."],
                   ["Pleural Effusion/left", "normal", "No Indexing"])
    assert s["n"] == 2 and s["recall"] == 1.0
    assert s["false_statements"] == 50.0  # cardiomegaly named for a normal report: 1 per 2 reports


def test_the_models_text_is_the_impression_when_it_passes_the_check():
    report = [{"uid": "q", "findings": "Lungs clear. Heart normal. Small right pleural effusion."}]
    out = CoarseToFine(_index(), _Drafts("Small right pleural effusion."), C2FConfig(k=2, llm="always")).generate(report)[0]
    assert out.text == "Small right pleural effusion."
    assert out.flags["source"] == "model" and out.flags["from"] == "model"


def test_a_failing_model_text_falls_back_to_the_flagged_coarse_draft():
    report = [{"uid": "q", "findings": "Lungs are clear. Heart is normal."}]
    out = CoarseToFine(_index(), _Drafts("Left chest tube in place."), C2FConfig(k=2, llm="always")).generate(report)[0]
    assert out.flags["source"] == "retrieval-fallback" and out.flags["needs_review"]
    assert "chest tube" not in out.text.lower()
    assert out.flags["model_text"] == "Left chest tube in place."
    assert "failed the clinical check" in out.flags["messages"][0]


def test_auto_shows_the_base_models_text_only_where_it_agrees_more_with_the_neighbours():
    imps = ["Cardiomegaly. Small right effusion.", "Cardiomegaly. Bibasilar atelectasis.",
            "Small right effusion. Bibasilar atelectasis."]
    rows = [{"uid": str(i), "impression": imp, "findings": "The heart is enlarged. Small right pleural "
             f"effusion. Bibasilar atelectasis. Case {i}."} for i, imp in enumerate(imps)]
    index = RetrievalIndex.build(rows)
    report = [{"uid": "q", "findings": "The heart is enlarged. Small right pleural effusion. "
               "Bibasilar atelectasis."}]
    auto = C2FConfig(k=3, llm="auto", llm_threshold=2.0)  # the model writes every row here
    merged = "Cardiomegaly. Small right effusion. Bibasilar atelectasis."  # closer to all three
    out = CoarseToFine(index, _Drafts(merged), auto).generate(report)[0]
    assert out.text == merged and out.flags["source"] == "model" and "declined" not in out.flags
    reworded = "Enlarged heart with a small right pleural effusion and atelectasis at both bases."
    out = CoarseToFine(index, _Drafts(reworded), auto).generate(report)[0]
    assert out.text in imps and out.flags["source"] == "retrieval"
    assert out.flags["model_text"] == reworded and out.flags["declined"] and out.flags["llm"]
    # the model's text stands under "always", and under a reader's own adapter (their style)
    out = CoarseToFine(index, _Drafts(reworded), replace(auto, llm="always")).generate(report)[0]
    assert out.text == reworded
    out = CoarseToFine(index, _Drafts(reworded), auto).generate(report, adapter="rad1")[0]
    assert out.text == reworded and out.flags["source"] == "model"


def test_auto_never_declines_the_models_text_for_a_draft_that_fails_the_check():
    rows = [{"uid": str(i), "impression": "No acute disease.",
             "findings": f"Lungs clear. Heart normal. Small right pleural effusion. Case {i}."} for i in range(3)]
    report = [{"uid": "q", "findings": "Lungs clear. Heart normal. Small right pleural effusion."}]
    cfg = C2FConfig(k=3, llm="auto", llm_threshold=2.0, repair=False)  # the draft stays "normal"
    out = CoarseToFine(RetrievalIndex.build(rows), _Drafts("Small right pleural effusion."), cfg).generate(report)[0]
    assert out.text == "Small right pleural effusion." and out.flags["source"] == "model"
    assert "declined" not in out.flags
