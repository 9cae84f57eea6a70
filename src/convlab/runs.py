"""The run folder (written by `convlab train`): every file name in it, and reading it.

One owner for it, so train, resume, evaluate, report, predict and export agree on what a run
folder is, name its files the same way and say the same thing when it is not one.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from convlab.config import TrainConfig
from convlab.errors import ConvlabError
from convlab.files import LOCK

MODEL_FILES = {"best": "best.keras", "final": "model.keras"}
# The plots a run folder can hold (RUN/plots/NAME.png, see `RunFolder.plot`), in the order
# the report shows them: drawn by `convlab.evaluation.plots`, lr_schedule by the trainer.
PLOTS = ("training_curves", "lr_schedule", "confusion_matrix", "top_confusions", "predictions",
         "mistakes", "mistakes_gradcam", "reliability", "augmentation")


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder; the only place their names are spelled."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / "config.json")  # resolved config + derived
    state = property(lambda self: self.path / "state.json")  # last finished epoch, best score
    history_csv = property(lambda self: self.path / "history.csv")  # appended per epoch
    history_json = property(lambda self: self.path / "history.json")
    summary_json = property(lambda self: self.path / "summary.json")
    summary_txt = property(lambda self: self.path / "summary.txt")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best = property(lambda self: self.path / MODEL_FILES["best"])
    final = property(lambda self: self.path / MODEL_FILES["final"])
    logs = property(lambda self: self.path / "logs")  # TensorBoard
    plots = property(lambda self: self.path / "plots")
    metrics = property(lambda self: self.path / "metrics.json")  # evaluate: its validation
    predictions = property(lambda self: self.path / "predictions.npz")
    mistakes = property(lambda self: self.path / "mistakes.csv")  # evaluate: with their files
    evaluations = property(lambda self: self.path / "evaluations")  # evaluate: other data
    report = property(lambda self: self.path / "report.html")
    export = property(lambda self: self.path / "export")
    review = property(lambda self: self.path / "review")  # suspected label errors
    # calibrate: the temperature and out-of-scope threshold, and the training features the
    # out-of-scope score compares each photo with
    calibration = property(lambda self: self.path / "calibration.json")
    feature_bank = property(lambda self: self.path / "calibration-features.npy")

    def checkpoint(self, epoch: int) -> Path:
        """The full model (with optimizer state) after `epoch` finished epochs."""
        return self.checkpoints / f"epoch-{epoch:03d}.keras"

    def plot(self, name: str) -> Path:
        """RUN/plots/NAME.png, for a NAME of `PLOTS`."""
        if name not in PLOTS:
            raise ValueError(f"no run plot is named {name!r}; they are: {', '.join(PLOTS)}")
        return self.plots / f"{name}.png"

    def model(self, which: str) -> Path:
        return self.path / MODEL_FILES[which]

    def evaluation(self, label: str | None) -> RunFolder:
        """Where an evaluation writes its metrics.json and predictions.npz: the run folder
        itself for the run's own validation split (label None), else evaluations/LABEL/."""
        return self if label is None else RunFolder(self.evaluations / label)


def new_run_folder(parent: str | os.PathLike, name: str) -> Path:
    """A new folder PARENT/<time>-<name>, created atomically: two started in the same second
    get <time>-<name> and <time>-<name>-2, never the same folder.

    Raises:
        ConvlabError: `parent` cannot hold folders, or one cannot be created there.
    """
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConvlabError(f"cannot use --runs-dir '{parent}' for run folders: "
                           f"{err.strerror or err}; give a folder path") from None
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    for n in range(1, 1000):
        path = parent / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise ConvlabError(f"cannot create the run folder '{path}': "
                               f"{err.strerror or err}") from None
    raise ConvlabError(f"999 run folders named '{base}' already exist in '{parent}'")


