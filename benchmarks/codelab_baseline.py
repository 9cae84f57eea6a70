"""The baseline: the codelab's SqueezeNet written the way a codelab user writes it.

Plain Keras and tf.data, nothing from convlab: per-file loading (read_file, decode_jpeg,
resize), cache, the codelab's augmentation (random flip + saturation) per image, shuffle,
batch 32, prefetch; float32; Adam at its default rate; the codelab's SqueezeNet (conv + relu
then batch norm, fire modules, global average pooling). convlab's benchmarks measure
themselves against this.

    .venv/bin/python benchmarks/codelab_baseline.py PREPARED --epochs 35 [--size 128]

PREPARED is a folder written by `convlab data prepare` from the same photos: the baseline
reads the original photo files it lists for each split, so both sides train and validate on
exactly the same images. Prints one line per epoch with the wall time since the start.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

AUTO = tf.data.AUTOTUNE
BATCH_SIZE = 32


def split_files(prepared: str | os.PathLike, split: str) -> tuple[list[str], list[int], list]:
    """(photo paths, class indices, class names) of one split of a prepared folder."""
    manifest = json.loads((Path(prepared) / "manifest.json").read_text())
    classes = manifest["classes"]
    inputs = [i for i in manifest["inputs"] if i["split"] == split]
    return [i["path"] for i in inputs], [classes.index(i["class"]) for i in inputs], classes


def decode_jpeg_and_label(filename, label, size: int):
    bits = tf.io.read_file(filename)
    image = tf.io.decode_jpeg(bits, channels=3)
    image = tf.image.resize(image, [size, size])
    return tf.cast(image, tf.float32) / 255.0, label


def data_augment(image, label):
    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_saturation(image, 0, 2)
    return image, label


def dataset(files: list[str], labels: list[int], size: int, training: bool,
            batch_size: int = BATCH_SIZE) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    ds = ds.map(lambda f, y: decode_jpeg_and_label(f, y, size), num_parallel_calls=AUTO)
    ds = ds.cache()
    if training:
        ds = ds.map(data_augment, num_parallel_calls=AUTO)
        ds = ds.shuffle(2048)
    return ds.batch(batch_size).prefetch(AUTO)


def fire(x, squeeze, expand, momentum=0.9):
    y = keras.layers.Conv2D(squeeze, 1, activation="relu", padding="same")(x)
    y = keras.layers.BatchNormalization(momentum=momentum)(y)
    y1 = keras.layers.Conv2D(expand // 2, 1, activation="relu", padding="same")(y)
    y1 = keras.layers.BatchNormalization(momentum=momentum)(y1)
    y3 = keras.layers.Conv2D(expand // 2, 3, activation="relu", padding="same")(y)
    y3 = keras.layers.BatchNormalization(momentum=momentum)(y3)
    return keras.layers.concatenate([y1, y3])


def squeezenet(size: int, classes: int) -> keras.Model:
    x = keras.layers.Input(shape=[size, size, 3])
    y = keras.layers.Conv2D(32, 3, padding="same", use_bias=True, activation="relu")(x)
    y = keras.layers.BatchNormalization(momentum=0.9)(y)
    y = fire(y, 24, 48)
    y = keras.layers.MaxPooling2D(pool_size=2)(y)
    y = fire(y, 48, 96)
    y = keras.layers.MaxPooling2D(pool_size=2)(y)
    y = fire(y, 64, 128)
    y = keras.layers.MaxPooling2D(pool_size=2)(y)
    y = fire(y, 48, 96)
    y = keras.layers.MaxPooling2D(pool_size=2)(y)
    y = fire(y, 24, 48)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(classes, activation="softmax")(y)
    model = keras.Model(x, y)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class EpochClock(keras.callbacks.Callback):
    """Wall time since training started, and images/s, at each epoch's end."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images = images_per_epoch

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        logs["wall_seconds"] = now - self.start
        logs["images_per_second"] = self.images / (now - self.epoch_start)
        print(json.dumps({"epoch": epoch + 1, **{k: round(float(v), 4)
                                                  for k, v in logs.items()}}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prepared")
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args()
    train_files, train_labels, classes = split_files(args.prepared, "train")
    val_files, val_labels, _ = split_files(args.prepared, "validation")
    model = squeezenet(args.size, len(classes))
    steps = len(train_files) // BATCH_SIZE
    model.fit(dataset(train_files, train_labels, args.size, True).repeat(),
              steps_per_epoch=steps, epochs=args.epochs,
              validation_data=dataset(val_files, val_labels, args.size, False),
              callbacks=[EpochClock(steps * BATCH_SIZE)], verbose=0)


if __name__ == "__main__":
    main()
