"""The JSON API of `convlab serve` (FastAPI: `POST /predict`, `GET /api/run`, the schema,
one error format), reading uploads and forms within the limits, and the app that holds it
and the page (see the package's docstring for what each route answers)."""

import base64
import logging
import os
from pathlib import Path

from convlab.webapp.demo import (
    MAX_BATCH,
    MAX_BYTES,
    MAX_DECODES,
    MAX_PIXELS,
    TOP_K,
    Demo,
    Prediction,
    UploadError,
)

# Room for the part headers and boundaries of a form of `max_batch` photos (~200 bytes a part).
FORM_SLACK = 2**16
# What /predict takes, for the 415 that answers a body that is neither an image nor a form.
ACCEPTED_BODIES = ("POST /predict takes a photo's bytes as the body (Content-Type image/* or "
                   "application/octet-stream: curl --data-binary @photo.jpg -H 'Content-Type: "
                   "image/jpeg') or a multipart/form-data form of file fields "
                   "(curl -F file=@photo.jpg -F file=@other.png)")
# What each query parameter of /predict takes, for the one-line 422 that answers a bad one.
QUERY_WANTS = {"top_k": "a positive integer (the number of classes to list)",
               "heatmap": "1 or 0 (true or false)"}
# uvicorn's error log: our lines come out in its format, at its --log-level.
log = logging.getLogger("uvicorn.error")

# The request body of /predict, for the OpenAPI schema (the route reads the body itself).
_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "image/*": _BINARY, "application/octet-stream": _BINARY,
    "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}}}}