def read_run(run: str | os.PathLike) -> tuple[Path, dict]:
    """(run folder, its config.json: {"config": ..., "derived": ...}).

    Raises:
        ConvlabError: not a run folder.
    """
    folder = RunFolder(run)
    if not folder.config.is_file():
        raise ConvlabError(f"'{folder.path}' is not a convlab run folder (no config.json); "
                           "give the folder `convlab train` printed")
    try:
        return folder.path, json.loads(folder.config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ConvlabError(f"'{folder.config}' is damaged ({getattr(err, 'msg', err)}); the "
                           "run's settings are lost: train it again") from None


@dataclass(frozen=True)
class RunRecord:
    """A run folder's config.json, typed: the resolved config and what training derived
    from it (written once by the trainer; evaluate, report, plots, predict and export read it
    here instead of picking keys out of the JSON)."""

    path: Path
    config: TrainConfig
    image_size: int  # the training size (test_size: the size the model is run at)
    classes: list[str]
    prepared_data: str | None  # the prepared folder trained on (a path or gs:// URL)
    stored_size: int | None  # its images' size; None for runs made before it was recorded
    jpeg_quality: int | None
    global_batch: int | None
    steps_per_epoch: int | None
    precision: str | None
    strategy: str | None
    lr_per_epoch: list[float]
    derived: dict  # everything the trainer recorded, as written

    @property
    def test_size(self) -> int:
        """The size the model is evaluated, predicted and exported at: the training size
        times the config's `test_scale` (larger than 1: FixRes)."""
        return int(self.derived.get("test_image_size") or self.image_size)


def read_record(run: str | os.PathLike) -> RunRecord:
    """The typed record of a run folder (see `RunRecord`).

    Raises:
        ConvlabError: not a run folder, or a damaged config.json.
    """
    path, saved = read_run(run)
    d = saved.get("derived", {})
    try:
        return RunRecord(path, TrainConfig.from_dict(saved["config"]), int(d["image_size"]),
                         list(d["classes"]), d.get("prepared_data"), d.get("stored_size"),
                         d.get("jpeg_quality"), d.get("global_batch"), d.get("steps_per_epoch"),
                         d.get("precision"), d.get("strategy"), list(d.get("lr_per_epoch") or []),
                         d)
    except (KeyError, TypeError, ValueError) as err:
        raise ConvlabError(f"'{RunFolder(path).config}' is damaged (missing or bad {err}); "
                           "the run's settings are lost: train it again") from None


def read_json(path: Path) -> dict | None:
    """A run's small JSON file, a JSON object; None if absent, half-written or damaged."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def read_state(run: str | os.PathLike) -> dict | None:
    """state.json ({"epoch": finished epochs, "best": ...}); None if absent or damaged."""
    state = read_json(RunFolder(run).state)
    return state if state is not None and isinstance(state.get("epoch"), int) else None


def is_training(run: str | os.PathLike) -> bool:
    """Whether a live process trains the run now: it holds the run folder's lock (taken by
    `convlab train` from the folder's creation to its end; the kernel drops it however that
    process ends, so a killed run never looks alive)."""
    import fcntl

    try:
        handle = open(RunFolder(run).path / LOCK, "rb")  # noqa: SIM115  (closed below)
    except OSError:  # never trained here, or not ours to read
        return False
    with handle:
        # Shared and released at once: a `--resume` starting in that microsecond is refused.
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a file system without locks: training could not lock it either
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def checkpoints(run: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epoch, file) of the run's epoch checkpoints, oldest first; none newer than state.json
    says were finished (a file written after it is from an epoch that did not end)."""
    folder = RunFolder(run)
    found = []
    for path in folder.checkpoints.glob("epoch-*.keras") if folder.checkpoints.is_dir() else ():
        stem = path.name[len("epoch-"):-len(".keras")]
        if stem.isdigit() and path == folder.checkpoint(int(stem)):
            found.append((int(stem), path))
    state = read_state(run)
    return sorted(c for c in found if state is None or c[0] <= state["epoch"])


def last_checkpoint(run: str | os.PathLike) -> tuple[int, Path] | None:
    """(epochs finished, their checkpoint) of a run folder; None before its first epoch.
    From state.json, or the newest checkpoint file when state.json is damaged."""
    state = read_state(run)
    if state is not None:
        return state["epoch"], RunFolder(run).checkpoint(state["epoch"])
    found = checkpoints(run)
    return found[-1] if found else None


