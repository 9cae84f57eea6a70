"""Reading a run folder (written by `convlab train`): its config and its trained models.

One place for it, so evaluate, report, predict, export and resume agree on what a run folder
is and say the same thing when it is not one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from convlab.errors import ConvlabError

MODEL_FILES = {"best": "best.keras", "final": "model.keras"}


def read_run(run: str | os.PathLike) -> tuple[Path, dict]:
    """(run folder, its config.json: {"config": ..., "derived": ...}).

    Raises:
        ConvlabError: not a run folder.
    """
    run = Path(run)
    if not (run / "config.json").is_file():
        raise ConvlabError(f"'{run}' is not a convlab run folder (no config.json); give the "
                           "folder `convlab train` printed")
    return run, json.loads((run / "config.json").read_text())


def load_run_model(run: str | os.PathLike, which: str = "best"):
    """(model, path): the run's best.keras ("best") or model.keras ("final", last epoch).

    Raises:
        ConvlabError: a bad `which`, or no such model file.
    """
    if which not in MODEL_FILES:
        raise ConvlabError(f"--model must be 'best' or 'final', received: {which!r}")
    run = Path(run)
    path = run / MODEL_FILES[which]
    if which == "best" and not path.exists():
        path = run / MODEL_FILES["final"]  # no validation split: nothing was ever "best"
    if not path.is_file():
        raise ConvlabError(f"run '{run}' has no {path.name} (unfinished run?); continue it "
                           f"with `convlab train --resume {run}`")
    import keras

    import convlab.models.layers  # noqa: F401  (registers convlab's custom layers for loading)

    return keras.models.load_model(path, compile=False), path


TTA_MODES = ("none", "flip")


def check_tta(tta: str | None) -> str:
    """The test-time augmentation mode ("none" for None); ConvlabError for an unknown one."""
    tta = tta or "none"
    if tta not in TTA_MODES:
        raise ConvlabError(f"--tta must be one of {', '.join(TTA_MODES)}, received: {tta!r}")
    return tta


def predict_batch(model, images, tta: str | None = None):
    """Class probabilities for a batch of [0, 1] images, with optional test-time augmentation.

    `tta="flip"` averages the probabilities of each image and its left-right mirror image
    (training flips images, so both are equally familiar to the model); it costs one more
    forward pass.

    Raises:
        ConvlabError: an unknown `tta`.
    """
    import numpy as np

    tta = check_tta(tta)
    probs = np.asarray(model.predict_on_batch(images), dtype=np.float32)
    if tta == "flip":
        mirrored = np.asarray(images)[:, :, ::-1]
        probs = (probs + np.asarray(model.predict_on_batch(mirrored), dtype=np.float32)) / 2
    return probs
