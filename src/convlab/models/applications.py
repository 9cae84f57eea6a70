"""ImageNet backbones from `keras.applications` with a new classification head.

Both backbones were pretrained on pixels in [-1, 1]; the models here take [0, 1] like every
convlab model and rescale inside (the codelab fed [0, 1] to them, which costs accuracy).
The backbone is the sub-model named "backbone"; `set_backbone_trainable` (from
`convlab.models.backbone`, re-exported here) freezes or unfreezes it between a head-only phase
and a fine-tuning phase.
"""

from __future__ import annotations

import keras

from convlab.errors import ConvlabError
from convlab.models import register_model
from convlab.models.backbone import resolve_weights, set_backbone_trainable
from convlab.models.layers import check_dropout, check_min_size, classifier_head

__all__ = ["mobilenetv2", "set_backbone_trainable", "xception"]

_WAY_OUT = (
    "use weights=None (CLI: --weights none) to train from scratch, "
    "or weights='path/to/weights_notop.h5' (a local weights file)"
)


def _backbone(application, image_size: int, weights: str | None) -> keras.Model:
    try:
        return application(
            include_top=False,
            weights=weights,
            input_shape=(image_size, image_size, 3),
            name="backbone",
        )
    # keras.utils.get_file turns every download error into a plain Exception("URL fetch failure ...").
    except Exception as err:
        cause = " ".join(str(err).split())
        if weights == "imagenet" and (isinstance(err, OSError) or "URL fetch failure" in cause):
            raise ConvlabError(
                f"could not download the ImageNet weights for {application.__name__} (offline?); "
                f"{_WAY_OUT}. Cause: {cause}"
            ) from err
        if weights not in (None, "imagenet"):
            raise ConvlabError(
                f"could not load {application.__name__} weights from a file ({cause}); it must hold "
                f"no-top weights of this architecture. Received: weights={weights!r}"
            ) from err
        raise


def _classifier(
    backbone, num_classes, image_size, *, pretrained, trainable_backbone, dropout, name
):
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
    # As in the Keras fine-tuning guide; `set_backbone_trainable` holds BN in inference mode.
    x = backbone(x, training=False) if pretrained else backbone(x)
    model = keras.Model(inputs, classifier_head(x, num_classes, dropout=dropout), name=name)
    # Updating pretrained BN statistics from small fine-tuning batches would wreck them, so they
    # stay in inference mode; a backbone trained from scratch must learn its statistics.
    set_backbone_trainable(model, trainable_backbone, train_batch_norm=not pretrained)
    return model


def _application_model(application, name: str, min_size: int, num_classes: int,
                       image_size: int, weights, trainable_backbone: bool,
                       dropout: float) -> keras.Model:
    weights = resolve_weights(weights, _WAY_OUT)
    check_min_size(name, image_size, min_size)
    check_dropout(dropout)
    backbone = _backbone(application, image_size, weights)
    return _classifier(backbone, num_classes, image_size, pretrained=weights is not None,
                       trainable_backbone=trainable_backbone, dropout=dropout, name=name)


@register_model(
    "mobilenetv2",
    default_size=224,
    description="MobileNetV2 (ImageNet, [-1, 1] inside), frozen backbone + new head",
    pretrained=True,
)
def mobilenetv2(
    num_classes: int,
    image_size: int,
    *,
    weights="imagenet",
    trainable_backbone: bool = False,
    dropout: float = 0.2,
) -> keras.Model:
    return _application_model(keras.applications.MobileNetV2, "mobilenetv2", 32, num_classes,
                              image_size, weights, trainable_backbone, dropout)


@register_model(
    "xception",
    default_size=299,
    description="Xception (ImageNet, [-1, 1] inside), fine-tuned end to end (the codelab used 331 px)",
    pretrained=True,
)
def xception(
    num_classes: int,
    image_size: int,
    *,
    weights="imagenet",
    trainable_backbone: bool = True,
    dropout: float = 0.2,
) -> keras.Model:
    return _application_model(keras.applications.Xception, "xception", 71, num_classes,
                              image_size, weights, trainable_backbone, dropout)