def create_app(run: str | os.PathLike, model: str = "best", *, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS, max_batch: int = MAX_BATCH,
               max_decodes: int = MAX_DECODES, ui: bool = True):
    """The FastAPI app: the JSON API, and the Gradio page at `/` (unless `ui=False`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
    from fastapi import FastAPI

    demo = Demo(run, model, max_bytes=max_bytes, max_pixels=max_pixels, max_batch=max_batch,
                max_decodes=max_decodes)
    # No docs page: FastAPI's loads swagger-ui from a CDN, and this server may be offline
    # (the fastapi package ships no copy of it). The schema needs nothing from outside.
    app = FastAPI(title=f"convlab serve: {demo.info.path.name}", docs_url=None,
                  redoc_url=None, openapi_url="/api/openapi.json")
    app.state.demo = demo
    _add_routes(app, demo)
    _errors_in_one_format(app)
    if ui:
        import gradio as gr

        from convlab.webapp.page import CSS, UPLOAD_TEXT, build_ui

        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
        app = gr.mount_gradio_app(app, build_ui(demo), path="", theme=theme, css=CSS,
                                  i18n=gr.I18n(en=UPLOAD_TEXT),
                                  max_file_size=max_bytes, ssr_mode=False, footer_links=[])
    return app


def _add_routes(app, demo: Demo) -> None:
    """The API's routes on `app`: `GET /api/run`, `GET /health` and `POST /predict`."""
    from fastapi import Query, Request
    from starlette.concurrency import run_in_threadpool

    @app.get("/api/run")
    def run_summary():
        return demo.run_summary()

    @app.get("/health")
    def health():
        return {"ok": True}

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request, top_k: int = Query(TOP_K, ge=1),
                      heatmap: bool = False):
        """A photo's bytes as the body -> its top-k classes: `{"predictions": [{"class",
        "probability"}, ...], "none_of_the_classes", "score", "threshold", "model_file",
        "run", "milliseconds"}` (and "heatmap_png", base64, with `heatmap=1`).
        A multipart/form-data form of file fields (any names, at most the server's
        --max-batch) -> `{"results": [...]}`, one entry per file in order: `{"file": its
        name, ...the fields above}`, or `{"file", "error", "status"}` for a bad file alone.
        Errors: `{"error": one line}`."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "multipart/form-data":
            return await _predict_form(request, demo, top_k, heatmap)
        size, body = await _read_upload(request, demo.max_bytes)
        if size > demo.max_bytes:
            return _error(413, f"the upload is {size / 2**20:.1f} MB or more, over the "
                               f"{demo.max_bytes / 2**20:.0f} MB limit; send a smaller photo")
        try:
            result = await run_in_threadpool(predict_json, demo, bytes(body), top_k, heatmap)
        except UploadError as err:
            if err.status == 415 and not media.startswith("image/") \
                    and media != "application/octet-stream":
                # Not an image, and not labelled as one: the client may not know what we take.
                return _error(415, f"{err.message}; received Content-Type: "
                                   f"{media[:80] or 'none'}. {ACCEPTED_BODIES}")
            return _error(err.status, err.message)
        return result


def _error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _errors_in_one_format(app) -> None:
    """The API's every error as `{"error": one line}`: bad query values (not FastAPI's
    `{"detail": [...]}`), wrong methods and unknown /api paths (which Gradio's page, mounted
    at `/` after this, would answer `{"detail": "Not Found"}`); clients that hang up
    mid-upload get one log line. Called once the API's own routes are in place."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError):
        return _error(422, _query_error(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

    @app.api_route("/predict", methods=[m for m in methods if m != "POST"],
                   include_in_schema=False)
    def predict_wrong_method(request: Request):
        return _error(405, f"{request.method} /predict: POST a photo instead, e.g. "
                           "curl --data-binary @photo.jpg or curl -F file=@photo.jpg",
                      {"Allow": "POST"})

    @app.api_route("/api/{path:path}", methods=methods, include_in_schema=False)
    def no_such_api(request: Request, path: str):
        return _error(404, f"nothing answers {request.method} /api/{path}; the API is POST "
                           "/predict, GET /api/run and GET /api/openapi.json")

    app.add_middleware(HangUps)


async def _read_upload(request, limit: int) -> tuple[int, bytearray]:
    """(size, body) of a request. Over `limit`, reads on (keeping nothing) so that a client
    still sending gets its 413 instead of a reset connection, and stops at 4x the limit."""
    declared = _declared_size(request)
    if declared > 4 * limit:
        return declared, bytearray()
    size, body = 0, bytearray()
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
        elif size > 4 * limit:
            break
    return size, body


def _declared_size(request) -> int:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else 0


async def _predict_form(request, demo: Demo, top_k: int, heatmap: bool):
    """`POST /predict` with a multipart form: `{"results": [one entry per file part]}`."""
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    try:
        form = await _read_form(request, demo.max_batch, demo.max_batch * demo.max_bytes)
    except UploadError as err:
        return _error(err.status, err.message)
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            return _error(400, "the form has no file field; send e.g. curl -F file=@photo.jpg "
                               "(-F 'file=<photo.jpg', without @, sends the file as text)")
        return {"results": await run_in_threadpool(_predict_files, demo, files, top_k, heatmap)}
    finally:
        await form.close()


async def _read_form(request, max_files: int, limit: int):
    """A multipart form parsed by Starlette (file parts spooled to disk past 1 MB each), at
    most `max_files` files and `limit` bytes of files, counted as they arrive; a form over
    either is read on (keeping nothing, up to 4x the limit) so that the client gets its 413.

    Raises:
        UploadError: over a limit (413) or not a form Starlette can read (400).
    """
    from starlette.formparsers import MultiPartException, MultiPartParser

    limit += max_files * FORM_SLACK
    declared = _declared_size(request)

    def too_large(size: int) -> UploadError:
        return UploadError(413, f"the form is {size / 2**20:.1f} MB or more, over the "
                                f"{limit / 2**20:.0f} MB a request may send ({max_files} photos"
                                " at most, --max-batch, of --max-mb each); send fewer photos "
                                "per request")

    if declared > 4 * limit:
        raise too_large(declared)
    body, received = request.stream(), 0

    async def counted():
        nonlocal received
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                raise too_large(received)
            yield chunk

    # Text fields (which we ignore) stay small: only file parts may be large.
    parser = MultiPartParser(request.headers, counted(), max_files=max_files, max_fields=64,
                             max_part_size=2**16)
    try:
        if declared > limit:
            raise too_large(declared)
        return await parser.parse()
    except (UploadError, MultiPartException) as err:
        async for chunk in body:  # the rest of what the client sends, kept nowhere
            received += len(chunk)
            if received > 4 * limit:
                break
        if isinstance(err, UploadError):
            raise too_large(max(received, declared)) from None
        if err.message.startswith("Too many files"):  # Starlette's words for max_files
            raise UploadError(413, f"the form has more than {max_files} files, the most one "
                                   "request may send (--max-batch); send the rest in another "
                                   "request") from None
        raise UploadError(400, f"the form cannot be read ({err.message}); send each photo as "
                               "a file field: curl -F file=@photo.jpg") from None
    finally:
        await body.aclose()


def _predict_files(demo: Demo, files, top_k: int, heatmap: bool) -> list[dict]:
    """One entry per uploaded file: its name and its answer, or its error alone. Each file
    is read and decoded in turn (one upload's bytes in memory at a time); the decoded photos
    then share the model's calls."""
    entries, decoded = [], []
    for n, upload in enumerate(files, 1):
        entry = {"file": upload.filename}
        entries.append(entry)
        name = upload.filename or f"file {n}"
        try:
            demo.check_size(upload.size or 0, name)
            decoded.append((entry, demo.pixels(upload.file.read(), name)))
        except UploadError as err:
            entry.update(error=err.message, status=err.status)
    predictions = demo.classify_all([pixels for _, pixels in decoded], top_k)
    for (entry, _), prediction in zip(decoded, predictions, strict=True):
        entry.update(_answer_json(demo, prediction, heatmap))
    return entries


class HangUps:
    """ASGI middleware: one log line, instead of a 60-line traceback, for each client that
    hangs up in the middle of its upload (routine for a server: slow or dropped clients),
    on the API and on the page's uploads alike."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        from starlette.requests import ClientDisconnect

        received = 0

        async def counting():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting, send)
        except ClientDisconnect:
            client = ":".join(map(str, scope.get("client") or ["a client"]))
            declared = dict(scope.get("headers", [])).get(b"content-length")
            of = f" of the {declared.decode(errors='replace')}" if declared else ""
            log.warning("%s hung up after %d%s bytes of its upload to %s", client, received,
                        of, scope.get("path"))


def _query_error(errors) -> str:
    """FastAPI's validation errors as one line: each bad parameter, what it takes, what came."""
    said = []
    for e in errors:
        name, value = e["loc"][-1], str(e.get("input", ""))
        value = value if len(value) <= 40 else value[:40] + "..."
        want = QUERY_WANTS.get(name)
        said.append(f"{name} must be {want}, received: {value!r}" if want else
                    f"{name}: {e['msg']}, received: {value!r}")
    return "; ".join(said)


def predict_json(demo: Demo, data: bytes, top_k: int, heatmap: bool) -> dict:
    """`POST /predict`'s answer to one photo's bytes (UploadError for a bad one)."""
    return _answer_json(demo, demo.classify(demo.pixels(data), top_k), heatmap)


def _answer_json(demo: Demo, prediction: Prediction, heatmap: bool) -> dict:
    out = {**prediction.top.as_dict(), "model_file": demo.classifier.model_path.name,
           "run": demo.info.path.name, "milliseconds": round(prediction.milliseconds, 1)}
    if heatmap:
        png = demo.heat_png(prediction)
        out["heatmap_png"] = None if png is None else base64.b64encode(png).decode()
    return out


def serve(run: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
          model: str = "best", max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
          max_batch: int = MAX_BATCH, ui: bool = True, log_level: str = "warning") -> None:
    """Start the demo server and block until Ctrl-C."""
    import uvicorn

    app = create_app(run, model, max_bytes=max_bytes, max_pixels=max_pixels,
                     max_batch=max_batch, ui=ui)
    print(f"serving {Path(run).name} at http://{host}:{port}/ (API: POST "
          f"http://{host}:{port}/predict); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
