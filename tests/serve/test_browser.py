"""The live page in a real headless browser (Debian's chromium through Selenium): it shows the newest frame and the
newest answer of a synthetic stream running inside the server, and its upload form answers a question about a
picture exactly as `edge-vlm ask` does. Skipped, with the reason, where chromium or its driver is not installed."""

from __future__ import annotations

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.serve.helpers import Server, run_ask

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no headless browser: Debian's chromium and "
                                "chromium-driver are not installed (apt-get install -y chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    # chromium leaves its singleton folder (org.chromium.Chromium.*) in TMPDIR after quitting: keep it in pytest's
    # own temp folder rather than in the machine's /tmp
    scratch = tmp_path_factory.mktemp("chromium")
    service = Service(DRIVER, env={**os.environ, "TMPDIR": str(scratch)})
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


def _script(driver, code: str):
    return driver.execute_script(code)


def test_the_page_shows_the_stream_and_answers_an_upload(int4_bundle, pictures, browser, tmp_path):
    question = "What color is the square?"
    server = Server("--bundle", int4_bundle, "--source", "synthetic:10", "--prompt", question, "--max-hz", "4",
                    log=tmp_path / "stderr.txt")
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        # a frame of the synthetic scene, decoded by the browser
        wait.until(lambda d: _script(d, "const f = document.getElementById('frame'); "
                                        "return f.src.startsWith('data:image/jpeg') && f.complete && f.naturalWidth > 0"))
        assert _script(browser, "return document.getElementById('frame').naturalWidth") == 320
        # the stream's answers, with their figures and the latency sparkline
        wait.until(lambda d: d.find_element(By.ID, "answer").text.strip() != "")
        wait.until(lambda d: len(_script(d, "return document.getElementById('spark-line')"
                                            ".getAttribute('points')").split()) >= 2)
        assert browser.find_element(By.ID, "age").text.endswith("ms")
        assert browser.find_element(By.ID, "drops").text.endswith("%")
        assert question in browser.find_element(By.ID, "prompt").text
        assert "synthetic" in browser.find_element(By.ID, "status").text
        # the upload form
        browser.find_element(By.ID, "file").send_keys(str(pictures["scene1.png"]))
        box = browser.find_element(By.ID, "question")
        box.clear()
        box.send_keys(question)
        browser.find_element(By.ID, "ask-button").click()
        wait.until(lambda d: d.find_element(By.ID, "reply").get_attribute("data-done") == "1"
                   or "error" in d.find_element(By.ID, "reply").get_attribute("class"))
        expected = run_ask("--bundle", int4_bundle, "--image", pictures["scene1.png"], question).strip()
        assert browser.find_element(By.ID, "reply").text == expected
        assert "done in" in browser.find_element(By.ID, "reply-meta").text
    finally:
        assert server.stop() == 0, server.stderr()
    assert "Traceback" not in server.stderr()
