"""`convlab train --data D` with no model: the plan from the data and the machine."""

import json
import random
import subprocess
import sys

import pytest

from convlab.config import recipe_config
from convlab.data.synthetic import draw
from convlab.training.auto import (
    FINE_TUNE_RECIPE,
    Counts,
    Photos,
    StepTimes,
    choose_size,
    fine_tune_cost,
    look_at_photos,
    plan_epochs,
)


@pytest.mark.parametrize("side, size", [(32, 224), (100, 224), (180, 224), (200, 248),
                                        (240, 300), (256, 300), (3000, 300)])
def test_size_follows_the_photos_short_side(side, size):
    chosen, why = choose_size(Photos(50, side, None))
    assert chosen == size and f"{side} px" in why


def test_a_prepared_folder_is_not_enlarged_past_its_stored_size():
    assert choose_size(Photos(0, 192, 192))[0] == 224
    assert choose_size(Photos(0, 256, 256))[0] == 256


FLOWERS = Counts(train=2764, validation=689, classes=5)


def test_fine_tuning_epochs_follow_the_budget_and_the_number_of_photos():
    times = StepTimes(forward=0.01, train=0.04)  # ~ a 2-core CPU at 300 px
    overrides, reasons, expected = plan_epochs(FLOWERS, times, seconds_left=20 * 60)
    assert overrides["recipe"] == "efficientnet-lite0-finetune"
    epochs = overrides["fine_tune_epochs"]
    assert 2 <= epochs <= 8 and expected <= 20 * 60
    # more time: more epochs, up to the recipe's steps (its epochs at 86 steps per epoch)
    more, _, _ = plan_epochs(FLOWERS, times, seconds_left=60 * 60)
    assert more["fine_tune_epochs"] == recipe_config(FINE_TUNE_RECIPE).fine_tune_epochs
    # few photos: more epochs for the same steps, within the bound
    few, _, _ = plan_epochs(Counts(300, 60, 3), times, seconds_left=60 * 60)
    assert few["fine_tune_epochs"] == 15


def test_the_plan_counts_the_recipes_smaller_first_epochs_as_cheaper():
    """The recipe's fine-tuning grows its size (224 -> 300 px): its epochs cost less than as
    many at 300 px, so a tight budget fits more of them than whole-size epochs would."""
    recipe = recipe_config(FINE_TUNE_RECIPE)
    sizes = recipe.epoch_sizes(300)[recipe.epochs:]
    assert sizes[0] < sizes[-1] == 300
    assert fine_tune_cost(1, 300) == 1.0  # one epoch: at the training size
    assert len(sizes) * 0.5 < fine_tune_cost(len(sizes), 300) < len(sizes)
    times = StepTimes(forward=0.01, train=0.04)
    steps = FLOWERS.train // 32
    one_epoch = 1.1 * (0.04 * steps * 32 + 0.01 * FLOWERS.validation)
    overrides, reasons, expected = plan_epochs(FLOWERS, times, seconds_left=11 * 60)
    assert "growing from 224 to 300 px" in reasons[0]
    assert expected <= 11 * 60
    assert overrides["fine_tune_epochs"] > (11 * 60 - 200) // one_epoch


def test_a_small_budget_keeps_the_backbone_frozen_and_says_why():
    times = StepTimes(forward=0.01, train=0.04)
    overrides, reasons, expected = plan_epochs(FLOWERS, times, seconds_left=4 * 60)
    assert overrides["recipe"] == "efficientnet-lite0-transfer"
    assert 1 <= overrides["feature_views"] <= 4
    assert "frozen backbone only" in reasons[0]


def test_look_at_photos_reads_headers_of_a_split_folder(tmp_path):
    for split in ("train", "test"):
        for label in ("circle", "square"):
            folder = tmp_path / "d" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                draw(label, 40, random.Random(i)).save(folder / f"{i}.png")
    photos = look_at_photos(str(tmp_path / "d"))
    assert photos.short_side == 40 and photos.sampled == 12


def test_train_without_a_model_plans_trains_and_records_why(tmp_path):
    """The one command end to end on tiny photos with a 1-minute budget; config.json keeps
    the plan and its reasons, and flags given still override it (--epochs)."""
    root = tmp_path / "photos"
    for label in ("circle", "square"):
        (root / label).mkdir(parents=True)
        for i in range(24):
            draw(label, 20, random.Random(i)).save(root / label / f"{i}.png")
    env_cache = {"CONVLAB_CACHE": str(tmp_path / "cache")}
    import os

    result = subprocess.run(
        [sys.executable, "-m", "convlab", "train", "--data", str(root), "--budget-minutes",
         "1", "--runs-dir", str(tmp_path / "runs"), "--quiet", "--no-report", "--epochs", "1"],
        capture_output=True, text=True, env={**os.environ, **env_cache}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "plan: 224 px: the photos' median short side is 20 px" in result.stdout
    print(result.stdout)
    plan_line = next(line for line in result.stdout.splitlines() if "images/s forward" in line)
    config = json.loads(next((tmp_path / "runs").glob("*-auto/config.json")).read_text())
    plan = config["config"]["plan"]
    assert plan["budget_minutes"] == 1 and plan["reasons"][1] in plan_line
    assert plan["measured"]["train_images_per_second"] > 0
    assert config["config"]["model"] == "efficientnet_lite0" and config["config"]["epochs"] == 1
    assert config["derived"]["image_size"] == plan["image_size"]
