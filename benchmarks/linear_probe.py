"""Linear probe: how good are a pretrained model's frozen features on a prepared dataset?

    .venv/bin/python benchmarks/linear_probe.py PREPARED [--model efficientnet_lite0]
        [--size 128] [--precision float32]

Extracts the pooled features (layer "avg_pool") of the model's pretrained backbone for the
train and validation splits, fits a logistic regression (scikit-learn) on the training
features and prints validation accuracy: the ceiling of frozen-backbone transfer learning.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from convlab.data import load, read_manifest  # noqa: E402
from convlab.models import create_model  # noqa: E402


def features(model, prepared: str, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for images, labels in load(prepared, split, training=False, batch_size=64, image_size=size,
                               cache=False):
        xs.append(np.asarray(model(images, training=False), "float32"))
        ys.append(labels.numpy())
    return np.concatenate(xs), np.concatenate(ys)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args()
    keras.mixed_precision.set_global_policy(args.precision)
    classes = read_manifest(args.prepared)["num_classes"]
    full = create_model(args.model, classes, args.size)
    extractor = keras.Model(full.input, full.get_layer("avg_pool").output)
    start = time.time()
    x_train, y_train = features(extractor, args.prepared, "train", args.size)
    x_val, y_val = features(extractor, args.prepared, "validation", args.size)
    probe = LogisticRegression(max_iter=3000).fit(x_train, y_train)
    print(f"{args.model} at {args.size} px ({args.precision}): linear-probe validation accuracy "
          f"{probe.score(x_val, y_val):.3f} (train {probe.score(x_train, y_train):.3f}; "
          f"{len(y_train)} + {len(y_val)} images, {time.time() - start:.0f} s)")
