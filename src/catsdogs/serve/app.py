"""The FastAPI app behind ``catsdogs serve``: a web page and a JSON API for one trained run.

Endpoints (all answers are JSON, errors as ``{"detail": "..."}``):

* ``GET /`` — the web page (one self-contained HTML file, no external resources).
* ``GET /healthz`` — ``{"status": "ok"}`` (the model is loaded before the server listens).
* ``GET /api/v1/model`` — preset, model, image size, classes, test metrics, versions, limits.
* ``POST /api/v1/predict[?explain=true]`` — multipart/form-data with one or more ``files``;
  answers ``{"results": [...]}``, one result per file in upload order: ``{"filename", "label",
  "p_dog", "p_cat"}`` (plus ``"heatmap_png_base64"``, a Grad-CAM overlay PNG at most
  :data:`HEATMAP_MAX_SIDE` pixels on a side, with ``explain=true``), or ``{"filename", "error"}``
  for a file that is not a readable image.

Error statuses: 400 too many files or a malformed body; 413 body over ``max_upload_mb``
(checked from ``Content-Length`` and again while the body streams in, so an oversized upload is
never read in full); 415 not multipart, or none of the files is a readable image (the body then
also has ``results`` with each file's error); 422 no ``files`` field; 501 ``explain=true`` for a
model without Grad-CAM layers.

Probabilities come from :meth:`catsdogs.predict.Predictor.predict_sources`, the path
``catsdogs predict`` uses, so both give the same P(dog) for the same file.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from importlib import resources

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from catsdogs.config import InferenceSettings
from catsdogs.constants import CLASSES, VERSION
from catsdogs.data.images import load_image
from catsdogs.engines import KerasEngine, load_config, load_run
from catsdogs.errors import CatsDogsError, ImageError, RunError
from catsdogs.explain import GradCAM, explain_image, png_bytes
from catsdogs.predict import OTHER, Predictor
from catsdogs.runfolder import CONFIG_FILE, METRICS_FILE, read_json, run_file
from catsdogs.system import software_versions

log = logging.getLogger("catsdogs.serve")

HEATMAP_MAX_SIDE = 640
"""Longest side, in pixels, of the Grad-CAM overlay PNG the API returns."""
MB = 1024 * 1024
"""Bytes in one MB of ``max_upload_mb`` (a mebibyte, as in web-server upload limits)."""
FIELD = "files"
"""Multipart field name of the uploaded photos."""

_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
             "img-src data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'")


class BodyTooLarge(Exception):
    """Raised inside the app when the streamed request body passes the limit."""


class BodyLimitMiddleware:
    """ASGI middleware: refuse request bodies larger than ``max_bytes`` with 413.

    A ``Content-Length`` over the limit is refused before any body is read. Otherwise bytes are
    counted as the body streams in (chunked uploads, lying clients) and :class:`BodyTooLarge` is
    raised from ``receive`` as soon as the count passes the limit; it is answered with 413 here
    unless the app already turned it into a response.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return (f"upload too large: the request body is over the limit of "
                f"{self.max_bytes / MB:g} MB ({self.max_bytes:,} bytes)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                length = value
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if size > self.max_bytes:
                await _send_json(send, 413, {"detail": self._detail()})
                return

        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self._detail())
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, {"detail": self._detail()})


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def _page() -> str:
    return resources.files("catsdogs.serve").joinpath("static/index.html").read_text("utf-8")


