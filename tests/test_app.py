"""`tbd app` in a real headless browser (Debian's chromium + chromedriver through Selenium, offline): the
server is the real CLI on a free loopback port, started and stopped here. Generate: upload a portrait and
speech, think, edit an AU, draw with 2 steps, play the video; errors a user can cause appear in the page
and the next request still works. Annotations: a rejected clip's reason is found.

`TBD_APP_SCREENSHOTS=DIR` keeps the screenshots (the README's come from this test); `TBD_APP_MODEL=DIR`
draws with that exported model instead of the untrained stand-in (the README's: the demo's)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from annotation.engines.local_server import free_port
from tests.conftest import offline_env, tbd_ok

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"
)
PAGE_WAIT = 120  # s: a draw on 2 CPU cores, the first one loading the face tracker


@contextlib.contextmanager
def app_server(*args: str, log: Path, netguard_log: Path):
    port = free_port()
    env = {**offline_env(netguard_log), "TBD_LOG_DIR": str(log.parent / "native")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tbd", "app", "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=2).close()
                break
            assert time.monotonic() < deadline, "the app did not start: " + log.read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,2300",
                "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    """Keep a screenshot (half size, 256 colours: a few hundred kB for the docs) if asked to."""
    import io

    from PIL import Image

    folder = os.environ.get("TBD_APP_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        image = image.resize((image.width // 2, image.height // 2), Image.LANCZOS).quantize(256)
        image.save(Path(folder) / name, optimize=True)


def wait_for(driver, condition, timeout: float = PAGE_WAIT, what: str = ""):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition, message=what)
    except TimeoutException:
        driver.save_screenshot(os.environ.get("TBD_APP_FAILED_SHOT", "/tmp/tbd-app-failed.png"))
        raise


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


CLEAR = (
    "button[aria-label='Clear'], button[aria-label='Remove Image']"  # Gradio's audio / image clear buttons
)


def upload(driver, elem_id: str, path: Path) -> None:
    """Clear the component if it holds a file, then give the file to its upload input."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} :is({CLEAR})"):
        button.click()
    wait_for(
        driver, lambda d: not d.find_elements(By.CSS_SELECTOR, f"#{elem_id} :is({CLEAR})"), 20, "not cleared"
    )
    field = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} input[type=file]"), 20)[
        0
    ]
    field.send_keys(str(path))
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} :is({CLEAR})"), 30,
             f"{elem_id} did not take {path}")  # fmt: skip


def think(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "think").click()


def cell(driver, row: int, col: int):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'#au-table [data-testid="cell-{row}-{col}"]')


def cell_text(driver, row: int, col: int) -> str:
    return cell(driver, row, col).text.split("\n")[0].strip()  # a selected cell also shows its menu button


