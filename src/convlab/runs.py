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
