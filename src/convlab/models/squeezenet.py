"""SqueezeNet-style convnet built from fire modules, as in the codelab.

Based on the "Keras and modern convnets on TPUs" codelab notebook
(training-data-analyst, courses/fast-and-lean-data-science/07_Keras_Flowers_TPU_squeezenet):

    stem Conv 3x3 32 + BN, fire(24, 48), pool, fire(48, 96), pool, fire(64, 128), pool,
    fire(48, 96), pool, fire(24, 48), GlobalAveragePooling, Dense softmax

where y = fire(x, squeeze, expand) is a 1x1 "squeeze" conv of `squeeze` filters feeding a 1x1 and
a 3x3 "expand" conv of expand // 2 filters each, concatenated (so `expand` channels come out).
One deliberate difference: every conv here runs conv (no bias) -> BN -> relu, where the codelab
ran conv (bias, relu) -> BN; BN momentum is the codelab's 0.9. `bypass=True` adds the SqueezeNet
paper's "simple bypass" (Iandola et al. 2016, section 6): a fire module whose input has as many
channels as it outputs adds its input to its output (a residual connection; +2.9 points ImageNet
top-1 there). Batch norm trains with TensorFlow's fused kernel (`FusedBatchNormalization`):
faster on CPU, same model.
"""

from __future__ import annotations

import keras

from convlab.errors import ConvlabError
from convlab.models import register_model
from convlab.models.layers import FusedBatchNormalization, check_dropout, classifier_head

# Entries: (squeeze, expand) for a fire module, an int s for fire(s, 2 * s), "pool" for 2x2 max pool.
DEFAULT_LAYOUT = ((24, 48), "pool", (48, 96), "pool", (64, 128), "pool", (48, 96), "pool", (24, 48))
STEM_FILTERS = 32
BN_MOMENTUM = 0.9


def _parse_layout(layout) -> list:
    """Normalise a layout to a list of (squeeze, expand) tuples and "pool" strings."""
    help_ = "entries are (squeeze, expand), an int squeeze (expand = 2 * squeeze) or 'pool'"
    if isinstance(layout, str) or not layout:
        raise ConvlabError(
            f"squeezenet layout must be a non-empty sequence; {help_}. Received: layout={layout!r}"
        )
    parsed = []
    for entry in layout:
        if isinstance(entry, int) and not isinstance(entry, bool):
            entry = (entry, 2 * entry)
        if (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in entry)
        ):
            parsed.append(tuple(entry))
        elif entry == "pool":
            parsed.append("pool")
        else:
            raise ConvlabError(
                f"bad squeezenet layout entry {entry!r}; {help_}. Received: layout={layout!r}"
            )
    return parsed


def _conv_bn_relu(x, filters: int, kernel: int, name: str, fused: bool = True):
    # No bias: the BN right after it has its own offset.
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    if fused:  # the ReLU inside: fused with the batch norm into one kernel
        return FusedBatchNormalization(momentum=BN_MOMENTUM, activation="relu",
                                       name=f"{name}_bn_relu")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _fire(x, squeeze: int, expand: int, name: str, fused: bool = True):
    s = _conv_bn_relu(x, squeeze, 1, f"{name}_squeeze", fused)
    e1 = _conv_bn_relu(s, expand // 2, 1, f"{name}_expand1x1", fused)
    e3 = _conv_bn_relu(s, expand - expand // 2, 3, f"{name}_expand3x3", fused)
    return keras.layers.Concatenate(name=f"{name}_concat")([e1, e3])


@register_model(
    "squeezenet",
    default_size=192,
    cpu_bfloat16=True,
    description="the codelab's SqueezeNet: fire modules + BN + max pools, GAP head; options layout, width, bypass, dropout, fused_batch_norm",
)
def squeezenet(
    num_classes: int,
    image_size: int,
    *,
    layout=DEFAULT_LAYOUT,
    width: float = 1.0,
    bypass: bool = False,
    dropout: float = 0.0,
    fused_batch_norm: bool = True,
) -> keras.Model:
    blocks = _parse_layout(layout)
    if not width > 0:
        raise ConvlabError(f"squeezenet width multiplier must be > 0. Received: width={width!r}")
    check_dropout(dropout)
    num_pools = blocks.count("pool")
    if image_size < 2**num_pools:
        raise ConvlabError(
            f"this squeezenet layout halves the image {num_pools} times, so it needs at least "
            f"{2**num_pools} px; use fewer 'pool' entries or bigger images. Received: image_size={image_size}"
        )

    def scaled(n: int) -> int:
        return max(1, round(n * width))

    # The codelab fed [0, 1] pixels straight in, so there is no preprocessing layer.
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv_bn_relu(inputs, scaled(STEM_FILTERS), 3, "stem", fused_batch_norm)
    fires = pools = 0
    for block in blocks:
        if block == "pool":
            pools += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pools}")(x)
        else:
            fires += 1
            squeeze, expand = block
            y = _fire(x, scaled(squeeze), max(2, scaled(expand)), f"fire{fires}",
                      fused_batch_norm)
            x = keras.layers.Add(name=f"fire{fires}_bypass")([x, y]) \
                if bypass and x.shape[-1] == y.shape[-1] else y
    outputs = classifier_head(x, num_classes, dropout=dropout)
    return keras.Model(inputs, outputs, name="squeezenet")
