"""Export a trained run for serving (Keras, SavedModel, TFLite, ONNX), verified against Keras.

Every exported model takes raw images, N x S x S x 3 RGB pixels in [0, 255] (S: the run's
image size), and returns float32 class probabilities (N, classes) in labels.txt order:

- keras: `model.keras`, input "image" float32 [0, 255]; uint8 arrays are cast on the way in.
- savedmodel: `saved_model/`, signature "serving_default" takes `images` float32 [0, 255],
  "serving_uint8" takes `images` uint8; both return {"probabilities": float32}.
- tflite: `model.tflite`, input uint8 (dynamic batch: resize the input tensor), output float32,
  also for int8 (full-integer ops inside, dequantized at the end).
- onnx: `model.onnx` (Keras' own ONNX export, through tf2onnx), input "image" float32
  [0, 255] NHWC with a dynamic batch; run with onnxruntime.

The scaling to [0, 1] the trained model expects is inside the exported graph, the model runs
in inference mode (no dropout, batch-norm moving statistics), and layers trained under mixed
precision are rebuilt in float32. Each export is verified by what users care about: its
accuracy on the run's validation split beside the Keras model's (in float32), and it fails
when it loses more than a stated bound (`Tolerance.max_accuracy_drop`: half a point for float
exports, one for quantized ones; `max_accuracy_drop=` to change it); float exports must also
match the Keras model's probabilities closely. The numbers go to export.json beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from convlab.errors import ConvlabError
from convlab.prediction import Calibration, Predictor, to_pixels
from convlab.progress import progress_bar, step
from convlab.runs import RunFolder, RunInfo, load_run_model, read_record, run_info
from convlab.tfimport import muted_stderr
from convlab.usertext import visible


class Tolerance(NamedTuple):
    """How far an export may stray from the Keras model (in float32) on the verification
    images; an export outside either bound fails."""

    max_abs_diff: float  # largest |p_export - p_keras| over images and classes
    max_accuracy_drop: float  # Keras accuracy - export accuracy (a fraction: 0.01 = 1 point)
    near_tie: float  # top-2 probabilities closer than this: left out of the reported
    # top1_agreement_decided (quantization flips near ties, not confident images)


# Bounds: the accuracy a user may lose, half a point for float exports (a flip of a near tie
# or two) and one for quantized ones; and for float exports, how far their probabilities may
# differ from the Keras model's (benchmarks/export_latency.py on a real flowers model measured
# max |diff| float32 4e-6, float16 0.008, BENCHMARKS.md). Quantized probabilities move by
# much more (dynamic 0.13, int8 0.28 there; up to 0.41 for int8 on small models), which
# matters only where it changes answers: the accuracy bound. A near tie, for the reported
# agreement, is 2 x max_abs_diff for float exports, the only place a flip is possible at all.
TOLERANCES = {
    None: Tolerance(1e-4, 0.005, 2e-4),
    "float16": Tolerance(3e-2, 0.005, 6e-2),
    "dynamic": Tolerance(1.0, 0.01, 0.1),
    "int8": Tolerance(1.0, 0.01, 0.1),
}
CALIBRATION_IMAGES = 200


def float32_model(model):
    """A copy of `model` computing in float32 (e.g. one trained under mixed_bfloat16).
    Mixed-precision layers keep float32 variables, so the weights carry over as they are."""
    from convlab.models import rebuilt

    def as_float32(node: dict) -> None:
        if node.get("class_name") == "DTypePolicy":
            node["config"] = {**node["config"], "name": "float32"}

    return rebuilt(model, as_float32)


def serving_model(model_fp32, image_size: int, temperature: float | None = None):
    """[0, 255] pixels -> the trained model (a `float32_model` copy, inference mode) ->
    probabilities, calibrated with the run's `temperature` when it has one."""
    import keras

    from convlab.models.layers import Temperature

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1 / 255, dtype="float32", name="scale_to_unit")(inputs)
    outputs = model_fp32(x, training=False)
    if temperature is not None:
        outputs = Temperature(temperature, dtype="float32", name="calibration")(outputs)
    return keras.Model(inputs, outputs, name=f"{model_fp32.name}_serving")


