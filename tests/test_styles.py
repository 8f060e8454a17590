"""Audience styles read as plain English for patients."""

from core.generation.styles import brief


def test_brief_agrees_verbs_with_plural_lay_phrases():
    text = brief("Emphysema. Low lung volumes. Calcified granuloma.",
                 "Emphysema. Low lung volumes. Calcified granuloma in the left lung.")
    assert "There are damaged air sacs in the lungs (emphysema)." in text
    assert "There is less air in the lungs than usual (low lung volumes)." in text
    assert "There is a small healed spot" in text
    assert "There is damaged" not in text and "There are a " not in text
