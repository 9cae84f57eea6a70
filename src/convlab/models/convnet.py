"""The codelab's plain convnet: stacked 3x3 convolutions with max pooling.

Layout from the "Convolutional neural networks, with Keras and TPUs" codelab solution
(training-data-analyst, courses/fast-and-lean-data-science/07_Keras_Flowers_TPU_solution):
Conv 3x3 16, Conv 3x3 30, pool, Conv 3x3 60, pool, Conv 3x3 90, pool, Conv 3x3 110, pool,
Conv 3x3 130, Conv 1x1 40, global average pooling, Dense softmax. `head="flatten"` swaps the
pooling for the Flatten -> Dense head of the codelab's earlier dense models.
"""

from __future__ import annotations

import keras

from convlab.errors import ConvlabError
from convlab.models import register_model
from convlab.models.layers import classifier_head

# (kernel size, filters) for a conv + relu, or "pool" for a 2x2 max pool.
LAYOUT = (
    (3, 16),
    (3, 30),
    "pool",
    (3, 60),
    "pool",
    (3, 90),
    "pool",
    (3, 110),
    "pool",
    (3, 130),
    (1, 40),
)
HEADS = ("gap", "flatten")


@register_model(
    "convnet",
    default_size=192,
    cpu_bfloat16=True,
    description="the codelab's plain convnet: 3x3 conv stacks + max pools; head='gap'|'flatten'",
)
def convnet(num_classes: int, image_size: int, *, head: str = "gap") -> keras.Model:
    if head not in HEADS:
        raise ConvlabError(
            f"unknown convnet head; use one of {', '.join(HEADS)}. Received: head={head!r}"
        )
    num_pools = LAYOUT.count("pool")
    if image_size < 2**num_pools:
        raise ConvlabError(
            f"convnet halves the image {num_pools} times, so it needs at least {2**num_pools} px. "
            f"Received: image_size={image_size}"
        )

    # The codelab fed [0, 1] pixels straight in, so there is no preprocessing layer.
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    convs = pools = 0
    for entry in LAYOUT:
        if entry == "pool":
            pools += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pools}")(x)
        else:
            convs += 1
            kernel, filters = entry
            x = keras.layers.Conv2D(
                filters, kernel, padding="same", activation="relu", name=f"conv{convs}"
            )(x)
    # Averaging each final feature map keeps the head tiny and independent of the image size:
    # 41 weights per class here, against 5,761 per class for "flatten" at 192 px.
    if head == "flatten":
        x = keras.layers.Flatten(name="flatten")(x)
    outputs = classifier_head(x, num_classes, pool=head == "gap")
    return keras.Model(inputs, outputs, name="convnet")
