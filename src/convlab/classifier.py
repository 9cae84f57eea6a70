"""A trained run as one object: `clf = convlab.load(RUN)`, then `clf.predict(...)`.

The model is loaded once; every input (a file path, a PIL image, a numpy array) takes the
same road to the model as `convlab predict`'s files and the training images: the ingest's
decoding and resize to the stored size, JPEG at the run's quality, TensorFlow's JPEG
decoder, then the resize to the training size.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from convlab.data.decode import SkipImage
from convlab.errors import ConvlabError
from convlab.prediction import Outputs, Predictor, answers, check_tta
from convlab.runs import MODEL_FILES, RunInfo


class Classifier:
    """One run's model, loaded once.

    Attributes:
        run: the run folder.
        classes: class names, in the model's output order.
        test_size: the size the model takes (inputs are resized to it): the run's test size,
            which is its training size unless its config set `test_scale`.
        model: the Keras model (best.keras or model.keras).
        which: "best" or "final".
    """

    def __init__(self, run: str | os.PathLike, model: str = "best"):
        self.predictor = Predictor(run, model)
        self.info: RunInfo = self.predictor.info
        self.model, self.model_path = self.predictor.model, self.predictor.path
        self.which = model
        self.run, self.classes, self.test_size = (self.info.path, list(self.info.classes),
                                                   self.info.test_size)

    def __repr__(self) -> str:
        return (f"Classifier(run='{self.run}', model={self.model_path.name}, "
                f"classes={self.classes}, test_size={self.test_size}; "
                f"{self.predictor.describe()})")

    # -- inputs ------------------------------------------------------------------------

    def _pixels(self, image) -> np.ndarray:
        """One input -> uint8 (size, size, 3), exactly as training saw its photos."""
        from PIL import Image, ImageOps

        from convlab.inference import decode_bytes

        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise ConvlabError(f"image not found: '{path}'; give an image file (for "
                                   "folders use convlab.predict(RUN, [FOLDER]))")
            data, name = path.read_bytes(), f"'{path}'"
        else:
            if isinstance(image, np.ndarray):
                if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
                        image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                    raise ConvlabError(
                        f"a numpy image must be uint8 (H, W), (H, W, 3) or (H, W, 4), "
                        f"received: {image.dtype} {image.shape}; convert float pixels in "
                        "[0, 1] with (x * 255).round().astype('uint8')")
                image = Image.fromarray(image[..., 0] if image.ndim == 3 and
                                        image.shape[2] == 1 else image)
            elif not isinstance(image, Image.Image):
                raise ConvlabError(f"cannot classify a {type(image).__name__}; give image "
                                   "paths, PIL images or uint8 numpy arrays")
            buffer = io.BytesIO()
            ImageOps.exif_transpose(image).save(buffer, format="PNG")  # lossless hand-over
            data, name = buffer.getvalue(), f"the {type(image).__name__} image"
        try:
            return decode_bytes(data, self.info)
        except SkipImage as skip:
            raise ConvlabError(f"cannot classify {name}: {skip.reason}"
                               f"{' (' + skip.detail + ')' if skip.detail else ''}") from None

    @staticmethod
    def _as_list(images) -> tuple[list, bool]:
        """(inputs, whether one input was given)."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return list(images), False
        if isinstance(images, (list, tuple)):
            return list(images), False
        return [images], True

    # -- predictions -------------------------------------------------------------------

    def outputs(self, images, *, batch_size: int = 64, tta: str | None = None) -> Outputs:
        """The model's `Outputs` (calibrated probabilities, out-of-scope scores, ...) for a
        list of inputs (or one)."""
        items, _ = self._as_list(images)
        tta = check_tta(tta)
        if batch_size < 1:
            raise ConvlabError(f"batch_size must be positive, received: {batch_size}")
        return Outputs.join([self.predictor(np.stack([self._pixels(i) for i in
                                                      items[s:s + batch_size]]), tta=tta)
                             for s in range(0, len(items), batch_size)], len(self.classes))

    def probabilities(self, images, *, batch_size: int = 64, tta: str | None = None
                      ) -> np.ndarray:
        """Class probabilities, (N, classes), for a list of inputs (or one: (1, classes)):
        calibrated when the run is (see `convlab.prediction`). Inputs as for `predict`:
        image file paths, PIL images, uint8 numpy arrays (H, W[, C]), or one uint8 batch
        (N, H, W, C)."""
        return self.outputs(images, batch_size=batch_size, tta=tta).probabilities

    def predict(self, images, top_k: int = 3, *, batch_size: int = 64, tta: str | None = None,
                reject: bool = True):
        """The top-k classes of one input or of each of a list.

        Args:
            images: an image file path, a PIL image or a uint8 numpy array (H, W[, C]); or a
                list of them, or a uint8 batch (N, H, W, C).
            top_k: classes per image (at most the number of classes).
            batch_size: images per model call.
            tta: None/"none", or "flip" (average each image and its mirror image).
            reject: say "none of the classes" for an image unlike the run's training photos
                (a calibrated run); False: the bare top-k.

        Returns:
            For one input, a `TopK`: [{"class", "probability"}, ...] most probable first, with
            `.none_of_the_classes` (True for an image of none of the run's classes, None for
            an uncalibrated run), `.score` and `.threshold`; it prints as "none of the
            classes (score ...); [...]" then. For a list, one `TopK` per input, in order.

        Raises:
            ConvlabError: a missing or unreadable file, an input that is not an image, bad
                options.
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ConvlabError(f"top_k must be a positive integer, received: {top_k!r}")
        _, single = self._as_list(images)
        out = self.outputs(images, batch_size=batch_size, tta=tta)
        rows = answers(out, self.predictor, min(top_k, len(self.classes)), reject)
        return rows[0] if single else rows

    # -- the run's other tools, on this model --------------------------------------------

    def evaluate(self, data: str | os.PathLike | None = None, split: str | None = None, *,
                 top_k: int | None = None, tta: str | None = None,
                 image_size: int | None = None) -> dict:
        """`convlab.evaluate` on this model; see `convlab.evaluation.metrics.evaluate`."""
        from convlab.evaluation.metrics import evaluate

        return evaluate(self.run, data=data, split=split, model=self.which, top_k=top_k,
                        tta=tta, image_size=image_size)

    def export(self, format: str = "keras", quantize: str | None = None,
               out: str | os.PathLike | None = None, **options) -> dict:
        """`convlab.export` of this model; see `convlab.serving.export`."""
        from convlab.serving import export

        return export(self.run, format, quantize, out, model=self.which, **options)


def load(run: str | os.PathLike, model: str = "best") -> Classifier:
    """A trained run as a `Classifier`: `convlab.load("runs/...").predict("rose.jpg")`.

    Args:
        run: a run folder written by `convlab.train`.
        model: "best" (best validation accuracy) or "final" (the last epoch).

    Raises:
        ConvlabError: not a run folder, or no such model file.
    """
    if model not in MODEL_FILES:
        raise ConvlabError(f"model must be 'best' or 'final', received: {model!r}")
    return Classifier(run, model)
