"""The training configuration: plain data, merged overrides, `--set`, recipes."""

import json
import subprocess
import sys

import pytest

from convlab.config import AUGMENT_PRESETS, RECIPES, TrainConfig, recipe_config
from convlab.errors import ConvlabError


def test_config_imports_without_tensorflow_or_keras():
    code = ("import sys, convlab.config; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_set_reaches_every_field_including_nested_ones():
    config = TrainConfig().with_settings([
        "weight_decay=0.05", "momentum=0.8", "schedule.min_lr=1e-6",
        "schedule.warmup_epochs=3", "fine_tune_schedule.learning_rate=3e-5",
        "augment.zoom=0.5", "augment.saturation=[0.5, 1.5]", "model_options.dropout=0.3",
        "class_weights=balanced", "image_size=null", "report=false"])
    assert (config.weight_decay, config.momentum) == (0.05, 0.8)
    assert (config.schedule.min_lr, config.schedule.warmup_epochs) == (1e-6, 3.0)
    assert config.fine_tune_schedule.learning_rate == 3e-5
    assert config.augment.zoom == 0.5 and config.augment.saturation == (0.5, 1.5)
    assert config.model_options == {"dropout": 0.3}
    assert config.class_weights == "balanced" and config.image_size is None
    assert config.report is False


@pytest.mark.parametrize(("setting", "quoted"), [
    ("epochs=ten", "epochs must be int, received: 'ten'"),
    ("epochs=2.5", "epochs must be int, received: 2.5"),
    ("weight_decay=yes", "weight_decay must be float"),
    ("report=1", "report must be bool"),
    ("schedule.min_lr=low", "schedule.min_lr must be float"),
    ("shedule.min_lr=1", "'shedule' has no sub-fields"),
    ("schedule.minlr=1", "unknown schedule field(s): minlr"),
    ("epochz=3", "unknown config field(s): epochz"),
    ("epochs", "--set takes key=value, received: 'epochs'"),
])
def test_bad_settings_are_one_line_errors_naming_the_value(setting, quoted):
    with pytest.raises(ConvlabError) as err:
        TrainConfig().with_settings([setting])
    assert quoted in str(err.value) and "\n" not in str(err.value)


def test_nested_overrides_merge_into_the_recipe():
    recipe = recipe_config("squeezenet-plus")
    changed = recipe.override(model_options={"dropout": 0.2}, schedule={"min_lr": 0.0})
    # The recipe's layout and schedule survive a change to one of their fields.
    assert changed.model_options == {**recipe.model_options, "dropout": 0.2}
    assert changed.schedule.name == recipe.schedule.name == "cosine"
    assert changed.schedule.learning_rate == recipe.schedule.learning_rate
    assert changed.schedule.min_lr == 0.0


def test_config_round_trips_and_old_fine_tune_lr_is_read():
    for name in RECIPES:
        config = recipe_config(name)
        config.validate()
        assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "fine_tune_schedule"}
    config = TrainConfig.from_dict({**old, "fine_tune_lr": 2e-4})  # a run's older config.json
    assert config.fine_tune_schedule.learning_rate == 2e-4
    assert config.fine_tune_schedule.min_lr == pytest.approx(1e-5)


@pytest.mark.parametrize("field", ["mixup", "cutmix"])
def test_a_negative_mixing_alpha_is_refused(field):
    with pytest.raises(ConvlabError, match=rf"{field} must be a Beta alpha in \[0, 10\].*-0.5"):
        TrainConfig(**{field: -0.5}).validate()
    TrainConfig(**{field: 0.8}).validate()


def test_each_training_flag_sets_its_config_field_and_names_its_default():
    """The flags of train and tune are defined once (cli.train.TRAINING_FLAGS): each sets
    the field it names, and its help names TrainConfig's default."""
    from convlab.cli.main import build_parser
    from convlab.cli.train import TRAINING_FLAGS, _base_config, _train_overrides

    argv = ["train", "squeezenet-plus", "--data", "photos/", "--epochs", "3", "--batch-size",
            "16", "--image-size", "96", "--test-scale", "1.25", "--lr", "0.01", "--schedule",
            "cosine", "--optimizer", "sgd", "--weight-decay", "0.05", "--label-smoothing", "0.2", "--mixup", "0.4",
            "--cutmix", "1", "--class-weights", "balanced", "--augment", "strong",
            "--fine-tune-epochs", "2", "--fine-tune-lr", "1e-4", "--feature-views", "0",
            "--precision", "float32", "--strategy", "default", "--steps-per-execution", "4",
            "--seed", "7", "--name", "mine", "--runs-dir", "elsewhere", "--no-report"]
    args = build_parser().parse_args(argv)
    config = _base_config(args).override(**_train_overrides(args))
    got = config.to_dict()
    assert (got["data"], got["epochs"], got["batch_size"], got["batch_per_replica"]) == (
        "photos/", 3, 16, None)
    assert (got["image_size"], got["test_scale"], got["optimizer"]) == (96, 1.25, "sgd")
    assert got["weight_decay"] == 0.05
    assert got["schedule"]["learning_rate"] == 0.01 and got["schedule"]["name"] == "cosine"
    # merged into the recipe's schedule: its other fields kept
    assert got["schedule"]["warmup_epochs"] == recipe_config("squeezenet-plus").schedule.warmup_epochs
    assert got["fine_tune_schedule"]["learning_rate"] == 1e-4
    assert (got["label_smoothing"], got["mixup"], got["cutmix"]) == (0.2, 0.4, 1.0)
    assert got["class_weights"] == "balanced" and got["augment"] == AUGMENT_PRESETS["strong"]
    assert (got["fine_tune_epochs"], got["feature_views"], got["precision"]) == (2, 0,
                                                                                  "float32")
    assert (got["strategy"], got["steps_per_execution"], got["seed"]) == ("default", 4, 7)
    assert (got["name"], got["runs_dir"], got["report"]) == ("mine", "elsewhere", False)
    # pretrained-only flags land in model_options
    args = build_parser().parse_args(["train", "efficientnet_lite0", "--weights", "none",
                                      "--unfreeze"])
    options = _base_config(args).override(**_train_overrides(args)).model_options
    assert options == {"weights": None, "trainable_backbone": True}
    # every flag's field exists, and its help names the default TrainConfig gives it
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"]
                         .format_help().split())
    for flag in TRAINING_FLAGS:
        assert flag.name in help_text
        if flag.default is None and flag.argparse.get("action") != "store_true":
            assert f"(default: {flag.default_text()}" in help_text, flag.name
    assert "(default: 0.001; a recipe's own value first)" in help_text  # --lr, from TrainConfig
