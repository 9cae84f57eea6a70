"""The codelab's first classifier: a multi-layer perceptron on raw pixels.

It ignores the 2-D structure of images, which is exactly its lesson: compare it with `convnet`.
"""

from __future__ import annotations

import keras

from convlab.models import register_model


@register_model(
    "dense",
    default_size=192,
    description="Flatten + Dense 500 relu + Dense 50 relu + softmax (the codelab's first model)",
)
def dense(num_classes: int, image_size: int) -> keras.Model:
    # The codelab fed [0, 1] pixels straight in, so there is no preprocessing layer.
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(500, activation="relu", name="dense_500")(x)
    x = keras.layers.Dense(50, activation="relu", name="dense_50")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name="dense")
