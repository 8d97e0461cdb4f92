"""The web page in a real browser: Playwright (Python) drives Debian's Chromium against
``catsdogs serve`` started as a subprocess on the ``tiny_run`` fixture.

Needs ``pip install playwright`` and a Chromium at ``/usr/bin/chromium`` (``apt-get install
chromium``; ``playwright install`` is not used). Set ``CATSDOGS_CHROMIUM`` to use another
executable. Without them the tests are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import photo, require_shared, save_photo
from PIL import Image

from catsdogs.api import train

CHROMIUM = os.environ.get("CATSDOGS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update"]
TIMEOUT_MS = 60_000


def _browser_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


if _browser_problem() and os.environ.get("CI", "").lower() != "true":
    # skip at collection, before the session's tiny_run is trained for nothing
    pytest.skip(_browser_problem(), allow_module_level=True)


def _missing(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sync_playwright():
    problem = _browser_problem()
    if problem:
        _missing(problem)
    from playwright.sync_api import sync_playwright

    return sync_playwright


@contextlib.contextmanager
def _serving(run, log):
    """``catsdogs serve RUN`` on a free 127.0.0.1 port; yields its base URL."""
    port = _free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "catsdogs.cli", "serve", str(run),
                                 "--host", "127.0.0.1", "--port", str(port),
                                 "--max-upload-mb", "5", "--max-files", "8"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"catsdogs serve exited {proc.returncode}:\n"
                                     f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if json.load(r) == {"status": "ok"}:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """``catsdogs serve tiny_run``; yields its base URL."""
    with _serving(tiny_run, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@contextlib.contextmanager
def _browser_page(sync_playwright, server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1000, "height": 800})
            pg = context.new_page()
            external = []
            pg.on("request", lambda req: None if req.url.startswith(server) or
                  req.url.startswith(("data:", "blob:")) else external.append(req.url))
            pg.set_default_timeout(TIMEOUT_MS)
            pg.goto(server + "/")
            pg.external_requests = external
            yield pg
        finally:
            browser.close()


@pytest.fixture
def page(sync_playwright, server):
    with _browser_page(sync_playwright, server) as pg:
        yield pg


def _card(page, filename: str):
    return page.locator(f'[data-testid="result"][data-filename="{filename}"]')


def test_classify_photo_error_and_heatmap(page, server, tmp_path):
    samples = require_shared("samples")
    photo_path = samples / "cat.4001.jpg"
    page.locator("#file-input").set_input_files(str(photo_path))
    card = _card(page, "cat.4001.jpg")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=result]').dataset.state !== 'pending'")
    assert card.get_attribute("data-state") == "done"
    label = card.locator('[data-testid="label"]').inner_text().strip().lower()
    assert label in ("cat", "dog")
    assert card.get_attribute("data-label") == label
    confidence = card.locator('[data-testid="confidence"]')
    assert confidence.is_visible()
    assert "%" in confidence.inner_text()
    bar = card.locator('[data-testid="confidence-bar"]')
    assert bar.is_visible()
    assert 50.0 <= float(bar.get_attribute("aria-valuenow")) <= 100.0
    fill = card.locator(".confidence-fill").evaluate("e => e.style.width")
    assert fill.endswith("%") and float(fill[:-1]) >= 50.0

    # the page's P(dog) is the API's
    p_dog = float(card.get_attribute("data-p-dog"))
    api = page.request.post(server + "/api/v1/predict", multipart={"files": {
        "name": "cat.4001.jpg", "mimeType": "image/jpeg", "buffer": photo_path.read_bytes()}})
    assert abs(api.json()["results"][0]["p_dog"] - p_dog) <= 1e-9

    # a file that is not an image: an inline error on its own card
    page.locator("#file-input").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just text"}])
    bad = _card(page, "notes.txt")
    error = bad.locator('[data-testid="error"]')
    error.wait_for(state="visible")
    assert "not an image" in error.inner_text()
    assert bad.get_attribute("data-state") == "error"
    assert card.get_attribute("data-state") == "done"  # the good one is untouched

    # the heatmap toggle fetches and shows the Grad-CAM overlay
    heatmap = card.locator('[data-testid="heatmap"]')
    assert heatmap.evaluate("e => getComputedStyle(e).opacity") == "0"
    page.locator("#heatmap-toggle").check()
    page.wait_for_function(
        "() => { const c = document.querySelector('[data-filename=\"cat.4001.jpg\"]');"
        " return c && c.dataset.heatmap === 'yes'; }")
    src = heatmap.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    with Image.open(photo_path) as original:
        assert png.size == original.size
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector("
        "'[data-filename=\"cat.4001.jpg\"] [data-testid=heatmap]')).opacity === '1'")
    status = page.locator("#status").inner_text()
    assert "1 photo classified" in status and "1 could not be read" in status

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    assert page.external_requests == []  # self-contained: nothing fetched elsewhere


def test_drag_and_drop_many(page, tmp_path):
    """Dropping several files (a synthetic DataTransfer) classifies each into its own card;
    a heatmap comes with the result when the toggle is already on."""
    page.locator("#heatmap-toggle").check()
    files = []
    for i, label in enumerate((0, 1, 0)):
        buf = io.BytesIO()
        Image.fromarray(photo(label, (60, 50), seed=40 + i)).save(buf, format="PNG")
        files.append({"name": f"drop{i}.png", "b64": base64.b64encode(buf.getvalue()).decode()})
    page.evaluate("""(files) => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, {type: "image/png"}));
        }
        const zone = document.querySelector("#dropzone");
        zone.dispatchEvent(new DragEvent("dragenter", {dataTransfer: dt, bubbles: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                  cancelable: true}));
    }""", files)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=result]')]"
        ".filter(c => c.dataset.state === 'done' && c.dataset.heatmap === 'yes').length === 3")
    labels = [_card(page, f"drop{i}.png").get_attribute("data-label") for i in range(3)]
    assert labels == ["cat", "dog", "cat"]  # what the tiny model learnt on these photos
    assert not page.locator("#dropzone").evaluate("e => e.classList.contains('dragging')")


def test_phone_width_layout(page):
    page.set_viewport_size({"width": 375, "height": 740})
    page.locator("#file-input").set_input_files(files=[
        {"name": f"p{i}.png", "mimeType": "image/png",
         "buffer": _png_bytes(photo(i % 2, (50, 40), seed=i))} for i in range(3)])
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=result]')]"
        ".filter(c => c.dataset.state === 'done').length === 3")
    # no horizontal scrolling, and cards sit side by side (2 columns)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    boxes = [page.locator('[data-testid="result"]').nth(i).bounding_box() for i in range(2)]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2 and boxes[0]["x"] != boxes[1]["x"]


def _png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def flower_server(tmp_path_factory):
    """A tiny run trained with ``--other`` on real flower photos (two kinds, 30 each, from
    ../shared/data/other/flowers), served; yields ``(url, a flower photo it never saw)``."""
    flowers = require_shared("other/flowers")
    root = tmp_path_factory.mktemp("flowers")
    for label, name in ((0, "cats"), (1, "dogs")):
        for i in range(40):
            save_photo(root / "photos" / name / f"{i}.png", label, seed=i)
    for kind in ("daisy", "roses"):
        for src in sorted((flowers / kind).iterdir())[:30]:
            (root / "other" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / "other" / kind / src.name)
    train(root / "photos", root / "run", "quick", image_size=32, epochs=4, batch_size=16,
          other=root / "other", other_synthetic=60, other_holdout="none", progress=False)
    unseen = sorted((flowers / "daisy").iterdir())[-1]  # not among the 30 trained on
    with _serving(root / "run", root / "serve.log") as url:
        yield url, unseen


def test_a_flower_gets_the_neither_card(sync_playwright, flower_server):
    url, flower = flower_server
    with _browser_page(sync_playwright, url) as pg:
        pg.locator("#file-input").set_input_files(str(flower))
        card = _card(pg, flower.name)
        pg.wait_for_function(
            "() => document.querySelector('[data-testid=result]').dataset.state === 'done'")
        api = pg.request.post(url + "/api/v1/predict", multipart={"files": {
            "name": flower.name, "mimeType": "image/jpeg", "buffer": flower.read_bytes()}})
        result = api.json()["results"][0]
        assert result["label"] == "other" and result["ood_score"] > 0.5
        assert card.get_attribute("data-label") == "other"
        text = card.locator('[data-testid="label"]').inner_text()
        assert text == "Neither a cat nor a dog"
        assert "unlike any cat or dog" in card.locator('[data-testid="confidence"]').inner_text()
        assert card.locator('[data-testid="error"]').is_hidden()  # a result, not an error
