"""Predict and export on a real (tiny) run: messy inputs, every export format, verification."""

import argparse
import csv
import io
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from convlab.cli.results import register
from convlab.config import TrainConfig
from convlab.data.decode import decode_and_resize
from convlab.errors import ConvlabError
from convlab.inference import predict
from convlab.runs import load_run_model, run_info
from convlab.serving import ARTIFACTS, EXPORTS, TOLERANCES, Tolerance, export
from convlab.workflow import train

TINY = {"model": "squeezenet", "image_size": 16, "batch_size": 8, "epochs": 1,
        "model_options": {"layout": [[8, 16], "pool", [8, 16]], "dropout": 0.5}}


@pytest.fixture(scope="module")
def data(tiny_prepared):
    return tiny_prepared(shards=2).parent


@pytest.fixture(scope="module")
def run(data):
    return train(TrainConfig(), data=str(data / "data"), precision="float32",
                 runs_dir=str(data / "runs"), progress=False, **TINY)


@pytest.fixture(scope="module")
def photos(data):
    """A folder as users have them: odd formats, a corrupt file, text, a nested folder."""
    folder = data / "photos"
    (folder / "nested").mkdir(parents=True)
    sources = sorted((data / "src").rglob("*.jpg"))
    shutil.copy(sources[0], folder / "plain.jpg")
    Image.open(sources[1]).save(folder / "really_a_png.jpg", "PNG")
    Image.open(sources[2]).convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    Image.open(sources[3]).resize((40, 30)).save(folder / "nested" / "wide.bmp", "BMP")
    jpeg = sources[4].read_bytes()
    (folder / "cut_short.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (folder / "holiday.jpg").write_text("not a photo, despite the name")
    (folder / "notes.txt").write_text("ignored, like the ingest ignores it")
    return folder


def cli(*argv):
    parser = argparse.ArgumentParser(prog="convlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def shown(run, probs: np.ndarray) -> np.ndarray:
    """What convlab shows for the Keras model's own probabilities: calibrated with the run's
    temperature (every run trained with a validation split has one)."""
    from convlab.prediction import Calibration, tempered

    calibration = Calibration.load(run, "best.keras")
    assert calibration is not None
    return tempered(np.asarray(probs)[None], calibration.temperature)[0]


def test_predict_skips_bad_files_and_matches_the_keras_model(run, photos):
    rows, skipped = predict(run, [photos], top_k=2, batch_size=3)  # 4 images: 2 batches
    got = {r["path"]: r["predictions"] for r in rows}
    good = ["cmyk.jpg", "nested/wide.bmp", "plain.jpg", "really_a_png.jpg"]
    assert sorted(str(Path(p).relative_to(photos)) for p in got) == good
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in skipped}
    assert reasons == {"cut_short.jpg": "truncated", "holiday.jpg": "not an image"}

    # The same images, decoded independently as the training pipeline does, through Keras.
    model = load_run_model(run)[0]
    classes = run_info(run).classes
    for path, predictions in got.items():
        jpeg = decode_and_resize(Path(path).read_bytes(), 16).jpeg
        x = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)[None] / 255.0
        probs = shown(run, model.predict_on_batch(x.numpy())[0])
        order = np.argsort(-probs)[:2]
        assert [p["class"] for p in predictions] == [classes[i] for i in order]
        np.testing.assert_allclose([p["probability"] for p in predictions], probs[order],
                                   atol=1e-6)
    with pytest.raises(ConvlabError, match="not found"):
        predict(run, [photos / "missing.jpg"])
    # among others, a missing file is skipped like an unreadable one, not fatal
    rows, skipped = predict(run, [photos / "missing.jpg", photos / "plain.jpg"])
    assert [r["path"] for r in rows] == [str(photos / "plain.jpg")]
    assert skipped == [{"path": str(photos / "missing.jpg"), "reason": "not found",
                        "detail": "check the path"}]


