"""Seconds per fine-tuning step of EfficientNet-Lite0 with its early blocks frozen or not
(`fine_tune_from`): the backward pass skips the frozen layers' large feature maps.

    .venv/bin/python benchmarks/fine_tune_from.py --image-size 300 --batch-size 32

One random batch in memory, float32, Adam; the best of 3 timed steps after one that traces.
Weights are not loaded (the arithmetic does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from convlab.models import create_model  # noqa: E402
from convlab.models.backbone import set_backbone_trainable  # noqa: E402


def step_seconds(first: str | None, size: int, batch: int, rounds: int = 3,
                 label_smoothing: float = 0.0) -> float:
    """The best of `rounds` fine-tuning steps from layer `first` on (batch norm frozen), after
    one that traces; with label smoothing, on one-hot labels (as convlab trains)."""
    model = create_model("efficientnet_lite0", 5, size, weights=None)
    set_backbone_trainable(model, True, first_trainable=first)
    x = np.random.default_rng(0).random((batch, size, size, 3), np.float32)
    if label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        y = np.eye(5, dtype=np.float32)[np.arange(batch) % 5]
    else:
        loss, y = "sparse_categorical_crossentropy", np.zeros(batch, np.int32)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss)
    model.train_on_batch(x, y)
    spans = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        spans.append(time.perf_counter() - start)
    keras.backend.clear_session()
    return min(spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    for first in (None, "block1_", "block3_", "block5_"):
        seconds = step_seconds(first, args.image_size, args.batch_size)
        print(f"fine_tune_from={first or 'None (whole backbone)'}: {seconds:.3f} s/step")


if __name__ == "__main__":
    main()
