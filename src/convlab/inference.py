"""Predict with a trained run: image files and folders in, top-k classes out.

Images go through the ingest's own decoding (`decode_and_resize`: sniffed by content, EXIF
orientation, any colour mode, aspect-preserving resize + centre crop, JPEG re-encoding at the
prepared data's quality) and then through the training pipeline's JPEG decoder, so a photo
reaches the model exactly as its training images did.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from convlab.data.decode import SkipImage, decode_and_resize
from convlab.data.sources import read_bytes, walk_files
from convlab.errors import ConvlabError
from convlab.prediction import Predictor, answers, check_tta
from convlab.runs import RunInfo


def collect(inputs: list[str | os.PathLike]) -> tuple[list[str], list[dict]]:
    """Image candidates from files and folders (walked recursively), and broken links.

    Files in folders that are clearly not photos (`.txt`, `.DS_Store`, ...) are ignored, as
    the ingest does; a file named explicitly is always tried.

    An input that does not exist is skipped as "not found", as an unreadable file is, so one
    mistyped name does not stop the others.

    Raises:
        ConvlabError: no input exists.
    """
    paths, skipped = [], []
    if inputs and not any(os.path.lexists(item) for item in map(str, inputs)):
        missing = ", ".join(f"'{item}'" for item in map(str, inputs))
        raise ConvlabError(f"image or folder not found: {missing}; check the path")
    for item in map(str, inputs):
        if os.path.isdir(item):
            for path, kind in walk_files(item):
                if kind is None:
                    paths.append(path)
                elif kind != "ignored":
                    detail = os.readlink(path) if kind == "broken link" else ""
                    skipped.append({"path": path, "reason": kind, "detail": detail})
        elif os.path.isfile(item):
            paths.append(item)
        elif os.path.exists(item):  # a FIFO or device named explicitly: never opened
            skipped.append({"path": item, "reason": "not a regular file", "detail": ""})
        elif os.path.lexists(item):
            skipped.append({"path": item, "reason": "broken link", "detail": os.readlink(item)})
        else:
            skipped.append({"path": item, "reason": "not found", "detail": "check the path"})
    return list(dict.fromkeys(paths)), skipped


def decode_image(path: str, info: RunInfo) -> np.ndarray:
    """One file -> uint8 (S, S, 3), exactly as the training pipeline would have seen it.

    Raises:
        SkipImage: unreadable or not a usable image.
    """
    try:
        data = read_bytes(path)
    except OSError as err:
        raise SkipImage("unreadable", f"{type(err).__name__}: {err.strerror or err}") from None
    return decode_bytes(data, info)


def decode_bytes(data: bytes, info: RunInfo) -> np.ndarray:
    """An image file's bytes -> uint8 (S, S, 3), as the training pipeline saw its photos.

    Raises:
        SkipImage: not a usable image.
    """
    import tensorflow as tf

    jpeg = decode_and_resize(data, info.stored_size, info.quality).jpeg
    # TF's decoder, not Pillow's: their IDCTs differ by a few levels, and training used TF's.
    image = tf.io.decode_jpeg(jpeg, channels=3)
    if info.stored_size != info.test_size:
        from convlab.data.pipeline import resize_to_square

        image = resize_to_square(image, info.test_size)
    return image.numpy()


def decode_all(paths: list[str], info: RunInfo, *,
               workers: int | None = None) -> Iterator[tuple[str, np.ndarray | SkipImage]]:
    """Decode in a thread pool (Pillow and TF release the GIL), yielding results in order.

    At most a few hundred images are in flight, so memory stays flat for any number of files.
    """
    window = 256
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        def task(path):
            try:
                return decode_image(path, info)
            except SkipImage as skip:
                return skip

        futures = [pool.submit(task, p) for p in paths[:window]]
        for i, path in enumerate(paths):
            if i + window < len(paths):
                futures.append(pool.submit(task, paths[i + window]))
            yield path, futures[i].result()
            futures[i] = None  # drop the array once consumed


def predict(
    run: str | os.PathLike,
    inputs: list[str | os.PathLike],
    *,
    top_k: int = 3,
    batch_size: int = 64,
    model: str = "best",
    workers: int | None = None,
    tta: str | None = None,
    reject: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Classify image files and folders with a trained run.

    Args:
        run: a run folder written by `convlab.train`.
        inputs: image files and folders (walked recursively; non-photos like `*.txt` ignored).
            Any format the ingest accepts (JPEG, PNG, HEIC, AVIF, WEBP, TIFF, BMP,
            GIF), sniffed by content.
        top_k: classes reported per image (at most the number of classes).
        batch_size: images per model call.
        model: "best" (best validation accuracy) or "final" (last epoch).
        workers: decoding threads (default: one per core).
        tta: test-time augmentation: None/"none", or "flip" (average each image and its
            mirror image).
        reject: say "none of the classes" for images unlike the run's training photos (a
            calibrated run only); False: the bare top-k.

    Returns:
        (rows, skipped): rows in input order, each {"path", "predictions": [{"class",
        "probability"}, ...] most probable first (calibrated probabilities), "none_of_the_classes":
        True / False / None (uncalibrated run, or reject=False), "score"}; skipped: {"path",
        "reason", "detail"} for each file that could not be read or decoded.

    Raises:
        ConvlabError: not a run folder, a missing input, bad options, or no candidate files.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ConvlabError(f"top_k must be a positive integer. Received: top_k={top_k!r}")
    if batch_size < 1:
        raise ConvlabError(f"batch_size must be positive. Received: batch_size={batch_size!r}")
    tta = check_tta(tta)
    paths, skipped = collect(inputs)
    if not paths:
        raise ConvlabError(f"no image files in {', '.join(map(str, inputs))}")
    predictor = Predictor(run, model)
    k = min(top_k, len(predictor.classes))
    rows: list[dict] = []
    decoded = decode_all(paths, predictor.info, workers=workers)
    for batch_paths, batch in _batches(decoded, batch_size, skipped):
        found = answers(predictor(np.stack(batch), tta=tta), predictor, k, reject)
        rows.extend({"path": p, **t.as_dict()} for p, t in zip(batch_paths, found, strict=True))
    return rows, skipped


def _batches(decoded: Iterator[tuple[str, np.ndarray | SkipImage]], size: int,
             skipped: list[dict]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """(paths, images) of the decoded images, `size` at a time; each file that did not
    decode goes to `skipped` instead."""
    paths: list[str] = []
    images: list[np.ndarray] = []
    for path, result in decoded:
        if isinstance(result, SkipImage):
            skipped.append({"path": path, "reason": result.reason, "detail": result.detail})
            continue
        paths.append(path)
        images.append(result)
        if len(images) == size:
            yield paths, images
            paths, images = [], []
    if images:
        yield paths, images

