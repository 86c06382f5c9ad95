"""The local service: a REST API and a web page over EmotionRecognizer (FastAPI + uvicorn).

    from fervgg.service import ServiceSettings, create_app, serve
    app = create_app(ServiceSettings())          # the model loads here, once
    serve(ServiceSettings(port=8000))            # what scripts/serve.py runs

API (OpenAPI at /docs):
    POST /v1/predict        one image (multipart field, or the raw body) -> the records of
                            `predict_emotion.py --json`; ?tta=true, ?detect=false
    POST /v1/predict/batch  several images (multipart) -> [{"image", "records"} or {"image", "error", "status"}]
    GET  /v1/health, GET /v1/model
The page: GET / (fervgg/static/: plain HTML, JS and CSS, nothing from other sites).

Every error is JSON {"error": "<one line>"} with its status: 400 not an image or corrupt,
401 bad token, 413 over the upload or pixel limit, 415 unsupported type, 503 busy. The
recognition runs in a pool of `workers` threads, each with a recognizer of its own (its own
detector and classifier, so the workers run side by side instead of queueing for one shared
detector; `threads` LiteRT threads each, by default all cores: one request alone still uses
them all); at most `queue` more requests wait, the rest are answered 503 at once. No
recognition code lives here: records are made exactly as the command line makes them
(EmotionRecognizer.prepare/classify, records.photo_record).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import queue
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from fervgg import config, drawing, records
from fervgg.common import FervggError, cpu_count

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException
except ImportError as exc:
    raise FervggError(f"the service needs FastAPI, uvicorn and python-multipart ({exc}): "
                      "pip install 'fervgg[serve]', or make install") from None
from fervgg.emotion_model import sidecar_path
from fervgg.settings import check_settings

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_ENV = "FERVGG_TOKEN"  # the token, when not given as a flag (a flag shows in `ps`)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ACCEPTED_TYPES = ("image/", "application/octet-stream")
# What /v1/model shows of a model's sidecar: where the model comes from and how good it is.
MODEL_FACTS = ("created", "run_name", "phase", "best_val_accuracy", "best_epoch", "training_seconds", "hardware",
               "versions", "weights", "provenance", "litert_int8_export")
# The page may load and run only what the service itself serves.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
                           "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'")
log = logging.getLogger("fervgg.service")


@dataclass
class ServiceSettings:
    model: Path | None = None  # a .keras or .tflite model; None: as predict_emotion.py chooses
    models_dir: Path = config.MODELS_DIR
    backend: str = "auto"
    detector: str = config.DETECTOR
    threads: int | None = None  # LiteRT CPU threads of each worker's models (None: all cores)
    max_megapixels: float = config.MAX_IMAGE_PIXELS / 1e6  # decoded-size limit per image (413 above)
    max_upload_mb: float = 20.0  # request body limit, all images of a batch together (413 above)
    max_batch: int = 32  # images in one /v1/predict/batch request
    workers: int = field(default_factory=cpu_count)  # requests recognised at once
    queue: int = 16  # requests waiting for a worker; more are answered 503
    token: str | None = None  # required as `Authorization: Bearer TOKEN` on /v1 (not /v1/health)
    host: str = "127.0.0.1"
    port: int = 8000

    RANGES: ClassVar[dict[str, dict]] = {
        "threads": {"low": 1, "high": 256}, "max_megapixels": {"above": 0, "high": 10_000},
        "max_upload_mb": {"above": 0, "high": 2048}, "max_batch": {"low": 1, "high": 1000},
        "workers": {"low": 1, "high": 256}, "queue": {"low": 0, "high": 10_000}, "port": {"low": 0, "high": 65535},
    }

    def __post_init__(self):
        check_settings(self, self.RANGES)
        if self.token is not None and not self.token.strip():
            raise FervggError("`token` is empty: give a secret, or leave it out")

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")


class ServiceError(FervggError):
    """A request refused: its HTTP status and the one-line message of the JSON answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def status_of(error: FervggError) -> int:
    """413 for an image over a size limit, 400 for any other image that cannot be used."""
    if isinstance(error, ServiceError):
        return error.status
    text = str(error)
    return 413 if "too large" in text or "too much memory" in text else 400


