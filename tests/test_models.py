"""The model contract, checked for every registered model on tiny inputs, plus family specifics."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from convlab.errors import ConvlabError
from convlab.models import create_model, list_models
from convlab.models.backbone import set_backbone_trainable
from convlab.training.strategy import precision_policy

NUM_CLASSES = 3
# 32 px everywhere except where the architecture needs more (Xception's entry flow: 71 px).
IMAGE_SIZE = {"xception": 71}
MODELS = list_models()


def tiny_model(info, **options) -> keras.Model:
    if info.pretrained:
        options.setdefault("weights", None)  # this machine is offline; weights don't matter here
    return create_model(info.name, NUM_CLASSES, image_size=IMAGE_SIZE.get(info.name, 32), **options)


def tiny_batch(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    size = model.input_shape[1]
    images = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype("float32")
    return images, np.array([0, NUM_CLASSES - 1])


def assert_probabilities(probs) -> None:
    probs = keras.ops.convert_to_numpy(probs)
    assert probs.shape == (2, NUM_CLASSES)
    assert probs.dtype == np.float32
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def assert_one_step_learns(model: keras.Model, images, labels, *, run_eagerly=False) -> None:
    # Tracing the train step takes ~10x longer than one eager step on CPU; the contract test
    # traces it (as `fit` does), the other tests run eagerly to stay fast.
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=run_eagerly)
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    after = [w.numpy() for w in model.trainable_weights]
    assert any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))


@pytest.fixture
def mixed_bfloat16():
    with precision_policy("mixed_bfloat16"):
        yield


@pytest.mark.parametrize("info", MODELS, ids=lambda info: info.name)
def test_model_contract(info, tmp_path):
    model = tiny_model(info)
    images, labels = tiny_batch(model)

    assert_probabilities(model(images, training=False))
    assert_one_step_learns(model, images, labels)

    path = tmp_path / f"{info.name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reloaded(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)),
    )


@pytest.mark.parametrize("info", MODELS, ids=lambda info: info.name)
def test_model_outputs_float32_under_mixed_precision(info, mixed_bfloat16):
    model = tiny_model(info)
    images, labels = tiny_batch(model)
    assert model.output.dtype == "float32"
    assert_probabilities(model(images, training=False))
    assert_one_step_learns(model, images, labels, run_eagerly=True)


def test_squeezenet_follows_a_custom_layout():
    model = create_model(
        "squeezenet", NUM_CLASSES, image_size=16, layout=((8, 16), "pool", 12, "pool", [8, 20])
    )
    names = [layer.name for layer in model.layers]
    assert [n for n in names if n.endswith("_concat")] == [
        "fire1_concat",
        "fire2_concat",
        "fire3_concat",
    ]
    assert [n for n in names if n.startswith("pool")] == ["pool1", "pool2"]
    assert model.get_layer("fire2_squeeze_conv").filters == 12
    assert model.get_layer("fire2_concat").output.shape[-1] == 24  # an int s means fire(s, 2 * s)
    assert model.get_layer("fire3_concat").output.shape[-1] == 20


def test_squeezenet_width_scales_every_conv():
    model = create_model("squeezenet", NUM_CLASSES, image_size=16, layout=((8, 16),), width=0.5)
    assert model.get_layer("stem_conv").filters == 16
    assert model.get_layer("fire1_squeeze_conv").filters == 4
    assert model.get_layer("fire1_concat").output.shape[-1] == 8


def test_squeezenet_bypass_adds_each_fire_input_of_matching_width_to_its_output():
    layout = ((8, 16), (8, 16), "pool", (8, 16), (8, 24))
    plain = create_model("squeezenet", NUM_CLASSES, image_size=16, layout=layout)
    model = create_model("squeezenet", NUM_CLASSES, image_size=16, layout=layout, bypass=True)
    # the stem's 32 channels do not match fire1's 16, nor fire3's 16 fire4's 24
    assert [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)] == \
        ["fire2_bypass", "fire3_bypass"]
    assert not any(isinstance(layer, keras.layers.Add) for layer in plain.layers)
    assert model.count_params() == plain.count_params()  # a bypass has no weights
    probe = keras.Model(model.input, [model.get_layer(n).output for n in
                                      ("fire1_concat", "fire2_concat", "fire2_bypass")])
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    fire1, fire2, bypass = (np.asarray(t) for t in probe(x, training=False))
    np.testing.assert_allclose(bypass, fire1 + fire2, rtol=1e-6, atol=1e-6)
    # fire3's input is the pooled sum, so the residual path carries on through the pool
    assert model.get_layer("pool1").input is model.get_layer("fire2_bypass").output


def test_convnet_heads_differ_only_at_the_top():
    flatten = create_model("convnet", NUM_CLASSES, image_size=32, head="flatten")
    gap = create_model("convnet", NUM_CLASSES, image_size=32, head="gap")
    assert "flatten" in [layer.name for layer in flatten.layers]
    assert "avg_pool" in [layer.name for layer in gap.layers]
    assert gap.get_layer("predictions").kernel.shape == (40, NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "options", "quoted"),
    [
        ("convnet", {"head": "gapp"}, "head='gapp'"),
        ("squeezenet", {"layout": ((8, 16), "pol")}, "'pol'"),
        ("squeezenet", {"layout": ((8, 16), (0, 16))}, "(0, 16)"),
        ("squeezenet", {"layout": ("pool",) * 6}, "image_size=32"),
        ("squeezenet", {"dropout": 1.5}, "dropout=1.5"),
        ("mobilenetv2", {"weights": "imagnet"}, "weights='imagnet'"),
        ("xception", {"weights": None}, "image_size=32"),
        # --unfreeze on a model without a backbone: named, with the options it does take
        ("squeezenet", {"trainable_backbone": True}, "'trainable_backbone'; its options: layout"),
        ("dense", {"dropout": 0.1}, "its options: none"),
    ],
)
def test_bad_option_values_raise_convlab_error_quoting_them(name, options, quoted):
    with pytest.raises(ConvlabError) as excinfo:
        create_model(name, NUM_CLASSES, image_size=32, **options)
    message = str(excinfo.value)
    assert quoted in message
    assert "\n" not in message


def test_mobilenetv2_offline_imagenet_weights_names_the_way_out():
    try:
        create_model("mobilenetv2", NUM_CLASSES, image_size=96, weights="imagenet")
    except ConvlabError as err:
        assert "--weights none" in str(err)
        assert "weights=None" in str(err)
    else:
        pytest.skip(
            "ImageNet weights were downloaded or cached: there is no offline failure to check"
        )


def test_mobilenetv2_unreadable_weights_file_raises_convlab_error(tmp_path):
    weights_file = tmp_path / "not_weights.h5"
    weights_file.write_text("not an HDF5 file")
    with pytest.raises(ConvlabError, match="no-top weights"):
        create_model("mobilenetv2", NUM_CLASSES, image_size=32, weights=str(weights_file))


def test_mobilenetv2_backbone_is_frozen_until_set_trainable():
    model = create_model("mobilenetv2", NUM_CLASSES, image_size=32, weights=None)
    backbone = model.get_layer("backbone")
    assert not backbone.trainable
    assert backbone.trainable_weights == []
    assert {w.path for w in model.trainable_weights} == {"predictions/kernel", "predictions/bias"}

    set_backbone_trainable(model, True)
    assert backbone.get_layer("Conv1").trainable
    assert not backbone.get_layer("bn_Conv1").trainable  # BN stays in inference mode by default
    assert len(model.trainable_weights) > 50
    set_backbone_trainable(model, True, train_batch_norm=True)
    assert backbone.get_layer("bn_Conv1").trainable
    set_backbone_trainable(model, False)
    assert backbone.trainable_weights == []


def test_fine_tuning_a_pretrained_backbone_keeps_its_batchnorm_statistics(tmp_path):
    # A local weights file stands in for the ImageNet download (this machine is offline).
    weights_file = tmp_path / "mobilenetv2_notop.weights.h5"
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    backbone.save_weights(weights_file)
    model = create_model("mobilenetv2", NUM_CLASSES, image_size=32, weights=str(weights_file))
    set_backbone_trainable(model, True)
    bn = model.get_layer("backbone").get_layer("bn_Conv1")
    conv = model.get_layer("backbone").get_layer("Conv1")
    moving_mean, kernel = bn.moving_mean.numpy().copy(), conv.kernel.numpy().copy()

    assert_one_step_learns(model, *tiny_batch(model), run_eagerly=True)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moving_mean)
    assert not np.array_equal(conv.kernel.numpy(), kernel)

    model.save(tmp_path / "fine_tuned.keras")
    reloaded = keras.saving.load_model(tmp_path / "fine_tuned.keras").get_layer("backbone")
    assert reloaded.get_layer("Conv1").trainable
    assert not reloaded.get_layer("bn_Conv1").trainable


def test_set_backbone_trainable_rejects_a_model_without_backbone():
    model = create_model("convnet", NUM_CLASSES, image_size=32)
    with pytest.raises(ConvlabError, match="'convnet' has no 'backbone'"):
        set_backbone_trainable(model, True)


# 4 channels: under bfloat16 the layer normalises in float32 (oneDNN's slow case); 16: not.
@pytest.mark.parametrize("policy,channels", [("float32", 4), ("mixed_bfloat16", 4),
                                             ("mixed_bfloat16", 16)])
def test_fused_batch_norm_trains_like_keras_batch_norm(policy, channels, tmp_path):
    from convlab.models.layers import FusedBatchNormalization

    with precision_policy(policy):
        x = np.random.RandomState(0).randn(8, 6, 6, channels).astype("float32") * 3 + 1
        plain, fused = (keras.layers.BatchNormalization(momentum=0.9),
                        FusedBatchNormalization(momentum=0.9))
        tol = 1e-5 if policy == "float32" else 2e-2
        expected_y = np.float32(plain(x, training=True))
        y = fused(x, training=True)
        np.testing.assert_allclose(np.float32(y), expected_y, atol=tol)
        assert fused.compute_dtype == plain.compute_dtype == y.dtype
        np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(),
                                   atol=1e-6)
        with_relu = FusedBatchNormalization(momentum=0.9, activation="relu")
        np.testing.assert_allclose(np.float32(with_relu(x, training=True)),
                                   np.maximum(expected_y, 0), atol=tol)
        # (inference: moving variances differ by the unbiased factor, checked below)
        np.testing.assert_allclose(np.float32(with_relu(x, training=False)),
                                   np.maximum(np.float32(plain(x, training=False)), 0),
                                   rtol=5e-3, atol=tol)
        # Moving variance: the unbiased batch variance (n / (n - 1), n = 8 * 6 * 6).
        n = 8 * 6 * 6
        expected = 0.9 + 0.1 * x.reshape(-1, channels).var(axis=0) * n / (n - 1)
        # (bfloat16 rounds the inputs first: a relative error of ~1e-4 in the variance.)
        np.testing.assert_allclose(fused.moving_variance.numpy(), expected,
                                   rtol=1e-4 if policy == "float32" else 1e-3)
    model = create_model("squeezenet", 3, 32)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in model.layers)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    image = np.random.RandomState(1).rand(2, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(again.predict(image, verbose=0), model.predict(image, verbose=0),
                               atol=1e-6)


def test_squeezenet_plus_layout_keeps_every_channel_count_a_multiple_of_16():
    # oneDNN's bfloat16 batch norm is fast only then (see convlab.models.layers).
    from convlab.config import SQUEEZENET_PLUS_LAYOUT

    model = create_model("squeezenet", 5, 32, layout=SQUEEZENET_PLUS_LAYOUT)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 3 * sum(1 for block in SQUEEZENET_PLUS_LAYOUT if block != "pool")
    assert all(layer.filters % 16 == 0 for layer in convs)
    default = create_model("squeezenet", 5, 32)
    assert any(layer.filters % 16 for layer in default.layers
               if isinstance(layer, keras.layers.Conv2D))
