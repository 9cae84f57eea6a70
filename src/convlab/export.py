"""Export a trained run for serving (Keras, SavedModel, TFLite), verified against Keras.

Every exported model takes raw images, N x S x S x 3 RGB pixels in [0, 255] (S: the run's
image size), and returns float32 class probabilities (N, classes) in labels.txt order:

- keras: `model.keras`, input "image" float32 [0, 255]; uint8 arrays are cast on the way in.
- savedmodel: `saved_model/`, signature "serving_default" takes `images` float32 [0, 255],
  "serving_uint8" takes `images` uint8; both return {"probabilities": float32}.
- tflite: `model.tflite`, input uint8 (dynamic batch: resize the input tensor), output float32,
  also for int8 (full-integer ops inside, dequantized at the end).

The scaling to [0, 1] the trained model expects is inside the exported graph, the model runs
in inference mode (no dropout, batch-norm moving statistics), and layers trained under mixed
precision are rebuilt in float32. Each export is run on sample images from the run's data and
compared with the run's Keras model (in float32); the numbers go to export.json beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from convlab.errors import ConvlabError
from convlab.runs import RunFolder, RunInfo, load_run_model, run_info

FORMATS = ("keras", "savedmodel", "tflite")
QUANTIZE = ("float16", "int8", "dynamic")
ARTIFACTS = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite"}


class Tolerance(NamedTuple):
    """How far an export may stray from the Keras model (in float32) on the sample images."""

    max_abs_diff: float  # largest |p_export - p_keras| over images and classes
    near_tie: float  # images whose Keras top-2 probabilities are closer than this ...
    min_agreement: float  # ... are left out of this minimum top-1 agreement


# Bounds from real flowers models: benchmarks/export_latency.py on the 128 px
# efficientnet-lite0-transfer run measured max |diff| float32 4e-6, float16 0.008, dynamic
# 0.13, int8 0.28 (BENCHMARKS.md); smaller or lower-resolution models went up to 0.41 for
# int8 in development runs. Quantization flips near-tied images, not confident ones, so the
# agreement bound leaves near ties out, with room for sampling noise (256 images: ~+-1.3%).
# For float exports a near tie is 2 x max_abs_diff, the only place a flip is possible at all.
TOLERANCES = {
    None: Tolerance(1e-4, 2e-4, 1.0),
    "float16": Tolerance(3e-2, 6e-2, 1.0),
    "dynamic": Tolerance(0.3, 0.1, 0.95),
    "int8": Tolerance(0.6, 0.1, 0.92),
}
CALIBRATION_IMAGES = 200


def float32_model(model):
    """A copy of `model` computing in float32 (e.g. one trained under mixed_bfloat16)."""
    import keras

    def as_float32(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "DTypePolicy":
                return {**obj, "config": {**obj["config"], "name": "float32"}}
            return {k: as_float32(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [as_float32(v) for v in obj]
        return obj

    config = as_float32(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    # Mixed-precision layers keep float32 variables, so the weights carry over as they are.
    copy.set_weights(model.get_weights())
    return copy


def serving_model(model, image_size: int):
    """[0, 255] pixels -> the trained model (float32, inference mode) -> probabilities."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1 / 255, dtype="float32", name="scale_to_unit")(inputs)
    outputs = float32_model(model)(x, training=False)
    return keras.Model(inputs, outputs, name=f"{model.name}_serving")


def run_images(info: RunInfo, splits: tuple[str, ...], count: int) -> np.ndarray:
    """Up to `count` uint8 images from the run's prepared data, taking splits in order."""
    from convlab.data import load

    manifest = json.loads((info.prepared / "manifest.json").read_text())
    have = {s["split"] for s in manifest["shards"]}
    images, need = [], count
    for split in (s for s in splits if s in have):
        ds = load(info.prepared, split, training=False, batch_size=min(need, 64),
                  image_size=info.image_size, cache=False)
        for batch, _ in ds:
            # Exact: the pipeline's floats are uint8 / 255.
            images.append(np.round(batch.numpy() * 255).astype(np.uint8)[:need])
            need -= len(images[-1])
            if need <= 0:
                return np.concatenate(images)
    if not images:
        raise ConvlabError(f"no {' or '.join(splits)} images in '{info.prepared}'")
    return np.concatenate(images)


def _write_savedmodel(serving, path: Path, size: int, dtypes: tuple[str, ...]) -> None:
    import keras
    import tensorflow as tf

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
        _write_savedmodel(serving, Path(tmp) / "sm", info.image_size, ("uint8",))
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"))
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            calibration = run_images(info, ("train",), CALIBRATION_IMAGES)
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            path.write_bytes(converter.convert())
        except Exception as err:  # the converter raises many types, all with a long message
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            hint = "; try --quantize dynamic" if quantize == "int8" else ""
            raise ConvlabError(f"TFLite conversion ({quantize or 'float32'}) failed: "
                               f"{first[:300]}{hint}") from None


