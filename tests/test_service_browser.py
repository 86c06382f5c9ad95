"""The service's page in a real browser: headless Chromium (the system's package, driven by
Selenium with the system's chromedriver; nothing is downloaded) opens the page served by
uvicorn, uploads a photo and finds the drawn labels, then runs the webcam mode on
Chromium's fake camera (a .y4m made from ../shared/videos/single_face.mp4) and sees live
labels and a chart appear.

Skipped where Chromium, chromedriver or Selenium is missing, unless FERVGG_REQUIRE_BROWSER=1
(.ci/run sets it after installing Chromium): then a missing piece fails. With
FERVGG_SCREENSHOTS=DIR the screenshots are kept there (they are always written to the
test's temporary folder)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from fervgg import config

SHARED = ROOT.parent / "shared"
OBAMA = SHARED / "photos" / "obama.jpg"
CLIP = SHARED / "videos" / "single_face.mp4"
REQUIRED = os.environ.get("FERVGG_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
LABEL = re.compile(rf"^(face \d+: )?({'|'.join(config.CLASS_NAMES)}) \d+%")
WAIT_S = 90  # a loaded 2-core machine answers a frame in well under a second; this is the worst case


def missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if not CHROMIUM or not CHROMEDRIVER:
        return "no Chromium and chromedriver (apt-get install chromium chromium-driver)"
    return None


if missing():
    if REQUIRED:
        pytest.fail(f"FERVGG_REQUIRE_BROWSER=1 but {missing()}", pytrace=False)
    pytest.skip(missing(), allow_module_level=True)
if not OBAMA.is_file() or not CLIP.is_file():
    pytest.skip("../shared/photos and ../shared/videos are not available", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server():
    """The service (shipped model) on a free loopback port, in this process."""
    import uvicorn

    from fervgg.service import ServiceSettings, create_app, listen, url_of

    settings = ServiceSettings(host="127.0.0.1", port=0)
    sock = listen(settings)
    app = create_app(settings)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started
    yield url_of(sock)
    uv.should_exit = True
    thread.join(10)


def fake_camera(path: Path, frames: int = 90, every: int = 2) -> Path:
    """A .y4m (what Chromium's fake camera plays, looped) from single_face.mp4."""
    import cv2

    capture = cv2.VideoCapture(str(CLIP))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25
    written = 0
    with open(path, "wb") as out:
        index = 0
        while written < frames:
            ok, frame = capture.read()
            if not ok:
                break
            index += 1
            if index % every:
                continue
            h, w = frame.shape[:2]
            frame = frame[: h - h % 2, : w - w % 2]
            if not written:
                out.write(f"YUV4MPEG2 W{frame.shape[1]} H{frame.shape[0]} F{round(fps / every)}:1 Ip A1:1 C420jpeg\n"
                          .encode())
            out.write(b"FRAME\n" + np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)).tobytes())
            written += 1
    capture.release()
    assert written > 10, "could not read single_face.mp4"
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,1400", f"--user-data-dir={folder / 'profile'}",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-video-capture={fake_camera(folder / 'face.y4m')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    keep = os.environ.get("FERVGG_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def labels(driver, where: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, f"{where} .face-label")]


def live(driver, read):
    """read(driver), retried while the page redraws the elements it reads (webcam mode
    replaces the labels and the chart several times a second)."""
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)).until(read)


def test_page_uploads_a_photo_and_draws_its_labels(server, browser, tmp_path):
    browser.get(server + "/")
    WebDriverWait(browser, WAIT_S).until(lambda d: "model fer2013_vgg16" in d.find_element(By.ID, "model-line").text)
    browser.find_element(By.ID, "file-input").send_keys(str(OBAMA))
    WebDriverWait(browser, WAIT_S).until(lambda d: labels(d, "#results"))
    found = labels(browser, "#results")
    assert len(found) == 1 and LABEL.match(found[0]), found
    rows = browser.find_elements(By.CSS_SELECTOR, "#results table.probs tbody tr")
    assert len(rows) == 1 and rows[0].text.startswith("face 1")
    status = browser.find_element(By.CSS_SELECTOR, "#results .status").text
    assert status.startswith("1 face")
    box = browser.find_element(By.CSS_SELECTOR, "#results .face-box")
    image = browser.find_element(By.CSS_SELECTOR, "#results img")
    assert 0 < box.size["width"] < image.size["width"] and 0 < box.size["height"] < image.size["height"]
    assert screenshot(browser, tmp_path, "service_photo").stat().st_size > 10_000


def test_page_webcam_draws_live_labels_and_a_chart(server, browser, tmp_path):
    browser.get(server + "/")
    WebDriverWait(browser, WAIT_S).until(lambda d: "model fer2013_vgg16" in d.find_element(By.ID, "model-line").text)
    browser.find_element(By.ID, "cam-start").click()
    first = live(browser, lambda d: labels(d, "#cam-boxes"))
    assert LABEL.match(first[0]) and first[0].startswith("face 1: "), first
    # live: more frames come back and the chart of the face fills
    live(browser, lambda d: "frames/s" in d.find_element(By.ID, "cam-status").text)
    chart = live(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#charts .chart h4").text)
    assert re.match(r"face 1: \w+ \d+% \(last \d+ s\)", chart), chart
    time.sleep(3)  # a few seconds of chart for the screenshot
    assert live(browser, lambda d: labels(d, "#cam-boxes"))
    shot = screenshot(browser, tmp_path, "service_webcam")
    browser.find_element(By.ID, "cam-stop").click()
    assert browser.find_element(By.ID, "cam-status").text == "stopped"
    assert shot.stat().st_size > 10_000
