"""The newcomer's walk-through in a real browser: sign in, rate and edit ten cases with the
keyboard, import the IU X-ray CSV through the Admin page, then a broken copy of it.

Drives headless Chromium (Debian's ``chromium`` + ``chromium-driver``) with Selenium against a
running app, then checks the database through ``core`` (after the app has let go of the file).
Selenium is not a project dependency: install it where you run this.

    make setup && .venv/bin/python -m streamlit run app.py --server.port 8599 --server.headless true &
    python bench/e2e_browser.py --url http://localhost:8599 --csv ../shared/data/iu_xray/reports.csv

Prints each step with its wall time, and writes screenshots to bench/out/e2e/.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://localhost:8599")
    ap.add_argument("--csv", default=str(ROOT.parent / "shared" / "data" / "iu_xray" / "reports.csv"))
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--driver", default="/usr/bin/chromedriver")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "e2e"))
    args = ap.parse_args(argv)

    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        opts.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    # An explicit driver path keeps Selenium Manager from going online to look for one.
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=args.driver))
    wait = WebDriverWait(driver, 90)
    t_start = time.monotonic()

    def step(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", flush=True)

    def body() -> str:
        return driver.find_element(By.TAG_NAME, "body").text

    def wait_text(text: str, timeout: float = 90) -> None:
        WebDriverWait(driver, timeout).until(lambda d: text in body())

    def sign_in(user: str, password: str) -> None:
        driver.get(args.url)
        field = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[aria-label='Username']")))
        field.send_keys(user)
        driver.find_element(By.CSS_SELECTOR, "input[aria-label='Password']").send_keys(password + Keys.ENTER)

    def progress() -> str:
        return next((line for line in body().splitlines() if "cases rated" in line), "")

    try:
        sign_in("radiologist", "demo-radiologist")
        wait_text("cases rated")
        step(f"signed in as radiologist: {progress()}")
        first = progress()
        for i in range(args.cases):
            before = progress()
            page = driver.find_element(By.TAG_NAME, "body")
            page.send_keys(str(1 + i % 5))          # rate with the keyboard (1-5)
            time.sleep(0.8)
            if i % 2 == 0:                          # edit every other case
                box = driver.find_element(By.CSS_SELECTOR, "textarea[aria-label*='Edit the AI impression']")
                box.send_keys(Keys.END, f" Edited {i}.")
                box.send_keys(Keys.TAB)             # commit the text area value
                time.sleep(0.8)
                driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            # Ctrl+Enter submits and loads the next case
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, Keys.ENTER)
            WebDriverWait(driver, 60).until(lambda d: progress() and progress() != before)
            step(f"case {i + 1}: {progress()}")
        driver.save_screenshot(str(out / "annotate.png"))
        step(f"rated {args.cases} cases with the keyboard: {first} -> {progress()}")

        sign_in("admin", "demo-admin")              # a fresh page load is a fresh session
        wait_text("Signed in as")
        driver.find_element(By.XPATH, "//a[.//span[normalize-space()='Admin']]").click()
        wait_text("Import reports")
        src = Path(args.csv)
        upload = driver.find_element(By.CSS_SELECTOR, "input[type='file']")
        upload.send_keys(str(src.resolve()))
        time.sleep(2)
        driver.find_element(By.XPATH, "//button[normalize-space()='Import']").click()
        wait_text("imported", timeout=300)
        msg = next(line for line in body().splitlines() if "imported" in line.lower())
        step(f"admin import of {src.name}: {msg}")
        driver.save_screenshot(str(out / "admin_import.png"))

        with tempfile.TemporaryDirectory() as tmp:
            broken = Path(tmp) / "reports_broken.csv"
            with src.open(newline="", encoding="utf-8") as f, broken.open("w", newline="", encoding="utf-8") as g:
                rows = list(csv.reader(f))
                header = rows[0]
                rows[1500][header.index("findings")] = ""     # an empty findings field
                csv.writer(g).writerows(rows)
            driver.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(broken))
            time.sleep(2)
            driver.find_element(By.XPATH, "//button[normalize-space()='Import']").click()
            wait_text("Nothing was imported", timeout=300)
            err = next(line for line in body().splitlines() if "Nothing was imported" in line)
            step(f"broken copy refused: {err}")
            driver.save_screenshot(str(out / "admin_broken.png"))
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