def _runners(format: str, path: Path) -> dict:
    """Ways to run the exported artifact: name -> f(uint8 images) -> probabilities."""
    if format == "keras":
        import keras

        model = keras.models.load_model(path, compile=False)
        # Called directly, not via predict(): that would retrace for each input dtype.
        return {"float32 input": lambda x: model(x.astype(np.float32), training=False),
                "uint8 input": lambda x: model(x, training=False)}
    if format == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return {f"{name}": (lambda x, s=loaded.signatures[name], d=dtype:
                            s(images=tf.constant(x, d))["probabilities"].numpy())
                for name, dtype in (("serving_default", tf.float32),
                                    ("serving_uint8", tf.uint8))}
    from ai_edge_litert.interpreter import Interpreter

    def run_tflite(x):
        interpreter = Interpreter(model_path=str(path))
        source, = interpreter.get_input_details()
        interpreter.resize_tensor_input(source["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return {"uint8 input": run_tflite}


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
    samples: int = 256,
) -> dict:
    """Export a run's model for serving, verify it, and write labels.txt and export.json.

    Args:
        run: a run folder written by `convlab.train`.
        format: "keras", "savedmodel" or "tflite" (see the module docstring for each one's
            input and output).
        quantize: tflite only: None (float32), "float16" (weights), "dynamic" (int8 weights),
            or "int8" (weights and activations, calibrated on 200 training images).
        out: folder to write (default RUN/export/FORMAT[-QUANTIZE]); holds the artifact
            (model.keras, saved_model/ or model.tflite), labels.txt and export.json.
        model: "best" (best validation accuracy) or "final" (last epoch).
        data: the run's prepared data, if it has moved since training.
        samples: images the export is verified on (validation first, then test, train).

    Returns:
        The contents of export.json: paths, input/output description and "verification":
        "passed", the `Tolerance` applied, the worst "top1_agreement" (all images),
        "top1_agreement_decided" (near ties left out) and "max_abs_diff" over the ways the
        artifact takes input, and each one's numbers in "by_input".

    Raises:
        ConvlabError: bad options, missing data, a failed conversion, or an export whose
            outputs differ from the Keras model's by more than the tolerance.
    """
    if format not in FORMATS:
        raise ConvlabError(f"format must be one of {', '.join(FORMATS)}. Received: "
                           f"format={format!r}")
    if quantize is not None and (format != "tflite" or quantize not in QUANTIZE):
        raise ConvlabError(f"quantize applies to tflite only and is one of "
                           f"{', '.join(QUANTIZE)}. Received: format={format!r}, "
                           f"quantize={quantize!r}")
    info = run_info(run)
    if data is not None:
        info = replace(info, prepared=Path(data))
    if info.prepared is None or not (info.prepared / "manifest.json").is_file():
        raise ConvlabError(f"the run's prepared data ({info.prepared}) is gone; exports are "
                           "verified on it: pass data=/--data with the prepared folder")
    out = Path(out) if out is not None else (
        RunFolder(info.path).export / (format + (f"-{quantize}" if quantize else "")))
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / ARTIFACTS[format]
    if artifact.is_dir():
        shutil.rmtree(artifact)

    trained, _ = load_run_model(info.path, model)
    serving = serving_model(trained, info.image_size)
    if format == "keras":
        serving.save(artifact)
    elif format == "savedmodel":
        _write_savedmodel(serving, artifact, info.image_size, ("float32", "uint8"))
    else:
        _write_tflite(serving, artifact, info, quantize)
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in info.classes))

    images = run_images(info, ("validation", "test", "train"), samples)
    keras_fp32 = float32_model(trained)
    reference = _batched(lambda x: keras_fp32(x.astype(np.float32) / np.float32(255.0),
                                              training=False), images)
    tol = TOLERANCES[quantize]
    results = {name: compare(reference, _batched(fn, images), tol.near_tie)
               for name, fn in _runners(format, artifact).items()}
    worst = {key: pick(r[key] for r in results.values()) for key, pick in (
        ("top1_agreement", min), ("top1_agreement_decided", min), ("max_abs_diff", max))}
    ok = (worst["max_abs_diff"] <= tol.max_abs_diff
          and worst["top1_agreement_decided"] >= tol.min_agreement)
    report = {
        "format": format, "quantize": quantize, "artifact": str(artifact),
        "labels": str(out / "labels.txt"), "run": str(info.path), "model": model,
        "input": {"shape": [None, info.image_size, info.image_size, 3], "range": [0, 255],
                  "dtype": "uint8" if format == "tflite" else "float32 (or uint8)"},
        "output": {"shape": [None, len(info.classes)], "dtype": "float32",
                   "meaning": "class probabilities in labels.txt order"},
        "bytes": _size(artifact),
        "verification": {"reference": "the run's Keras model in float32, on [0, 1] inputs",
                         "images": len(images), "passed": ok, "tolerance": tol._asdict(),
                         **worst, "by_input": results},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "export.json").write_text(json.dumps(report, indent=1))
    if not ok:
        # An export that does not match its model must not be picked up by mistake.
        if artifact.is_dir():
            shutil.rmtree(artifact)
        else:
            artifact.unlink()
        raise ConvlabError(
            f"{format}{f' {quantize}' if quantize else ''} export differs from the Keras "
            f"model: max |diff| {worst['max_abs_diff']:.2e} (tolerance {tol.max_abs_diff:g}), "
            f"top-1 agreement {worst['top1_agreement_decided']:.3f} (minimum "
            f"{tol.min_agreement:g} beyond near-ties "
            f"< {tol.near_tie:g}) on {len(images)} images; removed "
            f"it, numbers in {out / 'export.json'}")
    return report


def _batched(fn, images: np.ndarray, size: int = 64) -> np.ndarray:
    # Bounded batches: a big model on hundreds of images at once would need gigabytes.
    return np.concatenate([np.asarray(fn(images[i:i + size]), dtype=np.float32)
                           for i in range(0, len(images), size)])


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