def run_images(info: RunInfo, splits: tuple[str, ...], count: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images, labels, the splits they came from): up to `count` images (None: all of
    the first split that has any) from the run's prepared data, taking splits in order."""
    from convlab.data import load, read_manifest

    have = {s.split for s in read_manifest(info.prepared).shards}
    images, labels, used = [], [], []
    need = count if count is not None else 2**62
    for split in (s for s in splits if s in have):
        ds = load(info.prepared, split, training=False, batch_size=min(need, 64),
                  image_size=info.test_size, cache=False)
        used.append(split)
        for batch, y in ds:
            # Exact: the pipeline's floats are uint8 / 255.
            images.append(to_pixels(batch.numpy())[:need])
            labels.append(y.numpy()[:need])
            need -= len(images[-1])
            if need <= 0:
                break
        if need <= 0 or count is None:
            break
    if not images:
        raise ConvlabError(f"no {' or '.join(splits)} images in '{info.prepared}'")
    return np.concatenate(images), np.concatenate(labels), used


def _write_keras(serving, path: Path, info: RunInfo, quantize: str | None) -> None:
    serving.save(path)


def _write_savedmodel(serving, path: Path, info: RunInfo, quantize: str | None,
                      dtypes: tuple[str, ...] = ("float32", "uint8")) -> None:
    import keras
    import tensorflow as tf

    size = info.test_size
    archive = keras.export.ExportArchive()
    archive.track(serving)
    for i, dtype in enumerate(dtypes):
        # The first endpoint named "serve" becomes the SavedModel's "serving_default".
        archive.add_endpoint(
            "serve" if i == 0 else f"serving_{dtype}",
            lambda images: {"probabilities": serving(tf.cast(images, tf.float32),
                                                     training=False)},
            input_signature=[tf.TensorSpec((None, size, size, 3), dtype, name="images")])
    archive.write_out(str(path), verbose=False)


def _write_tflite(serving, path: Path, info: RunInfo, quantize: str | None) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        # Through a SavedModel: the converter freezes its variables into constants.
        _write_savedmodel(serving, Path(tmp) / "sm", info, None, ("uint8",))
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"))
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            calibration, _, _ = run_images(info, ("train",), CALIBRATION_IMAGES)
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            with muted_stderr():
                path.write_bytes(converter.convert())
        except Exception as err:  # the converter raises many types, all with a long message
            hint = "; try --quantize dynamic" if quantize == "int8" else ""
            raise ConvlabError(f"TFLite conversion ({quantize or 'float32'}) failed: "
                               f"{_first_line(err)}{hint}") from None


