"""Every recipe in one table, against what this CPU can do at most.

    .venv/bin/python benchmarks/recipe_table.py [PHOTOS] [--size 128] [--runs DIR ...]

For each recipe (`convlab recipes`) at --size: parameters, forward FLOPs per image (counted
by TensorFlow's profiler on the inference graph; a training step costs about 3x that, less
where a frozen backbone needs no weight gradients, so the GFLOP/s column overstates those),
training and inference images/s (steady state, on the cached TFRecord pipeline of PHOTOS),
and the arithmetic rate that training speed means, next to the CPU's measured peak (a large
matmul in float32 and in bfloat16). With --runs, finished run folders of those recipes add
their epochs, wall time and final/best validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from step_timer import StepTimer  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "flower_photos"


def peak_matmul_gflops(dtype: str, n: int = 4096, repeats: int = 10) -> float:
    """GFLOP/s of an n x n x n matmul, the best of `repeats` after a warm-up."""
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.linalg.matmul(x, x))
    matmul(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def forward_flops(model: keras.Model, size: int) -> float:
    """Floating-point operations of one image's forward pass (multiply-add = 2)."""
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    spec = tf.TensorSpec([1, size, size, 3], tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output()
    return float(profile(graph=graph, options=options.build()).total_float_ops)


def speeds(model: keras.Model, ds, batch: int, steps: int) -> tuple[float, float]:
    """(training, inference) images/s in steady state: batch / median step time."""
    timer = StepTimer()
    model.fit(ds, steps_per_epoch=3 + steps, epochs=1, verbose=0, callbacks=[timer])
    train = timer.images_per_second(batch, skip=3)
    images = next(iter(ds))[0]
    infer = tf.function(lambda x: model(x, training=False))
    infer(images).numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        infer(images).numpy()
        times.append(time.perf_counter() - start)
    return train, batch / statistics.median(times)


def finished_runs(folders: list[str]) -> dict[str, dict]:
    """recipe -> summary.json of the latest finished run folder of it."""
    found = {}
    for folder in folders:
        for summary in sorted(Path(folder).rglob("summary.json")):  # also nested runs
            s = json.loads(summary.read_text())
            if s.get("recipe"):
                found[s["recipe"]] = s
    return found


def main() -> None:
    from convlab.config import RECIPES, recipe_config
    from convlab.data import load, prepare
    from convlab.models import create_model
    from convlab.training.strategy import hardware, resolve_precision

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("photos", nargs="?", default=str(DEFAULT))
    p.add_argument("--size", type=int, default=128, help="image size for every recipe")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--runs", nargs="*", default=[], help="run folders' parent folders")
    args = p.parse_args()

    peak32, peak16 = peak_matmul_gflops("float32"), peak_matmul_gflops("bfloat16")
    print(f"{hardware()}: matmul peak {peak32:.0f} GFLOP/s float32, {peak16:.0f} GFLOP/s "
          f"bfloat16 (4096^3, best of 10)\n")
    tmp = tempfile.TemporaryDirectory()
    prepared = Path(tmp.name) / "data"
    prepare(args.photos, prepared, size=args.size, progress=False)
    runs = finished_runs(args.runs)
    print("| recipe | params | forward MFLOPs/img | precision | train img/s | "
          "train GFLOP/s (% of peak) | inference img/s | epochs | wall | best / final val acc |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in RECIPES:
        config = recipe_config(name)
        precision = resolve_precision(config.precision, model=config.model)
        keras.mixed_precision.set_global_policy(precision)
        options = dict(config.model_options)
        if config.model in ("mobilenetv2", "xception"):
            options["weights"] = None  # offline here; the speed is the same
        model = create_model(config.model, 5, args.size, **options)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        flops = forward_flops(model, args.size)
        batch = config.batch_per_replica or config.batch_size
        ds = load(prepared, "train", batch_size=batch, image_size=args.size, seed=0,
                  augment=config.augment)
        train, infer = speeds(model, ds, batch, args.steps)
        keras.mixed_precision.set_global_policy("float32")
        rate = train * 3 * flops / 1e9
        peak = peak16 if precision == "mixed_bfloat16" else peak32
        run = runs.get(name)
        done = ("", "", "")
        if run:
            done = (str(run["epochs"]), f"{run['wall_seconds'] / 60:.1f} min",
                    f"{run['best'].get('val_accuracy', 0):.3f} / "
                    f"{run['final'].get('val_accuracy', 0):.3f}")
        print(f"| {name} | {model.count_params():,} | {flops / 1e6:,.0f} | {precision} | "
              f"{train:.1f} | {rate:.0f} ({100 * rate / peak:.0f}%) | {infer:.0f} | "
              f"{done[0]} | {done[1]} | {done[2]} |", flush=True)


if __name__ == "__main__":
    main()