def pick(driver, elem_id: str, option: str) -> None:
    """Choose `option` (its shown text) in the dropdown `elem_id`: type part of it, click the listed option."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(option.split(" (")[0])
    item = wait_for(driver, lambda d: [li for li in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                                       if li.text.strip() == option], 20, f"no option {option!r}")[0]  # fmt: skip
    item.click()
    wait_for(driver, lambda d: field.get_attribute("value") == option, 10, f"{option!r} not chosen")


def set_number(driver, elem_id: str, value: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)


def error_shown(driver, words: str) -> bool:
    return words.lower() in page_text(driver).lower()


def close_toasts(driver) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button.toast-close, [data-testid='toast-close']"):
        with contextlib.suppress(Exception):
            button.click()


@pytest.fixture(scope="module")
def inputs(demo_corpus, tmp_path_factory):
    """The demo's held-out portrait and a validation speaker's line, a faceless image, a silent wav."""
    from PIL import Image

    from media.video_io import AUDIO_RATE, read_audio

    tmp = tmp_path_factory.mktemp("app_inputs")
    speech = tmp / "speech.wav"
    write_wav(speech, read_audio(demo_corpus / "mead" / "W003" / "audio" / "angry" / "level_3" / "000.m4a"))
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(tmp / "no_face.png")
    write_wav(tmp / "silent.wav", np.zeros(AUDIO_RATE * 2, np.float32))
    portrait = demo_corpus / "portraits" / "heldout" / "Astronaut.png"
    return {"portrait": portrait, "speech": speech, "seconds": len(read_audio(speech)) / AUDIO_RATE,
            "no_face": tmp / "no_face.png", "silent": tmp / "silent.wav"}  # fmt: skip


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def test_generate_tab_thinks_edits_draws_and_survives_user_errors(tiny_model, inputs, browser, tmp_path,
                                                                  netguard_log):  # fmt: skip
    from selenium.webdriver.common.by import By

    model = os.environ.get("TBD_APP_MODEL") or str(tiny_model)
    with app_server("--model", model, log=tmp_path / "app.log", netguard_log=netguard_log) as url:
        browser.get(url)
        wait_for(browser, lambda d: d.find_elements(By.ID, "think"), 60, "page did not load")
        # A portrait without a face: a message in the page, not a traceback.
        upload(browser, "portrait", inputs["no_face"])
        think(browser)
        wait_for(browser, lambda d: error_shown(d, "no face found"), 60, "no 'no face found' message")
        assert "Traceback" not in page_text(browser)
        close_toasts(browser)
        # The next request works: the real portrait, then the CoT's AU table.
        upload(browser, "portrait", inputs["portrait"])
        upload(browser, "speech", inputs["speech"])
        think(browser)
        wait_for(browser, lambda d: cell_text(d, 0, 0).startswith("AU"), 60, "no AU table")
        rows = browser.find_elements(By.CSS_SELECTOR, '#au-table [role="row"][data-index]')
        aus = [cell_text(browser, i, 0) for i in range(len(rows))]
        assert aus and all(a.startswith("AU") for a in aus)
        assert browser.find_element(By.CSS_SELECTOR, "#regions img").get_attribute("src")
        # Edit the first AU's intensity.
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        before = cell_text(browser, 0, 2)
        edited = "E" if before != "E" else "A"

        def editing(d):  # a double-click opens the cell's editor (retried: the first may only select it)
            if d.switch_to.active_element.tag_name not in ("textarea", "input"):
                ActionChains(d).double_click(cell(d, 0, 2)).perform()
            return d.switch_to.active_element.tag_name in ("textarea", "input")

        wait_for(browser, editing, 10, "the intensity cell did not open for editing")
        editor = browser.switch_to.active_element
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys(edited, Keys.ENTER)
        wait_for(browser, lambda d: cell_text(d, 0, 2) == edited, 10, "the edit did not take")
        # Draw with 2 steps; the video plays and lasts as long as the speech.
        set_number(browser, "steps", 2)
        set_number(browser, "motion-frames", 0)  # the untrained 4-frame model: all windows in one batch
        browser.find_element(By.ID, "draw").click()
        video = wait_for(browser, lambda d: [v for v in d.find_elements(By.CSS_SELECTOR, "#video video")
                                             if v.get_attribute("src")], what="no video")[0]  # fmt: skip
        duration = wait_for(browser, lambda d: d.execute_script(
            "const v = arguments[0]; return v.readyState >= 1 && v.duration > 0 ? v.duration : null;", video),
            30, "the video's metadata did not load")  # fmt: skip
        assert abs(duration - inputs["seconds"]) <= 0.1, (duration, inputs["seconds"])
        played = browser.execute_async_script(
            "const v = arguments[0], done = arguments[1]; v.muted = true; v.currentTime = 0;"
            "v.play().then(() => setTimeout(() => done(v.currentTime), 800)).catch(e => done(String(e)));",
            video,
        )
        assert isinstance(played, float | int) and played > 0, played
        summary = browser.find_element(By.ID, "draw-summary").text
        assert f"AU{aus[0][2:]} {edited}" in summary, summary  # the edited intensity is what was drawn
        assert cell_text(browser, 0, 2) == edited
        shot(browser, "app-generate.png")
        # Silent speech: a message; the portrait and CoT stay, and drawing again afterwards works.
        close_toasts(browser)
        upload(browser, "speech", inputs["silent"])
        browser.find_element(By.ID, "draw").click()
        wait_for(browser, lambda d: error_shown(d, "silent audio"), 60, "no 'silent audio' message")
        close_toasts(browser)
        upload(browser, "speech", inputs["speech"])
        old = video.get_attribute("src")
        set_number(browser, "seed", 1)  # another seed, another video (the same one would be the same file)
        browser.find_element(By.ID, "draw").click()
        wait_for(browser, lambda d: [v for v in d.find_elements(By.CSS_SELECTOR, "#video video")
                                     if v.get_attribute("src") not in (None, "", old)], what="no second video")  # fmt: skip
        # A compound expression no label names, picked from the menu: the AU table holds its own AU set.
        from annotation.facs import load_kb

        pick(browser, "emotion", "sadly angry (compound)")
        think(browser)
        want = sorted(f"AU{a}" for a in load_kb().compound_expressions["sadly_angry"])

        def table_aus(d):
            rows = d.find_elements(By.CSS_SELECTOR, '#au-table [role="row"][data-index]')
            return sorted(cell_text(d, i, 0) for i in range(len(rows)))

        wait_for(browser, lambda d: table_aus(d) == want, 60, f"the AU table is not {want}")


@pytest.fixture(scope="module")
def rejected_version(datasets, tiny_llm, tmp_path_factory, netguard_log):
    """A copy of the HDTF data folder with a second version whose answers are cut at 48 tokens: the real
    vLLM engine on the tiny model, every clip rejected for a truncated output."""
    data = tmp_path_factory.mktemp("app_data") / "hdtf"
    shutil.copytree(datasets["hdtf"]["data"], data)
    result = tbd_ok("annotate", "--data", str(data), "--think.engine", "vllm", "--think.model", str(tiny_llm),
                    "--think.max_model_len", "12288", "--think.max_tokens", "48", log=netguard_log,
                    env_extra={"VLLM_CPU_KVCACHE_SPACE": "1"})  # fmt: skip
    assert result["n_rejected"] > 0
    return data, result["version"]


def test_annotations_tab_finds_a_rejected_clips_reason(rejected_version, browser, tmp_path, netguard_log):
    from selenium.webdriver.common.by import By

    data, version = rejected_version
    with app_server("--data", f"[{data}]", log=tmp_path / "app.log", netguard_log=netguard_log) as url:
        browser.get(url)
        tab = "//button[@role='tab' and contains(., 'Annotations')]"
        wait_for(browser, lambda d: d.find_elements(By.XPATH, tab), 60, "page did not load")[0].click()
        report = wait_for(browser, lambda d: d.find_element(By.ID, "ann-report").text or None, 30)
        assert version in report
        # Pick the rejected version as A, filter on rejected clips.
        choose(browser, "ann-a", version)
        choose(browser, "ann-outcome", "rejected")
        wait_for(browser, lambda d: "truncated" in d.find_element(By.ID, "ann-clips").text.lower(), 30,
                 "no rejected clip with its reason in the clip table")  # fmt: skip
        # The first clip opens: its face crop and its CoT panel with the reason.
        wait_for(browser, lambda d: "rejected" in d.find_element(By.ID, "ann-cot-a").text, 30, "no CoT panel")
        assert "truncated" in browser.find_element(By.ID, "ann-cot-a").text.lower()
        wait_for(browser, lambda d: [v for v in d.find_elements(By.CSS_SELECTOR, "#ann-video video")
                                     if v.get_attribute("src")], 30, "no face-crop video")  # fmt: skip
        shot(browser, "app-annotations.png")


def choose(driver, elem_id: str, value: str) -> None:
    """Pick `value` in a Gradio dropdown (type it into its input, then click the option)."""
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.click()
    option = f'li[data-testid="dropdown-option"][aria-label="{value}"]'
    wait_for(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, option), 10, f"no option {value} in {elem_id}"
    )[0].click()
