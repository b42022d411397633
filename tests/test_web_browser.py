"""The dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, via selenium).

``fl-history web`` runs as its own process on a demo-sized store. The browser opens the versions
page, clicks a version and waits until plotly.js has drawn the rounds chart with its data points;
then a real Flower session runs (numpy sites, no TensorFlow) while the browser watches the
sessions page advance round by round without reloading. Screenshots go to ``var/screenshots/``
for a person to look at. No browser is downloaded: without the Debian packages the test is
skipped, saying which is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from server.store import Store
from shared.listening import wait_until_listening
from shared.settings import Settings
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread, serve_session
from tests.privacy_fixtures import charged_session
from tests.web_history import build_history

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
_MISSING = [name for name, path in (("chromium", CHROMIUM), ("chromedriver (chromium-driver)", CHROMEDRIVER))
            if path is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=f"the browser test needs Debian's chromium and chromium-driver: "
                       f"{', '.join(_MISSING)} not found (.ci/run installs them with apt as root)"),
]

ROUNDS = 4
ROUND_PAUSE_S = 2.0  # each site's fit takes this long, so the page can be seen advancing


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return build_history(tmp_path_factory.mktemp("web-browser") / "home")


@pytest.fixture(scope="module")
def dashboard(history: Settings) -> Iterator[str]:
    """``fl-history web`` on a free loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.history.cli", "--home", str(history.home), "web", "--port", str(port)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        wait_until_listening("127.0.0.1", port, timeout_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def shot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def csp_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]
            or entry["level"] == "SEVERE"]


def test_click_a_version_and_its_chart_is_drawn_with_data_points(dashboard: str, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{dashboard}/versions")
    rows = browser.find_elements(By.CSS_SELECTOR, "#versions-table tbody tr")
    assert [r.get_attribute("data-version") for r in rows] == ["0", "1", "2", "3"]
    shot(browser, "versions")
    browser.find_element(By.CSS_SELECTOR, 'a[href="/versions/1"]').click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#rounds-chart[data-rendered="true"]'), 30,
             "plotly.js to draw the rounds chart")
    points = browser.find_elements(By.CSS_SELECTOR, "#rounds-chart .scatterlayer .trace .points path")
    assert len(points) == 2 * 2 * 3  # (fit, evaluate) x (loss, accuracy) x 3 rounds, each a drawn marker
    assert browser.title.startswith("v1")
    shot(browser, "version-1")
    for page, chart in (("lineage", "lineage-chart"), ("privacy", "privacy-chart")):
        browser.get(f"{dashboard}/{page}")
        drawn = f'#{chart}[data-rendered="true"]'
        wait_for(lambda selector=drawn: browser.find_elements(By.CSS_SELECTOR, selector), 30, f"the {page} chart")
        shot(browser, page)
    assert csp_errors(browser) == []


def _live_session(settings: Settings) -> tuple[Store, int, int]:
    """Two sites' requests approved into one session from the head, marked running on a free port."""
    store = Store.open(settings)
    config = {"rounds": ROUNDS, "proximal_mu": 0.01, "min_clients": 2, "join_timeout_s": 60, "round_timeout_s": 60,
              "max_update_norm": 100.0, "learning_rate": 0.1}
    session = charged_session(store, {"alpha": 20, "beta": 20}, rounds=ROUNDS, config=config)
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=os.getpid())
    return store, session.id, port


def _slow_shift(weights: list[np.ndarray]) -> list[np.ndarray]:
    time.sleep(ROUND_PAUSE_S)
    return [w + 0.01 for w in weights]


def test_the_sessions_page_follows_a_running_session_without_reloading(dashboard: str, browser,
                                                                       history: Settings) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    store, session_id, port = _live_session(history)
    try:
        browser.get(f"{dashboard}/sessions")
        browser.execute_script("window.loadedOnce = true;")  # gone if the page reloads
        outcome = serve_session(store, session_id, port)
        clients = [run_in_thread(port, ScriptedClient(site, store.session_secret(session_id, site), 20, _slow_shift))
                   for site in ("alpha", "beta")]
        seen: list[str] = []

        def round_cell() -> str:
            cells = browser.find_elements(By.CSS_SELECTOR, f'tr[data-session="{session_id}"] td.round')
            try:
                return cells[0].text if cells else ""
            except StaleElementReferenceException:  # the poll replaced the row between find and read
                return ""

        def finished() -> bool:
            text = round_cell()
            if text and (not seen or seen[-1] != text):
                seen.append(text)
                if text == f"2 of {ROUNDS}":
                    shot(browser, "sessions-live")
            state = browser.find_elements(By.CSS_SELECTOR, f'tr[data-session="{session_id}"]')
            try:
                return bool(state) and state[0].get_attribute("data-state") == "COMPLETED"
            except StaleElementReferenceException:
                return False

        wait_for(finished, 180, "the session to complete on the page")
        last = round_cell()  # the poll may have changed the row between reading its round and its state
        if last and seen[-1] != last:
            seen.append(last)
        outcome["thread"].join(timeout=60)
        for thread in clients:
            thread.join(timeout=30)
        shot(browser, "sessions-done")
        assert browser.execute_script("return window.loadedOnce === true;"), "the page reloaded"
        done = [int(text.split()[0]) for text in seen]
        assert done == sorted(done) and len(set(done)) >= 3, seen  # the round advanced on the page, step by step
        assert done[-1] == ROUNDS and outcome.get("version") == 4
        result = browser.find_element(By.CSS_SELECTOR, f'tr[data-session="{session_id}"] td:nth-child(8)').text
        assert result == "v4"
        assert csp_errors(browser) == []
    finally:
        store.close()