def _write_onnx(serving, path: Path, info: RunInfo, quantize: str | None) -> None:
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    size = info.test_size
    serving(np.zeros((1, size, size, 3), np.float32))  # Keras exports only a called model
    try:
        with muted_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf2onnx's numpy deprecation warnings
            serving.export(str(path), format="onnx", verbose=False)
    except ImportError as err:
        raise ConvlabError(f"ONNX export needs tf2onnx and onnxruntime ({err.name} is "
                           "missing): pip install tf2onnx onnxruntime") from None
    except Exception as err:  # the converter raises many types, all with a long message
        raise ConvlabError(f"ONNX conversion failed: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    """A converter error in one line: the first of its message (or its type), cut at 300."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


# Runners: the ways to run an exported artifact, name -> f(uint8 images) -> probabilities.


def _keras_runners(path: Path) -> dict:
    import keras

    model = keras.models.load_model(path, compile=False)
    # Called directly, not via predict(): that would retrace for each input dtype.
    return {"float32 input": lambda x: model(x.astype(np.float32), training=False),
            "uint8 input": lambda x: model(x, training=False)}


def _savedmodel_runners(path: Path) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return {f"{name}": (lambda x, s=loaded.signatures[name], d=dtype:
                        s(images=tf.constant(x, d))["probabilities"].numpy())
            for name, dtype in (("serving_default", tf.float32),
                                ("serving_uint8", tf.uint8))}


def _onnx_runners(path: Path) -> dict:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return {"float32 input": lambda x: session.run(None, {name: x.astype(np.float32)})[0]}


def _tflite_runners(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    def run_tflite(x):
        # muted: "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", which the
        # interpreter writes when it allocates its tensors
        with muted_stderr():
            interpreter = Interpreter(model_path=str(path))
            source, = interpreter.get_input_details()
            interpreter.resize_tensor_input(source["index"], x.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(source["index"], x)
            interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return {"uint8 input": run_tflite}


class ExportFormat(NamedTuple):
    """Everything `export` knows about one format: adding a format is one `EXPORTS` entry."""

    artifact: str  # the file or folder it writes in the export folder
    write: Callable  # (serving model, artifact path, RunInfo, quantize or None) -> None
    runners: Callable  # artifact path -> {input name: f(uint8 images) -> probabilities}
    input_dtype: str  # what its input takes, as export.json says
    quantize: tuple[str, ...] = ()  # the quantize options it takes


EXPORTS = {
    "keras": ExportFormat("model.keras", _write_keras, _keras_runners, "float32 (or uint8)"),
    "savedmodel": ExportFormat("saved_model", _write_savedmodel, _savedmodel_runners,
                               "float32 (or uint8)"),
    "tflite": ExportFormat("model.tflite", _write_tflite, _tflite_runners, "uint8",
                           ("float16", "int8", "dynamic")),
    "onnx": ExportFormat("model.onnx", _write_onnx, _onnx_runners, "float32"),
}
FORMATS = tuple(EXPORTS)
QUANTIZE = tuple(dict.fromkeys(q for f in EXPORTS.values() for q in f.quantize))
ARTIFACTS = {name: f.artifact for name, f in EXPORTS.items()}


def compare(reference: np.ndarray, exported: np.ndarray, near_tie: float) -> dict:
    """Top-1 agreement (all images; images not near-tied in `reference`) and |differences|."""
    top2 = np.sort(reference, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) >= near_tie
    same = reference.argmax(1) == exported.argmax(1)
    diff = np.abs(reference.astype(np.float64) - exported)
    return {"images": len(reference),
            "top1_agreement": float(same.mean()),
            "top1_agreement_decided": float(same[decided].mean()) if decided.any() else 1.0,
            "near_ties": int((~decided).sum()),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}


def export(
    run: str | os.PathLike,
    format: str = "keras",
    quantize: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    model: str = "best",
    data: str | os.PathLike | None = None,
    samples: int | None = None,
    max_accuracy_drop: float | None = None,
    progress: bool = True,
) -> dict:
    """Export a run's model for serving, verify it, and write labels.txt and export.json.

    Args:
        run: a run folder written by `convlab.train`.
        format: "keras", "savedmodel", "tflite" or "onnx" (see the module docstring for each
            one's input and output).
        quantize: tflite only: None (float32), "float16" (weights), "dynamic" (int8 weights),
            or "int8" (weights and activations, calibrated on 200 training images).
        out: folder to write (default RUN/export/FORMAT[-QUANTIZE]); holds the artifact
            (model.keras, saved_model/, model.tflite or model.onnx), labels.txt, export.json.
        model: "best" (best validation accuracy) or "final" (last epoch).
        data: the run's prepared data, if it has moved since training.
        samples: None: verify on the whole validation split (the test split, else the
            training split, when there is none); N: on the first N images of validation,
            then test, then training.
        max_accuracy_drop: the accuracy the export may lose against the Keras model, as a
            fraction (0.01: one point); default the format's `TOLERANCES` entry.
        progress: progress on stderr (the conversion's time, a bar while verifying) and,
            at the end, what was written and how it verified.

    Returns:
        The contents of export.json: paths, input/output description and "verification":
        "passed", the `Tolerance` applied, "keras_accuracy", the worst "accuracy" and
        "accuracy_drop", "top1_agreement" (all images), "top1_agreement_decided" (near ties
        left out) and "max_abs_diff" over the ways the artifact takes input, and each one's
        numbers in "by_input".

    Raises:
        ConvlabError: bad options, missing data, a failed conversion, or an export that
            loses more accuracy (or, for float exports, strays further from the Keras
            model's probabilities) than the tolerance allows.
    """
    tol = _checked_tolerance(format, quantize, max_accuracy_drop, samples)
    info = _verifiable_run(run, data)
    out = Path(out) if out is not None else (
        RunFolder(info.path).export / (format + (f"-{quantize}" if quantize else "")))
    artifact = _claim_export_folder(out, format)
    try:
        return _export_into(out, artifact, info, format, quantize, model, samples, tol,
                            progress)
    except OSError as err:
        raise ConvlabError(f"cannot write the export into '{out}': "
                           f"{err.strerror or err}; give a writable folder with --out") from None


def _checked_tolerance(format: str, quantize: str | None, max_accuracy_drop: float | None,
                       samples: int | None) -> Tolerance:
    """The `Tolerance` an export is verified with; ConvlabError for bad options."""
    if format not in EXPORTS:
        raise ConvlabError(f"format must be one of {', '.join(FORMATS)}. Received: "
                           f"format={format!r}")
    if quantize is not None and quantize not in EXPORTS[format].quantize:
        takers = " and ".join(name for name, f in EXPORTS.items() if f.quantize)
        raise ConvlabError(f"quantize applies to {takers} only and is one of "
                           f"{', '.join(QUANTIZE)}. Received: format={format!r}, "
                           f"quantize={quantize!r}")
    tol = TOLERANCES[quantize]
    if max_accuracy_drop is not None:
        if not 0 <= max_accuracy_drop <= 1:
            raise ConvlabError(f"the accuracy drop bound must be between 0 and 1 (a fraction; "
                               f"--max-accuracy-drop takes points), received: "
                               f"{max_accuracy_drop}")
        tol = tol._replace(max_accuracy_drop=float(max_accuracy_drop))
    if samples is not None and samples < 1:
        raise ConvlabError(f"samples must be positive (or None for the validation split), "
                           f"received: {samples}")
    return tol


def _verifiable_run(run: str | os.PathLike, data: str | os.PathLike | None) -> RunInfo:
    """The run, with the prepared data its export is verified on (`data` when given)."""
    from convlab.data.manifest import is_prepared

    info = run_info(run) if data is None else replace(run_info(run), prepared=Path(data))
    if info.prepared is None or not is_prepared(info.prepared):
        trained_on = read_record(info.path).prepared_data if data is None else data
        raise ConvlabError(f"the run's prepared data ('{trained_on}') is not there any more; "
                           "exports are verified on it: pass --data (data=) with the prepared "
                           "folder where it is now")
    return info


def _claim_export_folder(out: Path, format: str) -> Path:
    """Make `out` ready for an export; the artifact's path. A folder that holds files an
    export writes, but no export.json, is someone else's: refused, nothing replaced."""
    artifact = out / EXPORTS[format].artifact
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConvlabError(f"cannot make the export folder '{out}': {err.strerror or err}; "
                           "give a writable folder with --out") from None
    ours = (out / "export.json").is_file()
    taken = [p.name for p in (artifact, out / "labels.txt")
             if not ours and (p.exists() or p.is_symlink())]
    if taken:
        raise ConvlabError(f"'{out}' already holds {taken[0]} and is not a convlab export "
                           "folder (no export.json); convlab replaces nothing there: give "
                           "another --out")
    if artifact.is_dir() and not artifact.is_symlink():
        shutil.rmtree(artifact)  # a previous export of this format (export.json says so)
    return artifact


def _export_into(out: Path, artifact: Path, info: RunInfo, format: str, quantize: str | None,
                 model: str, samples: int | None, tol: Tolerance, progress: bool) -> dict:
    """Write, verify and describe one export (see `export`)."""
    trained, path = load_run_model(info.path, model)
    calibration = Calibration.load(info.path, path.name)
    temperature = calibration.temperature if calibration is not None else None
    keras_fp32 = float32_model(trained)  # exported, and the reference it is verified against
    serving = serving_model(keras_fp32, info.test_size, temperature)
    with step(progress, f"writing the {_named(format, quantize)} export of {path.name}"):
        EXPORTS[format].write(serving, artifact, info, quantize)
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in info.classes))
    # what convlab shows: the calibrated probabilities, as the export computes them
    reference = Predictor.of_model(keras_fp32, info, path, calibration)
    check = _verify(artifact, EXPORTS[format].runners, reference, samples, tol, progress)
    report = _report(out, artifact, info, format, quantize, model, calibration, check)
    (out / "export.json").write_text(json.dumps(report, indent=1))
    if not check["passed"]:
        # An export that does not match its model must not be picked up by mistake.
        if artifact.is_dir():
            shutil.rmtree(artifact)
        else:
            artifact.unlink()
        raise ConvlabError(f"{_named(format, quantize)} export failed verification: "
                           f"{_shortfall(check, tol)} on {check['images']} "
                           f"{'+'.join(check['splits'])} images; removed it, numbers in "
                           f"{out / 'export.json'}")
    if progress:
        print(describe(report))
    return report


def _named(format: str, quantize: str | None) -> str:
    """'tflite int8', 'keras': an export as messages name it."""
    return f"{format}{f' {quantize}' if quantize else ''}"


def _verify(artifact: Path, runners, reference: Predictor, samples: int | None,
            tol: Tolerance, progress: bool) -> dict:
    """export.json's "verification": each way of running `artifact` against the
    `reference` predictor's probabilities, on the run's validation images (see `export`)."""
    info = reference.info
    images, labels, splits = run_images(info, ("validation", "test", "train"), samples)
    ways = runners(artifact)
    with progress_bar(progress, len(images) * (1 + len(ways)),
                      "verifying the export") as advance:
        expected = _batched(lambda x: reference(x).probabilities, images, advance)
        outputs = {name: _batched(fn, images, advance) for name, fn in ways.items()}
    keras_accuracy = float((expected.argmax(1) == labels).mean())
    results = {}
    for name, probs in outputs.items():
        accuracy = float((probs.argmax(1) == labels).mean())
        results[name] = {"accuracy": accuracy, "accuracy_drop": keras_accuracy - accuracy,
                         **compare(expected, probs, tol.near_tie)}
    worst = {key: pick(r[key] for r in results.values()) for key, pick in (
        ("accuracy", min), ("accuracy_drop", max), ("top1_agreement", min),
        ("top1_agreement_decided", min), ("max_abs_diff", max))}
    ok = worst["max_abs_diff"] <= tol.max_abs_diff and not _too_lossy(worst, tol)
    return {"reference": "the run's Keras model in float32 (calibrated as the export is), on "
                         "[0, 1] inputs",
            "images": len(images), "splits": splits, "passed": ok,
            "tolerance": tol._asdict(), "keras_accuracy": keras_accuracy,
            **worst, "by_input": results}


def _too_lossy(worst: dict, tol: Tolerance) -> bool:
    return worst["accuracy_drop"] > tol.max_accuracy_drop + 1e-9


def _shortfall(check: dict, tol: Tolerance) -> str:
    """Which bound a failed verification broke, with its numbers."""
    if _too_lossy(check, tol):
        return (f"accuracy {check['accuracy']:.4f} against the Keras model's "
                f"{check['keras_accuracy']:.4f} (a drop of {100 * check['accuracy_drop']:.2f} "
                f"points; bound {100 * tol.max_accuracy_drop:g}, --max-accuracy-drop to change "
                "it)")
    return (f"max |diff| {check['max_abs_diff']:.2e} from the Keras model's probabilities "
            f"(tolerance {tol.max_abs_diff:g})")


def _report(out: Path, artifact: Path, info: RunInfo, format: str, quantize: str | None,
            model: str, calibration: Calibration | None, verification: dict) -> dict:
    """export.json: what was written, what it takes and gives, and how it verified."""
    temperature = calibration.temperature if calibration is not None else None
    return {
        "format": format, "quantize": quantize, "artifact": str(artifact),
        "labels": str(out / "labels.txt"), "run": str(info.path), "model": model,
        "input": {"shape": [None, info.test_size, info.test_size, 3], "range": [0, 255],
                  "dtype": EXPORTS[format].input_dtype},
        "output": {"shape": [None, len(info.classes)], "dtype": "float32",
                   "meaning": "class probabilities in labels.txt order" + (
                       f", calibrated (temperature {temperature:.4f}, inside the model)"
                       if temperature is not None else " (the run is not calibrated)")},
        # the out-of-scope score compares features with the run's training photos: it is
        # not in the exported model; `convlab predict` and `convlab serve` give it
        "calibration": None if calibration is None else {
            "temperature": temperature, "out_of_scope_threshold": calibration.threshold,
            "out_of_scope": "not in the exported model (convlab predict / serve give it)"},
        "bytes": _size(artifact),
        "verification": verification,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def describe(report: dict) -> str:
    """What an export wrote and how it was verified, in two lines."""
    check = report["verification"]
    return (f"exported {visible(report['artifact'])} ({report['bytes']:,} bytes), labels "
            f"{visible(report['labels'])}; input {report['input']['dtype']} "
            f"{tuple(report['input']['shape'])} in [0, 255]\n"
            f"verified on {check['images']} {'+'.join(check['splits'])} images: accuracy "
            f"{check['accuracy']:.4f} (the Keras model: {check['keras_accuracy']:.4f}; drop "
            f"{100 * check['accuracy_drop']:.2f} points, bound "
            f"{100 * check['tolerance']['max_accuracy_drop']:g}); top-1 agreement "
            f"{check['top1_agreement']:.3f}, max |diff| {check['max_abs_diff']:.2e}; details "
            "in export.json")


def _batched(fn, images: np.ndarray, advance=lambda n: None, size: int = 64) -> np.ndarray:
    # Bounded batches: a big model on hundreds of images at once would need gigabytes.
    out = []
    for i in range(0, len(images), size):
        out.append(np.asarray(fn(images[i:i + size]), dtype=np.float32))
        advance(len(out[-1]))
    return np.concatenate(out)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
