"""The web demo in a real browser: Debian's chromium driven headless by Playwright.

Starts ``diffuseg demo --model toy`` on a free localhost port, then does what a user does:
upload an example, run DiffSeg, change a threshold (re-segmented without a model pass), run an
open-vocabulary method with class names, click a pixel, and try bad input (an empty class box,
a text file, an image over the pixel limit). `./run test` installs chromium where apt can; in
CI (``DIFFUSEG_REQUIRE_BROWSER=1``) a missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "scene.png"  # a synthetic scene: heart, circle, grass, sky
MAX_PIXELS = 300_000
#: What the probe of this machine kind starts Chromium with: no background connections (the
#: network is closed), no sandbox (root), no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = os.environ.get("DIFFUSEG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "Debian's chromium is not installed (`./run test` installs it as root: apt-get install chromium)"
    if os.environ.get("DIFFUSEG_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo on the toy model, on a free port; yields its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("demo") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "diffuseg", "demo", "--model", "toy", "--port", str(port)]
    cmd += ["--max-pixels", str(MAX_PIXELS)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the demo did not listen on port {port} within 120 s:\n{log.read_text()}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(server)
            yield page
        finally:
            browser.close()


def _text_box(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


_ANSWER = "#status [data-request]"


def _answer(page) -> str | None:
    found = page.locator(_ANSWER)
    return found.first.get_attribute("data-request") if found.count() else None


def _await_answer(page, before: str | None) -> str:
    """Wait for a status answer newer than `before`; returns its text."""
    page.wait_for_function(
        "([sel, before]) => { const e = document.querySelector(sel); "
        "return e !== null && e.getAttribute('data-request') !== before; }",
        arg=[_ANSWER, before],
    )
    return page.locator(_ANSWER).first.inner_text()


def _segment(page) -> str:
    """Click Segment and wait for this request's answer; returns the status text."""
    before = _answer(page)
    page.locator("#segment").click()
    return _await_answer(page, before)


def _upload(page, path: Path) -> None:
    """Put `path` into the upload box (clearing a file already there first)."""
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def _model_calls(page) -> int:
    return int(re.search(r"Model passes so far: (\d+)", page.locator("#status").inner_text()).group(1))


def test_demo_in_a_browser(page, tmp_path):
    expect = playwright.expect
    # upload an example and run DiffSeg
    _upload(page, EXAMPLE)
    expect(page.locator("#input-preview img")).to_be_visible()
    status = _segment(page)
    assert "model pass" in status and "no model pass" not in status, status
    expect(page.locator("#overlay img")).to_be_visible()
    assert page.locator("#legend .legend-item").count() >= 2
    calls = _model_calls(page)
    # the downloads: the label PNG and the JSON (one COCO RLE per segment)
    expect(page.locator("#downloads a[href$='scene.labels.png']")).to_have_count(1)
    href = page.locator("#downloads a[href$='scene.json']").get_attribute("href")
    record = page.request.get(href).json()
    assert record["method"] == "diffseg" and len(record["segments"]) == page.locator("#legend .legend-item").count()
    assert all(set(s["segmentation"]) == {"size", "counts"} for s in record["segments"])

    # a post-processing change re-segments from the cached features
    _text_box(page, "diffseg-kl_thresholds").fill("0.2,0.2,0.2")
    status = _segment(page)
    assert "no model pass" in status, status
    assert _model_calls(page) == calls
    expect(page.locator("#overlay img")).to_be_visible()

    # click a pixel of the overlay: DiffSeg's attention map for it
    before = _answer(page)
    box = page.locator("#overlay img").bounding_box()  # the 128 px scene, shown enlarged
    page.locator("#overlay img").click(position={"x": box["width"] * 0.75, "y": box["height"] * 0.25})
    answer = _await_answer(page, before)
    y, x = (int(v) for v in re.search(r"view of pixel y=(\d+), x=(\d+)", answer).groups())
    assert abs(y - 32) <= 2 and abs(x - 96) <= 2, answer
    expect(page.locator("#inspect img")).to_be_visible()
    page.screenshot(path=str(tmp_path / "diffseg.png"), full_page=True)

    # an open-vocabulary method: an empty class box is refused, class names appear in the legend
    _choose(page, "method", "diffsegmenter")
    _text_box(page, "classes").fill("")
    assert "Classes box" in _segment(page)
    _text_box(page, "classes").fill("heart, circle, grass, sky")
    _segment(page)
    legend = page.locator("#legend .legend-name").all_inner_texts()
    assert {"circle", "grass", "sky"} <= set(legend), legend
    # the README's picture: DIFFUSEG_DEMO_SCREENSHOT=docs/img/demo.png ./run test tests/test_demo_browser.py
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(1000)  # the outputs' fade-in after an answer
    page.screenshot(path=str(os.environ.get("DIFFUSEG_DEMO_SCREENSHOT") or tmp_path / "diffsegmenter.png"))

    # other methods beside it, from shared passes: their overlays in the gallery, their files downloadable
    for other_method in ("slic", "diffseg"):
        box = page.locator("#also input").first
        box.click()
        box.fill(other_method)  # filter the list: the method itself comes first
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
    status = _segment(page)
    assert "with slic, diffseg" in status, status
    expect(page.locator("#others img")).to_have_count(2)
    for shown in ("diffsegmenter", "slic", "diffseg"):  # each method's files, named by it
        expect(page.locator(f"#downloads a[href$='scene.{shown}.json']")).to_have_count(1)
    page.screenshot(path=str(tmp_path / "also.png"), full_page=True)

    # a second user's request while the first one runs: both are answered, one after the other
    other = page.context.browser.new_page()
    other.goto(page.url)
    _upload(other, EXAMPLE)
    expect(other.locator("#input-preview img")).to_be_visible()
    _text_box(other, "diffseg-timestep").fill("250")  # a new pass for this one
    before, other_before = _answer(page), _answer(other)
    other.locator("#segment").click()
    page.locator("#segment").click()
    assert "model pass" in _await_answer(other, other_before)
    assert "segments" in _await_answer(page, before)
    other.close()

    # bad uploads: a text file, an image over the pixel limit
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    _upload(page, text)
    expect(page.locator("#status #demo-error-text")).to_contain_text("not an image")
    from PIL import Image

    huge = tmp_path / "huge.png"
    Image.new("RGB", (800, 600), (90, 140, 60)).save(huge)
    _upload(page, huge)
    expect(page.locator("#status #demo-error-text")).to_contain_text(f"at most {MAX_PIXELS:,} pixels")
