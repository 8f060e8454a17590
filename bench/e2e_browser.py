"""In a real browser (headless Chromium through Selenium): how long from Submit to the next case
painted, and the newcomer's walk-through.

Latency (issue 14.9): rates ``--cases`` cases with the keyboard (a rating key, then Ctrl+Enter)
and measures in the page, from the Ctrl+Enter keydown to the first frame painted after the next
case (its findings and its AI draft in the edit box) is on screen; prints p50/p95/max. With
``--serve`` it seeds a temporary database through ``core`` (``--reports`` synthetic reports, each
with an AI draft; users radiologist/coordinator/admin) and starts the app on it itself:

    .venv/bin/python bench/e2e_browser.py --serve --cases 30 --shots docs/screenshots

or against a running app (``--url``, demo accounts):

    make setup && .venv/bin/python -m streamlit run app.py --server.port 8599 --server.headless true &
    python bench/e2e_browser.py --url http://localhost:8599 --walkthrough \\
        --csv ../shared/data/iu_xray/reports.csv

``--shots DIR`` saves a small PNG of every page (sign-in, annotate, my feedback, study queue,
studies, results, admin, adapters). ``--walkthrough`` also imports the IU X-ray CSV through the
Admin page, then a broken copy of it. Screenshots of the walk-through go to bench/out/e2e/.
Selenium is a test dependency (requirements.txt); Debian's ``chromium`` + ``chromium-driver``.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the demo accounts (``--url``) and the ones ``--serve`` creates
PASSWORDS = {"radiologist": "demo-radiologist", "coordinator": "demo-coordinator",
             "admin": "demo-admin"}
SERVE_PASSWORDS = {name: f"bench-Passw0rd-{name[:3]}" for name in PASSWORDS}
# In the page: Ctrl+Enter keydown -> the next case's findings and draft on screen -> the frame
# after that is painted (two animation frames).
LATENCY_JS = """
window.__lat = {t0: null, from: null, samples: []};
var shown = function () {
  var m = document.body.innerText.match(/Report (\\S+) · source/); return m ? m[1] : null; };
var ready = function (id) {
  if (!id || id === window.__lat.from) { return false; }
  var box = document.querySelector("textarea[aria-label*='Edit the AI impression']");
  return !window.__latMatch || (box && box.value.indexOf('for ' + id + ':') >= 0);
};
window.addEventListener('keydown', function (e) {
  if (e.ctrlKey && e.key === 'Enter') { window.__lat.t0 = performance.now();
                                        window.__lat.from = shown(); }
}, true);
new MutationObserver(function () {
  var lat = window.__lat;
  if (lat.t0 === null || !ready(shown())) { return; }
  var t0 = lat.t0; lat.t0 = null;
  requestAnimationFrame(function () { requestAnimationFrame(function () {
    lat.samples.push(performance.now() - t0); }); });
}).observe(document.body, {subtree: true, childList: true, characterData: true,
                           attributes: true});
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(db: Path, n_reports: int) -> None:
    """Users and ``n_reports`` synthetic reports with an AI draft each, through ``core``."""
    from core.accounts import auth
    from core.ingest.demo import synthetic_reports
    from core.store.database import Store

    store = Store(str(db))
    try:
        store.migrate()
        for name, password in SERVE_PASSWORDS.items():
            auth.create_user(store, name, name, password)
        store.import_reports(synthetic_reports(n_reports, seed=11), file="synthetic", fmt="demo")
        reports = store.reports()
        store.add_generations(
            {"report_id": r["id"], "model": "bench", "latency_ms": 5.0,
             "text": f"AI draft for {r['external_id']}: no acute cardiopulmonary process."}
            for r in reports)
        _seed_study(store)
    finally:
        store.close()


def _seed_study(store) -> None:
    """Two small studies (the original against the stored drafts) for the screenshots: one
    rated and closed (Study results), one running and half rated (Study queue)."""
    from core.accounts import auth
    from core.studies import lifecycle, rating

    coord = auth.sign_in(store, "coordinator", SERVE_PASSWORDS["coordinator"])
    rad = auth.sign_in(store, "radiologist", SERVE_PASSWORDS["radiologist"])
    for name, seed, closed in (("Bench study, closed", 3, True), ("Bench study", 4, False)):
        sid = lifecycle.create_study(store, coord, lifecycle.StudyDesign(
            name, ["original", "base"], 5, seed=seed, raters=["radiologist"], k=1))
        values = rating.rater_study(store, rad, sid).scale.values
        for i in range(10 if closed else 4):
            task = rating.next_task(store, rad, sid)
            rating.submit(store, rad, task.task_id, values[(i * 3 + seed) % len(values)])
        if closed:
            lifecycle.close(store, coord, sid)


