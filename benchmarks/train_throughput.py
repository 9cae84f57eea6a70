"""Training throughput of one model under each precision policy, measured in the same run.

    .venv/bin/python benchmarks/train_throughput.py [PHOTOS] [--model squeezenet] [--size 128]

Prepares PHOTOS (default ../shared/data/flower_photos) into a temporary folder, then for each
round and each precision builds the model, warms up (tracing, cache filling) and times
steady-state training steps on the cached, augmented TFRecord pipeline. Median over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from convlab.data import load, prepare  # noqa: E402
from convlab.models import create_model  # noqa: E402
from step_timer import StepTimer, parse_options  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "flower_photos"


def images_per_second(data: Path, model_name: str, size: int, batch: int, precision: str,
                      warmup: int, steps: int, options: dict) -> float:
    """Batch size over the median step time (the median ignores a shared machine's stalls)."""
    keras.mixed_precision.set_global_policy(precision)
    timer = StepTimer()
    try:
        ds = load(data, "train", batch_size=batch, image_size=size, augment=True, seed=0)
        model = create_model(model_name, 5, size, **options)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, shuffle=False,
                  callbacks=[timer])
        return timer.images_per_second(batch, skip=warmup)
    finally:
        keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="?", default=str(DEFAULT))
    parser.add_argument("--model", default="squeezenet")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="model option, e.g. fused_batch_norm=false (repeatable)")
    args = parser.parse_args()
    options = parse_options(args.option)
    precisions = args.precisions.split(",")
    rates = {p: [] for p in precisions}
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args.photos, tmp, size=args.size, progress=False)
        for _ in range(args.rounds):
            for p in precisions:
                rates[p].append(images_per_second(Path(tmp), args.model, args.size,
                                                  args.batch_size, p, args.warmup, args.steps,
                                                  options))
    print(f"{args.model} {options or ''} at {args.size} px, batch {args.batch_size}, median "
          f"step of {args.steps} after {args.warmup} warm-up, median of {args.rounds} rounds")
    for p in precisions:
        print(f"{p:>16}: {statistics.median(rates[p]):7.1f} images/s  "
              f"(rounds: {', '.join(f'{r:.1f}' for r in rates[p])})")
