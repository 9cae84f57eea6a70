"""Layers convlab's own models share."""

from __future__ import annotations

import keras

from convlab.errors import ConvlabError


@keras.saving.register_keras_serializable(package="convlab")
class Temperature(keras.layers.Layer):
    """Probabilities -> softmax(log p / T): a run's calibration (`convlab.prediction`) inside
    an exported model, so that it gives the probabilities convlab shows."""

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probabilities):
        ops = keras.ops
        logits = ops.log(ops.maximum(probabilities, 1e-30)) / self.temperature
        return ops.softmax(logits, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="convlab")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization that trains with TensorFlow's fused kernel.

    Keras 3 computes training-mode batch norm from separate ops (moments, then the
    normalization), each a pass over the activations; TensorFlow's fused kernel (oneDNN on
    CPU) does it in one. Same parameters, same inference path, same saved weights; the moving
    variance is updated with the unbiased batch variance (as TensorFlow's kernel returns it,
    and as tf.keras did), not the biased one. Anything the fused kernel does not cover
    (synchronized across replicas, renorm, masks, channels not last, other backends) falls
    back to Keras' own code.

    `activation` (e.g. "relu") is applied right after the normalization, inside the layer:
    TensorFlow then fuses batch norm and ReLU into one oneDNN kernel on CPU, also where the
    layer normalises in float32 under bfloat16 (see `call`).
    """

    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = keras.activations.get(activation)

    def get_config(self):
        return {**super().get_config(),
                "activation": keras.activations.serialize(self.activation)}

    def _fusable(self, inputs, training, mask) -> bool:
        return (bool(training) and mask is None and not self.synchronized and not self.renorm
                and keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.scale and self.center)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return self.activation(super().call(inputs, training=training, mask=mask))
        import tensorflow as tf

        x = tf.cast(inputs, self.compute_dtype) if inputs.dtype != self.compute_dtype else inputs
        if x.dtype == tf.bfloat16 and x.shape[-1] % 16:
            # oneDNN's bfloat16 kernel is ~7x slower than float32 when the channels are not a
            # multiple of 16 (24 channels, 128 px, batch 32: 303 vs 44 ms forward + backward;
            # 32 channels: 40 vs 48 ms): normalise in float32 then, and hand back bfloat16.
            return tf.cast(self.activation(self._fused(tf.cast(x, tf.float32))), tf.bfloat16)
        return self.activation(self._fused(x))

    def _fused(self, x):
        import tensorflow as tf

        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
            epsilon=self.epsilon, data_format="NHWC", is_training=True)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1 - m))
        return y


def classifier_head(x, num_classes: int, *, dropout: float = 0.0, pool: bool = True):
    """The head every convlab model ends with: global average pooling ("avg_pool"), dropout
    when asked ("dropout"), and a softmax ("predictions") computed in float32, so the
    probabilities stay exact under mixed precision. Cached-feature training
    (`convlab.training.features`) splits models at "avg_pool"."""
    if pool:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                              name="predictions")(x)


def check_dropout(dropout, name: str = "dropout") -> None:
    """A one-line error unless 0 <= dropout < 1 (`name`: the option's name in it)."""
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ConvlabError(f"{name} must be in [0, 1), received: {name}={dropout!r}")


def check_min_size(name: str, image_size: int, min_size: int, why: str = "") -> None:
    """A one-line error for images too small for a model."""
    if image_size < min_size:
        raise ConvlabError(f"{name} needs image_size >= {min_size}{why}, received: "
                           f"image_size={image_size}")
