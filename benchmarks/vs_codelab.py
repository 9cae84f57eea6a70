"""convlab against the plain codelab code, side by side in the same run.

    .venv/bin/python benchmarks/vs_codelab.py [PHOTOS] [--size 128] [--rounds 3] [--steps 30]

Variants (each measured in its own fresh process, rounds alternating between variants so
a noisy machine hits all of them alike; medians reported):
  codelab          benchmarks/codelab_baseline.py: the codelab's SqueezeNet, per-file
                   JPEG pipeline with cache, float32, batch 32
  convlab          convlab's squeezenet and TFRecord pipeline, its defaults on this machine
                   (auto precision: mixed_bfloat16 on a CPU with native bfloat16, float32
                   on others; fused batch norm + ReLU), batch 32
  convlab-fp32     the same in float32
  convlab-keras-bn the same with Keras' own (unfused) batch norm
  convlab-b64      batch 64
  convlab-tensors  convlab's model trained on one batch held in memory as a tensor: no input
                   pipeline at all, the ceiling for pipeline-fed training
Per variant: training images/s in steady state (batch size over the median step time, after
a full pass that fills the caches and a few traced steps; the median shrugs off the stalls a
shared machine causes), input-pipeline images/s alone (the same dataset, no model), and the
process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parents[1] / "shared" / "data" / "flower_photos"
VARIANTS = ("codelab", "convlab", "convlab-fp32", "convlab-keras-bn", "convlab-b64",
            "convlab-tensors")


def _datasets(variant: str, prepared: Path, size: int):
    """(training dataset, images per batch, compiled model) for one variant."""
    import keras
    import tensorflow as tf

    if variant == "codelab":
        sys.path.insert(0, str(HERE))
        import codelab_baseline as cb

        files, labels, classes = cb.split_files(prepared, "train")
        return (cb.dataset(files, labels, size, True).repeat(), cb.BATCH_SIZE,
                cb.squeezenet(size, len(classes)))

    from convlab.config import CODELAB_AUGMENT
    from convlab.data import load
    from convlab.data.augment import Augment
    from convlab.models import create_model
    from convlab.training.strategy import resolve_precision

    batch = 64 if variant == "convlab-b64" else 32
    keras.mixed_precision.set_global_policy(
        "float32" if variant == "convlab-fp32" else resolve_precision("auto", model="squeezenet"))
    options = {"fused_batch_norm": variant != "convlab-keras-bn"}
    ds = load(prepared, "train", batch_size=batch, image_size=size, seed=0,
              augment=Augment(**CODELAB_AUGMENT))
    if variant == "convlab-tensors":
        images, labels = next(iter(ds))
        ds = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model = create_model("squeezenet", 5, size, **options)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return ds, batch, model


def measure(variant: str, prepared: Path, size: int, steps: int, warmup: int) -> dict:
    """One variant, in this process: steady training and pipeline images/s, peak memory."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    ds, batch, model = _datasets(variant, prepared, size)
    per_epoch = manifest["counts"]["per_split"]["train"] // batch
    iterator = iter(ds)
    for _ in range(per_epoch + 1):  # one full pass: decoding caches are full after it
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps * 2):
        next(iterator)
    pipeline = steps * 2 * batch / (time.perf_counter() - start)
    from step_timer import StepTimer

    timer = StepTimer()
    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
    train = timer.images_per_second(batch, skip=warmup)
    return {"variant": variant, "train_images_per_second": train,
            "pipeline_images_per_second": pipeline,
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("photos", nargs="?", default=str(DEFAULT))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed training steps")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (tracing)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one, print JSON
    p.add_argument("--prepared", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, Path(args.prepared), args.size, args.steps,
                                 args.warmup)))
        return

    from convlab.data import prepare
    from convlab.training.strategy import hardware

    tmp = tempfile.TemporaryDirectory()
    prepared = Path(tmp.name) / "data"
    prepare(args.photos, prepared, size=args.size, progress=False)
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            out = subprocess.run(
                [sys.executable, __file__, "--one", v, "--prepared", str(prepared),
                 "--size", str(args.size), "--steps", str(args.steps),
                 "--warmup", str(args.warmup)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[v].append(row)
            print(f"round {r + 1} {v}: {row['train_images_per_second']:.1f} img/s training, "
                  f"{row['pipeline_images_per_second']:.0f} img/s pipeline, "
                  f"{row['peak_memory_mb']:.0f} MB", flush=True)
    base = statistics.median(x["train_images_per_second"] for x in results[variants[0]])
    print(f"\n{hardware()}; {args.photos} at {args.size} px; median of {args.rounds} rounds\n")
    print("| variant | training img/s | vs codelab | input pipeline img/s | peak memory |")
    print("| --- | --- | --- | --- | --- |")
    for v in variants:
        med = {k: statistics.median(x[k] for x in results[v]) for k in
               ("train_images_per_second", "pipeline_images_per_second", "peak_memory_mb")}
        print(f"| {v} | {med['train_images_per_second']:.1f} | "
              f"{med['train_images_per_second'] / base:.2f}x | "
              f"{med['pipeline_images_per_second']:,.0f} | {med['peak_memory_mb']:,.0f} MB |")


if __name__ == "__main__":
    main()
