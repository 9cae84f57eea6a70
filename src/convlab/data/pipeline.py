"""tf.data input pipelines: from prepared TFRecords (fast path) or from image files (per-file).

Both yield (images, labels): float32 images of shape (batch, size, size, 3) in [0, 1] and
int32 class indices. Models do their own further preprocessing.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import tensorflow as tf

from convlab.data.augment import Augment, augment_batch
from convlab.data.manifest import Manifest, read_manifest
from convlab.data.sources import is_remote, join
from convlab.data.tfrecord import FEATURES, IMAGE_AND_CLASS, parse_example
from convlab.errors import ConvlabError

AUTOTUNE = tf.data.AUTOTUNE
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}


def shard_files(path: str | os.PathLike, split: str,
                manifest: Manifest | None = None) -> tuple[list[str], list[int], Manifest]:
    """The shard files of one split, their record counts, and the manifest (read unless
    given: reading checks every shard file)."""
    manifest = read_manifest(path) if manifest is None else manifest
    split = SPLIT_ALIASES.get(split, split)
    shards = manifest.shards_of(split)
    if not shards:
        have = sorted({s.split for s in manifest.shards})
        raise ConvlabError(f"prepared dataset '{path}' has no {split!r} split; it has: "
                           f"{', '.join(have)} (choose one with --split, or give other photos with --data)")
    return [join(path, s.file) for s in shards], [s.count for s in shards], manifest


def resize_to_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize keeping aspect ratio so the short side is `size`, then centre-crop (uint8 in/out).

    An image already `size` x `size` passes through unchanged (and costs nothing).
    """

    def resize():
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = size / tf.reduce_min(shape)
        new = tf.cast(tf.math.ceil(shape * scale), tf.int32)
        resized = tf.image.resize(image, new, antialias=True)
        resized = tf.image.resize_with_crop_or_pad(resized, size, size)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    square = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    return tf.ensure_shape(tf.cond(square, lambda: image, resize), [size, size, 3])


def shard_policy(shard_counts: list[int], pipelines: int, needed: int | None) -> str:
    """"file" when every input pipeline gets whole shard files holding at least `needed`
    records (the records one epoch takes from it), else "data" (every pipeline reads all
    files and keeps every `pipelines`-th record). With one pipeline: "off"."""
    if pipelines <= 1:
        return "off"
    if len(shard_counts) < pipelines:
        return "data"
    per_pipeline = [sum(shard_counts[i::pipelines]) for i in range(pipelines)]
    return "file" if needed is None or min(per_pipeline) >= needed else "data"


@dataclass(frozen=True)
class InputPlan:
    """What one input pipeline of a split reads: decided here, reported to the trainer."""

    split: str
    policy: str  # "off" (one pipeline), "file" (whole shard files) or "data" (every k-th record)
    pipelines: int
    index: int  # this pipeline's
    files: list[str]  # the shard files it opens
    records: int  # the records it reads per pass
    shard_files: int  # of the whole split

    def describe(self) -> str:
        how = {"off": "all of it (one input pipeline)",
               "file": f"shard files {self.index}, {self.index + self.pipelines}, ... of "
                       f"{self.shard_files}",
               "data": f"one record in {self.pipelines}, starting at record {self.index} "
                       f"({self.shard_files} shard files are too few or too uneven to split)"}
        return (f"input ({self.split}): pipeline {self.index + 1} of {self.pipelines} reads "
                f"{how[self.policy]}")


def input_plan(path: str | os.PathLike, split: str = "train", *,
               input_context: tf.distribute.InputContext | None = None,
               needed: int | None = None, manifest: Manifest | None = None) -> InputPlan:
    """The part of `split` one input pipeline reads (`load` reads exactly this).

    Args:
        input_context: which pipeline of how many (None: the only one).
        needed: records the pipeline must yield per epoch (training: steps x its batch);
            whole shard files are used only when every pipeline's files hold that many.
        manifest: the folder's manifest when the caller has read it already.
    """
    files, counts, _ = shard_files(path, split, manifest)
    pipelines = input_context.num_input_pipelines if input_context else 1
    index = input_context.input_pipeline_id if input_context else 0
    policy = shard_policy(counts, pipelines, needed)
    if policy == "file":
        mine, records = files[index::pipelines], sum(counts[index::pipelines])
    else:
        mine, records = files, len(range(index, sum(counts), pipelines))
    return InputPlan(SPLIT_ALIASES.get(split, split), policy, pipelines, index, mine, records,
                     len(files))


