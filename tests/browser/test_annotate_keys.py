"""Annotate in a real browser (issue 14.8): Submit/Skip/Undo above the fold at 1000 px, the "?"
overlay, Escape out of the edit box, the tick keys, number keys while a checkbox has the focus,
a selected rating that does not look like an error, progress that does not count a skip."""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.test_browser import READ, _blur, _body, _keys, _settle, _shown, _sign_in, _wait

# one app and one browser for the session: under pytest-xdist (make test) every browser test
# runs on the same worker (--dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.xdist_group("browser")]


def _selected(driver, label: str):
    """The primary (selected) buttons with ``label`` as one line of their text (the text also
    holds the icon's name and the shortcut)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(\"[data-testid='stBaseButton-primary']\")]"
        ".filter(b => b.innerText.split('\\n').map(s => s.trim()).includes(arguments[0]));",
        label)


def _checked(driver, label: str) -> bool:
    box = driver.find_element("xpath", f"//*[@data-testid='stCheckbox'][contains(., '{label}')]"
                                       "//input")
    return box.is_selected()


def test_annotate_keys_and_layout(app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _sign_in(browser, app, "rad3")
    first = _wait(browser, _shown, what="a case")
    _settle(browser)
    text = _body(browser)
    assert "Guidelines" in text and "Much worse" in text and "Missed critical finding" in text
    # Submit, Skip and Undo are on screen without scrolling (window 1400 x 1000)
    for label in ("Submit and next", "Skip", "Undo last rating"):
        bottom = browser.execute_script(
            "var b = [...document.querySelectorAll('button')].find("
            "x => x.innerText.trim().startsWith(arguments[0])); "
            "var r = b.getBoundingClientRect(); return [r.bottom, window.innerHeight];", label)
        assert bottom[0] <= bottom[1], (label, bottom)
    # "?" shows the shortcuts, Escape hides them
    _blur(browser)
    _keys(browser, "?")
    overlay = _wait(browser, lambda d: d.find_elements(By.ID, "imp-keys-overlay"),
                    what="the key overlay")[0]
    assert "Ctrl+Enter" in overlay.text and "Missed critical finding" in overlay.text
    _keys(browser, Keys.ESCAPE)
    _wait(browser, lambda d: not d.find_elements(By.ID, "imp-keys-overlay"), what="it closes")
    # Escape leaves the edit box, then number keys rate
    box = browser.find_element(By.CSS_SELECTOR, "textarea[aria-label*='Edit the AI impression']")
    box.send_keys(Keys.END, " Checked.")
    box.send_keys(Keys.ESCAPE)
    assert browser.execute_script("return document.activeElement.tagName") != "TEXTAREA"
    _wait(browser, lambda d: "characters" in _body(d) and
          re.search(r"[\d,]+ / 20,000 characters", _body(d)), what="the character counter")
    _keys(browser, "4")
    _wait(browser, lambda d: _selected(d, "Better"), what="Better selected")
    # the selected rating is not red
    colour = browser.execute_script("return getComputedStyle(arguments[0]).backgroundColor",
                                    _selected(browser, "Better")[0])
    r, g, b = (int(x) for x in re.findall(r"\d+", colour)[:3])
    assert not (r > 180 and g < 120 and b < 120), colour
    # a checkbox with the focus: number keys still rate; F/O/S/C tick
    browser.find_element(By.XPATH, "//*[@data-testid='stCheckbox'][contains(., 'Style')]"
                                   "//label").click()
    _wait(browser, lambda d: _checked(d, "Style"), what="Style ticked by a click")
    _settle(browser)
    browser.execute_script("arguments[0].focus()", browser.find_element(
        By.XPATH, "//*[@data-testid='stCheckbox'][contains(., 'Style')]//input"))
    assert browser.execute_script("return document.activeElement.type") == "checkbox"
    _keys(browser, "2")
    _wait(browser, lambda d: _selected(d, "Worse"), what="Worse selected from a checkbox")
    for key, label in (("f", "Factually wrong"), ("o", "Omission"), ("c", "Missed critical")):
        _keys(browser, key)
        _wait(browser, lambda d, lab=label: _checked(d, lab), what=f"{label} ticked by {key}")
    _keys(browser, "s")
    _wait(browser, lambda d: not _checked(d, "Style"), what="Style unticked by S")
    _settle(browser)
    assert _shown(browser) == first
    _keys(browser, Keys.CONTROL, Keys.ENTER)
    _wait(browser, lambda d: _shown(d) not in (None, first), what="the next case")
    store = app.store()
    try:
        rows = store.feedback_history(reader_id=app.seed["users"]["rad3"])
    finally:
        store.close()
    row = rows[rows["kind"] == "rating"].iloc[0]
    assert app.seed["external_id"][int(row["report_id"])] == first
    assert (int(row["rating"]), bool(row["factual_error"]), bool(row["omission"]),
            bool(row["critical_missed"]), bool(row["style_issue"])) == (-1, True, True, True,
                                                                        False)
    assert "Checked." in (row["edited_text"] or "")
    # a skip moves on but is not counted as rated
    _blur(browser)
    time.sleep(READ)
    _keys(browser, Keys.ALT, "s")
    _wait(browser, lambda d: "1 of 40 cases rated · 1 skipped" in _body(d), what="the progress")


def test_a_key_with_no_button_does_not_hold_the_keys_after_it(app, browser):
    """'n' (Next, only on a blinded reveal) pressed on a case: the guard held every key for ten
    seconds with a false 'Key ignored' note (exploratory run); a key with no button on the page
    changes nothing and the next rating key works."""
    _sign_in(browser, app, "rad3")
    _wait(browser, _shown, what="a case")
    _settle(browser)
    _blur(browser)
    _keys(browser, "n")
    time.sleep(READ)
    _keys(browser, "3")
    _wait(browser, lambda d: _selected(d, "Equivalent"), timeout=5, what="Equivalent selected")
