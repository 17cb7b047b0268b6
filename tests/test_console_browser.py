"""The console in a real browser: Debian's Chromium, driven by Selenium through Debian's
chromedriver (nothing is downloaded). The integrator's day: log in, find a failed message
by its control ID, open it, replay it after the mapping was fixed and see it processed,
then map a message in the playground and read its trace. Every page is photographed into
the test's temporary folder (the README's pictures come from there)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from web_rig import FAILING, PASSWORDS, Web, running_web

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Chromium missing: apt-get install chromium chromium-driver "
                    "(scripts/test.sh does)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.implicitly_wait(15)  # a loaded CI machine can be slow to render
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    with running_web(tmp_path / "bridge") as running:
        yield running


def shoot(driver: webdriver.Chrome, folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    # The whole page, not only the window.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(1000, min(height + 40, 4000)))
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def navigated_from(driver: webdriver.Chrome, wait: WebDriverWait, action) -> None:
    """Run `action` and wait until its page has replaced the current one (elements of the
    old page could otherwise be found, and go stale, in between)."""
    old = driver.find_element(By.TAG_NAME, "main")
    action()

    def replaced(_driver: webdriver.Chrome) -> bool:
        # Chromium answers for an element of a page being replaced either "stale element"
        # or, mid-navigation, "Node with given id does not belong to the document" (a plain
        # WebDriverException, which selenium's staleness_of does not catch): both say the
        # old page is gone.
        try:
            old.is_enabled()
        except WebDriverException:  # StaleElementReferenceException is one
            return True
        return False

    wait.until(replaced)


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_an_integrators_day(browser: webdriver.Chrome, web: Web, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    wait = WebDriverWait(browser, 20)
    # Some traffic for the dashboard: a message that is not HL7 (AR), worklist searches.
    assert web.send("not HL7 at all") == "AR"
    for modality in ("CT", "MR", "US"):
        assert httpx.get(f"{web.base}/dicomweb/modality-scheduled-procedure-steps",
                         params={"ScheduledProcedureStepSequence.Modality": modality},
                         auth=("vera", PASSWORDS["vera"]), timeout=30).status_code == 200
    browser.get(web.base + "/")
    assert browser.current_url.endswith("/login")
    shoot(browser, shots, "login")
    browser.find_element(By.ID, "name").send_keys("otto")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["otto"])
    browser.find_element(By.ID, "login").click()
    wait.until(ready.presence_of_element_located((By.ID, "messages-chart")))
    assert "otto (operator)" in browser.find_element(By.TAG_NAME, "header").text
    assert browser.find_element(By.CSS_SELECTOR, ".big a").text == "2"  # AE and AR
    bars = browser.find_elements(By.CSS_SELECTOR, "#messages-chart .bar")
    assert {b.get_attribute("class") for b in bars} == {"bar ack-AA", "bar ack-AE",
                                                         "bar ack-AR"}
    assert browser.find_elements(By.CSS_SELECTOR, "#queries-chart .bar")
    shoot(browser, shots, "dashboard")

    # Find the failed message by its control ID.
    browser.find_element(By.ID, "nav-messages").click()
    browser.find_element(By.ID, "f-control-id").send_keys(FAILING)
    navigated_from(browser, wait, lambda: browser.find_element(By.ID, "f-search").click())
    rows = browser.find_elements(By.CSS_SELECTOR, "#messages tr.status-failed")
    assert len(rows) == 1
    shoot(browser, shots, "messages")
    rows[0].find_element(By.CSS_SELECTOR, "a.control-id").click()

    # The message page: its status, error, fields with their HL7 paths.
    wait.until(ready.presence_of_element_located((By.ID, "segments")))
    assert text(browser, "status") == "failed"
    assert "OBR-24" in text(browser, "error")
    modality = browser.find_element(By.CSS_SELECTOR, '.field[data-path="OBR-24"]')
    assert modality.get_attribute("title") == "OBR-24"
    browser.find_element(By.CSS_SELECTOR, '.field[data-path="OBR-18"]').click()
    assert text(browser, "path") == "OBR-18 = ACC-F1"
    shoot(browser, shots, "message")

    # The integrator fixed the mapping (a default modality); one click replays.
    web.fix_mapping()
    browser.find_element(By.ID, "replay").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "status"), "replayed"))
    assert text(browser, "ack-code") == "AA"
    assert text(browser, "replay-result") == "Replayed: AA"
    items = browser.find_elements(By.CSS_SELECTOR, "#items a")
    assert len(items) == 1
    shoot(browser, shots, "message-replayed")

    # The item it made, with its history pointing back at the message.
    items[0].click()
    wait.until(ready.presence_of_element_located((By.ID, "history")))
    assert "ACC-F1" in text(browser, "attributes")
    assert "message" in text(browser, "history")
    shoot(browser, shots, "item")
    browser.find_element(By.ID, "nav-worklist").click()
    assert "ACC-F1" in text(browser, "worklist")
    shoot(browser, shots, "worklist")

    # The playground: the trace of a message, attribute by attribute.
    browser.back()
    browser.back()
    wait.until(ready.presence_of_element_located((By.ID, "open-playground")))
    browser.find_element(By.ID, "open-playground").click()
    wait.until(ready.presence_of_element_located((By.ID, "translate")))
    assert "ACC-F1" in browser.find_element(By.ID, "message").get_attribute("value")
    navigated_from(browser, wait, lambda: browser.find_element(By.ID, "translate").click())
    wait.until(ready.presence_of_element_located((By.ID, "trace-profile")))
    assert text(browser, "trace-profile") == "ihe-orm-o01"
    trace = browser.find_element(By.CSS_SELECTOR, "table.trace").text
    assert "AccessionNumber ACC-F1 OBR-18" in trace
    assert '"ACC-F1"' in text(browser, "items-json")
    shoot(browser, shots, "playground")

    assert sorted(p.name for p in shots.iterdir()) == [
        "dashboard.png", "item.png", "login.png", "message-replayed.png", "message.png",
        "messages.png", "playground.png", "worklist.png"]