# ------------------------------------------------------------------------------ the work

class Recognition:
    """The recognizers (one per worker), the worker pool and the count of admitted requests."""

    def __init__(self, settings: ServiceSettings, recognizer=None):
        from fervgg.recognizer import EmotionRecognizer

        # All cores for each worker: measured against one thread per worker (bench/serve.py, 2 cores),
        # as fast under load (26 vs 25 req/s at 4 clients) and faster alone (p50 64 vs 82 ms).
        threads = settings.threads or cpu_count()

        def recognizer_of_its_own(notes=lambda text: log.warning(text)):
            return EmotionRecognizer(
                settings.model, models_dir=settings.models_dir, backend=settings.backend, detector=settings.detector,
                threads=threads, max_megapixels=settings.max_megapixels, notes=notes, own_detector=True)

        # `recognizer` (tests): one shared by every worker, which then take turns at its detector.
        recognizers = ([recognizer] * settings.workers if recognizer else
                       [recognizer_of_its_own()] + [recognizer_of_its_own(notes=lambda text: None)  # said once
                                                    for _ in range(settings.workers - 1)])
        self.rec = recognizers[0]
        self.idle = queue.SimpleQueue()  # a worker thread takes one, uses it, puts it back
        for rec in recognizers:
            self.idle.put(rec)
        self.capacity = settings.workers + settings.queue
        self.workers = settings.workers
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="fervgg-worker")
        self.in_flight = 0  # changed on the event loop only

    def predict(self, images: list[tuple[str, bytes]], tta: bool, detect: bool) -> list[dict]:
        """[{"image", "records"} or {"image", "error", "status"}] in the order of `images`; the
        faces of all images classified together, as predict_emotion.py does."""
        rec = self.idle.get()  # never waits long: there are as many recognizers as worker threads
        try:
            return self._predict(rec, images, tta, detect)
        finally:
            self.idle.put(rec)

    def _predict(self, rec, images: list[tuple[str, bytes]], tta: bool, detect: bool) -> list[dict]:
        prepared, results = [], []
        for name, data in images:
            try:
                prepared.append(rec.prepare(data, detect=detect, whole_if_none=True))
                results.append({"image": name})
            except FervggError as exc:
                results.append({"image": name, "error": str(exc), "status": status_of(exc)})
        rec.classify(prepared, tta=tta)
        photos = iter(prepared)
        for result in results:
            if "error" not in result:
                photo = next(photos)
                result["records"] = [
                    records.photo_record(result["image"], i, len(photo.boxes), photo.face_found, box,
                                         rec.class_names, p)
                    for i, (box, p) in enumerate(zip(photo.boxes, photo.probs), start=1)]
        return results

    @asynccontextmanager
    async def slot(self):
        """Admits a request (before its upload is read) or refuses it with 503 at once."""
        if self.in_flight >= self.capacity:
            raise ServiceError(503, f"busy: {self.in_flight} requests in progress or waiting; try again in a "
                                    "moment (the service's `workers` and `queue` set how many)")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def run(self, images: list[tuple[str, bytes]], tta: bool, detect: bool) -> list[dict]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.predict, images, tta, detect)

    def model_facts(self) -> dict:
        classifier = self.rec.classifier
        facts = {"model": classifier.path.name, "backend": classifier.backend, "classes": self.rec.class_names,
                 "input": {"image_size": classifier.image_size, "crop_size": classifier.crop_size,
                           "pixels": "grayscale 0-255"},
                 "detector": self.rec.detector, "photo_tta": config.PHOTO_TTA,
                 "colours": {name: {"fill": drawing.colour_of(i), "text": drawing.text_colour(drawing.colour_of(i))}
                             for i, name in enumerate(self.rec.class_names)}}
        side = sidecar_path(classifier.path)
        if side.is_file():
            import json

            try:
                info = json.loads(side.read_text(encoding="utf-8"))
                facts["sidecar"] = {key: info[key] for key in MODEL_FACTS if key in info}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                facts["sidecar"] = None
        return facts


