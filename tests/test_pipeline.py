"""The tf.data pipelines: TFRecord and per-file paths, caching, batching, augmentation."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from convlab.data import (
    Augment,
    load,
    load_files,
    load_folder,
    prepare,
    read_manifest,
    record_paths,
)
from convlab.data.augment import augment_batch, mix_batch
from convlab.data.synthetic import make_folder
from convlab.errors import ConvlabError


@pytest.fixture(scope="module")
def prepared(tiny_prepared):
    out = tiny_prepared(per_class=20, photo_size=32, size=24, shards=4, image_format="PNG",
                        val_fraction=0.25)
    return out, read_manifest(out)


def test_training_batches_have_fixed_shapes_and_repeat(prepared):
    out, manifest = prepared
    ds = load(out, "train", batch_size=8, augment=True, seed=1)
    assert ds.element_spec[0].shape.as_list() == [8, 24, 24, 3]  # static: TPU-friendly
    n_train = manifest["counts"]["per_split"]["train"]
    batches = list(ds.take(n_train // 8 * 3))  # three epochs' worth: it repeats
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert set(labels) == {0, 1, 2}


def test_validation_is_complete_ordered_and_not_augmented(prepared):
    out, manifest = prepared
    ds = load(out, "val", batch_size=8)
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    second = [(x.numpy(), y.numpy()) for x, y in ds]
    assert sum(len(y) for _, y in first) == manifest["counts"]["per_split"]["validation"]
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_each_record_traces_back_to_its_source_photo(prepared):
    from convlab.data.decode import decode_and_resize

    out, manifest = prepared
    paths = record_paths(out, "validation")
    assert len(paths) == manifest["counts"]["per_split"]["validation"] == len(set(paths))
    assert sorted(paths) == sorted(str(Path(manifest["source"]) / Path(i["path"]).relative_to(
        Path(i["path"]).parents[1])) for i in manifest["inputs"] if i["split"] == "validation")
    images = [(x, y) for xs, ys in load(out, "validation", batch_size=8)
              for x, y in zip(xs.numpy(), ys.numpy(), strict=True)]
    for path, (image, label) in zip(paths, images, strict=True):
        assert Path(path).parent.name == manifest["classes"][label]
        jpeg = decode_and_resize(Path(path).read_bytes(), 24).jpeg
        np.testing.assert_array_equal(np.round(image * 255), tf.io.decode_jpeg(jpeg).numpy())


def test_augmentation_only_changes_training_images(prepared):
    out, _ = prepared
    plain = load(out, "train", training=False, batch_size=45, cache=False)
    x_plain, y_plain = next(iter(plain))
    aug = load(out, "train", training=False, augment=True, batch_size=45, cache=False)
    np.testing.assert_array_equal(next(iter(aug))[0], x_plain)  # not training: ignored
    # Same seed, same order: the only difference between these two is the augmentation.
    common = {"training": True, "batch_size": 45, "repeat": False, "shuffle_buffer": 1,
              "deterministic": True, "seed": 0, "cache": False}
    x_same, y_same = next(iter(load(out, "train", augment=False, **common)))
    x_aug, y_aug = next(iter(load(out, "train", augment=True, **common)))
    np.testing.assert_array_equal(y_aug, y_same)
    per_image = np.abs(x_aug.numpy() - x_same.numpy()).mean(axis=(1, 2, 3))
    assert (per_image > 0.01).mean() > 0.8, per_image


def test_zoom_crops_images_stored_larger_from_their_stored_pixels(tmp_path):
    # Noise photos stored at 32 px, trained at 16: crops of the stored pixels keep their
    # pixel-level detail, which the downscaled copy (what validation sees) averages away.
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "src" / label / f"{i}.png")
    prepare(str(tmp_path / "src"), tmp_path / "out", size=32, val_fraction=0.25,
            progress=False)
    zoom = Augment(flip=False, saturation=None, zoom=0.95)
    train = load(tmp_path / "out", "train", image_size=16, augment=zoom, batch_size=4, seed=0)
    assert train.element_spec[0].shape.as_list() == [4, 16, 16, 3]
    cropped = next(iter(train))[0].numpy()
    resized = next(iter(load(tmp_path / "out", "train", image_size=16, training=False,
                             batch_size=4)))[0].numpy()
    assert cropped.std() > 1.4 * resized.std(), (cropped.std(), resized.std())


def test_file_cache_is_written_and_reused(prepared, tmp_path):
    out, _ = prepared
    cache = tmp_path / "cache" / "val"
    cache.parent.mkdir()
    ds = load(out, "val", batch_size=4, cache=str(cache))
    first = np.concatenate([x.numpy() for x, _ in ds])
    assert list(cache.parent.glob("val*.index"))
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in ds]), first)


def test_per_file_path_matches_tfrecord_path(prepared, tmp_path):
    out, manifest = prepared
    inputs = [i for i in manifest["inputs"] if i["split"] == "validation"]
    classes = {c: i for i, c in enumerate(manifest["classes"])}
    per_file = load_files([i["path"] for i in inputs], [classes[i["class"]] for i in inputs],
                          image_size=24, batch_size=100)
    x_files, y_files = next(iter(per_file))
    x_rec, y_rec = next(iter(load(out, "val", batch_size=100)))
    assert sorted(y_files.numpy()) == sorted(y_rec.numpy())
    # Same photos, two resizers and one JPEG generation apart: each per-file image has a
    # close twin among the TFRecord images, far closer than two different photos are.
    a, b = x_files.numpy(), x_rec.numpy()
    dist = np.abs(a[:, None] - b[None]).mean(axis=(2, 3, 4))
    nearest = np.sort(dist, axis=1)
    assert nearest[:, 0].max() < 0.03, nearest[:, 0]
    assert np.median(nearest[:, 1]) > 3 * nearest[:, 0].max()


def test_load_folder_reads_class_subfolders(tmp_path):
    src = make_folder(tmp_path / "src", num_classes=2, per_class=5, size=40)
    ds, classes = load_folder(src, image_size=16, batch_size=10)
    x, y = next(iter(ds))
    assert classes == ["circle", "square"] and x.shape == (10, 16, 16, 3)
    assert sorted(y.numpy().tolist()) == [0] * 5 + [1] * 5


def test_missing_split_and_unprepared_folder_are_clear_errors(prepared, tmp_path):
    out, _ = prepared
    with pytest.raises(ConvlabError, match="no 'test' split; it has: train, validation"):
        load(out, "test")
    with pytest.raises(ConvlabError, match="not a prepared dataset"):
        load(tmp_path, "train")


@pytest.mark.parametrize("in_dataset", [False, True])
def test_augment_ops_eagerly_and_in_tf_data(in_dataset):
    images = tf.random.stateless_uniform([16, 12, 12, 3], seed=[1, 2])
    aug = Augment(flip=True, saturation=(0.0, 0.0), zoom=0.5, brightness=0.1, contrast=(0.5, 1.5))
    if in_dataset:
        out = next(iter(tf.data.Dataset.from_tensors(images).map(lambda x: augment_batch(x, aug))))
    else:
        out = augment_batch(images, aug)
    assert out.shape == images.shape
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0


def test_saturation_zero_is_greyscale_and_flip_mirrors():
    images = tf.random.stateless_uniform([64, 8, 8, 3], seed=[3, 4])
    grey = augment_batch(images, Augment(flip=False, saturation=(0.0, 0.0)))
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)
    flipped = augment_batch(images, Augment(flip=True, saturation=None)).numpy()
    mirrored = [np.allclose(f, i[:, ::-1]) for f, i in zip(flipped, images.numpy(), strict=True)]
    unchanged = [np.allclose(f, i) for f, i in zip(flipped, images.numpy(), strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert 10 < sum(mirrored) < 54  # each image flips with probability 1/2


@pytest.mark.parametrize("zoom", [0.0, 0.6])
def test_augment_takes_uint8_or_float_and_repeats_with_a_seed(zoom):
    pixels = tf.random.stateless_uniform([8, 16, 16, 3], seed=[5, 6], maxval=256, dtype=tf.int32)
    as_uint8 = tf.cast(pixels, tf.uint8)
    aug = Augment(flip=True, saturation=(0.5, 1.5), zoom=zoom, brightness=0.1,
                  contrast=(0.8, 1.2))
    seed = tf.constant([7, 8])
    from_uint8 = augment_batch(as_uint8, aug, seed)
    from_float = augment_batch(tf.cast(as_uint8, tf.float32) / 255.0, aug, seed)
    assert from_uint8.dtype == tf.float32
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-5)
    np.testing.assert_array_equal(from_uint8, augment_batch(as_uint8, aug, seed))
    other = augment_batch(as_uint8, aug, tf.constant([7, 9]))
    assert not np.allclose(from_uint8, other)


def _distinct_batch(n=6, size=12):
    """Images whose pixels say which image they come from (image k is all k / n), one-hot
    labels, and sample weights 1..n."""
    images = tf.range(n, dtype=tf.float32)[:, None, None, None] / n * tf.ones([n, size, size, 3])
    return images, tf.one_hot(tf.range(n), n), tf.range(1, n + 1, dtype=tf.float32)


def test_mixup_blends_images_and_labels_by_the_same_fraction():
    images, labels, weights = _distinct_batch()
    fractions = []
    for k in range(8):
        x, y, w = mix_batch(images, labels, tf.constant([3, k]), mixup=0.8, weights=weights)
        fraction = float(y[0, 0])  # image 0's own share; its partner is the last image
        assert float(y[0, -1]) == pytest.approx(1 - fraction, abs=1e-6)
        np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, atol=1e-6)
        expected = fraction * images + (1 - fraction) * tf.reverse(images, [0])
        np.testing.assert_allclose(x, expected, atol=1e-6)
        np.testing.assert_allclose(w, fraction * weights + (1 - fraction) * weights[::-1],
                                   atol=1e-5)
        fractions.append(fraction)
        np.testing.assert_array_equal(x, mix_batch(images, labels, tf.constant([3, k]),
                                                   mixup=0.8)[0])  # seeded
    assert len({round(f, 6) for f in fractions}) == 8 and all(0 <= f <= 1 for f in fractions)


def test_cutmix_pastes_a_box_and_labels_by_its_area():
    images, labels, _ = _distinct_batch(size=16)
    shares = []
    for k in range(8):
        x, y = mix_batch(images, labels, tf.constant([4, k]), cutmix=1.0)
        first = x[0, :, :, 0].numpy()
        own = np.isclose(first, 0.0)  # image 0 is all 0, its partner (image 5) all 5/6
        assert np.all(own | np.isclose(first, 5 / 6))  # every pixel from one or the other
        rows, cols = np.where(~own)
        if rows.size:  # the partner's pixels form one rectangle
            assert (~own)[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert float(y[0, 0]) == pytest.approx(own.mean(), abs=1e-6)
        assert float(y[0, 5]) == pytest.approx(1 - own.mean(), abs=1e-6)
        shares.append(own.mean())
    assert min(shares) < 0.9 and len(set(shares)) > 4


def test_mixup_and_cutmix_together_take_one_of_the_two_per_batch():
    images, labels, _ = _distinct_batch(size=16)
    kinds = set()
    for k in range(24):
        x, y = mix_batch(images, labels, tf.constant([5, k]), mixup=0.8, cutmix=1.0)
        first = x[0, :, :, 0].numpy()
        boxed = np.all(np.isclose(first, 0.0) | np.isclose(first, 5 / 6))
        kinds.add("cutmix" if boxed and not np.isclose(y[0, 0], 1.0) else
                  "mixup" if not boxed else "none")
    assert {"mixup", "cutmix"} <= kinds
    with pytest.raises(ConvlabError, match="mixup or cutmix > 0"):
        mix_batch(images, labels, tf.constant([1, 2]))


def test_simulated_open_latency_delays_every_file_and_changes_nothing(prepared):
    import time

    from convlab.data.pipeline import load_files

    out, _ = prepared
    paths = sorted(str(p) for p in (out.parent / "src").rglob("*.png"))[:6]

    def epoch(make):
        start = time.perf_counter()
        images = np.concatenate([x.numpy() for x, _ in make()])
        return images, time.perf_counter() - start

    def per_file(latency=0.0):
        return load_files(paths, [0] * len(paths), image_size=24, batch_size=3,
                          open_latency=latency)

    def records(latency=0.0):
        return load(out, "validation", batch_size=4, open_latency=latency)

    for make in (per_file, records):
        plain, _ = epoch(make)
        delayed, seconds = epoch(lambda m=make: m(0.3))
        np.testing.assert_array_equal(plain, delayed)
        assert seconds >= 0.3  # at least one file was opened, and each open waits
def test_bad_augment_values_are_refused():
    with pytest.raises(ConvlabError, match="zoom"):
        Augment(zoom=1.5)
    with pytest.raises(ConvlabError, match=r"saturation.*\(2, 1\)"):
        Augment(saturation=(2, 1))