def serve(tmp: Path, n_reports: int) -> tuple[subprocess.Popen, str]:
    """Seed a database under ``tmp`` and start the app on it; returns (process, url)."""
    env = {**os.environ, "IMPRESSIONIST_DATA": str(tmp / "data"),
           "IMPRESSIONIST_DB": str(tmp / "data" / "app.duckdb"), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "IMPRESSIONIST_BCRYPT_ROUNDS": "4"}
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    os.environ.update({k: env[k] for k in ("IMPRESSIONIST_DATA", "IMPRESSIONIST_DB")})
    seed(Path(env["IMPRESSIONIST_DB"]), n_reports)
    port = _free_port()
    log = open(tmp / "streamlit.log", "w")  # noqa: SIM115 - open for the app's lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the app did not start: {(tmp / 'streamlit.log').read_text()[-2000:]}")
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


class Browser:
    """Headless Chromium with the few helpers the bench needs."""

    def __init__(self, url: str, driver_path: str, width: int = 1400, height: int = 1000):
        os.environ.setdefault("SE_AVOID_STATS", "true")
        from selenium import webdriver  # a test dependency: only where the bench runs
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
            opts.add_argument(flag)
        # An explicit driver path keeps Selenium Manager from going online to look for one.
        self.driver = webdriver.Chrome(options=opts,
                                       service=Service(executable_path=driver_path))
        self.url = url
        self.t_start = time.monotonic()

    def step(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t_start:6.1f}s] {msg}", flush=True)

    def body(self) -> str:
        return self.driver.find_element("tag name", "body").text

    def wait(self, cond, timeout: float = 90, poll: float = 0.05):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=poll).until(cond)

    def wait_text(self, text: str, timeout: float = 90) -> None:
        self.wait(lambda d: text in self.body(), timeout)

    def settle(self, quiet_s: float = 1.0) -> None:
        """Until the page text has not changed for ``quiet_s``."""
        last = [None, 0.0]

        def quiet(_):
            text = self.body()
            if text != last[0]:
                last[:] = [text, time.monotonic()]
            busy = self.driver.find_elements("css selector", "[data-testid='stSpinner'], "
                                                             "[data-stale='true']")
            return time.monotonic() - last[1] > quiet_s and "Running" not in text and not busy

        self.wait(quiet, 120)

    def keys(self, *keys) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        chain = ActionChains(self.driver)
        mods = [k for k in keys if k in (Keys.CONTROL, Keys.ALT)]
        for m in mods:
            chain.key_down(m)
        chain.send_keys(*[k for k in keys if k not in mods])
        for m in mods:
            chain.key_up(m)
        chain.perform()

    def sign_in(self, user: str, password: str, path: str = "") -> None:
        from selenium.webdriver.common.keys import Keys

        self.driver.delete_all_cookies()
        self.driver.get(f"{self.url}/{path}")
        field = self.wait(lambda d: d.find_elements(
            "css selector", "input[aria-label='Username']"))[0]
        field.send_keys(user)
        self.driver.find_element("css selector", "input[aria-label='Password']").send_keys(
            password + Keys.ENTER)
        self.wait_text("Signed in as")

    def progress(self) -> str:
        return next((line for line in self.body().splitlines() if "cases rated" in line), "")


READ = 0.6  # as tests/browser: the key guard drops keys typed within 450 ms of a new case


def latency(b: Browser, cases: int, password: str, matched: bool) -> list[float]:
    """Submit -> next case painted (ms) over ``cases`` keyboard ratings, measured in the page."""
    from selenium.webdriver.common.keys import Keys

    b.sign_in("radiologist", password)
    b.wait_text("cases rated")
    b.settle()
    b.step(f"signed in as radiologist: {b.progress()}")
    b.driver.execute_script(LATENCY_JS + f"window.__latMatch = {'true' if matched else 'false'};")
    for i in range(cases):
        b.driver.execute_script("if (document.activeElement) document.activeElement.blur();")
        time.sleep(READ)  # a glance at the case: keys within 450 ms of a new case are dropped
        b.keys(str(1 + i % 5))
        b.wait(lambda d: d.find_elements("css selector", "[data-testid='stBaseButton-primary']"
                                                         " [data-testid='stIconMaterial']"))
        b.settle(0.5)
        n = len(b.driver.execute_script("return window.__lat.samples"))
        b.keys(Keys.CONTROL, Keys.ENTER)
        b.wait(lambda d, n=n: len(d.execute_script("return window.__lat.samples")) > n, 60)
    samples = b.driver.execute_script("return window.__lat.samples")
    b.step(f"rated {cases} cases: {b.progress()}")
    return [float(x) for x in samples]


