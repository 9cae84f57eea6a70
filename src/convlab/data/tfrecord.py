"""The TFRecord schema, compatible with the codelab's flowers files.

Each `tf.train.Example` holds `image` (JPEG bytes), `class` (int64), `label` (class name
bytes), `size` (int64[2]: height, width) and `one_hot_class` (float list), as the codelab's
files do, plus `path` (bytes): the source photo, relative to the manifest's `source` folder
(a full path or URL for patterns), so a mistake can be traced to its file. Readers of the
codelab's schema ignore it; records written before it existed read as "".
Shards are named `<split><index:02d>-<count>.tfrec` so counts can be read from names.
"""

from __future__ import annotations

import re

import tensorflow as tf

SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)(?P<index>\d{2,})-(?P<count>\d+)\.tfrec$")

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "class": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.string),
    "size": tf.io.FixedLenFeature([2], tf.int64),
    "one_hot_class": tf.io.VarLenFeature(tf.float32),
    "path": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
# What training reads: parsing only these is ~2x cheaper than all of FEATURES.
IMAGE_AND_CLASS = {name: FEATURES[name] for name in ("image", "class")}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}{index:02d}-{count}.tfrec"


def encode_example(jpeg: bytes, class_index: int, label: str, size: int, num_classes: int,
                   path: str = "") -> bytes:
    one_hot = [0.0] * num_classes
    one_hot[class_index] = 1.0
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "class": tf.train.Feature(int64_list=tf.train.Int64List(value=[class_index])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()])),
        "size": tf.train.Feature(int64_list=tf.train.Int64List(value=[size, size])),
        "one_hot_class": tf.train.Feature(float_list=tf.train.FloatList(value=one_hot)),
        "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
    }
    # deterministic: the feature map in a fixed order, so the same photos give the same
    # bytes (and shard checksums) in every process
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor, features: dict = FEATURES) -> dict[str, tf.Tensor]:
    """Parse one serialized Example into (some of) its features, eagerly or in tf.data."""
    parsed = tf.io.parse_single_example(serialized, features)
    if "one_hot_class" in parsed:
        parsed["one_hot_class"] = tf.sparse.to_dense(parsed["one_hot_class"])
    return parsed
