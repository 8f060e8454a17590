"""The details a shown text must not get wrong about this report (core.clinical.details): the
side, the severity, a history the report never gives, a measurement, a call recorded in another
report's words. Cases from an exploratory run of the product on findings it had never seen:
each was shown unflagged before."""

from __future__ import annotations

import pytest

from core.clinical.text import normalise, sentences
from core.clinical.verifier import verify
from core.generation.check import checked_text


@pytest.mark.parametrize("findings, text, expected", [
    # the side
    ("Small left pneumothorax.", "Small right pneumothorax.", "Small left pneumothorax."),
    ("Large right pleural effusion.", "Large left pleural effusion.", "Large right pleural effusion."),
    ("Acute displaced fractures of the left 4th through 6th ribs.",
     "Acute displaced fractures of the right 5th-7th ribs.",
     "Acute displaced fractures of the left 4th through 6th ribs."),
    ("The endotracheal tube tip is in the left mainstem bronchus.",
     "Endotracheal tube in the right mainstem bronchus.",
     "The endotracheal tube tip is in the left mainstem bronchus."),
    ("Right lower lobe consolidation.", "Left lower lobe consolidation.", "Right lower lobe consolidation."),
    # the severity: a malposition, a size or a tension the findings do not give, or leave out
    ("Endotracheal tube tip 4 cm above the carina. Nasogastric tube tip in the stomach.",
     "Endotracheal tube in the right mainstem bronchus; recommend withdrawal by 2 cm.",
     "Endotracheal tube tip 4 cm above the carina."),
    ("Small left pleural effusion, unchanged.", "New large left pleural effusion.",
     "Small left pleural effusion, unchanged."),
    ("Tension pneumothorax on the right.", "Small right pneumothorax.", "Tension pneumothorax on the right."),
    ("Large right pneumothorax with leftward mediastinal shift.", "Large right pneumothorax.",
     "Large right pneumothorax with leftward mediastinal shift."),  # the shift is the tension
    # a tube misstated goes alone: the other device's sentence stays
    ("Nasogastric tube coiled in the esophagus. Right PICC tip in the SVC.", "NG tube in place. PICC in the SVC.",
     "PICC in the SVC. Nasogastric tube coiled in the esophagus."),
    # a call recorded in another report goes; the rest of its numbered item stays
    ("Lungs clear. No pneumothorax.",
     "No acute cardiopulmonary process. Findings discussed with the ICU team at 10:15.",
     "No acute cardiopulmonary process."),
    ("Mild T10 compression deformity. Lungs clear.",
     "1. No acute cardiopulmonary finding. 2. Mild T10 compression deformity. Findings will be conveyed "
     "to the ordering physician.", "1. No acute cardiopulmonary finding. 2. Mild T10 compression deformity."),
    # a normal statement beside a critical finding the text negates goes with it
    ("The mediastinum is widened.", "Normal mediastinum. No acute disease.", "The mediastinum is widened."),
])
def test_a_misstated_detail_is_replaced_by_the_findings_own_words(findings, text, expected):
    v = verify(findings, text)
    assert v.text == expected and not v.needs_review, (v.text, v.reasons)


@pytest.mark.parametrize("findings, text", [
    ("Bilateral small pleural effusions.", "Small left pleural effusion."),  # less, not wrong
    ("Bibasilar and left perihilar airspace opacities.", "Bilateral airspace disease."),
    ("Diffuse, right greater than left, interstitial opacities.", "Bilateral interstitial opacities."),
    ("Patchy infiltrate in the right lower lobe. Mild opacities in the retrocardiac region.",
     "Patchy right lower lobe infiltrate and probable left basilar infiltrate."),  # retrocardiac: no side
    ("Consolidation in the left lower lobe has cleared. Persistent patchy infiltrate in the right middle lobe.",
     "Cleared left lower lobe airspace disease with persistent right middle lobe airspace disease."),
    ("Moderate left pleural effusion and small right pleural effusion.",
     "Bilateral pleural effusions, left greater than right."),  # "moderate" left out is not wrong
    ("Right PICC line in place. The tip has moved into the left innominate vein.",
     "Malpositioned right PICC line tip, now in the left innominate vein."),
    ("Mild cardiomégaly. Lungs clear.", "Mild cardiomegaly. No acute disease."),  # an accent
])
def test_what_is_not_a_misstatement_stays(findings, text):
    v = verify(findings, text)
    assert v.text == text and not v.removed and not v.needs_review, (v.text, v.reasons)


def test_a_history_the_report_never_gives_and_an_unknown_measurement_are_flagged():
    v = verify("Previously seen free intraperitoneal air has resolved. Lungs are clear.",
               "Resolved right pneumothorax.")
    assert v.needs_review and any("Pneumothorax resolved" in r for r in v.reasons)
    v = verify("Right upper lobe mass measuring 3 cm.", "Right upper lobe mass measuring 5 cm.")
    assert v.needs_review and v.reasons == ["measurement: the text gives 5 cm, which the findings do not"]
    assert not verify("Nodule of 1.5 cm in the right upper lobe.", "15 mm right upper lobe nodule.").needs_review


def test_a_call_that_is_the_whole_text_is_flagged_not_shown_as_fine():
    text, flags = checked_text({"findings": "No evidence of free air under the diaphragm. Lungs clear."},
                               "Findings called to Dr. Müller at 14:05.")
    assert flags["needs_review"] and any("call or discussion" in m for m in flags["messages"])


def test_a_model_text_with_a_misstated_detail_fails_the_check():
    from core.generation.check import fails

    _, flags = checked_text({"findings": "Small left pneumothorax."}, "Small right pneumothorax.")
    assert not fails(flags)  # repaired: the findings' own sentence
    _, flags = checked_text({"findings": "Small left pneumothorax."}, "Small right pneumothorax.", repair=False)
    assert fails(flags) and flags["misstated"]


def test_titles_do_not_end_a_sentence_and_accents_are_read():
    assert sentences("Findings called to Dr. Smith at 14:05. No pneumothorax.") == [
        "Findings called to Dr. Smith at 14:05.", "No pneumothorax."]
    assert normalise("Mild cardiomégaly") == "mild cardiomegaly"


def test_a_findings_sub_heading_is_not_copied_into_the_text():
    v = verify("HEART: Normal size. LUNGS: New left lower lobe consolidation. PLEURA: No effusion.",
               "No acute cardiopulmonary process.")
    assert v.text == "New left lower lobe consolidation."


def test_a_flat_hemidiaphragm_beside_a_pneumothorax_is_not_emphysema():
    from core.clinical.labeler import label
    from core.generation.styles import apply_style

    findings = ("Large right pneumothorax with leftward mediastinal shift and flattening of the "
                "right hemidiaphragm, concerning for tension physiology.")
    assert "Emphysema" not in label(findings)
    assert "emphysema" not in apply_style(findings, "brief", findings)
    assert label("Hyperinflated lungs with flattening of the hemidiaphragms.")["Emphysema"].name == "POSITIVE"


@pytest.mark.parametrize("text", ["Left upper lobe nodule; recommend CT for further evaluation.",
                                  "Left basilar atelectasis."])
def test_the_lungs_are_clear_is_no_support_for_a_finding_in_them(text):
    """A normal statement names related findings only to deny them: another patient's nodule
    or atelectasis beside "The lungs are clear." was shown unflagged (exploratory run)."""
    findings = "The heart is normal in size. No pleural effusion or pneumothorax. The lungs are clear."
    v = verify(findings, text)
    assert v.needs_review and any(r.startswith("unsupported") for r in v.reasons), v.reasons