# ------------------------------------------------------------------------------ the app

def create_app(settings: ServiceSettings | None = None, recognizer=None,
               explain: Callable[[str], str] = lambda message: message):
    """The FastAPI app; loads the model now (or uses `recognizer`, an EmotionRecognizer).
    `explain` rewrites error messages (scripts/serve.py shows settings as its flags)."""
    settings = settings or ServiceSettings()
    work = Recognition(settings, recognizer)

    @asynccontextmanager
    async def lifespan(app):
        yield
        work.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="fervgg", version=_version(), lifespan=lifespan,
                  description="Facial emotion recognition: the faces of a photo, their emotions and every "
                              "class probability. Errors are JSON {\"error\": \"...\"}.")
    app.state.recognition = work

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": explain(message)}, status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def refused(request, exc: ServiceError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else \
            {"Retry-After": "1"} if exc.status == 503 else None
        return error(exc.status, str(exc), headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        words = {404: f"not found: {request.url.path}", 405: f"method {request.method} not allowed on "
                 f"{request.url.path}"}
        return error(exc.status_code, words.get(exc.status_code, str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                             for e in exc.errors())
        return error(400, f"bad request ({problems})")

    async def images_of(request: Request, many: bool) -> list[tuple[str, bytes]]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            try:
                form = await request.form(max_files=settings.max_batch if many else 1)
            except HTTPException as exc:  # Starlette's refusal of a malformed body or too many files
                if "Too many files" not in str(exc.detail):
                    raise ServiceError(400, f"malformed multipart body ({exc.detail})") from None
                if many:
                    raise ServiceError(413, f"too many images in one request: at most {settings.max_batch} "
                                            "(the service's `max_batch`)") from None
                raise ServiceError(400, "one image per request here: send several to /v1/predict/batch") from None
            files = [value for _, value in form.multi_items() if hasattr(value, "read")]
            if not files:
                raise ServiceError(400, "no image in the form: send it as a file field, e.g. "
                                        "curl -F file=@photo.jpg")
            found = []
            for upload in files:
                declared = (upload.content_type or "").lower()
                if declared and not declared.startswith(ACCEPTED_TYPES):
                    raise ServiceError(415, f"{_name(upload.filename)}: unsupported type {declared}: "
                                            "send image files (JPEG, PNG, WebP, BMP, GIF, TIFF)")
                found.append((_name(upload.filename), await upload.read()))
            return found
        if many:
            raise ServiceError(415, f"unsupported type {kind or 'none'}: send the images as multipart/form-data, "
                                    "e.g. curl -F files=@a.jpg -F files=@b.jpg")
        if kind and not kind.startswith(ACCEPTED_TYPES):
            raise ServiceError(415, f"unsupported type {kind}: send the image as a multipart file "
                                    "(curl -F file=@photo.jpg) or as the raw body with its image type "
                                    "(curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg')")
        return [("image", await request.body())]

    body_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}}
    batch_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}
    tta_query = Query(config.PHOTO_TTA, description="average each face over ten crops (more accurate, slower)")
    detect_query = Query(True, description="find faces; false: the whole image is one face")

    @app.post("/v1/predict", openapi_extra=body_doc, summary="The faces of one image and their emotions")
    async def predict(request: Request, tta: bool = tta_query, detect: bool = detect_query):
        """One image as a multipart file field or as the raw body: the records of
        `predict_emotion.py --json`, one per face (a photo without a face: the whole
        image, `"face_found": false`)."""
        async with work.slot():
            result = (await work.run(await images_of(request, many=False), tta, detect))[0]
        if "error" in result:
            raise ServiceError(result["status"], result["error"])
        return result["records"]

    @app.post("/v1/predict/batch", openapi_extra=batch_doc, summary="Several images in one request")
    async def predict_batch(request: Request, tta: bool = tta_query, detect: bool = detect_query):
        """Several images as multipart file fields: one entry per image, in order, with its
        records, or its error and the status it would have had alone."""
        async with work.slot():
            return await work.run(await images_of(request, many=True), tta, detect)

    @app.get("/v1/health", summary="Whether the service is up, and how busy")
    async def health():
        return {"status": "ok", "in_flight": work.in_flight, "workers": work.workers, "capacity": work.capacity}

    @app.get("/v1/model", summary="The model: classes, input size, accuracy and provenance")
    async def model():
        return work.model_facts()

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):  # a bug of ours: one line to the client, the traceback to the log
        return error(500, f"internal error ({type(exc).__name__}); the service goes on: please report it")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, settings=settings, explain=explain)
    return app


