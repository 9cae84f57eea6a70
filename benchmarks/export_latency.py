"""Exported model sizes and CPU latency: Keras vs SavedModel vs TFLite (float32, int8, ...).

    .venv/bin/python benchmarks/export_latency.py RUN [--repeats 50] [--batch 32]

Exports RUN in each format (each export is verified against the Keras model by
`convlab export` itself), then times single-image and batch inference on raw uint8 images:
median over `--repeats` calls after warm-up, all formats measured in the same process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from convlab.serving import export  # noqa: E402

VARIANTS = (("keras", None), ("savedmodel", None), ("tflite", None), ("tflite", "float16"),
            ("tflite", "dynamic"), ("tflite", "int8"))


def _runner(fmt: str, artifact: Path):
    """A function images(uint8 NHWC) -> probabilities, for one exported artifact."""
    if fmt == "keras":
        import keras

        model = keras.models.load_model(artifact)
        return lambda x: model.predict_on_batch(x.astype("float32"))
    if fmt == "savedmodel":
        fn = tf.saved_model.load(str(artifact)).signatures["serving_uint8"]
        return lambda x: next(iter(fn(tf.constant(x)).values())).numpy()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(artifact), num_threads=os.cpu_count())
    state = {"shape": None}

    def run(x):
        inp = interpreter.get_input_details()[0]
        if state["shape"] != x.shape:
            interpreter.resize_tensor_input(inp["index"], x.shape)
            interpreter.allocate_tensors()
            state["shape"] = x.shape
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


def _median_ms(fn, x, repeats: int) -> float:
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, quantize in VARIANTS:
            out = Path(tmp) / f"{fmt}-{quantize or 'float32'}"
            info = export(args.run, fmt, quantize, out=out)
            artifact = Path(info["artifact"])
            size = info["input"]["shape"][1]
            check = info["verification"]
            run = _runner(fmt, artifact)
            rng = np.random.default_rng(0)
            one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
            batch = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
            rows.append((f"{fmt} {quantize or 'float32'}", info["bytes"],
                         _median_ms(run, one, args.repeats),
                         _median_ms(run, batch, max(5, args.repeats // 5)),
                         check["top1_agreement"], check["max_abs_diff"]))
    print(f"run: {args.run}; batch {args.batch}; median of {args.repeats} single-image calls")
    print(f"{'format':<20}{'size MB':>9}{'1 image ms':>12}{'batch ms':>10}{'img/s':>8}"
          f"{'top-1 agree':>13}{'max |dp|':>10}")
    for name, size, one_ms, batch_ms, agree, diff in rows:
        print(f"{name:<20}{size / 1e6:>9.2f}{one_ms:>12.2f}{batch_ms:>10.1f}"
              f"{args.batch * 1000 / batch_ms:>8.0f}{agree:>13.3f}{diff:>10.2g}")