PAGES = [("sign_in", None, ""), ("annotate", "radiologist", "annotate"),
         ("my_feedback", "radiologist", "my_feedback"),
         ("study_queue", "radiologist", "study_annotate"), ("study", "coordinator", "study"),
         ("results", "coordinator", "results"), ("admin", "admin", "admin"),
         ("adapters", "admin", "adapters")]


def screenshots(b: Browser, out: Path, passwords: dict) -> None:
    """One small PNG per page (palette, at most 1000 px wide)."""
    from PIL import Image  # only for the screenshots
    from selenium.common.exceptions import TimeoutException

    out.mkdir(parents=True, exist_ok=True)
    for name, user, path in PAGES:
        if user is None:
            b.driver.delete_all_cookies()
            b.driver.get(f"{b.url}/sign_out")
            b.driver.delete_all_cookies()
            b.driver.get(b.url)
            b.wait(lambda d: d.find_elements("css selector", "input[aria-label='Username']"))
        else:
            b.sign_in(user, passwords[user], path)
        b.settle()
        try:  # charts draw after the page text settles
            b.wait(lambda d: d.execute_script(
                "return [...document.querySelectorAll(\"[data-testid='stVegaLiteChart'], "
                "[data-testid='stPlotlyChart']\")].every(c => c.querySelector('canvas, svg'));"),
                30)
        except TimeoutException:
            b.step(f"{name}: charts not drawn after 30 s")
        time.sleep(1.0)  # the charts' first frame
        raw = out / f"{name}.raw.png"
        b.driver.save_screenshot(str(raw))
        img = Image.open(raw).convert("RGB")
        img.thumbnail((1000, 1000))
        img.quantize(colors=64).save(out / f"{name}.png", optimize=True)
        raw.unlink()
        b.step(f"screenshot {out / name}.png")


def walkthrough(b: Browser, src: Path, out: Path, password: str) -> None:
    """Admin: import the IU X-ray CSV, then a broken copy of it (refused as a whole)."""
    b.sign_in("admin", password, "admin")
    b.wait_text("Import reports")
    b.driver.find_element("css selector", "input[type='file']").send_keys(str(src.resolve()))
    time.sleep(2)
    b.driver.find_element("xpath", "//button[normalize-space()='Import']").click()
    b.wait_text("imported", timeout=300)
    msg = next(line for line in b.body().splitlines() if "imported" in line.lower())
    b.step(f"admin import of {src.name}: {msg}")
    b.driver.save_screenshot(str(out / "admin_import.png"))
    with tempfile.TemporaryDirectory() as tmp:
        broken = Path(tmp) / "reports_broken.csv"
        with src.open(newline="", encoding="utf-8") as f, \
                broken.open("w", newline="", encoding="utf-8") as g:
            rows = list(csv.reader(f))
            rows[1500][rows[0].index("findings")] = ""     # an empty findings field
            csv.writer(g).writerows(rows)
        b.driver.find_element("css selector", "input[type='file']").send_keys(str(broken))
        time.sleep(2)
        b.driver.find_element("xpath", "//button[normalize-space()='Import']").click()
        b.wait_text("Nothing was imported", timeout=300)
        err = next(line for line in b.body().splitlines() if "Nothing was imported" in line)
        b.step(f"broken copy refused: {err}")
        b.driver.save_screenshot(str(out / "admin_broken.png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://localhost:8599")
    ap.add_argument("--serve", action="store_true",
                    help="seed a temporary database and start the app on it (ignores --url)")
    ap.add_argument("--reports", type=int, default=50,
                    help="reports seeded with --serve (10 go to two small studies)")
    ap.add_argument("--cases", type=int, default=30, help="cases rated for the latency")
    ap.add_argument("--shots", type=Path, help="save a small PNG of every page here")
    ap.add_argument("--walkthrough", action="store_true", help="also import --csv as admin")
    ap.add_argument("--csv", default=str(ROOT.parent / "shared" / "data" / "iu_xray" /
                                         "reports.csv"))
    ap.add_argument("--driver", default="/usr/bin/chromedriver")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "e2e"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = serve(Path(tmp), args.reports) if args.serve else (None, args.url)
        b = Browser(url, args.driver)
        passwords = SERVE_PASSWORDS if args.serve else PASSWORDS
        try:
            samples = latency(b, args.cases, passwords["radiologist"], matched=args.serve)
            b.driver.save_screenshot(str(out / "annotate.png"))
            print(f"submit -> next case painted over {len(samples)} cases: "
                  f"p50 {statistics.median(samples):.0f} ms, "
                  f"p95 {percentile(samples, 95):.0f} ms, max {max(samples):.0f} ms, "
                  f"min {min(samples):.0f} ms", flush=True)
            if args.shots:
                screenshots(b, args.shots, passwords)
            if args.walkthrough:
                walkthrough(b, Path(args.csv), out, passwords["admin"])
        finally:
            b.driver.quit()
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
