"""`convlab serve RUN`: a local web demo of a trained run, and a JSON API beside it.

One FastAPI app holds the run's model, loaded and compiled once, with its Grad-CAM twin
(`convlab.evaluation.gradcam.HeatMaps`: probabilities and heat maps in one forward pass):

- `/` is a Gradio page: drop or pick photos, each shows its top 5 classes with bars and where
  the model looked; the run at a glance (accuracy, confusion matrix, curves); a gallery of
  validation photos to click and classify. Gradio's front end is served from its own package,
  fonts are the system's: the page needs nothing from the internet.
- `POST /predict` takes one image's bytes as the body (`curl --data-binary @rose.jpg`) and
  answers `{"predictions": [{"class", "probability"}, ...], "none_of_the_classes", "score",
  "threshold", "model_file", "run", "milliseconds"}`; `?top_k=N`, `?heatmap=1` (a PNG of the
  heat map over the photo, base64, as "heatmap_png"). It also takes a form
  (`curl -F file=@a.jpg -F file=@b.png`, `multipart/form-data`, any field names): the answer
  is then `{"results": [...]}`, one entry per file part in the form's order, each
  `{"file": the name the client gave, ...the fields of the one-image answer}` or, for that
  file alone, `{"file": ..., "error": one line, "status": the 4xx it would have had}`; one
  bad file never fails the others. Bad uploads get a 4xx with `{"error": ...}`:
  413 over the byte or pixel limit (decompression bombs are refused from their header,
  before any decoding), 415 not an image or an unsupported format, 400 a broken image,
  422 a bad `top_k` or `heatmap`; a form: 413 over `max_batch` files or over `max_batch`
  times the byte limit in all (counted as it arrives: a huge form is refused, not stored),
  400 no file part or not a readable form. At most `MAX_DECODES` photos decode at once, so a
  burst of large images cannot take the machine's memory.
  Which bodies count as an image: any body that is not a form and whose bytes decode, whatever
  its content type, because `curl --data-binary` labels its body
  `application/x-www-form-urlencoded` unless told otherwise. A body that does not decode, sent
  as neither `image/*` nor `application/octet-stream` (JSON, text, ...), gets a 415 that names
  what the endpoint takes.
- `GET /api/run`: the run's classes, image size, model file and validation accuracy;
  `GET /api/openapi.json` the API's schema (no docs page: swagger-ui would come from a CDN).

Photos take the road `convlab predict` gives them (`convlab.inference.decode_bytes`: EXIF
rotation, any colour mode, resize + centre crop to the stored size, the run's JPEG quality,
TensorFlow's decoder), so the demo and `convlab predict` agree on every file.
"""

import base64
import io
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from html import escape
from pathlib import Path

import numpy as np

from convlab.data.decode import ACCEPTED_NAMES, SkipImage, sniff
from convlab.errors import ConvlabError
from convlab.prediction import NONE_OF_THE_CLASSES, Outputs, TopK, answers

MAX_BYTES = 20 * 2**20  # per upload
MAX_PIXELS = 50_000_000  # a 50-megapixel phone photo passes; a decompression bomb does not
TOP_K = 5
GALLERY_PER_CLASS = 6
GALLERY_MOST = 120  # photos in the gallery at most, whatever the number of classes
MAX_BATCH = 16  # requests that queue up share one model call, up to this many
# Photos decoding at once, page and API together. A 50-megapixel PNG takes ~250 MB while
# it decodes (Pillow decodes at a reduced scale only JPEG), so this bounds the server's
# memory under a burst of large uploads; an ordinary photo decodes in ~20 ms.
MAX_DECODES = 2
# After an image this large, memory goes back to the system (~30 ms): 16 concurrent
# 49-megapixel PNGs left the server ~350 MB above idle without it, at idle with it.
TRIM_PIXELS = 10_000_000
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