def _name(filename: str | None) -> str:
    """An upload's file name, without folders or control characters, for the records."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", (filename or "").replace("\\", "/").rsplit("/", 1)[-1])
    return name[:200] or "image"


def _version() -> str:
    from fervgg import __version__

    return __version__


# ------------------------------------------------------------------------------ serving

class Guard:
    """ASGI middleware around the whole app (outside Starlette's, so nothing wraps its
    refusals): the token on /v1 (401), the request body limit (413, by Content-Length at
    once, or as soon as the bytes received pass it) and security headers on every answer."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, settings: ServiceSettings, explain: Callable[[str], str]):
        self.app, self.token, self.limit = app, settings.token, int(settings.max_upload_mb * 1e6)
        self.too_large = explain(f"upload too large: over {settings.max_upload_mb:g} MB in one request "
                                 "(the service's `max_upload_mb`)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        path = scope["path"]
        if self.token and path.startswith("/v1/") and path != "/v1/health":
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
                problem = "wrong token" if given else "this service needs a token"
                return await self._answer(send, 401, f"{problem}: send the header `Authorization: Bearer TOKEN` "
                                                     "with the token the service was started with",
                                          [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._answer(send, 413, self.too_large)
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self.TooLarge
            return message

        async def secured(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = [(b"x-content-type-options", b"nosniff")]
                if not path.startswith("/docs"):  # FastAPI's docs page loads Swagger UI from a CDN
                    extra.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, counted, secured)
        except self.TooLarge:
            if not started:
                await self._answer(send, 413, self.too_large)

    @staticmethod
    async def _answer(send, status: int, message: str, headers: list | None = None):
        import json

        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})


def listen(settings: ServiceSettings) -> socket.socket:
    """The listening socket, bound and listening now: a port in use is one clear error before the
    model loads, and clients may connect as soon as this returns."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of such sockets; without
    # it a response's header and body writes meet Nagle and delayed ACKs, 40 ms on every request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # and inherited by accepted connections
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        hint = "; choose another `port`, or stop what uses it" if exc.errno == errno.EADDRINUSE else ""
        raise FervggError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}{hint}") from None
    except (socket.gaierror, UnicodeError) as exc:
        sock.close()
        raise FervggError(f"cannot listen on `host` {settings.host!r}: {exc}") from None
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    return sock


def serve(settings: ServiceSettings, app=None, sock: socket.socket | None = None, *, access_log: bool = False) -> None:
    """Serve `app` (default: create_app(settings)) on `sock` (default: listen(settings)) until
    Ctrl+C or SIGTERM."""
    import uvicorn

    from fervgg import imaging

    imaging.set_max_pixels(int(settings.max_megapixels * 1e6))  # PIL's own guards to match
    sock = sock or listen(settings)
    app = app or create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=access_log,
                                           timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


def url_of(sock: socket.socket) -> str:
    """The service's address as this machine opens it (all interfaces: through loopback)."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
