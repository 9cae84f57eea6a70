"""Head-only training on cached backbone features (the "bottleneck cache" of TF's retrain.py).

With a frozen pretrained backbone, every training step spends nearly all its time computing
features that do not change. Here the backbone runs once per *view*: `views` augmented passes
over the training split (each the training pipeline's own epoch, with its own augmentation)
and one pass over the validation split. The head (the layers after "avg_pool", sharing their
weights with the full model) then trains on those features, epoch e on view e % views, in a
fraction of the time. Validation accuracy is the full model's: batch norm is in inference
mode in a frozen backbone, and dropout is off at validation in both.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from convlab.errors import ConvlabError
from convlab.progress import live_output


def split_head(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(extractor: images -> pooled features, head: features -> probabilities).

    The head shares its layers (and so its weights) with `model`: training it trains `model`.
    """
    names = [layer.name for layer in model.layers]
    if "avg_pool" not in names:
        raise ConvlabError(f"model {model.name!r} has no 'avg_pool' layer: cached features need "
                           "a pretrained-backbone model (see `convlab models`)")
    pool = model.get_layer("avg_pool")
    extractor = keras.Model(model.input, pool.output, name="extractor")
    inputs = keras.Input(pool.output.shape[1:], name="features")
    x = inputs
    for layer in model.layers[names.index("avg_pool") + 1:]:
        x = layer(x)
    return extractor, keras.Model(inputs, x, name="head")


def extract(extractor: keras.Model, dataset: tf.data.Dataset, batches: int | None,
            label: str, progress: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Features of `batches` batches of (images, *targets); returns (features, targets)."""
    run = tf.function(lambda x: tf.cast(extractor(x, training=False), tf.float32))
    if batches is not None:
        dataset = dataset.take(batches)
    elif (known := int(dataset.cardinality())) >= 0:
        batches = known  # for the progress bar
    live = progress and live_output()  # else one line when done (a pipe, a log file)
    bar = keras.utils.Progbar(batches, unit_name="batch", verbose=1 if live else 0)
    features, targets, start, seen = [], [], time.perf_counter(), 0
    for batch in dataset:
        features.append(run(batch[0]).numpy())
        targets.append([np.asarray(t) for t in batch[1:]])
        seen += len(features[-1])
        bar.add(1)
    if not live:
        print(f"{label}: {seen} images in {time.perf_counter() - start:.0f} s")
    return np.concatenate(features), [np.concatenate(t) for t in zip(*targets, strict=True)]


class CachedFeatures:
    """The training views and validation features of one run, ready for the head."""

    def __init__(self, extractor, train_ds, val_ds, *, views: int, steps: int,
                 progress: bool = True):
        start = time.perf_counter()
        print(f"cached features: {views} augmented view(s) of the training split and one of "
              "the validation split through the frozen backbone")
        # The training pipeline repeats epoch after epoch, each with its own augmentation.
        features, targets = extract(extractor, train_ds, views * steps, "training views",
                                    progress)
        per_view = len(features) // views
        self.train = [(features[v * per_view:(v + 1) * per_view],
                       [t[v * per_view:(v + 1) * per_view] for t in targets])
                      for v in range(views)]
        self.val = extract(extractor, val_ds, None, "validation", progress) \
            if val_ds is not None else None
        self.seconds = time.perf_counter() - start
        print(f"cached features: {len(features) + (len(self.val[0]) if self.val else 0)} "
              f"images in {self.seconds:.0f} s")

    def train_dataset(self, batch_size: int, seed: int, start_epoch: int) -> tf.data.Dataset:
        """Epoch e: view e % views, shuffled by (seed, e), in whole batches; repeats."""
        views = len(self.train)
        features = tf.constant(np.stack([f for f, _ in self.train]))
        targets = [tf.constant(np.stack(t)) for t in zip(*(t for _, t in self.train), strict=True)]

        def epoch(e):
            v = e % views
            ds = tf.data.Dataset.from_tensor_slices((features[v], *(t[v] for t in targets)))
            ds = ds.shuffle(features.shape[1], seed=seed * 1_000_003 + e,
                            reshuffle_each_iteration=False)
            return ds.batch(batch_size, drop_remainder=True)

        return tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch).prefetch(2)

    def val_dataset(self, batch_size: int) -> tf.data.Dataset | None:
        if self.val is None:
            return None
        features, targets = self.val
        return tf.data.Dataset.from_tensor_slices((features, *targets)).batch(batch_size)
