"""The real-browser suite: one app process per session (``streamlit run app.py`` on a free
port against a temporary database seeded through ``core``) and one headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); without them
the suite fails, it never skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
N_CASES = 40
PASSWORDS = {"rad1": "rad1-Passw0rd", "rad2": "rad2-Passw0rd", "rad3": "rad3-Passw0rd",
             "rad4": "rad4-Passw0rd", "coord": "coord-Passw0rd"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed(db: Path) -> dict:
    """Users, N_CASES synthetic reports with a ready AI impression each (some with clinical
    check messages, which blind mode must hide)."""
    from core.accounts import auth
    from core.ingest.demo import synthetic_reports
    from core.store.database import Store

    store = Store(str(db))
    try:
        store.migrate()
        for name, role in [("rad1", "radiologist"), ("rad2", "radiologist"),
                           ("rad3", "radiologist"), ("rad4", "radiologist"),
                           ("coord", "coordinator")]:
            auth.create_user(store, name, role, PASSWORDS[name])
        store.import_reports(synthetic_reports(N_CASES, seed=7), file="synthetic", fmt="demo")
        reports = store.reports()
        store.add_generations(
            {"report_id": r["id"], "model": "test-model", "latency_ms": 5.0,
             "text": f"AI draft {r['id']}: no acute cardiopulmonary process.",
             "flags": {"messages": ["AI check says hello"]} if r["id"] % 2 else {}}
            for r in reports)
        users = {r.username: r.id for r in store.list_readers()}
        ext = {r["id"]: r["external_id"] for r in reports}
    finally:
        store.close()
    return {"users": users, "external_id": ext}


@dataclass
class App:
    url: str
    db: Path
    env: dict
    seed: dict
    downloads: Path
    passwords: dict

    def store(self):
        """A Store on the app's database (the file lock hands it over between processes)."""
        from core.store.database import Store

        return Store(str(self.db))


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing or shutil.which("chromium") is None:
        pytest.fail(f"the browser tests need {', '.join(missing) or 'chromium on PATH'}: "
                    f"apt-get install chromium chromium-driver", pytrace=False)
    tmp = tmp_path_factory.mktemp("browser-app")
    env = {**os.environ, "IMPRESSIONIST_DATA": str(tmp / "data"),
           "IMPRESSIONIST_DB": str(tmp / "data" / "app.duckdb"), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "IMPRESSIONIST_BCRYPT_ROUNDS": "4"}
    (tmp / "data").mkdir()
    old = {k: os.environ.get(k) for k in ("IMPRESSIONIST_DATA", "IMPRESSIONIST_DB")}
    os.environ.update({k: env[k] for k in old})
    try:
        seed = _seed(Path(env["IMPRESSIONIST_DB"]))
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    port = _free_port()
    log = open(tmp / "streamlit.log", "w")  # noqa: SIM115 - open for the app's lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # ready when the health endpoint answers
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the app did not start: {(tmp / 'streamlit.log').read_text()[-2000:]}")
        time.sleep(0.2)
    downloads = tmp / "downloads"
    downloads.mkdir()
    yield App(url, Path(env["IMPRESSIONIST_DB"]), env, seed, downloads, PASSWORDS)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def browser(app):
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(app.downloads),
                                           "download.prompt_for_download": False})
    # An explicit driver path keeps Selenium Manager from going online to look for one.
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()
