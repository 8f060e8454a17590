"""What every page test needs: error details shown, and a page opened for a signed-in user."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _show_errors():
    """.streamlit/config.toml hides error details from users; page tests need them."""
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")


@pytest.fixture
def open_page():
    """``open_page("my_feedback.py", user)``: that page run once for a signed-in user."""
    def run(name: str, user) -> AppTest:
        at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=60)
        at.session_state["user"] = user
        return at.run()

    return run
