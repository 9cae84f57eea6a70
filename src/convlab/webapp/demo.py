"""The model side of `convlab serve`: a run's model loaded once (`Demo`), the uploads it
accepts, and the one thread that makes its model calls (`Batcher`)."""

import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np

from convlab.data.decode import ACCEPTED_NAMES, SkipImage, sniff
from convlab.errors import ConvlabError
from convlab.prediction import Outputs, TopK, answers, to_pixels

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
            self._forward(np.zeros((n,) + (self.info.test_size,) * 2 + (3,), np.uint8))

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
        pending = self._batches.submit(*images)
        done = []
        for pixels, future in zip(images, pending, strict=True):
            one = future.result()
            heat = None if one.maps is None else one.maps[0]
            done.append(Prediction(answers(one, self.predictor, k)[0], pixels, heat,
                                   (time.perf_counter() - start) * 1000))
        return done

    def _forward(self, batch: np.ndarray) -> list[Outputs]:
        """Each image's `Outputs` (a batch of one) from one model call on a uint8 batch."""
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
                "classes": self.classifier.classes, "image_size": self.info.test_size,
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
            ds = load(prepared, "validation", batch_size=64, image_size=self.info.test_size,
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
                    found.append((to_pixels(image),
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
