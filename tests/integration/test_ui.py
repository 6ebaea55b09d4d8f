"""The status page, /ui, in a real browser (Debian's chromium, driven by selenium), over a
real worker and `livelearn serve`."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from livelearn.devtools import apt
from tests.fake_prometheus import alerts_answer, fake_prometheus
from tests.integration.conftest import encode, phishing_events, produce, wait_for

# The browser fixture may first wait for another apt-get (up to apt.LOCK_TIMEOUT_S) and
# install chromium (a few minutes on a slow mirror): room for both past the usual timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300 + apt.LOCK_TIMEOUT_S + 300)]


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium driven by selenium; installed first when missing and root (as the
    Docker engine fixture installs docker.io), else the test is skipped saying how."""
    try:
        found = apt.ensure({"chromium": "chromium", "chromedriver": "chromium-driver"})
    except apt.AptError as error:
        pytest.skip(f"no browser for the status page's test: {error}")
    chromedriver = found["chromedriver"]
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
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    # Prometheus' answer: nothing firing at first.
    answers = [alerts_answer()]
    with fake_prometheus(answers) as alerts_url:
        dep = deploy(make_topic(partitions=1), settings={"serving": {"alerts_url": alerts_url}})
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
            # The page redraws a card as each checkpoint comes: one found before a redraw
            # is stale after it, and is looked for again on the next try.
            try:
                found = browser.find_elements(By.CSS_SELECTOR, f"{card} .learned")
                return found[0].text if found else ""
            except StaleElementReferenceException:
                return ""

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
        assert history["alerts"] == {"source": "prometheus", "error": None, "other": []}

        # Prometheus reports an alert on the model and one on a worker's Kafka: the card shows
        # the first, the page's banner the second.
        answers.append(
            alerts_answer(
                {
                    "labels": {"alertname": "LivelearnDriftDetected", "model": dep.model},
                    "state": "firing",
                },
                {
                    "labels": {"alertname": "LivelearnKafkaUnavailable", "instance": "w1:9400"},
                    "state": "firing",
                },
            )
        )

        def shown(selector: str) -> str:
            found = browser.find_elements(By.CSS_SELECTOR, selector)
            return " ".join(e.text for e in found)

        wait_for(
            lambda: "LivelearnDriftDetected" in shown(f"{card} .alerts .alert"),
            40,
            "the page to show the model's alert from Prometheus",
            every=0.5,
        )
        assert shown("#pipeline .alert") == "LivelearnKafkaUnavailable (w1:9400)"
        assert "alerts: from Prometheus" in shown("#updated")
    # Prometheus gone: derived alerts, and the error shown.
    wait_for(lambda: "did not answer" in shown("#updated"), 40, "the page to say so", every=0.5)
    assert "derived" in shown("#updated") and shown("#pipeline .alert") == ""
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert worker.terminate() == 0


def test_the_history_is_kept_in_redis_and_the_same_after_the_api_restarts(
    make_topic, deploy, browser
) -> None:
    """Learn, with a feature vanishing part way; read the page's history (its points, the
    alarms marked and listed); restart the API; the reloaded page shows the same."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    monitor = {
        "window": 100,
        "sample_every": 1,
        "warmup_windows": 4,
        "expected_events_between_false_alarms": 1e5,
    }
    dep = deploy(make_topic(partitions=1), monitor=monitor)
    events = phishing_events(n=1200)
    for event in events[800:]:
        del event["features"]["popup_window"]  # vanishes upstream
    produce(dep.bootstrap, dep.topic, encode(events))
    worker = dep.start_worker()
    wait_for(lambda: dep.next_offset() == 1200, 90, "1200 events learned", context=worker.tail)
    assert worker.terminate() == 0
    card = f'section[data-model="{dep.model}"]'

    def page(server: Any) -> tuple[list[dict[str, Any]], list[str], str]:
        """Open /ui on ``server``; its history, the alarms it lists, and the hover text."""
        browser.get(f"http://127.0.0.1:{server.port}/ui")
        browser.find_element(By.ID, "token").send_keys(server.token)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()

        def alarms() -> list[str]:
            try:
                return [e.text for e in browser.find_elements(By.CSS_SELECTOR, f"{card} li")]
            except StaleElementReferenceException:
                return []

        listed = wait_for(alarms, 30, "the page to list the alarms", every=0.2)
        status = browser.execute_script(
            "return fetch('/v1/ui/status', {headers: {Authorization: 'Bearer ' + "
            "sessionStorage.getItem('livelearn-token')}}).then(r => r.json())"
        )
        (model,) = [m for m in status["models"] if m["model"] == dep.model]
        canvas = browser.find_element(By.CSS_SELECTOR, f"{card} canvas.quality")
        ActionChains(browser).move_to_element(canvas).perform()
        return model["history"], listed, canvas.get_attribute("title") or ""

    server = dep.start_server()
    wait_for(lambda: _answers(f"http://127.0.0.1:{server.port}/healthz"), 30, "the API up")
    history, listed, hover = page(server)
    # One point per checkpoint: every 100 events, and the worker's on shutdown.
    assert [p["next_offset"] for p in history] == [*range(100, 1201, 100), 1200]
    assert [p["events_learned"] for p in history][-1] == 1200
    times = [p["t"] for p in history]
    assert times == sorted(times)  # the time axis: when each checkpoint was written
    # Each checkpoint's event time: its last event's (the shutdown's took no event).
    last_ms = [1_700_000_000_000 + o - 1 for o in range(100, 1201, 100)]
    assert [p["event_ms"] for p in history] == [*last_ms, last_ms[-1]]
    alarms = [a for p in history for a in p["alarms"]]
    vanished = [a for a in alarms if a["signal"] == "feature_set"]
    assert vanished and vanished[0]["feature"] == "popup_window", alarms
    assert vanished[0]["last_offset"] >= 800 and vanished[0]["value"] > vanished[0]["threshold"]
    assert all(p["signals"]["feature_set"]["threshold"] > 0 for p in history[5:])
    assert any("feature_set on popup_window" in line for line in listed), listed
    assert "event time" in hover and "checkpoint written" in hover

    browser.get("about:blank")  # the page stops polling the API that stops
    assert server.terminate() == 0
    restarted = dep.start_server()
    wait_for(lambda: _answers(f"http://127.0.0.1:{restarted.port}/healthz"), 30, "the API up")
    again, listed_again, _ = page(restarted)
    assert again == history
    assert listed_again == listed
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