class _Service:
    """The loaded model, Grad-CAM and limits, shared by all requests."""

    def __init__(self, run_dir: str, max_upload_mb: float, max_files: int,
                 settings: InferenceSettings | None = None, **overrides):
        if not max_upload_mb > 0:
            raise CatsDogsError(f"max_upload_mb must be positive, not {max_upload_mb}")
        if int(max_files) < 1:
            raise CatsDogsError(f"max_files must be at least 1, not {max_files}")
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.max_bytes = int(max_upload_mb * MB)
        self.max_upload_mb = float(max_upload_mb)
        self.max_files = int(max_files)
        self.config = load_config(self.run_dir)
        self.predictor = Predictor.from_run(self.run_dir, settings, **overrides)
        try:
            # Grad-CAM needs the Keras model; when predictions use it too, share its lock (one
            # model call at a time: Keras layers are not re-entrant)
            if isinstance(self.predictor.engine, KerasEngine):
                model, lock = self.predictor.engine.model, self.predictor.engine.lock
            else:
                model, lock = load_run(self.run_dir)[0], None
            self.cam = GradCAM(model, lock=lock)
        except RunError as exc:
            log.warning("Grad-CAM unavailable: %s", exc)
            self.cam = None
        # decoding + preprocessing in at most this many threads at once (bounds memory and CPU)
        self._work = threading.BoundedSemaphore(max(1, min(4, os.cpu_count() or 1)))
        self._warm_up()
        self.metadata = self._metadata()

    def _metadata(self) -> dict:
        """What ``/api/v1/model`` answers (no server paths)."""
        raw = read_json(run_file(self.run_dir, CONFIG_FILE)) or {}
        metrics = read_json(run_file(self.run_dir, METRICS_FILE))
        if metrics is not None:
            metrics = {k: v for k, v in metrics.items() if k != "source"}  # no server paths
        return {
            "run": os.path.basename(self.run_dir),
            "preset": self.config.preset,
            "model": self.config.model,
            "engine": self.predictor.engine_name,
            "image_size": self.config.image_size,
            "threshold": self.predictor.threshold,
            "test_time_flips": bool(self.predictor.tta),
            "classes": list(CLASSES),
            "labels": [*CLASSES, OTHER],
            "ood_threshold": self.predictor.ood_threshold,
            "metrics": metrics,
            "explain": self.cam is not None,
            "versions": raw.get("versions"),
            "serving_versions": software_versions(),
            "limits": {"max_upload_mb": self.max_upload_mb, "max_upload_bytes": self.max_bytes,
                       "max_files": self.max_files},
        }

    def _warm_up(self) -> None:
        """Trace the model (and Grad-CAM) once so the first request is not slow."""
        size = self.predictor.image_size
        blank = np.full((1, size, size, 3), 128, np.uint8)
        self.predictor.predict_prepared(blank)
        if self.cam is not None:
            self.cam(blank[0])

    def classify(self, contents: list[bytes], names: list[str], explain: bool) -> list[dict]:
        """Classify uploaded files (runs in a worker thread); one result dict per file."""
        with self._work:
            predictions = self.predictor.predict_sources(contents, names)
            results = []
            for data, p in zip(contents, predictions, strict=True):
                if p.error is not None:
                    results.append({"filename": p.path, "error": p.error})
                    continue
                item = {"filename": p.path, "label": p.label, "p_dog": p.p_dog,
                        "p_cat": p.p_cat, "ood_score": p.ood_score}
                if explain:
                    try:
                        image = load_image(data, name=p.path)
                        ex = explain_image(self.predictor, self.cam, image, p.path,
                                           p_dog=p.p_dog, label=p.label,
                                           max_side=HEATMAP_MAX_SIDE)
                        png = png_bytes(ex.overlay, max_side=HEATMAP_MAX_SIDE)
                        item["heatmap_png_base64"] = base64.b64encode(png).decode("ascii")
                    except ImageError as exc:  # pragma: no cover - decoded fine just before
                        item["heatmap_error"] = exc.reason
                results.append(item)
            return results


