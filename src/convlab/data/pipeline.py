"""tf.data input pipelines: from prepared TFRecords (fast path) or from image files (per-file).

Both yield (images, labels): float32 images of shape (batch, size, size, 3) in [0, 1] and
int32 class indices. Models do their own further preprocessing.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from convlab.data.augment import Augment, augment_batch
from convlab.data.ingest import read_manifest
from convlab.data.tfrecord import parse_example
from convlab.errors import ConvlabError

AUTOTUNE = tf.data.AUTOTUNE
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}


def shard_files(path: str | os.PathLike, split: str) -> tuple[list[str], int, dict]:
    """The shard files of one split, its record count, and the manifest."""
    manifest = read_manifest(path)
    split = SPLIT_ALIASES.get(split, split)
    shards = [s for s in manifest["shards"] if s["split"] == split]
    if not shards:
        have = sorted({s["split"] for s in manifest["shards"]})
        raise ConvlabError(f"prepared dataset '{path}' has no {split!r} split; it has: "
                           f"{', '.join(have)}")
    return [str(Path(path) / s["file"]) for s in shards], sum(s["count"] for s in shards), manifest


def resize_to_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize keeping aspect ratio so the short side is `size`, then centre-crop (uint8 in/out)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    image = tf.image.resize(image, new, antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _as_augment(augment: Augment | bool | None, training: bool) -> Augment | None:
    """Augmentation is for training data only; True means the codelab's flip + saturation."""
    if not training or not augment:
        return None
    return Augment() if augment is True else augment


def _finish(ds: tf.data.Dataset, *, batch_size: int, training: bool, augment: Augment | None,
            cache, shuffle_buffer: int, repeat: bool, drop_remainder: bool, seed) -> tf.data.Dataset:
    # Cache decoded uint8 images (4x smaller than float32), before anything random.
    if cache is True or cache == "memory":
        ds = ds.cache()
    elif cache:
        ds = ds.cache(str(cache))
    # Shuffle before repeat so every epoch is a full pass in a new order.
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)

    # Convert and augment whole batches: vectorised ops beat per-image maps on few cores.
    def to_float(images, labels):
        images = tf.cast(images, tf.float32) / 255.0
        if augment is not None:
            images = augment_batch(images, augment)
        return images, labels

    ds = ds.map(to_float, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def load(
    path: str | os.PathLike,
    split: str = "train",
    *,
    batch_size: int = 32,
    image_size: int | None = None,
    training: bool | None = None,
    augment: Augment | bool | None = None,
    cache: bool | str = True,
    shuffle_buffer: int = 2048,
    repeat: bool | None = None,
    drop_remainder: bool | None = None,
    deterministic: bool | None = None,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """A batched dataset of (images, labels) from a prepared TFRecord folder.

    Args:
        path: folder written by `convlab data prepare` (has manifest.json).
        split: "train", "validation" (or "val") or "test".
        batch_size: images per batch (per input pipeline).
        image_size: resize to this square size after decoding; default: the stored size.
        training: shuffle, repeat, drop the last partial batch and augment. Default: True for
            the train split.
        augment: an `Augment`, True for the codelab's (flip + saturation), False/None for none.
            Only applied when `training`.
        cache: True/"memory" to cache decoded images in RAM, a file path to cache on disk,
            False for none.
        shuffle_buffer: shuffle buffer size, in images.
        repeat, drop_remainder: default to `training`.
        deterministic: keep file and record order (slower); default: not for training.
        seed: shuffle seed.
        input_context: from `strategy.distribute_datasets_from_function`; shards files per
            input pipeline.

    Returns:
        A `tf.data.Dataset` of (float32 images in [0, 1], int32 labels).
    """
    files, count, manifest = shard_files(path, split)
    training = (SPLIT_ALIASES.get(split, split) == "train") if training is None else training
    deterministic = (not training) if deterministic is None else deterministic
    size = image_size or manifest["image_size"][0]
    augment = _as_augment(augment, training)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(files), seed=seed)
    # Read several shards at once; order-agnostic unless asked, so a slow file never stalls.
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                       num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    stored = manifest["image_size"][0]

    def decode(serialized):
        example = parse_example(serialized)
        image = tf.io.decode_jpeg(example["image"], channels=3)
        image = tf.reshape(image, [stored, stored, 3])  # fixed shapes, TPU-friendly
        if size != stored:
            image = resize_to_square(image, size)
        return image, tf.cast(example["class"], tf.int32)

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if input_context is None or input_context.num_input_pipelines == 1:
        # Known size: Keras shows validation progress and never guesses where an epoch ends.
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    return _finish(ds, batch_size=batch_size, training=training, augment=augment, cache=cache,
                   shuffle_buffer=min(shuffle_buffer, count),
                   repeat=training if repeat is None else repeat,
                   drop_remainder=training if drop_remainder is None else drop_remainder,
                   seed=seed)


def load_files(
    paths: list[str],
    labels: list[int],
    *,
    image_size: int,
    batch_size: int = 32,
    training: bool = False,
    augment: Augment | bool | None = None,
    cache: bool | str = False,
    shuffle_buffer: int = 2048,
    repeat: bool | None = None,
    drop_remainder: bool | None = None,
    seed: int | None = None,
) -> tf.data.Dataset:
    """The per-file path (the codelab's "slow" way): read and decode each image file.

    Same output as `load`. Files must be decodable by TensorFlow (JPEG, PNG, BMP, GIF); use
    `convlab data prepare` to validate a folder first.
    """
    augment = _as_augment(augment, training)
    ds = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), list(labels)))

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return resize_to_square(image, image_size), tf.cast(label, tf.int32)

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=not training)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(paths)))
    return _finish(ds, batch_size=batch_size, training=training, augment=augment, cache=cache,
                   shuffle_buffer=min(shuffle_buffer, len(paths)),
                   repeat=training if repeat is None else repeat,
                   drop_remainder=training if drop_remainder is None else drop_remainder,
                   seed=seed)


def load_folder(folder: str | os.PathLike, *, image_size: int, **kwargs) -> tuple[tf.data.Dataset,
                                                                                  list[str]]:
    """The per-file path over a folder of class subfolders. Returns (dataset, class names).

    Only files with image extensions TensorFlow decodes are read; for messy folders prepare
    them first (`convlab data prepare`), which validates every file.
    """
    from convlab.data.sources import scan_folder

    scan = scan_folder(folder)
    tf_decodable = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
    files = [c for c in scan.candidates if c.path.lower().endswith(tf_decodable)]
    classes = sorted({c.label for c in files})
    if not files:
        raise ConvlabError(f"no .jpg/.png/.bmp/.gif files under '{folder}'")
    index = {c: i for i, c in enumerate(classes)}
    ds = load_files([c.path for c in files], [index[c.label] for c in files],
                    image_size=image_size, **kwargs)
    return ds, classes
