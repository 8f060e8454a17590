"""Audience styles read as plain English for patients."""

import pytest

from core.generation.styles import apply_style, brief


def test_brief_agrees_verbs_with_plural_lay_phrases():
    text = brief("Emphysema. Low lung volumes. Calcified granuloma.",
                 "Emphysema. Low lung volumes. Calcified granuloma in the left lung.")
    assert "There are damaged air sacs in the lungs (emphysema)." in text
    assert "There is less air in the lungs than usual (low lung volumes)." in text
    assert "There is a small healed spot" in text
    assert "There is damaged" not in text and "There are a " not in text


IMPRESSION = "Small right pleural effusion. No pneumothorax."
FINDINGS = "There is a small right pleural effusion. No pneumothorax. Heart size is normal."


def test_each_style_renders_the_same_impression_for_its_audience():
    from core.generation.styles import apply_style

    assert apply_style(IMPRESSION, "default") == IMPRESSION
    assert apply_style(IMPRESSION, "bullets") == "- Small right pleural effusion.\n- No pneumothorax."
    lay = apply_style(IMPRESSION, "brief", findings=FINDINGS)
    assert "pleural effusion" in lay and "fluid" in lay  # the term, explained
    full = apply_style(IMPRESSION, "comprehensive", findings=FINDINGS,
                       indication="Shortness of breath.", comparison="None.")
    assert full.startswith("IMPRESSION: 1. Small right pleural effusion. 2. No pneumothorax.")
    assert "SUPPORTING FINDINGS: There is a small right pleural effusion." in full
    assert "COMPARISON: No prior study available." in full


def test_a_normal_impression_reads_as_reassurance_in_the_brief_style():
    from core.generation.styles import apply_style

    assert apply_style("No acute disease.", "brief", findings="Lungs are clear.") == \
        "Normal chest X-ray. No urgent problem was seen."


def test_aliases_resolve_and_unknown_or_blank_input_is_refused():
    import pytest

    from core.errors import StyleError, ValidationError
    from core.generation.styles import apply_style, resolve_style

    assert resolve_style("patient") == "brief" and resolve_style("Bullet") in ("bullets",)
    assert resolve_style(None) == "default" and resolve_style("specialist") == "comprehensive"
    with pytest.raises(StyleError, match="haiku"):
        resolve_style("haiku")
    with pytest.raises(ValidationError):  # StyleError is bad input: exit 2 on the CLI
        apply_style("   ", "brief")


@pytest.mark.parametrize("impression, kind", [
    ("Endotracheal tube tip is in the right mainstem bronchus.", "endotracheal tube"),
    ("Nasogastric tube coiled in the esophagus.", "nasogastric or feeding tube"),
    ("Right PICC tip projects over the right internal jugular vein.", "PICC line"),
])
def test_the_brief_style_tells_the_patient_a_tube_is_in_the_wrong_place(impression, kind):
    text = apply_style(impression, "brief")
    assert text == (f"A tube or line is not in the right place ({kind}, malpositioned). "
                    "This needs prompt attention from your doctor.")


def test_the_brief_style_leaves_a_pacemaker_lead_in_the_right_ventricle_alone():
    text = apply_style("Pacemaker lead terminating in the right ventricle. No acute disease.", "brief")
    assert "not in the right place" not in text and "prompt attention" not in text


def test_the_brief_style_never_says_no_urgent_problem_beside_an_urgent_one():
    text = apply_style("Free air under the right hemidiaphragm. No acute cardiopulmonary process.", "brief")
    assert "No urgent problem" not in text and "prompt attention" in text
    assert apply_style("Right PICC line tip in the SVC. No acute disease.", "brief").startswith(
        "No urgent problem was seen.")


@pytest.mark.parametrize("text", ["No change. Small right pneumothorax.",
                                  "Interval decrease in the small right pneumothorax."])
def test_a_text_that_speaks_of_a_prior_study_is_flagged_without_one(text):
    from core.generation.check import checked_text

    report = {"findings": "Small right apical pneumothorax.", "comparison": "None"}
    _, flags = checked_text(report, text)
    assert flags["needs_review"] and flags.get("prior_without_comparison")
    _, flags = checked_text({**report, "comparison": "PA and lateral chest 2026-11-02."}, text)
    assert not flags.get("prior_without_comparison")


def test_comprehensive_quotes_at_most_a_few_supporting_sentences():
    from core.generation.styles import MAX_SUPPORTING

    findings = " ".join(f"A {i} mm nodule in the right upper lobe, segment {i}." for i in range(1, 40))
    text = apply_style("Multiple right upper lobe nodules.", "comprehensive", findings)
    support = next(line for line in text.splitlines() if line.startswith("SUPPORTING FINDINGS"))
    assert support.count("nodule in the right upper lobe") == MAX_SUPPORTING and len(text) < 2_000
