"""The tiny study's HTML report read the way a person reads it: headless Chromium at 1280 px,
every section present, nothing wider than the window, a screenshot kept."""

from __future__ import annotations

import pytest

from tests.workflow.browser import headless_chromium
from tests.workflow.test_study import RESULTS

pytestmark = pytest.mark.workflow

SECTIONS = ("headline", "curves", "comparison", "base-model", "tables", "samples")


def test_report_fits_1280_px_and_has_every_section(study):
    page = study / RESULTS / "report" / "index.html"
    driver = headless_chromium(1280)
    try:
        driver.get(page.as_uri())
        for section in SECTIONS:
            assert driver.execute_script(f"return document.getElementById('{section}') !== null"), section
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow} px wider than the window"
        text = driver.find_element("tag name", "body").text
        assert "change against the base model" in text and "read: " in text
        driver.save_screenshot(str(study / "results" / "report_1280.png"))
    finally:
        driver.quit()
