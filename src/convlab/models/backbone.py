"""Freezing and unfreezing the pretrained "backbone" sub-model shared by the transfer families.

Models with a pretrained backbone (mobilenetv2, xception, efficientnet_lite0/1/2) nest it as a
sub-model named "backbone" between the input rescaling and the classification head.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from convlab.errors import ConvlabError


def first_trainable_index(model: keras.Model, prefix: str | None) -> int:
    """The index in the backbone's layers of the first one whose name starts with `prefix`
    (0 for None).

    Raises:
        ConvlabError: no such layer (the message names the first and last layer names).
    """
    if not prefix:
        return 0
    names = [layer.name for layer in model.get_layer("backbone").layers]
    start = next((i for i, n in enumerate(names) if n.startswith(prefix)), None)
    if start is None:
        raise ConvlabError(f"the backbone of {model.name!r} has no layer whose name starts "
                           f"with {prefix!r}; received: fine_tune_from={prefix!r} (its layers "
                           f"run from {names[1]!r} to {names[-1]!r})")
    return start


def set_backbone_trainable(
    model: keras.Model, trainable: bool, *, train_batch_norm: bool = False,
    first_trainable: str | None = None,
) -> None:
    """Freeze or unfreeze the "backbone" sub-model, e.g. before a second, fine-tuning phase.

    Compile the model again afterwards: Keras fixes the trainable weights at compile time.

    Args:
        model: a model with a "backbone" sub-model (mobilenetv2, xception, efficientnet_lite0/1/2).
        trainable: True to fine-tune the backbone, False to train only the head.
        train_batch_norm: also train the BatchNormalization layers (gamma, beta and moving
            statistics). Leave False for a pretrained backbone: its BN layers then stay in
            inference mode, as the Keras fine-tuning guide recommends.
        first_trainable: with `trainable`, the layers before the first one whose name starts
            with this stay frozen (e.g. "block5_" for EfficientNet-Lite): no backward pass
            through the early, largest feature maps. None: the whole backbone.

    Raises:
        ConvlabError: the model has no layer named "backbone", or none of its layers starts
            with `first_trainable`.
    """
    try:
        backbone = model.get_layer("backbone")
    except ValueError as err:
        raise ConvlabError(
            f"model {model.name!r} has no 'backbone' layer to freeze or unfreeze; "
            "only pretrained-backbone models (mobilenetv2, xception, efficientnet_lite0/1/2) have one"
        ) from err
    backbone.trainable = bool(trainable)
    start = first_trainable_index(model, first_trainable) if trainable else 0
    # Set every layer explicitly: with the TensorFlow backend, setting `trainable` to its
    # current value is a no-op that never reaches the layers inside.
    for index, layer in enumerate(backbone.layers):
        if index < start:
            layer.trainable = False
            continue
        # A non-trainable BN layer runs in inference mode. This is what keeps pretrained BN
        # statistics intact during fine-tuning: Keras 3 lets the training flag of the outer
        # call override `training=False` on the backbone (keras-team/keras#20285).
        is_frozen_bn = not train_batch_norm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = bool(trainable) and not is_frozen_bn


def resolve_weights(weights, way_out: str, suffixes: tuple[str, ...] = ()) -> str | None:
    """The `weights` option of a pretrained family, normalised: None (random init, also
    for "none"), "imagenet", or the path of an existing file (ending in one of `suffixes`,
    when given). Anything else: a one-line error naming the value and `way_out`."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if weights == "imagenet":
        return "imagenet"
    if (isinstance(weights, (str, os.PathLike)) and Path(weights).is_file()
            and (not suffixes or str(weights).endswith(suffixes))):
        return str(weights)
    raise ConvlabError(f"weights must be 'imagenet', None/'none' or an existing weights file "
                       f"({way_out}), received: weights={str(weights)!r}")