def _after_latency(path: tf.Tensor, delay: float) -> tf.Tensor:
    """`path`, returned after sleeping `delay` seconds (like one cloud storage request)."""
    if not delay:
        return path

    def wait(p):
        time.sleep(delay)  # releases the GIL: concurrent opens overlap, as real requests do
        return p

    return tf.ensure_shape(tf.numpy_function(wait, [path], tf.string, stateful=True), [])


def _as_augment(augment: Augment | bool | None, training: bool) -> Augment | None:
    """Augmentation is for training data only; True means the codelab's flip + saturation."""
    if not training or not augment:
        return None
    return Augment() if augment is True else augment


def _crop_size(augment: Augment | None, stored: int, size: int) -> int | None:
    """The training size the augmentation's zoom crops the records down to, for images stored
    larger: random-resized crops from the stored pixels (the zoom crop does the resize)
    instead of zooming into a downscaled copy. None: records are decoded at `size`."""
    return size if augment is not None and augment.zoom and stored > size else None


def _mix(seed: int, epoch) -> tf.Tensor:
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def _cached(records, file_seed, cache, key: tuple = ()) -> tf.data.Dataset:
    """`records(file_seed)`, cached as `cache` says: decoded uint8 images (4x smaller than
    float32), before anything random. A dict `cache` is shared between datasets: the same
    records (`key` and `file_seed`) fill and read one in-memory cache."""
    if isinstance(cache, dict):
        key = (*key, file_seed)
        if key not in cache:
            cache[key] = records(file_seed).cache()
        return cache[key]
    ds = records(file_seed)
    if cache is True or cache == "memory":
        return ds.cache()
    return ds.cache(str(cache)) if cache else ds


def to_float(images):
    """uint8 pixels -> float32 in [0, 1] (cast, then divide by 255): what every model of a
    run is trained on. `convlab.prediction.to_unit` is the same in NumPy, bit for bit."""
    return tf.cast(images, tf.float32) / 255.0


def _assemble(records, count: int, *, batch_size: int, training: bool,
              augment: Augment | None, cache, shuffle_buffer: int, repeat: bool,
              drop_remainder: bool, seed: int | None, start_epoch: int,
              batches_per_epoch: int | None = None, crop_size: int | None = None,
              cache_key: tuple = ()) -> tf.data.Dataset:
    """Batches from `records(file_seed)`, a function giving decoded (uint8 image, label).

    `crop_size`: the records are larger than the training size; the augmentation's zoom
    crops them down to it. `cache_key`: what tells these records apart in a shared cache.
    """
    if not training:
        ds = _cached(records, None, cache, cache_key)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
        return ds.map(lambda x, y: (to_float(x), y), num_parallel_calls=AUTOTUNE).prefetch(
            AUTOTUNE)

    # Training: one pass per epoch, its order and augmentation drawn from (seed, epoch) by
    # stateless ops. A run resumed at epoch k therefore sees exactly the batches an
    # uninterrupted run sees from epoch k on; and no batch straddles two epochs.
    seed = random.randrange(2**31) if seed is None else seed
    shared = isinstance(cache, dict)
    base = _cached(records, seed, cache, cache_key) if cache or shared else None
    buffer = max(1, min(shuffle_buffer, count))

    def epoch(e):
        ds = base if base is not None else records(_mix(seed, e))
        ds = ds.shuffle(buffer, seed=_mix(seed, e), reshuffle_each_iteration=False)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if batches_per_epoch:
            ds = ds.take(batches_per_epoch)  # every input pipeline ends its epochs together

        # Convert and augment whole batches: vectorised ops beat per-image maps on few cores.
        def finish(i, batch):
            if augment is None:
                return to_float(batch[0]), batch[1]
            # uint8 in: the conversion fuses into augment_batch's one compiled pass.
            return augment_batch(batch[0], augment, tf.stack([
                tf.cast(seed % 2**31, tf.int32), tf.cast(e * 100_003 + i, tf.int32)]),
                size=crop_size), batch[1]

        return ds.enumerate().map(finish, num_parallel_calls=AUTOTUNE)

    last = start_epoch + 1 if not repeat else 2**62
    return tf.data.Dataset.range(start_epoch, last).flat_map(epoch).prefetch(AUTOTUNE)