def test_cli_predict_formats_parse(run, photos, capsys):
    assert cli("predict", run, photos, "--format", "json", "--top-k", "5") == 0
    out, err = capsys.readouterr()
    parsed = json.loads(out)
    assert len(parsed["predictions"]) == 4 and len(parsed["skipped"]) == 2
    assert all(len(r["predictions"]) == 3 for r in parsed["predictions"])  # only 3 classes
    assert "skipped" in err and "holiday.jpg: not an image" in err

    assert cli("predict", run, photos / "cmyk.jpg", photos / "plain.jpg", "--format", "csv",
               "--model", "final") == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"].rsplit("/", 1)[1] for r in table] == ["cmyk.jpg", "plain.jpg"]
    assert 0 < float(table[0]["probability_1"]) <= 1 and table[0]["class_3"]

    assert cli("predict", run, photos / "plain.jpg") == 0
    assert "plain.jpg" in capsys.readouterr().out


@pytest.mark.parametrize("format,quantize", [  # every format of the table, every quantize
    (name, q) for name, entry in EXPORTS.items() for q in (None, *entry.quantize)])
def test_export_verifies_and_writes_labels(run, tmp_path, format, quantize):
    # The tiny one-epoch model's near-uniform probabilities flip easily under quantization:
    # a looser accuracy bound here than real models get (1 point).
    loose = {"max_accuracy_drop": 0.2} if quantize in ("dynamic", "int8") else {}
    report = export(run, format, quantize, out=tmp_path, samples=90, progress=False, **loose)
    check = report["verification"]
    print(format, quantize, json.dumps(check["by_input"]))
    assert check["passed"] and check["images"] == 90  # all the tiny dataset has
    assert check["splits"] == ["validation", "train"]
    assert check["tolerance"] == TOLERANCES[quantize]._replace(**loose)._asdict()
    assert check["max_abs_diff"] <= TOLERANCES[quantize].max_abs_diff
    assert len(check["by_input"]) == (2 if format in ("keras", "savedmodel") else 1)
    for numbers in check["by_input"].values():
        assert numbers["accuracy_drop"] == pytest.approx(check["keras_accuracy"]
                                                         - numbers["accuracy"])
    assert (tmp_path / "labels.txt").read_text().split("\n") == run_info(run).classes + [""]
    assert json.loads((tmp_path / "export.json").read_text()) == report
    assert report["artifact"] == str(tmp_path / ARTIFACTS[format])
    assert Path(report["artifact"]).exists()
    if format == "tflite":  # raw uint8 pixels in, float32 probabilities out, int8 or not
        interpreter = Interpreter(model_path=report["artifact"])
        assert interpreter.get_input_details()[0]["dtype"] == np.uint8
        assert interpreter.get_output_details()[0]["dtype"] == np.float32
    if format == "onnx":  # runs on its own in onnxruntime, like the Keras model
        import onnxruntime

        session = onnxruntime.InferenceSession(report["artifact"])
        pixels = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3)).astype(np.float32)
        expected = np.stack([shown(run, p) for p in load_run_model(run)[0](
            pixels / 255.0, training=False).numpy()])  # calibrated inside the export
        got = session.run(None, {session.get_inputs()[0].name: pixels})[0]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_export_is_verified_by_validation_accuracy_against_a_stated_bound(run, tmp_path,
                                                                        capsys):
    from convlab.evaluation.metrics import evaluate

    assert cli("export", run, "--format", "tflite", "--quantize", "int8", "--out", tmp_path,
               "--max-accuracy-drop", "100") == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "export.json").read_text())
    check = report["verification"]
    # The whole validation split, and the Keras accuracy is evaluate's, to the image.
    assert check["splits"] == ["validation"]
    assert check["keras_accuracy"] == pytest.approx(evaluate(run)["accuracy"])
    assert check["images"] == evaluate(run)["images"]
    assert f"accuracy {check['accuracy']:.4f}" in out and "Keras model" in out
    drop = check["accuracy_drop"]
    if drop > 0:  # a bound below the measured drop fails and removes the artifact
        with pytest.raises(ConvlabError, match="drop of .* points; bound"):
            export(run, "tflite", "int8", out=tmp_path, max_accuracy_drop=drop / 2,
                   progress=False)
        assert not (tmp_path / "model.tflite").exists()
    else:
        assert export(run, "tflite", "int8", out=tmp_path, max_accuracy_drop=0.0,
                      progress=False)["verification"]["passed"]
    with pytest.raises(ConvlabError, match="between 0 and 1"):
        export(run, "tflite", "int8", out=tmp_path, max_accuracy_drop=5)


