"""Where a training step's time goes: TensorFlow op types ranked by CPU time.

    .venv/bin/python benchmarks/profile_step.py [--model squeezenet] [--size 128]
        [--batch 32] [--precision float32] [--steps 10] [--option fused_batch_norm=false]

Builds the model as `convlab train` does (Adam, sparse cross-entropy, the trainer's compile
options), trains on one random batch held in memory (no input pipeline), traces --steps
steps with the TensorFlow profiler after a warm-up, and sums the traced op durations by op
type (Conv2D, Conv2DBackpropFilter, FusedBatchNormGradV3, ...). Durations from all threads
are added, so the shares are shares of busy CPU time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from convlab.models import create_model  # noqa: E402
from step_timer import parse_options  # noqa: E402


def op_times(logdir: str) -> collections.Counter:
    """Microseconds per op type from the host plane of a profiler trace."""
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # inter-op threads run the ops
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name and "::" not in name:  # "layer/op:OpType", not executor spans
                    totals[name.rsplit(":", 1)[1]] += event.duration_ps / 1e6
    return totals


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="squeezenet")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="float32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--option", action="append", default=[], help="model option key=value")
    args = p.parse_args()
    keras.mixed_precision.set_global_policy(args.precision)
    model = create_model(args.model, 5, args.size, **parse_options(args.option))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.size, args.size, 3), dtype=np.float32)
    y = rng.integers(0, 5, args.batch)
    for _ in range(5):
        model.train_on_batch(x, y)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(args.steps):
            model.train_on_batch(x, y)
        wall = (time.perf_counter() - start) / args.steps
        tf.profiler.experimental.stop()
        totals = op_times(logdir)
    busy = sum(totals.values()) / args.steps / 1e6
    print(f"{args.model} at {args.size} px, batch {args.batch}, {args.precision}: "
          f"{wall * 1e3:.0f} ms per step (traced), {busy * 1e3:.0f} ms of op time per step")
    print(f"{'op type':32} {'ms/step':>8} {'share':>6}")
    for name, us in totals.most_common(args.top):
        per_step = us / args.steps / 1e3
        print(f"{name:32} {per_step:8.1f} {per_step / busy / 1e3:6.1%}")