class UploadError(Exception):
    """A bad upload: an HTTP status for the API and a one-line message for people."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Prediction:
    top: TopK  # [{"class", "probability"}] most probable first, with the run's verdict
    pixels: np.ndarray  # uint8 (S, S, 3): what the model saw
    heat: np.ndarray | None  # (h, w) in [0, 1] for the top class; None without a feature map
    milliseconds: float


class Demo:
    """A run's model, loaded once, fed by one `Batcher`: what the page and the API call."""

    def __init__(self, run: str | os.PathLike, model: str = "best", *,
                 max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                 max_batch: int = MAX_BATCH, max_decodes: int = MAX_DECODES):
        from convlab.classifier import load

        if min(max_bytes, max_pixels, max_batch, max_decodes) < 1:
            raise ConvlabError(f"upload limits, the batch and the decodes must be positive, "
                               f"received: max_bytes={max_bytes}, max_pixels={max_pixels}, "
                               f"max_batch={max_batch}, max_decodes={max_decodes}")
        self.classifier = load(run, model)
        self.info = self.classifier.info
        self.max_bytes, self.max_pixels, self.max_batch = max_bytes, max_pixels, max_batch
        # Decoding in a few threads of its own, not in any of the server's 40: glibc gives
        # each thread that allocates a large image an arena that keeps the memory.
        self._decoders = ThreadPoolExecutor(max_decodes, thread_name_prefix="convlab-decode")
        self.predictor = self.classifier.predictor  # the one prediction path, heat maps too
        self._batches = Batcher(self._forward, max_batch)
        # Warm-up: the first requests should not pay for tracing the model (batches of one,
        # and of several once clients queue up).
        for n in (1, 2):
            self._forward(np.zeros((n,) + (self.info.image_size,) * 2 + (3,), np.float32))

    # -- inputs ------------------------------------------------------------------------

    def pixels(self, data: bytes, name: str = "the upload") -> np.ndarray:
        """Image bytes -> uint8 (S, S, 3) as training saw its photos.

        Raises:
            UploadError: over the limits, not an image, or a broken one.
        """
        from convlab.inference import decode_bytes

        self.check_size(len(data), name)
        try:
            _, (width, height) = sniff(data)  # the header only: bombs stop here
            if width * height > self.max_pixels:
                raise UploadError(413, f"{name} is {width} x {height} pixels, over the "
                                       f"{self.max_pixels:,}-pixel limit; send a smaller "
                                       "photo (or raise --max-megapixels)")
            try:
                return self._decoders.submit(decode_bytes, data, self.info).result()
            finally:
                if width * height >= TRIM_PIXELS:
                    _trim_memory()
        except SkipImage as skip:
            status = {"too large": 413, "empty": 400, "not an image": 415,
                      "unsupported format": 415}.get(skip.reason, 400)
            what = {"not an image": "is not an image",
                    "unsupported format": f"is in a format convlab does not read ({skip.detail})",
                    "too large": f"is too large ({skip.detail})",
                    "empty": "is empty"}.get(skip.reason, f"is a broken image ({skip.reason}: "
                                                        f"{skip.detail})")
            raise UploadError(status, f"{name} {what}; send a {ACCEPTED_NAMES} photo") \
                from None

    def check_size(self, size: int, name: str = "the upload") -> None:
        """Raises UploadError (413) for an upload of `size` bytes over the limit."""
        if size > self.max_bytes:
            raise UploadError(413, f"{name} is {size / 2**20:.1f} MB, over the "
                                   f"{self.max_bytes / 2**20:.0f} MB limit; send a smaller "
                                   "photo (or start the server with a larger --max-mb)")

    # -- predictions -------------------------------------------------------------------

    def classify(self, pixels: np.ndarray, top_k: int = TOP_K) -> Prediction:
        """Top-k classes (and the top class's heat map) for one uint8 (S, S, 3) image."""
        return self.classify_all([pixels], top_k)[0]

    def classify_all(self, images: list[np.ndarray], top_k: int = TOP_K) -> list[Prediction]:
        """`classify` for several images, queued together so that they share model calls."""
        start = time.perf_counter()
        k = min(top_k, len(self.info.classes))
        pending = self._batches.submit(*(p.astype(np.float32) / np.float32(255.0)
                                         for p in images))
        done = []
        for pixels, future in zip(images, pending, strict=True):
            one = future.result()
            heat = None if one.maps is None else one.maps[0]
            done.append(Prediction(answers(one, self.predictor, k)[0], pixels, heat,
                                   (time.perf_counter() - start) * 1000))
        return done

    def _forward(self, batch: np.ndarray) -> list[Outputs]:
        """Each image's `Outputs` (a batch of one) from one model call on a float batch."""
        out = self.predictor(batch, heat=True)
        return [out.row(i) for i in range(len(batch))]

    def heat_png(self, prediction: Prediction) -> bytes | None:
        """The heat map laid over what the model saw, as PNG bytes."""
        from convlab.evaluation.gradcam import overlay

        if prediction.heat is None:
            return None
        return _png(overlay(prediction.pixels, prediction.heat))

    # -- the run -----------------------------------------------------------------------

    def run_summary(self) -> dict:
        """What `GET /api/run` answers and the page's header shows."""
        from convlab.evaluation.metrics import load_metrics

        metrics = load_metrics(self.info.path) or {}
        return {"run": self.info.path.name, "model_file": self.classifier.model_path.name,
                "classes": self.classifier.classes, "image_size": self.info.image_size,
                "validation_accuracy": metrics.get("accuracy"),
                "validation_images": metrics.get("images"),
                "heat_maps": self.predictor.heat_maps is not None,
                "calibration": self.predictor.describe()}

    def gallery(self, per_class: int = GALLERY_PER_CLASS) -> list[tuple[np.ndarray, str, str]]:
        """Up to `per_class` validation photos of each class from the run's prepared data
        (fewer per class with many classes: ~120 photos in all at most): (pixels at the
        model's size, label, file name); empty when that data is gone."""
        from convlab.data.pipeline import load, record_paths

        per_class = max(1, min(per_class, GALLERY_MOST // len(self.classifier.classes)))
        prepared = self.info.prepared
        if prepared is None:
            return []
        try:
            paths = record_paths(prepared, "validation")
            ds = load(prepared, "validation", batch_size=64, image_size=self.info.image_size,
                      training=False, cache=False, deterministic=True)
        except (ConvlabError, OSError, ValueError):
            return []
        counts: dict[int, int] = {}
        found: list[tuple[np.ndarray, str, str]] = []
        seen = 0
        for images, labels in ds:
            for image, label in zip(images.numpy(), labels.numpy(), strict=True):
                label, path = int(label), paths[seen] if seen < len(paths) else ""
                seen += 1
                if counts.get(label, 0) < per_class:
                    counts[label] = counts.get(label, 0) + 1
                    found.append((np.round(image * 255).astype(np.uint8),
                                  self.classifier.classes[label], os.path.basename(path)))
            if len(found) >= per_class * len(self.classifier.classes):
                break
        return found


class Batcher:
    """One thread makes every model call; requests that arrive while it is busy go into the
    next call together (up to `max_batch`), so concurrent clients share forward passes and a
    lone client waits for nothing."""

    def __init__(self, forward, max_batch: int = MAX_BATCH):
        import queue

        self._forward, self._max = forward, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._putting = threading.Lock()  # held while one `submit` queues its inputs
        threading.Thread(target=self._loop, name="convlab-model", daemon=True).start()

    def submit(self, *xs: np.ndarray) -> list:
        """A `Future` of the forward pass's result for each input; the inputs of one call
        go into the same model call (up to `max_batch`)."""
        from concurrent.futures import Future

        done: list[Future] = [Future() for _ in xs]
        with self._putting:
            for x, future in zip(xs, done, strict=True):
                self._queue.put((x, future))
        return done

    def _loop(self):
        import queue

        while True:
            items = [self._queue.get()]
            with self._putting:  # a `submit` of several inputs has queued them all
                while len(items) < self._max:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            try:
                results = self._forward(np.stack([x for x, _ in items]))
            except Exception as err:  # noqa: BLE001 (each waiting request gets the error)
                for _, done in items:
                    done.set_exception(err)
                continue
            for (_, done), result in zip(items, results, strict=True):
                done.set_result(result)


def _trim_memory() -> None:
    """Return the memory freed by a large decode to the system (glibc keeps it otherwise)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_uri(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


# The request body of /predict, for the OpenAPI schema (the route reads the body itself).
_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "image/*": _BINARY, "application/octet-stream": _BINARY,
    "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}}}}


# -- the page's pieces, as HTML -------------------------------------------------------------

CSS = """
.cl-card {display:flex; gap:14px; align-items:flex-start; padding:10px; margin:8px 0;
          border:1px solid #ddd; border-radius:8px}
.cl-card figure {margin:0; width:180px}
.cl-card img {width:180px; height:180px; object-fit:cover; border-radius:4px}
.cl-card figcaption {font-size:12px; color:#555; text-align:center; margin-top:2px}
.cl-bars {flex:1; min-width:220px}
.cl-name {font-weight:600; margin-bottom:6px; word-break:break-all}
.cl-row {display:flex; align-items:center; gap:8px; margin:3px 0; font-size:14px}
.cl-label {width:110px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap}
.cl-track {flex:1; background:#eee; border-radius:3px; height:14px}
.cl-fill {background:#2b7bba; height:14px; border-radius:3px}
.cl-top .cl-fill {background:#e4572e}
.cl-p {width:52px; text-align:right; font-variant-numeric:tabular-nums}
.cl-none {font-weight:600; color:#8a5a00; margin-bottom:6px}
.cl-error {color:#b00020; font-weight:600; padding:10px; border:1px solid #b00020;
           border-radius:8px; margin:8px 0}
.cl-run th {text-align:left; padding-right:16px; white-space:nowrap}
"""
# The upload area's own words: Gradio says "Drop File Here" whatever file_count is.
UPLOAD_TEXT = {"upload_text.drop_file": "Drop photos here"}


def prediction_card(demo: Demo, name: str, prediction: Prediction) -> str:
    """One photo's result: what the model saw, its heat map, the top classes with bars."""
    rows = "".join(
        f'<div class="cl-row{" cl-top" if i == 0 else ""}" data-class="{escape(t["class"])}">'
        f'<span class="cl-label">{escape(t["class"])}</span><span class="cl-track">'
        f'<div class="cl-fill" style="width:{100 * t["probability"]:.1f}%"></div></span>'
        f'<span class="cl-p">{100 * t["probability"]:.1f}%</span></div>'
        for i, t in enumerate(prediction.top))
    heat = ""
    if prediction.heat is not None:
        from convlab.evaluation.gradcam import overlay

        heat = _figure("cl-heat", "where it looked (Grad-CAM)",
                       f'where the model found {prediction.top[0]["class"]} (Grad-CAM)',
                       overlay(prediction.pixels, prediction.heat))
    verdict = prediction.top.verdict()
    rejected = (f'<div class="cl-none" title="this photo is unlike every class the model was '
                f'trained on; the bars are what it would say if it had to choose">'
                f'{escape(verdict)}</div>' if verdict else "")
    top = NONE_OF_THE_CLASSES if verdict else prediction.top[0]["class"]
    photo = _figure("cl-photo", f"what the model saw ({len(prediction.pixels)} px)", name,
                    prediction.pixels)
    return (f'<div class="cl-card" data-top="{escape(top)}">{photo}'
            f'{heat}<div class="cl-bars"><div class="cl-name">{escape(name)}</div>{rejected}'
            f'{rows}'
            f'<div style="color:#777;font-size:12px;margin-top:6px">{prediction.milliseconds:.0f}'
            " ms</div></div></div>")


def _figure(kind: str, caption: str, alt: str, pixels: np.ndarray) -> str:
    return (f'<figure><img class="{kind}" alt="{escape(alt)}" src="{_jpeg_uri(pixels)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def error_card(message: str) -> str:
    return f'<div class="cl-error">{escape(message)}</div>'


def classify_files(demo: Demo, paths) -> str:
    """The page's upload handler: one card per file, an error card for each bad one."""
    cards = []
    for path in paths or []:
        path = Path(getattr(path, "name", path))
        name = path.name
        try:
            data = path.read_bytes()
            cards.append(prediction_card(demo, name, demo.classify(demo.pixels(data, name))))
        except UploadError as err:
            cards.append(error_card(err.message))
        except OSError as err:
            cards.append(error_card(f"cannot read {name}: {err.strerror or err}"))
    return "".join(cards) or '<p style="color:#777">Drop photos above to classify them.</p>'


def _run_markdown(demo: Demo) -> str:
    s = demo.run_summary()
    accuracy = (f"{s['validation_accuracy']:.1%} on {s['validation_images']:,} validation "
                "photos" if s["validation_accuracy"] is not None else
                f"not evaluated yet (`convlab evaluate {demo.info.path}`)")
    classes = s["classes"]
    shown = ", ".join(escape(c) for c in classes[:30]) + (
        f" and {len(classes) - 30} more" if len(classes) > 30 else "")
    return (f"{s['model_file']} at {s['image_size']} px, validation accuracy {accuracy}. "
            f"{len(classes)} classes: {shown}. Probabilities: {escape(s['calibration'])}."
            + ("" if s["heat_maps"] else " This model has no feature map: no heat maps."))


def _training_html(demo: Demo) -> str:
    """The run's training, from summary.json: recipe, model, epochs, time, speed, as a table
    of one named row each (no header row: a Markdown table would want one)."""
    from convlab.runs import RunFolder

    try:
        s = json.loads(RunFolder(demo.info.path).summary_json.read_text())
    except (OSError, ValueError):
        return "The run has no summary.json (unfinished?)."
    rows = [("recipe", s.get("recipe") or "(none: a model with its defaults)"),
            ("model", f"{s.get('model')}, {s.get('parameters', 0):,} parameters "
                      f"({s.get('trainable_parameters', 0):,} trained)"),
            ("data", f"{s.get('data')}: "
                     + ", ".join(f"{k} {v:,}" for k, v in (s.get("images") or {}).items())),
            ("training", f"{s.get('epochs')} epochs in {s.get('wall_seconds', 0) / 60:.1f} min "
                         f"on {s.get('hardware')} ({s.get('precision')})"),
            ("best epoch", ", ".join(f"{k} {v:.4f}" for k, v in (s.get("best") or {}).items()
                                     if "accuracy" in k or "loss" in k))]
    return '<table class="cl-run">' + "".join(
        f'<tr><th scope="row">{k}</th><td>{escape(str(v))}</td></tr>' for k, v in rows) + "</table>"


def build_ui(demo: Demo):
    """The Gradio page (a `gr.Blocks`), bound to one `Demo`."""
    import gradio as gr

    from convlab.evaluation.plots import training_curves
    from convlab.runs import RunFolder

    folder = RunFolder(demo.info.path)
    curves = folder.plot("training_curves")
    if not curves.exists():
        try:
            curves = training_curves(demo.info.path)
        except (ConvlabError, OSError, ValueError):
            curves = None
    confusion = folder.plot("confusion_matrix")
    gallery = demo.gallery()

    def on_files(files):
        return classify_files(demo, files)

    def on_select(event: gr.SelectData):
        pixels, label, name = gallery[event.index]
        return prediction_card(demo, f"{name} (labelled {label})", demo.classify(pixels))

    with gr.Blocks(title=f"convlab: {demo.info.path.name}") as blocks:
        gr.Markdown(f"## {demo.info.path.name}\n{_run_markdown(demo)}", elem_id="cl-header")
        with gr.Tab("Classify photos"):
            files = gr.File(file_count="multiple", label=f"Drop or pick photos ({ACCEPTED_NAMES}; "
                            "phone photos are turned upright)", elem_id="cl-upload")
            results = gr.HTML(classify_files(demo, []), elem_id="cl-results")
            files.upload(on_files, files, results)
        with gr.Tab("Validation photos"):
            if gallery:
                gr.Markdown("Validation photos of each class (the model never trained on them):"
                            " click one to classify it.")
                shown = gr.Gallery([(p, f"{label}: {name}") for p, label, name in gallery],
                                   columns=GALLERY_PER_CLASS, allow_preview=False,
                                   elem_id="cl-gallery", label="validation photos")
                picked = gr.HTML(elem_id="cl-picked")
                shown.select(on_select, None, picked)
            else:
                gr.Markdown("The run's prepared data is not on this machine: no gallery.")
        with gr.Tab("The run"):
            gr.HTML(_training_html(demo), elem_id="cl-training")
            for path, caption in ((confusion, "Confusion matrix (validation split)"),
                                  (curves, "Training curves")):
                if path is not None and Path(path).exists():
                    gr.Image(str(path), label=caption, interactive=False)
                elif path is confusion:
                    gr.Markdown(f"No confusion matrix yet: run `convlab evaluate "
                                f"{demo.info.path}`.")
    return blocks


def create_app(run: str | os.PathLike, model: str = "best", *, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS, max_batch: int = MAX_BATCH,
               max_decodes: int = MAX_DECODES, ui: bool = True):
    """The FastAPI app: the JSON API, and the Gradio page at `/` (unless `ui=False`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
    from fastapi import FastAPI, Query, Request
    from starlette.concurrency import run_in_threadpool

    demo = Demo(run, model, max_bytes=max_bytes, max_pixels=max_pixels, max_batch=max_batch,
                max_decodes=max_decodes)
    # No docs page: FastAPI's loads swagger-ui from a CDN, and this server may be offline
    # (the fastapi package ships no copy of it). The schema needs nothing from outside.
    app = FastAPI(title=f"convlab serve: {demo.info.path.name}", docs_url=None,
                  redoc_url=None, openapi_url="/api/openapi.json")
    app.state.demo = demo

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
            result = await run_in_threadpool(_predict_json, demo, bytes(body), top_k, heatmap)
        except UploadError as err:
            if err.status == 415 and not media.startswith("image/") \
                    and media != "application/octet-stream":
                # Not an image, and not labelled as one: the client may not know what we take.
                return _error(415, f"{err.message}; received Content-Type: "
                                   f"{media[:80] or 'none'}. {ACCEPTED_BODIES}")
            return _error(err.status, err.message)
        return result

    _errors_in_one_format(app)
    if ui:
        import gradio as gr

        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
        app = gr.mount_gradio_app(app, build_ui(demo), path="", theme=theme, css=CSS,
                                  i18n=gr.I18n(en=UPLOAD_TEXT),
                                  max_file_size=max_bytes, ssr_mode=False, footer_links=[])
    return app


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


def _predict_json(demo: Demo, data: bytes, top_k: int, heatmap: bool) -> dict:
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