def test_uint8_and_float_inputs_give_the_same_result(run, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    expected = np.stack([shown(run, p) for p in load_run_model(run)[0](
        pixels.astype(np.float32) / 255.0, training=False).numpy()])  # calibrated, as exported

    cli("export", run, "--format", "keras", "--out", tmp_path / "k")
    model = keras.models.load_model(tmp_path / "k" / "model.keras")
    for x in (pixels, pixels.astype(np.float32)):
        np.testing.assert_allclose(model(x, training=False), expected, atol=1e-6)

    export(run, "savedmodel", out=tmp_path / "s")
    loaded = tf.saved_model.load(str(tmp_path / "s" / "saved_model"))
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        got = loaded.signatures[name](images=tf.constant(pixels, dtype))["probabilities"]
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_mixed_precision_run_exports_a_float32_graph(data, tmp_path):
    run = train(TrainConfig(), data=str(data / "data"), precision="mixed_bfloat16",
                runs_dir=str(data / "runs"), progress=False, **TINY)
    assert load_run_model(run)[0].get_layer("stem_conv").dtype_policy.name == "mixed_bfloat16"
    report = export(run, "tflite", out=tmp_path)
    assert report["verification"]["passed"]
    interpreter = Interpreter(model_path=report["artifact"])
    types = {t["dtype"].__name__ for t in interpreter.get_tensor_details()}
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert types <= {"uint8", "float32", "int32"}, types


def test_export_refuses_bad_options_and_unverified_models(run, tmp_path, monkeypatch):
    with pytest.raises(ConvlabError, match="quantize applies to tflite only"):
        export(run, "keras", "int8")
    with pytest.raises(ConvlabError, match="format must be one of"):
        export(run, "coreml")
    # A bound no float16 model can meet: the export must fail loudly and leave no artifact.
    monkeypatch.setitem(TOLERANCES, "float16", Tolerance(0.0, 1.0, 0.0))
    with pytest.raises(ConvlabError, match=r"max \|diff\| .* \(tolerance 0\)"):
        export(run, "tflite", "float16", out=tmp_path)
    assert not (tmp_path / "model.tflite").exists()
    assert json.loads((tmp_path / "export.json").read_text())["verification"]["passed"] is False


def test_to_unit_is_the_pipelines_conversion_bit_for_bit_and_to_pixels_inverts_it():
    from convlab.data import pipeline
    from convlab.prediction import to_pixels, to_unit

    every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    eager = pipeline.to_float(tf.constant(every)).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(every).map(pipeline.to_float))).numpy()
    for floats in (eager, mapped):
        assert floats.dtype == np.float32
        np.testing.assert_array_equal(to_unit(every).view(np.uint32), floats.view(np.uint32))
    np.testing.assert_array_equal(to_pixels(to_unit(every)), every)