def history_rows(run: str | os.PathLike) -> list[dict]:
    """The per-epoch rows of history.csv (epoch counted from 0, as Keras writes it). What an
    epoch did not measure (Keras writes `NA`: e.g. val_* of a run without a validation split)
    is left out of its row."""
    path = RunFolder(run).history_csv
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items()
                 if v not in ("NA", "", None)} for row in csv.DictReader(f)]


@dataclass(frozen=True)
class RunInfo:
    """What a run folder says about the images its model expects."""

    path: Path
    test_size: int  # the size its model takes: the run's test size (= training size by default)
    classes: list[str]
    prepared: Path | None  # the run's prepared TFRecords, when still there
    stored_size: int  # the size the training images were prepared at
    quality: int  # their JPEG quality


DEFAULT_QUALITY = 90  # `convlab data prepare`'s; for runs that did not record theirs


def run_info(run: str | os.PathLike) -> RunInfo:
    """What predict and export need, from config.json (recorded at training time; runs made
    before that recorded it are completed from their prepared data's manifest).

    Raises:
        ConvlabError: not a run folder.
    """
    from convlab.data.manifest import is_prepared, read_manifest

    record = read_record(run)
    size = record.test_size
    prepared = Path(record.prepared_data) if record.prepared_data else None
    if prepared is not None and not is_prepared(prepared):
        prepared = None
    stored, quality = record.stored_size, record.jpeg_quality
    if (stored is None or quality is None) and prepared is not None:
        manifest = read_manifest(prepared, check_shards=False)
        stored = stored or manifest.stored_size
        quality = quality or manifest.quality
    return RunInfo(record.path, size, record.classes, prepared, int(stored or size),
                   int(quality or DEFAULT_QUALITY))


def load_run_model(run: str | os.PathLike, which: str = "best", image_size: int | None = None):
    """(model, path): the run's best.keras ("best") or model.keras ("final", last epoch),
    taking images of `image_size` (default: the run's test size). A size other than the one
    it was trained at gets the same model with free spatial input dimensions.

    Raises:
        ConvlabError: a bad `which`, or no such model file.
    """
    if which not in MODEL_FILES:
        raise ConvlabError(f"--model must be 'best' or 'final', received: {which!r}")
    run = Path(run)
    path = RunFolder(run).model(which)
    if which == "best" and not path.exists():
        path = RunFolder(run).final  # no validation split: nothing was ever "best"
    if not path.is_file():
        raise ConvlabError(f"run '{run}' has no {path.name} (unfinished run?); continue it "
                           f"with `convlab train --resume {run}`")
    import keras

    import convlab.models.layers  # noqa: F401  (registers convlab's custom layers for loading)

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # a truncated or overwritten file: zip, h5 or config errors
        other = " (or try --model final)" if which == "best" else ""
        raise ConvlabError(f"cannot load '{path}': {why_not_loaded(err)}; train the run "
                           f"again{other}") from None
    size = image_size or read_record(run).test_size
    if model.input_shape[1:3] not in ((size, size), (None, None)):
        from convlab.models import with_free_size

        model = with_free_size(model)
    return model, path


def why_not_loaded(err: Exception) -> str:
    """Why Keras could not load a model file, for a person: refused as unsafe (code inside),
    refused as foreign (layers convlab does not make), or damaged."""
    text = str(err)
    if "safe_mode" in text or "arbitrary code" in text:
        return ("it holds Python code (a Lambda layer) that loading would run, so Keras' safe "
                "mode refused it; convlab has no option to allow that, as its own models never "
                "hold code: this file was not written by convlab, or was altered")
    if "could not be deserialized" in text or "Could not locate" in text:
        return ("it describes layers convlab does not make, so it was refused unloaded: this "
                "file was not written by convlab, or was altered")
    return f"the file is damaged ({type(err).__name__})"


