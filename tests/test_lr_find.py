"""The learning-rate range test: on a toy problem the loss falls, then explodes, and the
suggestion lies on the way down; its plot, numbers, CLI and one-line errors."""

import argparse
import inspect
import io
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from convlab.cli.lrfind import register
from convlab.config import TrainConfig
from convlab.errors import ConvlabError
from convlab.training.lr_find import _suggest, lr_find

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A tiny SqueezeNet on 4 shape classes; no augmentation and 16-image batches, so that the
# loss falls clearly within a few dozen steps.
TINY = {"model": "squeezenet", "image_size": 16, "batch_size": 16, "precision": "float32",
        "augment": None, "model_options": {"layout": [[8, 16], "pool", [8, 16]]},
        "report": False}
SWEEP = {"start_lr": 1e-4, "end_lr": 100.0, "steps": 80}


@pytest.fixture(scope="module")
def tiny_data(tiny_prepared):
    return tiny_prepared(classes=4, per_class=25)


@pytest.fixture(scope="module")
def found(tiny_data, tmp_path_factory):
    return lr_find(TrainConfig(**TINY), data=tiny_data, smoothing=0.9, progress=False,
                   out=tmp_path_factory.mktemp("lr-find"), **SWEEP)


def cli(argv):
    parser = argparse.ArgumentParser(prog="convlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_loss_falls_then_explodes_and_the_run_stops_at_the_divergence(found):
    lrs, smoothed = np.array(found["lrs"]), np.array(found["smoothed_losses"], dtype=float)
    assert found["steps_run"] == len(lrs) == len(smoothed) == len(found["losses"])
    # The optimizer ran at the sweep's rates: geometric from start_lr towards end_lr.
    assert lrs[0] == pytest.approx(SWEEP["start_lr"], rel=1e-5)
    np.testing.assert_allclose(np.diff(np.log(lrs)), math.log(1e6) / 79, rtol=1e-3)
    # Stopped early, at the first step past 4x the minimum so far.
    assert found["steps_run"] < SWEEP["steps"]
    assert found["diverged"] == {"step": found["steps_run"] - 1, "lr": found["lrs"][-1]}
    assert not smoothed[-1] <= 4 * np.nanmin(smoothed)
    assert np.all(smoothed[:-1] <= 4 * np.minimum.accumulate(smoothed[:-1]))
    # Fell: the minimum is well below the loss after the first tenth, and comes later.
    first, minimum = len(lrs) // 10, found["minimum"]
    assert first < minimum["step"] < found["diverged"]["step"]
    assert minimum["loss"] == pytest.approx(smoothed[first:].min())
    assert minimum["loss"] < 0.8 * smoothed[first]
    assert minimum["lr_over_10"] == pytest.approx(minimum["lr"] / 10)


def test_smoothed_loss_is_the_bias_corrected_moving_average_of_each_steps_loss(found):
    raw, average, expected = found["losses"], 0.0, []
    for i, loss in enumerate(raw[:-1]):  # the last (diverged) one may not be finite
        average = 0.9 * average + 0.1 * loss
        expected.append(average / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(found["smoothed_losses"][:-1], expected, rtol=1e-9)
    # Each step's own loss, not Keras' running mean over the epoch: it jumps about.
    assert np.abs(np.diff(raw[10:40])).max() > 0.08


def test_suggestion_is_the_steepest_descent_before_the_minimum(found):
    suggestion, minimum = found["suggestion"], found["minimum"]
    assert suggestion["rule"] == "steepest descent of the smoothed loss"
    assert suggestion["step"] < minimum["step"] and suggestion["lr"] < minimum["lr"]
    assert suggestion["lr"] < found["diverged"]["lr"]
    assert suggestion["lr"] == found["lrs"][suggestion["step"]]
    # On the way down: below the loss where the sweep began.
    assert suggestion["loss"] < found["smoothed_losses"][len(found["lrs"]) // 10]
    assert found["recipe_lr"] == TrainConfig().schedule.learning_rate


def test_suggestion_without_a_descent_falls_back_to_a_tenth_of_the_minimum():
    lrs = list(np.geomspace(1e-5, 1, 40))
    rising = list(np.linspace(1.0, 3.0, 40))
    result = _suggest(lrs, rising)
    assert result["suggestion"]["rule"].startswith("minimum / 10")
    assert result["suggestion"]["lr"] == pytest.approx(result["minimum"]["lr"] / 10)
    assert result["minimum"]["step"] == 4  # the first tenth is not searched


def test_plot_and_numbers_are_written(found, tmp_path):
    with open(found["plot"], "rb") as f:
        data = f.read()
    assert data.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size[0] > 300 and image.size[1] > 200
    with open(found["json"]) as f:
        assert json.load(f) == found


def test_cli_prints_the_curve_and_the_suggestion(tiny_data, tmp_path, capsys):
    settings = [f"{k}={json.dumps(v)}" for k, v in TINY.items()
                if k not in ("batch_size", "image_size")]
    code = cli(["lr-find", "squeezenet", "--data", str(tiny_data), "--start-lr", "1e-4",
                "--end-lr", "100", "--steps", "40", "--smoothing", "0.9", "--batch-size", "16",
                "--image-size", "16",
                *[a for s in settings for a in ("--set", s)],
                "--set", f"runs_dir={tmp_path}", "--quiet"])
    assert code == 0
    # The default folder: RUNS_DIR/lr-find/<time>-<name>/, as a run folder is named.
    (folder,) = (tmp_path / "lr-find").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-squeezenet", folder.name)
    result = json.loads((folder / "lr_find.json").read_text())
    out = capsys.readouterr().out
    assert f"suggestion: {result['suggestion']['lr']:.2g} (" in out
    assert f"config's learning rate: {result['recipe_lr']:.2g}" in out
    assert f"plot: {folder / 'lr_find.png'}" in out
    assert "learning-rate range test: squeezenet" in out and "minimum" in out
    assert result["image_size"] == 16 and result["global_batch"] == 16
    assert result["smoothing"] == 0.9 and result["steps"] == 40


def test_cli_defaults_are_lr_finds():
    parser = argparse.ArgumentParser(prog="convlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lr-find", "squeezenet", "--data", "x"])
    defaults = inspect.signature(lr_find).parameters
    for name in ("start_lr", "end_lr", "steps", "smoothing", "diverge"):
        assert getattr(args, name) == defaults[name].default


@pytest.mark.parametrize(("options", "message"), [
    ({"start_lr": 0}, "--start-lr must be a positive learning rate, received: 0"),
    ({"start_lr": -1e-3}, "--start-lr must be a positive learning rate, received: -0.001"),
    ({"start_lr": "fast"}, "--start-lr must be a number, received: 'fast'"),
    ({"end_lr": 1e-8}, "--end-lr must be a finite learning rate above --start-lr (1e-07), received: 1e-08"),
    ({"end_lr": math.inf}, "--end-lr must be a finite learning rate above --start-lr (1e-07), received: inf"),
    ({"steps": 5}, "--steps must be at least 10, received: 5"),
    ({"steps": 20.5}, "--steps must be a whole number, received: 20.5"),
    ({"smoothing": 1.0}, "--smoothing must be in [0, 1) (0: the raw loss), received: 1.0"),
    ({"diverge": 1}, "--diverge must be above 1"),
    ({"model": "squeezenett"}, "unknown model 'squeezenett'"),
    ({"epochs": "ten"}, "config field epochs must be int, received: 'ten'"),
])
def test_bad_inputs_are_one_line_errors(tiny_data, options, message):
    with pytest.raises(ConvlabError) as err:
        lr_find(TrainConfig(**TINY), data=tiny_data, progress=False, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_input_is_a_one_line_error(tiny_data, tmp_path):
    with pytest.raises(ConvlabError, match=r"^--steps must be at least 10, received: 3$"):
        cli(["lr-find", "squeezenet", "--data", str(tiny_data), "--steps", "3",
             "--set", f"runs_dir={tmp_path}"])
    with pytest.raises(ConvlabError, match="unknown config field"):
        cli(["lr-find", "squeezenet", "--data", str(tiny_data), "--set", "bogus=1"])
    assert not list(tmp_path.iterdir())
