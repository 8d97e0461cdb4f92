"""The HTTP API (issue 4): every endpoint, every error status, equality with ``catsdogs
predict``, concurrency, and recovery after bad uploads. Uses FastAPI's TestClient on the
``tiny_run`` fixture (a real run folder trained on synthetic photos)."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import warnings
from pathlib import Path

import anyio
import numpy as np
import pytest
from conftest import photo, photos_of_sizes, run_cli, save_photo
from PIL import Image

from catsdogs.config import InferenceSettings
from catsdogs.data.images import load_image
from catsdogs.errors import CatsDogsError, RunError
from catsdogs.explain import GradCAM, explain_image
from catsdogs.export import TOLERANCE
from catsdogs.predict import Predictor
from catsdogs.serve.app import create_app

with warnings.catch_warnings():  # Starlette prefers httpx2; the project pins httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

MAX_MB = 1
MAX_FILES = 4


def png(label: int, seed: int = 0, size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(label, size, seed)).save(buf, format="PNG")
    return buf.getvalue()


def upload(*items: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


@pytest.fixture(scope="module")
def app(tiny_run):
    return create_app(str(tiny_run), max_upload_mb=MAX_MB, max_files=MAX_FILES)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_run(str(tiny_run))


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_model_metadata(client, tiny_run):
    r = client.get("/api/v1/model")
    assert r.status_code == 200
    m = r.json()
    cfg = json.loads((tiny_run / "config.json").read_text())
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert m["preset"] == cfg["preset"] == "quick"
    assert m["image_size"] == cfg["image_size"] == 32
    assert m["model"] == cfg["model"]
    assert m["classes"] == ["cat", "dog"]
    assert m["threshold"] == cfg["inference"]["threshold"] == 0.5
    assert m["test_time_flips"] is cfg["inference"]["tta"] is False
    assert m["engine"] == "keras"  # the run has no exports
    assert m["labels"] == ["cat", "dog", "other"]
    assert m["ood_threshold"] is None  # the tiny run's rejection is off (conftest)
    assert m["metrics"]["accuracy"] == metrics["accuracy"]
    assert m["metrics"]["confusion_matrix"] == metrics["confusion_matrix"]
    assert "source" not in m["metrics"]  # no server paths leak
    assert m["versions"]["tensorflow"] == cfg["versions"]["tensorflow"]
    assert {"tensorflow", "keras", "catsdogs"} <= set(m["serving_versions"])
    assert m["limits"] == {"max_upload_mb": MAX_MB, "max_upload_bytes": MAX_MB * 2**20,
                           "max_files": MAX_FILES}
    assert m["explain"] is True
    assert str(tiny_run) not in r.text


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<meta name="viewport"' in html
    for needle in ('id="file-input"', 'id="dropzone"', 'id="heatmap-toggle"', 'id="results"',
                   'data-testid="label"', 'data-testid="confidence-bar"',
                   'data-testid="error"'):
        assert needle in html
    # no external scripts, styles, fonts or images: nothing fetched from another origin
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html)
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_predict_one_and_many_in_order(client, predictor):
    cat, dog = png(0, 1), png(1, 2)
    r = client.post("/api/v1/predict", files=upload(("cat.png", cat), ("dog.png", dog)))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["cat.png", "dog.png"]
    expected = predictor.predict_sources([cat, dog], ["cat.png", "dog.png"])
    for got, want in zip(results, expected, strict=True):
        assert set(got) == {"filename", "label", "p_dog", "p_cat", "ood_score"}
        assert got["label"] == want.label
        assert got["p_dog"] == pytest.approx(want.p_dog, abs=1e-6)
        assert got["ood_score"] == pytest.approx(want.ood_score, abs=1e-6)
        assert got["p_cat"] == pytest.approx(1 - got["p_dog"], abs=1e-9)
    assert [x["label"] for x in results] == ["cat", "dog"]  # the tiny model learnt these


def test_bad_file_gets_error_others_still_classified(client):
    files = upload(("a.png", png(0, 3)), ("notes.txt", b"not a photo at all"),
                   ("empty.jpg", b""), ("b.png", png(1, 4)))
    r = client.post("/api/v1/predict", files=files)
    assert r.status_code == 200, r.text
    a, notes, empty, b = r.json()["results"]
    assert a["label"] == "cat" and b["label"] == "dog"
    assert notes == {"filename": "notes.txt", "error": notes["error"]}
    assert "not an image" in notes["error"]
    assert set(empty) == {"filename", "error"} and "empty" in empty["error"]


def test_truncated_image_is_an_error(client):
    data = png(0, 5, size=(200, 200))
    r = client.post("/api/v1/predict", files=upload(("cut.png", data[: len(data) // 2]),
                                                     ("ok.png", png(1, 5))))
    assert r.status_code == 200
    cut, ok = r.json()["results"]
    assert "error" in cut and "label" not in cut
    assert ok["label"] == "dog"


def test_decompression_bomb_rejected_not_decoded(client):
    buf = io.BytesIO()
    Image.new("1", (9600, 9600)).save(buf, format="PNG")  # 92 M pixels, ~10 KB on disk
    assert len(buf.getvalue()) < 200_000
    r = client.post("/api/v1/predict", files=upload(("bomb.png", buf.getvalue()),
                                                     ("ok.png", png(0, 6))))
    assert r.status_code == 200
    bomb, ok = r.json()["results"]
    assert "decompression-bomb" in bomb["error"] and "not decoded" in bomb["error"]
    assert ok["label"] == "cat"


def test_explain_adds_heatmap_png(client):
    r = client.post("/api/v1/predict?explain=true",
                    files=upload(("cat.png", png(0, 7, size=(60, 45))), ("bad.txt", b"nope")))
    assert r.status_code == 200, r.text
    good, bad = r.json()["results"]
    img = Image.open(io.BytesIO(base64.b64decode(good["heatmap_png_base64"])))
    assert img.format == "PNG" and img.mode == "RGB"
    assert img.size == (60, 45)  # the photo's own size (under the 640 px cap)
    assert "heatmap_png_base64" not in bad and "error" in bad
    plain = client.post("/api/v1/predict", files=upload(("cat.png", png(0, 7, (60, 45)))))
    assert "heatmap_png_base64" not in plain.json()["results"][0]
    assert plain.json()["results"][0]["p_dog"] == pytest.approx(good["p_dog"], abs=1e-6)


def test_explain_heatmap_is_capped_for_big_photos(client):
    buf = io.BytesIO()
    Image.fromarray(photo(1, (1300, 700), 8)).save(buf, format="JPEG", quality=70)
    r = client.post("/api/v1/predict?explain=true", files=upload(("big.jpg", buf.getvalue())))
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(base64.b64decode(r.json()["results"][0]["heatmap_png_base64"])))
    assert max(img.size) == 640 and abs(img.size[0] / img.size[1] - 1300 / 700) < 0.01


# --- errors -------------------------------------------------------------------------------


def assert_json_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    for word in words:
        assert word in body["detail"].lower()
    return body


def test_413_upload_over_limit(client):
    big = b"\xff\xd8" + bytes(MAX_MB * 2**20 + 10)
    r = client.post("/api/v1/predict", files=upload(("huge.jpg", big)))
    assert_json_error(r, 413, "too large", "1 mb")


def test_413_checked_while_streaming_without_content_length(app):
    """A chunked body (no Content-Length) is cut off once it passes the limit: the server
    answers 413 having read little more than the limit, not the whole (100 MB) body."""
    chunk = 64 * 1024
    total_chunks = 100 * 2**20 // chunk
    sent = 0
    boundary = b"XyZ"

    async def receive():
        nonlocal sent
        if sent == 0:
            body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; '
                    b'filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n')
        else:
            body = b"\0" * chunk
        sent += 1
        return {"type": "http.request", "body": body, "more_body": sent < total_chunks}

    messages = []

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/v1/predict", "raw_path":
             b"/api/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"),
                         (b"content-type", b"multipart/form-data; boundary=" + boundary),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    anyio.run(app, scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    assert "too large" in json.loads(body)["detail"]
    assert sent * chunk <= MAX_MB * 2**20 + 2 * chunk  # stopped right after the limit


def test_400_too_many_files(client):
    files = upload(*[(f"{i}.png", png(i % 2, i)) for i in range(MAX_FILES + 1)])
    assert_json_error(client.post("/api/v1/predict", files=files), 400, "too many files",
                      str(MAX_FILES))


def test_max_files_exactly_is_fine(client):
    files = upload(*[(f"{i}.png", png(i % 2, i)) for i in range(MAX_FILES)])
    r = client.post("/api/v1/predict", files=files)
    assert r.status_code == 200 and len(r.json()["results"]) == MAX_FILES


def test_422_no_files(client):
    r = client.post("/api/v1/predict", data={"note": "hello"},
                    files=[("other", ("x.png", png(0), "image/png"))])
    assert_json_error(r, 422, "no files", "files")


def test_415_not_multipart(client):
    assert_json_error(client.post("/api/v1/predict", json={"files": []}), 415, "multipart")
    assert_json_error(client.post("/api/v1/predict", content=png(0),
                                  headers={"content-type": "image/png"}), 415, "multipart")


def test_415_no_readable_image(client):
    r = client.post("/api/v1/predict", files=upload(("a.txt", b"hello"), ("b.gif", b"GIF89a")))
    body = assert_json_error(r, 415, "no image", "readable")
    assert [x["filename"] for x in body["results"]] == ["a.txt", "b.gif"]
    assert all("error" in x for x in body["results"])


def test_400_malformed_multipart(client):
    r = client.post("/api/v1/predict", content=b"garbage without boundaries",
                    headers={"content-type": "multipart/form-data"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["detail"]


def test_invalid_query_is_json_422(client):
    r = client.post("/api/v1/predict?explain=maybe", files=upload(("a.png", png(0))))
    assert_json_error(r, 422, "invalid request", "explain")


def test_unknown_route_is_json_404(client):
    assert_json_error(client.get("/api/v1/nope"), 404)


def test_bad_uploads_then_good_request_succeeds(client):
    big = bytes(MAX_MB * 2**20 + 1)
    assert client.post("/api/v1/predict", files=upload(("huge.jpg", big))).status_code == 413
    assert client.post("/api/v1/predict", files=upload(("x.txt", b"x"))).status_code == 415
    assert client.post("/api/v1/predict", content=b"--x\r\n\r\n",
                       headers={"content-type": "multipart/form-data; boundary=x"}
                       ).status_code in (400, 422)
    r = client.post("/api/v1/predict", files=upload(("ok.png", png(1, 9))))
    assert r.status_code == 200
    assert r.json()["results"][0]["label"] == "dog"
    assert client.get("/healthz").status_code == 200


def test_concurrent_requests_are_not_mixed_up(client, predictor):
    n = 16
    payloads = [png(i % 2, 100 + i, size=(40 + i, 36 + 2 * i)) for i in range(n)]
    expected = predictor.predict_sources(payloads, [f"{i}.png" for i in range(n)])
    answers: dict[int, dict] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def worker(i):
        try:
            barrier.wait(timeout=30)
            explain = "?explain=true" if i % 4 == 0 else ""
            r = client.post(f"/api/v1/predict{explain}",
                            files=upload((f"{i}.png", payloads[i]), ("bad.txt", b"nope")))
            assert r.status_code == 200, r.text
            answers[i] = r.json()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(answers) == n
    for i in range(n):
        good, bad = answers[i]["results"]
        assert good["filename"] == f"{i}.png" and bad["filename"] == "bad.txt"
        assert good["label"] == expected[i].label
        assert good["p_dog"] == pytest.approx(expected[i].p_dog, abs=1e-5)
        assert ("heatmap_png_base64" in good) == (i % 4 == 0)
        assert "error" in bad


def test_api_matches_cli_predict(client, tiny_run, tmp_path):
    """``POST /api/v1/predict`` and ``catsdogs predict --json`` give the same P(dog)."""
    files = [save_photo(tmp_path / "cat.png", 0, seed=21, size=(70, 50)),
             save_photo(tmp_path / "dog.jpg", 1, seed=22, size=(33, 81))]
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "samples"
    files += sorted(real.glob("*.4001.jpg"))  # real photos too, when present
    cli = json.loads(run_cli("predict", tiny_run, *files, "--json").stdout)
    api = client.post("/api/v1/predict",
                      files=upload(*[(f.name, f.read_bytes()) for f in files])).json()["results"]
    assert len(cli) == len(api) == len(files)
    for c, a in zip(cli, api, strict=True):
        assert Path(c["path"]).name == a["filename"]
        assert c["label"] == a["label"]
        assert abs(c["p_dog"] - a["p_dog"]) <= 1e-5
        assert abs(c["p_cat"] - a["p_cat"]) <= 1e-5


def test_create_app_rejects_bad_run_and_limits(tmp_path, tiny_run):
    with pytest.raises(RunError):
        create_app(str(tmp_path / "missing"))
    with pytest.raises(CatsDogsError):
        create_app(str(tiny_run), max_upload_mb=0)
    with pytest.raises(CatsDogsError):
        create_app(str(tiny_run), max_files=0)


def test_heatmap_overlay_matches_explain_module(client, tiny_run):
    """The API's heatmap is the Grad-CAM overlay of :mod:`catsdogs.explain` for that photo."""
    data = png(0, 30, size=(64, 48))
    p = Predictor.from_run(str(tiny_run), engine="keras")
    want = explain_image(p, GradCAM(p.engine.model), load_image(data), "x").overlay
    r = client.post("/api/v1/predict?explain=true", files=upload(("x.png", data)))
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        r.json()["results"][0]["heatmap_png_base64"]))))
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_inference_settings_can_be_overridden_per_server(tiny_run):
    """``serve --threshold/--tta``: create_app's overrides (or a whole InferenceSettings) change
    the answers and what /api/v1/model reports; the run folder is not changed."""
    data = png(1, 50)
    plain = Predictor.from_run(str(tiny_run)).predict_sources([data], ["d.png"])[0]
    assert plain.label == "dog"
    above = min(1.0, plain.p_dog + (1 - plain.p_dog) / 2)
    config_before = (tiny_run / "config.json").read_text()
    with TestClient(create_app(str(tiny_run), threshold=above, tta=True)) as c:
        meta = c.get("/api/v1/model").json()
        assert meta["threshold"] == above and meta["test_time_flips"] is True
        (got,) = c.post("/api/v1/predict", files=upload(("d.png", data))).json()["results"]
    flipped = Predictor.from_run(str(tiny_run), tta=True).predict_sources([data], ["d.png"])[0]
    assert got["p_dog"] == pytest.approx(flipped.p_dog, abs=1e-6)
    assert got["label"] == ("dog" if flipped.p_dog >= above else "cat")
    settings = InferenceSettings(threshold=above, tta=False, engine="keras")
    with TestClient(create_app(str(tiny_run), settings=settings)) as c:
        (got,) = c.post("/api/v1/predict", files=upload(("d.png", data))).json()["results"]
        assert c.get("/api/v1/model").json()["threshold"] == above
    assert got["label"] == "cat" and got["p_dog"] == pytest.approx(plain.p_dog, abs=1e-6)
    assert (tiny_run / "config.json").read_text() == config_before


def test_serve_uses_export_and_matches_keras(exported):
    """The HTTP API answers with the exported engine (reported in /api/v1/model) and the same
    P(dog) as the Keras model; Grad-CAM heatmaps still work (they use model.keras)."""
    images = photos_of_sizes(4, seed=40)
    files = []
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        files.append(("files", (f"{i}.png", buf.getvalue(), "image/png")))
    expected = Predictor.from_run(str(exported), engine="keras").predict_images(images)
    for engine in ("auto", "onnx"):
        with TestClient(create_app(str(exported), engine=engine)) as client:
            meta = client.get("/api/v1/model").json()
            assert meta["engine"] == ("tflite" if engine == "auto" else engine)
            res = client.post("/api/v1/predict?explain=true", files=files)
            assert res.status_code == 200
            items = res.json()["results"]
            got = np.array([r["p_dog"] for r in items])
            assert np.max(np.abs(got - expected)) <= TOLERANCE
            assert all(r["heatmap_png_base64"] for r in items)