def test_flip_tta_averages_each_image_with_its_mirror(run, photos):
    plain = {r["path"]: r["predictions"] for r in predict(run, [photos], top_k=3)[0]}
    rows, _ = predict(run, [photos], top_k=3, tta="flip")
    model = load_run_model(run)[0]
    classes = run_info(run).classes
    for r in rows:
        jpeg = decode_and_resize(Path(r["path"]).read_bytes(), 16).jpeg
        x = (tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)[None] / 255.0).numpy()
        expected = shown(run, (model.predict_on_batch(x)[0]
                               + model.predict_on_batch(x[:, :, ::-1])[0]) / 2)
        got = {p["class"]: p["probability"] for p in r["predictions"]}
        for name, probability in got.items():
            assert probability == pytest.approx(expected[classes.index(name)], abs=1e-6)
    # A trained convnet is not mirror-symmetric: flipping changes some probability.
    assert any(abs(p["probability"] - q["probability"]) > 1e-6
               for path, preds in plain.items()
               for p, q in zip(preds, {r["path"]: r["predictions"] for r in rows}[path],
                               strict=True))
    with pytest.raises(ConvlabError, match="--tta must be one of none, flip, received: 'rot'"):
        predict(run, [photos], tta="rot")


def test_run_info_is_read_from_the_run_folder_even_when_the_data_has_moved(run, tmp_path):
    saved = json.loads((run / "config.json").read_text())
    assert (saved["derived"]["stored_size"], saved["derived"]["jpeg_quality"]) == (16, 90)
    moved = shutil.copytree(run, tmp_path / "run")
    saved["derived"].update(prepared_data=str(tmp_path / "gone"), jpeg_quality=75)
    (moved / "config.json").write_text(json.dumps(saved))
    info = run_info(moved)  # no manifest to read: what training recorded is enough
    assert (info.prepared, info.stored_size, info.quality) == (None, 16, 75)


def test_a_larger_test_size_is_used_by_evaluate_predict_and_export(tiny_prepared, tmp_path,
                                                                   capsys):
    """FixRes: trained at 16 px on 24 px images, evaluated, predicted and exported at 24
    (test_scale 1.5)."""
    from convlab.evaluation.metrics import evaluate
    from convlab.models import with_free_size

    data = tiny_prepared(photo_size=32, size=24, shards=2)
    run = train(TrainConfig(), data=str(data), precision="float32", test_scale=1.5,
                runs_dir=str(tmp_path / "runs"), report=False, progress=False, **TINY)
    out = capsys.readouterr().out
    assert "at 16 px from 24 px images" in out and "; evaluated at 24 px" in out
    assert json.loads((run / "config.json").read_text())["derived"]["test_image_size"] == 24
    assert run_info(run).test_size == 24

    # The size-free copy is the trained model: the same outputs at the training size.
    trained = load_run_model(run, image_size=16)[0]
    assert trained.input_shape == (None, 16, 16, 3)
    free = with_free_size(trained)
    x16 = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(free(x16).numpy(), trained(x16).numpy(), atol=1e-6)
    model = load_run_model(run)[0]  # the run's test size: free spatial dimensions
    assert model.input_shape == (None, None, None, 3)

    metrics = evaluate(run, progress=False)
    assert metrics["image_size"] == 24
    at_16 = evaluate(run, image_size=16, progress=False)
    assert at_16["image_size"] == 16 and at_16["images"] == metrics["images"]
    with pytest.raises(ConvlabError, match="--image-size must be a whole number of pixels "
                                           "between 8 and 4096.*received: 4"):
        evaluate(run, image_size=4, progress=False)

    # predict resizes to 24 px, as the 24 px evaluation did.
    photo = sorted((data.parent / "src").rglob("*.jpg"))[0]
    (row,), _ = predict(run, [photo], top_k=1)
    pixels = tf.io.decode_jpeg(decode_and_resize(photo.read_bytes(), 24).jpeg, channels=3)
    probs = shown(run, model.predict_on_batch((tf.cast(pixels, tf.float32)[None] / 255.0
                                               ).numpy())[0])
    assert row["predictions"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-6)

    exported = export(run, "tflite", out=tmp_path / "tflite")
    interpreter = Interpreter(model_path=str(exported["artifact"]))
    assert list(interpreter.get_input_details()[0]["shape"][1:]) == [24, 24, 3]
    assert exported["verification"]["max_abs_diff"] <= TOLERANCES[None].max_abs_diff

    with pytest.raises(ConvlabError, match="--test-scale must be between 0.5 and 4"):
        TrainConfig(test_scale=0.2).validate()
