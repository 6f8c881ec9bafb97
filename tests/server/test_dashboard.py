"""The dashboard in a real headless browser (Debian's chromium + chromium-driver, via selenium)
against the real server with an API key (conftest.py's `auth_server`): the page loads, asks for the key, lists the collection,
shows the batcher and WAL panels, and a search by stored id shows the ids the API answers.

Skipped when chromium, chromedriver or selenium is missing, unless PEAKKNN_REQUIRE_BROWSER=1
(CI), where that is a failure. The screenshot goes to tmp_path, and to $PEAKKNN_ARTIFACTS if set.
"""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np
import pytest

from peakknn.client import Client

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 20.0  # seconds for the page to show what is awaited


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install {pkg})"
    return None


@pytest.fixture(scope="module")
def driver():
    missing = _browser_missing()
    if missing:
        if os.environ.get("PEAKKNN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PEAKKNN_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield d
    finally:
        d.quit()


def wait_for(d, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(d, WAIT).until(lambda _: condition())
    except Exception as e:
        raise AssertionError(f"dashboard never showed {what}; status: {d.find_element('id', 'status').text!r}") from e


def save_screenshot(d, tmp_path, name: str) -> None:
    path = tmp_path / name
    assert d.save_screenshot(str(path)) and path.stat().st_size > 0
    artifacts = os.environ.get("PEAKKNN_ARTIFACTS")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        shutil.copy(path, os.path.join(artifacts, name))


def test_dashboard_lists_and_searches(driver, auth_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    n, dim, k, probe = 200, 16, 5, 17
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    url, key, name = auth_server.url, auth_server.api_key, f"docs-{uuid.uuid4().hex[:8]}"
    with Client(url, api_key=key, progress=False) as client:
        h = client.create_collection(name, dim, metric="cos", dtype="fp32", recall_target=1.0)
        h.upsert(x, np.arange(1000, 1000 + n))
        h.search(x[:3], k=k)  # some batcher history
        byid = lambda i: driver.find_element(By.ID, i)

        driver.get(url + "/dashboard")
        assert driver.title == "peakknn dashboard"
        wait_for(driver, lambda: "API key" in byid("status").text, "the 401 without a key")
        byid("api-key").send_keys(key)
        byid("api-key-save").click()

        row = f'#collections-body tr[data-name="{name}"]'
        wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, row), "the collection")
        cells = {c.get_attribute("class"): c.text for c in driver.find_elements(By.CSS_SELECTOR, row + " td")}
        assert (cells["col-count"], cells["col-dim"], cells["col-metric"], cells["col-index"]) == (str(n), str(dim), "cos", "flat")
        assert cells["col-memory"].endswith("B")
        assert byid("status").text == "connected"
        wait_for(driver, lambda: byid("requests").text not in ("", "–"), "the batcher's request count")
        assert driver.find_elements(By.CSS_SELECTOR, "#batch-histogram .bar-row")
        assert byid("latency-p50").text.endswith("ms") and byid("latency-p99").text.endswith("ms")
        assert driver.find_elements(By.CSS_SELECTOR, f'#wal-body tr[data-name="{name}"] td.wal-bytes')

        # neighbours of a stored id: the ids shown are the API's answer for that id's vector
        Select(byid("search-collection")).select_by_value(name)
        byid("search-k").clear()
        byid("search-k").send_keys(str(k))
        byid("search-id").send_keys(str(1000 + probe))
        byid("search-button").click()
        wait_for(driver, lambda: byid("search-results").get_attribute("data-state") in ("done", "error"), "search results")
        assert byid("search-results").get_attribute("data-state") == "done", byid("search-error").text
        shown = [int(c.text) for c in driver.find_elements(By.CSS_SELECTOR, "#search-results-body td.result-id")]
        want = h.search(h.get([1000 + probe]).vectors, k=k).ids[0].tolist()
        assert shown == want and shown[0] == 1000 + probe
        scores = [float(c.text) for c in driver.find_elements(By.CSS_SELECTOR, "#search-results-body td.result-score")]
        assert scores[0] == pytest.approx(1.0, abs=1e-4) and scores == sorted(scores, reverse=True)
        assert "ms" in byid("search-latency").text
        save_screenshot(driver, tmp_path, "dashboard.png")

        # a pasted vector; then an unknown id shows an error, not results
        byid("search-vector").send_keys(str(x[3].tolist()))
        byid("search-mode-vector").click()
        byid("search-button").click()
        wait_for(driver, lambda: byid("search-results").get_attribute("data-state") == "done"
                 and driver.find_elements(By.CSS_SELECTOR, "#search-results-body td.result-id"), "vector results")
        first = driver.find_element(By.CSS_SELECTOR, "#search-results-body td.result-id").text
        assert int(first) == 1003
        byid("search-mode-id").click()
        byid("search-id").clear()
        byid("search-id").send_keys("999999")
        byid("search-button").click()
        wait_for(driver, lambda: byid("search-results").get_attribute("data-state") == "error", "the unknown-id error")
        assert "999999" in byid("search-error").text

        # the key lives in sessionStorage: a reload keeps it
        driver.refresh()
        wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, row), "the collection after a reload")
        assert byid("api-key").get_attribute("value") == key
        errors = [e["message"] for e in driver.get_log("browser")
                  if e["level"] == "SEVERE" and "401" not in e["message"]]
        assert not errors, errors