def _read_shards(files: tf.data.Dataset, read, count: int, deterministic: bool):
    """Records from several shard files at once (`read(file)` -> a dataset of one file's
    records): `load` and `record_paths` share it, so their orders agree when deterministic."""
    return files.interleave(read, cycle_length=min(count, 8), num_parallel_calls=AUTOTUNE,
                            deterministic=deterministic)


def load(path: str | os.PathLike, split: str = "train", *, batch_size: int = 32,
         image_size: int | None = None, training: bool | None = None,
         augment: Augment | bool | None = None, cache: bool | str | dict = True,
         shuffle_buffer: int = 2048, repeat: bool | None = None,
         drop_remainder: bool | None = None, deterministic: bool | None = None,
         seed: int | None = None, start_epoch: int = 0,
         input_context: tf.distribute.InputContext | None = None,
         batches_per_epoch: int | None = None, open_latency: float = 0.0) -> tf.data.Dataset:
    """A batched dataset of (images, labels) from a prepared TFRecord folder.

    Args:
        path: folder written by `convlab data prepare` (has manifest.json).
        split: "train", "validation" (or "val") or "test".
        batch_size: images per batch (per input pipeline).
        image_size: resize to this square size after decoding; default: the stored size.
            Training with a zoom on images stored larger crops them from the stored pixels.
        training: shuffle, repeat, drop the last partial batch and augment (default: for "train").
        augment: an `Augment`, True for the codelab's (flip + saturation), False/None for none.
            Only applied when `training`.
        cache: True/"memory" to cache decoded images in RAM, a file path to cache on disk,
            False for none; a dict (empty at first): one RAM cache shared by datasets of the same
            records (e.g. one per training size, all cropping the stored pixels).
        shuffle_buffer: shuffle buffer size, in images.
        repeat, drop_remainder: default to `training`. When training, each repetition is
            one full epoch.
        deterministic: keep file and record order (a little slower); default: not for
            training. With it, training batches depend only on (seed, epoch).
        seed: fixes shuffling and augmentation; default: a random one.
        start_epoch: the first epoch's number (resuming a run at epoch k passes k).
        input_context: from `strategy.distribute_datasets_from_function`: this pipeline reads
            its part of the data only, whole shard files when they split evenly enough,
            every k-th record otherwise (`convlab.training.distributed.shard_policy`).
        batches_per_epoch: training: take exactly this many batches per epoch (every
            worker must run the same number of steps).
        open_latency: benchmarks only: wait this many seconds before opening each file
            (simulated cloud storage; see `convlab data bench --latency-ms`).

    Returns:
        A `tf.data.Dataset` of (float32 images in [0, 1], int32 labels).
    """
    manifest = read_manifest(path)
    training = (SPLIT_ALIASES.get(split, split) == "train") if training is None else training
    deterministic = (not training) if deterministic is None else deterministic
    size = image_size or manifest.stored_size
    stored = manifest.stored_size
    augment = _as_augment(augment, training)
    crop_size = _crop_size(augment, stored, size)
    needed = batches_per_epoch * batch_size if training and batches_per_epoch else None
    plan = input_plan(path, split, input_context=input_context, needed=needed, manifest=manifest)
    # Every pipeline must see the records in the same order to keep disjoint parts.
    deterministic = deterministic or plan.policy == "data"
    decode_size = stored if crop_size else size
    records = _shard_records(plan, stored, decode_size, deterministic, open_latency)
    return _assemble(records, plan.records, batch_size=batch_size, training=training,
                     augment=augment, cache=cache, shuffle_buffer=shuffle_buffer,
                     repeat=training if repeat is None else repeat,
                     drop_remainder=training if drop_remainder is None else drop_remainder,
                     seed=seed, start_epoch=start_epoch, batches_per_epoch=batches_per_epoch,
                     crop_size=crop_size,
                     cache_key=(str(path), split, decode_size, plan.index, deterministic))


