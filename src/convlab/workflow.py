"""Train, then calibrate, then report: what `convlab train`, `tune` and the package API run.

The trainer (`convlab.training`) fits a model and writes its run folder; calibrating it
(`convlab.prediction`) and evaluating it into report.html (`convlab.evaluation`) are layers
above training, so they are composed here and handed to the trainer as its `after_fit` step.
The trainer runs that step on the chief alone, where fitting ends: in the run folder still
locked (`convlab runs` shows it training until the report is written) and under the run's
precision policy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from convlab.runs import read_record

if TYPE_CHECKING:
    from convlab.config import TrainConfig
    from convlab.data.manifest import Manifest


def train(config: TrainConfig | str | None = None, *, progress: bool = True,
          budget_minutes: float | None = None, **overrides) -> Path | None:
    """Train a model (or a recipe), write a run folder, calibrate the model and report on it.

    Args:
        config: a `TrainConfig`, a recipe or model name, or None: with no `model` among the
            overrides, the approach is chosen from the data and this machine within
            `budget_minutes` (see `convlab.training.auto`).
        progress: show progress bars (else one line per epoch).
        budget_minutes: the time budget of a chosen approach (default 20).
        **overrides: fields of `TrainConfig` to replace (`schedule`/`augment` take dicts).

    Returns:
        The run folder: config.json, history.csv/json, logs/ (TensorBoard), checkpoints/,
        best.keras, model.keras, plots/, summary.txt/json; with a validation split also
        calibration.json, and (unless `report=False`) metrics.json and report.html. In a
        multi-worker job only the chief writes one; other workers get None.

    Raises:
        ConvlabError: bad config or data.
    """
    from convlab.training import trainer

    return trainer.train(config, progress=progress, budget_minutes=budget_minutes,
                         after_fit=calibrate_and_report, **overrides)


def resume(run: str | os.PathLike, *, progress: bool = True) -> Path | None:
    """Continue an interrupted run from its last completed epoch, in the same folder, then
    calibrate and report as `train` does.

    Raises:
        ConvlabError: not a run folder, or nothing to resume.
    """
    from convlab.training import trainer

    return trainer.resume(run, progress=progress, after_fit=calibrate_and_report)


def tune(config: TrainConfig | str, **options) -> dict:
    """Hyperparameter search (see `convlab.training.tune.tune` for the options), each trial's
    model calibrated as a trained run's is."""
    from convlab.training import tune as search

    return search.tune(config, after_fit=calibrate_and_report, **options)


def calibrate_and_report(run: Path, config: TrainConfig, manifest: Manifest, *,
                         progress: bool) -> None:
    """After fitting: calibrate the model on the validation split, then (unless the config
    says `report=False`) evaluate it, write report.html and print each split's summary."""
    validated = manifest.has_split("validation")
    if validated:
        from convlab.prediction import calibrate

        print(f"calibration: {calibrate(run, progress=progress).summary()}")
    if config.report and not validated:
        print("report: not written, as the data has no validation split; measure the model "
              f"on other photos with `convlab evaluate {run} --data PHOTOS`")
    elif config.report:
        from convlab.evaluation.metrics import load_metrics, summary_line
        from convlab.evaluation.report import report, test_split

        print(f"report: {report(run)}")
        print(f"validation split: {summary_line(load_metrics(run))}")
        if (tested := test_split(read_record(run))) is not None:
            print(f"test split: {summary_line(tested)}")
