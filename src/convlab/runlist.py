"""`convlab runs`: every run folder of a runs directory at a glance, one typed row each.

A row is read from a run's small files only (config.json, state.json, summary.json,
metrics.json, history.csv; never a model), so tens of runs list in a fraction of a second
and without TensorFlow. It says what the run recorded and "-" (None) for what it did not:
runs made by older versions lack fields, and a run still training has no summary yet.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from convlab.errors import ConvlabError
from convlab.progress import duration
from convlab.runs import (
    RunFolder,
    history_rows,
    is_training,
    read_json,
    read_run,
    read_state,
)

# running: a live `convlab train` holds the folder; finished: summary.json was written at
# the end; interrupted: neither (resume it); damaged: its config.json cannot be read.
STATES = ("running", "finished", "interrupted", "damaged")


@dataclass(frozen=True)
class RunRow:
    """One run folder, summarised: the listing's row and the comparison's column."""

    name: str  # the folder's name
    path: Path
    state: str  # one of STATES
    model: str | None = None
    recipe: str | None = None
    data: str | None = None  # what it was trained on, as given (a folder, URL or name)
    prepared_data: str | None = None  # the prepared folder that was read
    image_size: int | None = None  # training size, px
    test_size: int | None = None  # evaluated at
    epochs_done: int | None = None
    epochs_total: int | None = None
    val_accuracy: float | None = None
    # "evaluate": RUN/metrics.json (the run's model on its validation split at its test
    # size, as `convlab evaluate` and the report give it); "training": the best epoch's
    # val_accuracy in history.csv, for a run not evaluated yet
    val_accuracy_from: str | None = None
    evaluations: dict[str, float] = field(default_factory=dict)  # other data or splits
    started: datetime | None = None
    seconds: float | None = None  # fitting time (summary.json): finished runs only
    images_per_second: float | None = None  # training speed (summary.json)
    problem: str | None = None  # why a damaged run is damaged

    def to_dict(self) -> dict:
        """The row as JSON values (paths and times as text)."""
        row = asdict(self)
        row["path"] = str(self.path)
        row["started"] = self.started.isoformat(timespec="seconds") if self.started else None
        return row


@dataclass(frozen=True)
class RunList:
    """The runs of a runs directory, and its folders that are not runs."""

    root: Path
    rows: list[RunRow]
    not_runs: list[str]  # folder names without a config.json


def list_runs(runs_dir: str | os.PathLike = "runs") -> RunList:
    """Every run folder directly in `runs_dir`, by name (see `sort_rows` for other orders).

    Raises:
        ConvlabError: `runs_dir` is not a folder.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConvlabError(f"'{root}' is not a folder of runs (it does not exist or is not a "
                           "folder); give the folder `convlab train` wrote its runs into "
                           "(its --runs-dir, default 'runs')")
    rows, not_runs = [], []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        # A run starting this instant holds its folder before it writes config.json.
        if RunFolder(child).config.is_file() or is_training(child):
            rows.append(read_row(child))
        else:
            not_runs.append(child.name)
    return RunList(root, rows, not_runs)


def read_row(run: str | os.PathLike) -> RunRow:
    """The row of one run folder; a damaged config.json gives a row in state "damaged"."""
    folder = RunFolder(run)
    training = is_training(folder.path)
    base = {"name": folder.path.name, "path": folder.path, "started": _started(folder)}
    try:
        config, derived = run_settings(folder.path)
    except ConvlabError as err:
        if training:  # its config.json is not written yet, or half-written
            return RunRow(**base, state="running")
        return RunRow(**base, state="damaged", problem=str(err))
    if training:
        state = "running"
    else:
        state = "finished" if folder.summary_json.is_file() else "interrupted"
    summary = read_json(folder.summary_json) or {}
    accuracy, source = _val_accuracy(folder)
    return RunRow(
        **base, state=state, model=_text(config.get("model")), recipe=_text(config.get("recipe")),
        data=_text(config.get("data")), prepared_data=_text(derived.get("prepared_data")),
        image_size=_whole(derived.get("image_size") or config.get("image_size")),
        test_size=_whole(derived.get("test_image_size") or derived.get("image_size")),
        epochs_done=_epochs_done(folder, summary), epochs_total=_epochs_total(config),
        val_accuracy=accuracy, val_accuracy_from=source,
        evaluations=_evaluations(folder.path), seconds=_number(summary.get("wall_seconds")),
        images_per_second=_number(summary.get("train_images_per_second")))