def create_app(run_dir: str, max_upload_mb: float = 10, max_files: int = 20,
               engine: str | None = None, settings: InferenceSettings | None = None,
               **overrides) -> FastAPI:
    """Build the FastAPI app for one run; the model is loaded (safe mode) and warmed up here,
    once, and shared by all requests.

    Args:
        run_dir: a finished run folder (``model.keras``, ``config.json``; ``metrics.json`` is
            shown by ``/api/v1/model`` when present).
        max_upload_mb: largest accepted request body, in MB (1 MB = 2**20 bytes); larger
            uploads get 413.
        max_files: most files per ``/api/v1/predict`` request; more get 400.
        engine: inference engine for predictions (:data:`catsdogs.config.ENGINES`; ``auto``
            uses an up-to-date ``catsdogs export`` of the run when there is one). Grad-CAM
            heatmaps always use the Keras model.
        settings: inference settings instead of the run's own (threshold, test-time flips,
            engine).
        **overrides: single inference settings to change (``threshold``, ``tta``).

    Returns:
        The ASGI app (serve it with uvicorn, or test it with ``fastapi.testclient``).

    Raises:
        RunError: ``run_dir`` is not a finished run, or its model cannot be loaded.
        CatsDogsError: a limit is not positive.
    """
    service = _Service(run_dir, max_upload_mb, max_files, settings, engine=engine, **overrides)
    app = FastAPI(title="catsdogs", version=VERSION,
                  description="Tell cats from dogs in photos, with Grad-CAM explanations.")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=service.max_bytes)
    _add_error_handlers(app)
    _add_routes(app, service, _page())
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON ``{"detail": ...}``; user errors never become a 500."""

    @app.exception_handler(CatsDogsError)
    async def _catsdogs_error(request: Request, exc: CatsDogsError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: "
                             f"{e.get('msg', 'invalid')}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):  # pragma: no cover
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)


async def _read_uploads(request: Request, service: _Service) -> tuple[list[str], list[bytes]]:
    """Names and contents of the photos in a multipart request's ``files`` field.

    Raises:
        HTTPException: 413 body too large; 400 too many files or a malformed body; 422 no files.
    """
    try:
        form = await request.form(max_files=service.max_files,
                                  max_fields=service.max_files + 100)
    except BodyTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except HTTPException as exc:
        if "too many files" in str(exc.detail).lower():
            raise HTTPException(400, f"too many files: at most {service.max_files} per "
                                     "request") from None
        raise HTTPException(400, f"malformed multipart body: {exc.detail}") from None
    try:
        uploads = [f for f in form.getlist(FIELD) if isinstance(f, UploadFile)]
        if not uploads:
            raise HTTPException(422, f"no files: send one or more photos in the multipart "
                                     f"field {FIELD!r}")
        names, contents = [], []
        for i, upload in enumerate(uploads):
            names.append(upload.filename or f"file {i + 1}")
            contents.append(await upload.read())
    finally:
        await form.close()
    return names, contents


def _add_routes(app: FastAPI, service: _Service, page: str) -> None:
    """``/``, ``/healthz``, ``/api/v1/model`` and ``/api/v1/predict``."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_CSP,
                                           "X-Content-Type-Options": "nosniff",
                                           "Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz() -> dict:
        """``{"status": "ok"}`` once the model is loaded (it is, before the server listens)."""
        return {"status": "ok"}

    @app.get("/api/v1/model")
    async def model_info() -> dict:
        """Run metadata: preset, model, image size, classes, test metrics, versions, limits."""
        return service.metadata

    @app.post("/api/v1/predict")
    async def predict(request: Request, explain: bool = False):
        """Classify one or more photos sent as multipart/form-data field ``files``."""
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise HTTPException(415, f"send photos as multipart/form-data in the field "
                                     f"{FIELD!r} (got Content-Type {content_type or 'none'!r})")
        if explain and service.cam is None:
            raise HTTPException(501, "this model has no Grad-CAM layers; use explain=false")
        names, contents = await _read_uploads(request, service)
        results = await run_in_threadpool(service.classify, contents, names, explain)
        if all("error" in r for r in results):
            n = len(results)
            what = ("the uploaded file is not" if n == 1
                    else f"none of the {n} uploaded files is")
            return JSONResponse({"detail": f"no image: {what} a readable image",
                                 "results": results}, status_code=415)
        return {"results": results}


def run_server(run: str, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10,
               max_files: int = 20, settings: InferenceSettings | None = None) -> None:
    """Serve :func:`create_app` with uvicorn until interrupted (``catsdogs serve``).

    Loads the model before listening, so ``/healthz`` answers 200 as soon as the port accepts
    connections. At most 64 connections are handled at once (more get 503).

    Raises:
        RunError: bad run folder or model. CatsDogsError: bad limits.
    """
    app = create_app(run, max_upload_mb=max_upload_mb, max_files=max_files, settings=settings)
    shown = f"[{host}]" if ":" in host else host
    engine_name = app.state.service.predictor.engine_name
    print(f"catsdogs: serving {run} ({engine_name} engine) at http://{shown}:{port}/ "
          f"(API: /api/v1/predict, docs: /docs; Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=64,
                timeout_graceful_shutdown=10)
