"""Exports never hand a spreadsheet a formula (issue 14.4): My feedback, All feedback and the
study CSV all write through core.util.safe_csv."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from core.util import safe_csv, spreadsheet_safe

EVIL = ["=HYPERLINK(\"http://evil\",\"x\")", "+cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "\t=1"]


@pytest.mark.parametrize("text", EVIL)
def test_formula_looking_text_is_neutralised(text):
    assert spreadsheet_safe(text) == "'" + text


def test_safe_csv_keeps_numbers_and_plain_text():
    frame = pd.DataFrame({"rating": [-2, 1], "comment": ["=HYPERLINK(\"x\")", "Fine."]})
    rows = list(csv.DictReader(io.StringIO(safe_csv(frame))))
    assert rows[0]["rating"] == "-2" and rows[0]["comment"] == "'=HYPERLINK(\"x\")"
    assert rows[1]["comment"] == "Fine."