def run_settings(run: str | os.PathLike) -> tuple[dict, dict]:
    """A run's config.json: its "config" and "derived" as written. Not `read_record`: that
    refuses a run made by a version that recorded less, which is listed and compared with
    "-" for what it lacks instead.

    Raises:
        ConvlabError: not a run folder, or a damaged config.json.
    """
    folder = RunFolder(run)
    _, saved = read_run(folder.path)
    saved = saved if isinstance(saved, dict) else {}
    config, derived = saved.get("config"), saved.get("derived") or {}
    if not isinstance(config, dict) or not isinstance(derived, dict):
        raise ConvlabError(f"'{folder.config}' is damaged (no settings in it); the run's "
                           "settings are lost: train it again")
    return config, derived


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _whole(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _started(folder: RunFolder) -> datetime | None:
    """When the run started: the time `convlab train` puts first in a run folder's name
    (YYYYmmdd-HHMMSS-NAME, which survives copies), else its config.json's time."""
    try:
        return datetime.strptime(folder.path.name[:15], "%Y%m%d-%H%M%S")
    except ValueError:
        pass
    try:
        return datetime.fromtimestamp(folder.config.stat().st_mtime)
    except OSError:
        return None


def _epochs_total(config: dict) -> int | None:
    epochs = _whole(config.get("epochs"))
    return None if epochs is None else epochs + (_whole(config.get("fine_tune_epochs")) or 0)


def _epochs_done(folder: RunFolder, summary: dict) -> int | None:
    """Finished epochs: state.json's (the commit point of each epoch), else the summary's."""
    state = read_state(folder.path)
    return state["epoch"] if state else _whole(summary.get("epochs"))


def read_history(run: str | os.PathLike) -> list[dict]:
    """history.csv's rows (see `history_rows`) of the epochs state.json says finished (an
    interrupted run may have logged one more, which its resume trains again); none while
    the file's first line is being written or when it is damaged."""
    try:
        rows = history_rows(run)
    except (OSError, ValueError, KeyError):
        return []
    state = read_state(run)
    return rows if state is None else [h for h in rows if h.get("epoch", 0) < state["epoch"]]


def _val_accuracy(folder: RunFolder) -> tuple[float | None, str | None]:
    measured = _number((read_json(folder.metrics) or {}).get("accuracy"))
    if measured is not None:
        return measured, "evaluate"
    epochs = [_number(h.get("val_accuracy")) for h in read_history(folder.path)]
    epochs = [v for v in epochs if v is not None]
    return (max(epochs), "training") if epochs else (None, None)


def _evaluations(run: Path) -> dict[str, float]:
    """Accuracy per evaluation folder (evaluations/LABEL/)."""
    from convlab.evaluation.metrics import other_evaluations

    return {m["evaluation"]: a for m in other_evaluations(run)
            if isinstance(m.get("evaluation"), str) and (a := _number(m.get("accuracy")))
            is not None}


# Each order: (the row's key, None for rows without one (listed last), largest first).
SORTS = {
    "time": (lambda r: r.started, True),  # newest first
    "accuracy": (lambda r: r.val_accuracy, True),
    "epochs": (lambda r: r.epochs_done, True),
    "name": (lambda r: r.name, False),
    "state": (lambda r: STATES.index(r.state), False),
}


def sort_rows(rows: list[RunRow], by: str = "time") -> list[RunRow]:
    """`rows` in the order `by` (one of SORTS); rows that lack the key come last.

    Raises:
        ConvlabError: an unknown order.
    """
    if by not in SORTS:
        raise ConvlabError(f"--sort must be one of {', '.join(SORTS)}, received: {by!r}")
    key, largest_first = SORTS[by]
    known = [r for r in rows if key(r) is not None]
    return sorted(known, key=key, reverse=largest_first) + [r for r in rows if key(r) is None]


def _short_data(row: RunRow) -> str:
    """The data's last name (`flower_photos`); the whole path is in the CSV and JSON."""
    return (Path(row.data.rstrip("/")).name or row.data) if row.data else "-"


def _epochs_text(row: RunRow) -> str:
    if row.epochs_done is None and row.epochs_total is None:
        return "-"
    return f"{'-' if row.epochs_done is None else row.epochs_done}/{row.epochs_total or '-'}"


def _accuracy_text(row: RunRow) -> str:
    if row.val_accuracy is None:
        return "-"
    return ("~" if row.val_accuracy_from == "training" else "") + f"{row.val_accuracy:.4f}"


def _evaluation_texts(row: RunRow) -> list[str]:
    """"LABEL ACCURACY" per other evaluation; the run's own prepared data's name is left out
    of its labels (`test 0.9570` for its test split)."""
    own = Path(row.prepared_data).name + "-" if row.prepared_data else None
    return [f"{label[len(own):] if own and label.startswith(own) else label} {accuracy:.4f}"
            for label, accuracy in row.evaluations.items()]


# The listing's columns as people read them: (header, the row's text). The CSV and JSON
# give the row's values instead (`RunRow.to_dict`).
COLUMNS = (
    ("run", lambda r: r.name),
    ("state", lambda r: r.state),
    ("recipe/model", lambda r: r.recipe or r.model or "-"),
    ("data", _short_data),
    ("px", lambda r: "-" if r.image_size is None else str(r.image_size)),
    ("epochs", _epochs_text),
    ("val acc", _accuracy_text),
    ("evaluations", lambda r: ", ".join(_evaluation_texts(r)) or "-"),
    ("started", lambda r: r.started.strftime("%Y-%m-%d %H:%M") if r.started else "-"),
    ("took", lambda r: duration(r.seconds)),
)

ACCURACY_NOTE = ("val acc: the run's model on its validation split (`convlab evaluate`); "
                 "~: the best epoch's during training, for runs not evaluated yet")


def csv_values(row: RunRow) -> list:
    """The row's values for a CSV line (headers: `RunRow.to_dict`'s keys)."""
    values = row.to_dict()
    values["evaluations"] = "; ".join(f"{k}={v}" for k, v in row.evaluations.items())
    return ["" if v is None else v for v in values.values()]
