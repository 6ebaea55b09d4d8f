"""The status page, /ui, in a real browser (Debian's chromium, driven by selenium), over a
real worker and `livelearn serve`."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import encode, phishing_events, produce, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def browser() -> Iterator[Any]:
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None or shutil.which("chromium") is None:
        pytest.skip("no chromium/chromedriver (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_status_page_shows_every_model_and_follows_its_checkpoints(
    make_topic, deploy, browser
) -> None:
    from selenium.webdriver.common.by import By

    dep = deploy(make_topic(partitions=1))
    events = phishing_events(n=400)
    produce(dep.bootstrap, dep.topic, encode(events[:200]))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 200, 60, "200 events learned", context=worker.tail)
    server = dep.start_server()
    base = f"http://127.0.0.1:{server.port}"
    wait_for(lambda: _answers(base + "/healthz"), 30, "the API up")

    # The page itself holds no data and needs no token; its data does.
    with urllib.request.urlopen(base + "/ui", timeout=5) as resp:
        page = resp.read().decode()
    assert "/v1/ui/status" in page and dep.model not in page
    assert "https://" not in page and "http://" not in page  # nothing fetched from outside
    unauthorized = urllib.request.Request(base + "/v1/ui/status")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unauthorized, timeout=5)
    assert refused.value.code == 401

    browser.get(base + "/ui")
    browser.find_element(By.ID, "token").send_keys(server.token)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    card = f'section[data-model="{dep.model}"]'

    def learned() -> str:
        found = browser.find_elements(By.CSS_SELECTOR, f"{card} .learned")
        return found[0].text if found else ""

    wait_for(lambda: "200" in learned(), 30, "the page to show the model", every=0.2)
    assert browser.find_element(By.CSS_SELECTOR, f"{card} canvas.quality").size["width"] > 100
    assert "no alert firing" in browser.find_element(By.CSS_SELECTOR, f"{card} .alerts").text

    produce(dep.bootstrap, dep.topic, encode(events[200:]))
    wait_for(lambda: dep.next_offset() == 400, 60, "400 events learned", context=worker.tail)
    wait_for(lambda: "400" in learned(), 30, "the page to follow the checkpoint", every=0.2)
    history = browser.execute_script(
        "return fetch('/v1/ui/status', {headers: {Authorization: 'Bearer ' + "
        "sessionStorage.getItem('livelearn-token')}}).then(r => r.json())"
    )
    (model,) = [m for m in history["models"] if m["model"] == dep.model]
    assert [p["events_learned"] for p in model["history"]][-1] == 400
    assert len(model["history"]) >= 2
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert worker.terminate() == 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