def _shard_records(plan: InputPlan, stored: int, decode_size: int, deterministic: bool,
                   open_latency: float):
    """`records(file_seed)` for `_assemble`: the decoded (uint8 image, label) records of the
    plan's shard files, stored `stored` px square, at `decode_size` px; `file_seed` (None:
    none) shuffles the files' order."""
    files, count, pipelines = plan.files, plan.records, plan.pipelines

    def decode(serialized):
        example = parse_example(serialized, IMAGE_AND_CLASS)
        image = tf.io.decode_jpeg(example["image"], channels=3)
        image = tf.reshape(image, [stored, stored, 3])  # fixed shapes, TPU-friendly
        if decode_size != stored:
            image = resize_to_square(image, decode_size)
        return image, tf.cast(example["class"], tf.int32)

    def records(file_seed):
        ds = tf.data.Dataset.from_tensor_slices(files)
        if file_seed is not None:
            ds = ds.shuffle(len(files), seed=file_seed, reshuffle_each_iteration=False)
        # Read several shards at once; order-agnostic unless asked, so a slow file never
        # stalls the others.
        ds = _read_shards(ds, lambda f: tf.data.TFRecordDataset(
            _after_latency(f, open_latency)), len(files), deterministic)
        if plan.policy == "data":
            ds = ds.shard(pipelines, plan.index)  # before decoding: skipped records cost little
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        if pipelines > 1:
            # Left unknown on purpose: the parts may differ by a batch, and a worker that
            # knew its own count would stop evaluating before the others; tf.distribute
            # ends the pass on all workers together when every part is exhausted.
            return ds
        # Known size: Keras shows validation progress and never guesses an epoch's end.
        return ds.apply(tf.data.experimental.assert_cardinality(count))

    return records


def record_paths(path: str | os.PathLike, split: str = "validation") -> list[str]:
    """The source photo of each record of `split`, in the order `load(path, split,
    training=False)` yields the records: full paths (or URLs), from each record's `path`
    feature joined to the manifest's source folder. Folders prepared before records kept
    their path fall back to the manifest's list of inputs (paths as given to `prepare`)."""
    manifest = read_manifest(path)
    plan = input_plan(path, split, manifest=manifest)
    files = plan.files

    def numbered(file):
        return tf.data.TFRecordDataset(file).enumerate().map(
            lambda i, serialized: (file, i, tf.io.parse_single_example(
                serialized, {"path": FEATURES["path"]})["path"]))

    # The same interleave as `load` (deterministic), so the orders agree record by record.
    ds = _read_shards(tf.data.Dataset.from_tensor_slices(files), numbered, len(files), True)
    source = manifest.source
    local = bool(source) and not is_remote(source) and os.path.isdir(source)
    by_shard: dict[str, list[str]] = {}
    for item in manifest.inputs:
        by_shard.setdefault(item["shard"], []).append(item["path"])
    paths = []
    for file, index, kept in ds.as_numpy_iterator():
        kept = kept.decode()
        if kept:
            paths.append(os.path.join(source, kept) if local and not os.path.isabs(kept)
                         else kept)
        else:
            members = by_shard.get(os.path.basename(file.decode()), [])
            paths.append(members[index] if index < len(members) else "")
    return paths


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
    start_epoch: int = 0,
    open_latency: float = 0.0,
) -> tf.data.Dataset:
    """The per-file path (the codelab's "slow" way): read and decode each image file.

    Same output and options as `load`. Files must be decodable by TensorFlow (JPEG, PNG, BMP,
    GIF); use `convlab data prepare` to validate a folder first.
    """

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(_after_latency(path, open_latency)), channels=3,
                                   expand_animations=False)
        return resize_to_square(image, image_size), tf.cast(label, tf.int32)

    def records(file_seed):
        ds = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), list(labels)))
        if file_seed is not None:
            ds = ds.shuffle(len(paths), seed=file_seed, reshuffle_each_iteration=False)
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=not training)
        return ds.apply(tf.data.experimental.assert_cardinality(len(paths)))

    return _assemble(records, len(paths), batch_size=batch_size, training=training,
                     augment=_as_augment(augment, training), cache=cache,
                     shuffle_buffer=shuffle_buffer,
                     repeat=training if repeat is None else repeat,
                     drop_remainder=training if drop_remainder is None else drop_remainder,
                     seed=seed, start_epoch=start_epoch)


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
