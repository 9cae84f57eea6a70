"""Training-time augmentation, applied to whole batches of float images in [0, 1].

Every op draws its randomness per image but runs vectorised over the batch: on a 2-core CPU,
one batched op is several times cheaper than the same op mapped image by image.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from convlab.config import Augment
from convlab.errors import ConvlabError

__all__ = ["Augment", "augment_batch", "mix_batch"]


def augment_batch(images: tf.Tensor, aug: Augment, seed: tf.Tensor | None = None,
                  size: int | None = None) -> tf.Tensor:
    """Randomly augment a (batch, height, width, 3) batch: float in [0, 1], or uint8.

    Returns float32 images in [0, 1], `size` x `size` if given (the zoom crops are then
    taken from the larger input and resized to `size`: random-resized crops that keep the
    stored resolution's detail), else the input's size. The colour and flip ops run as one XLA-compiled
    function: fused into a single pass over the batch they are ~5x faster on CPU than the
    same ops one by one (benchmarks/data_pipeline.py); the zoom crop (crop_and_resize, which
    XLA does not compile) runs before it.

    Args:
        seed: a shape-[2] integer tensor. The same seed gives the same augmentation (stateless
            random ops), so a resumed training run sees exactly the images an uninterrupted
            one would. None draws a fresh seed.
        size: output side; needs `aug.zoom` when it differs from the input's.
    """
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    seed = tf.cast(seed, tf.int32)
    scale = 1.0 / 255.0 if images.dtype == tf.uint8 else 1.0
    if aug.zoom:
        n = tf.shape(images)[0]
        side = _uniform(seed, 1, [n, 1], aug.zoom, 1.0)
        top_left = _uniform(seed, 2, [n, 2]) * (1.0 - side)
        boxes = tf.concat([top_left, top_left + side], axis=1)
        out = tf.shape(images)[1:3] if size is None else tf.constant([size, size])
        # float32 out, in the input's value range
        images = tf.image.crop_and_resize(images, boxes, tf.range(n), out)
    elif size is not None and images.shape[1] != size:
        raise ConvlabError(f"augment_batch: resizing {images.shape[1]} px images to {size} "
                           f"needs zoom > 0 (the random crop does the resize)")
    return _pointwise(aug)(images, seed, tf.constant(scale, tf.float32))


def _uniform(seed, k: int, shape, low=0.0, high=1.0):
    return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, k),
                                       low, high)


@functools.cache
def _pointwise(aug: Augment):
    """The flip and colour ops of `aug`, compiled by XLA into one pass over the batch."""

    @tf.function(jit_compile=True)
    def apply(images, seed, scale):
        images = tf.cast(images, tf.float32) * scale
        n = tf.shape(images)[0]
        if aug.flip:
            images = tf.where(_uniform(seed, 3, [n, 1, 1, 1]) < 0.5,
                              tf.reverse(images, axis=[2]), images)
        if aug.saturation:
            # Scale the distance from each pixel's grey value: 0 is greyscale, 1 unchanged.
            grey = tf.reduce_sum(images * tf.constant(_GREY), axis=-1, keepdims=True)
            images = grey + _uniform(seed, 4, [n, 1, 1, 1], *aug.saturation) * (images - grey)
        if aug.brightness:
            images = images + _uniform(seed, 5, [n, 1, 1, 1], -aug.brightness, aug.brightness)
        if aug.contrast:
            mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
            images = mean + _uniform(seed, 6, [n, 1, 1, 1], *aug.contrast) * (images - mean)
        return tf.clip_by_value(images, 0.0, 1.0)

    return apply


_GREY = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's weights


def mix_batch(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, *, mixup: float = 0.0,
              cutmix: float = 0.0, weights: tf.Tensor | None = None) -> tuple:
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with itself reversed.

    One mixing fraction per batch, drawn from Beta(alpha, alpha), and the batch's reversal as
    the partner, as timm's `Mixup` does. MixUp blends whole images; CutMix pastes a box of the
    partner covering a (1 - fraction) of the image and mixes the labels by the box's actual
    area. With both alphas > 0 each batch takes one of the two, with probability 1/2.

    Args:
        images: (batch, height, width, channels) float images.
        labels: (batch, classes) one-hot (or already soft) float labels.
        seed: a shape-[2] integer tensor; the same seed mixes the same way.
        mixup, cutmix: the Beta distributions' alpha; 0 disables that kind.
        weights: optional (batch,) sample weights, mixed as the labels are.

    Returns:
        (images, labels) or, with weights, (images, labels, weights).
    """
    if mixup < 0 or cutmix < 0 or not (mixup or cutmix):
        raise ConvlabError(f"mix_batch needs mixup or cutmix > 0, received: mixup={mixup}, "
                           f"cutmix={cutmix}")
    seed = tf.cast(seed, tf.int32)
    use_cutmix = _uniform(seed, 10, []) < 0.5  # only consulted when both are on
    if mixup and cutmix:
        fraction = _beta(seed, tf.where(use_cutmix, cutmix, mixup))
    else:
        fraction = _beta(seed, cutmix or mixup)

    def blended():
        return _blend(images, fraction), fraction

    def boxed():
        return _paste_box(images, fraction, seed)

    if mixup and cutmix:  # only the one chosen is computed
        images, fraction = tf.cond(use_cutmix, boxed, blended)
    else:
        images, fraction = boxed() if cutmix else blended()
    labels = _blend(tf.cast(labels, tf.float32), fraction)
    return (images, labels) if weights is None else (images, labels, _blend(weights, fraction))


def _blend(x, fraction):
    """`fraction` of `x` plus the rest of its batch-reversed partner."""
    return fraction * x + (1.0 - fraction) * tf.reverse(x, axis=[0])


def _beta(seed, alpha) -> tf.Tensor:
    """One draw of Beta(alpha, alpha), as the ratio of two Gamma(alpha) draws."""
    alpha = tf.cast(alpha, tf.float32)
    g = tf.random.stateless_gamma([2], tf.random.experimental.stateless_fold_in(seed, 11),
                                  alpha)
    return g[0] / tf.maximum(g[0] + g[1], 1e-12)


def _paste_box(images, fraction, seed):
    """`images` with a random box of their batch-reversed partners covering ~(1 - fraction)
    of the area (the box is clipped at the borders), and the fraction of `images` that is
    left. Built from slices and concatenations: one copy of the batch, several times faster
    on CPU than a masked select over every pixel."""
    shape = tf.shape(images)
    hw = tf.cast(shape[1:3], tf.float32)
    side = tf.sqrt(1.0 - fraction)
    centre = _uniform(seed, 12, [2]) * hw
    low = tf.cast(tf.round(tf.maximum(centre - hw * side / 2, 0.0)), tf.int32)
    high = tf.cast(tf.round(tf.minimum(centre + hw * side / 2, hw)), tf.int32)
    band = images[:, low[0]:high[0]]
    pasted = tf.concat([band[:, :, :low[1]],
                        tf.reverse(band[:, :, low[1]:high[1]], axis=[0]),
                        band[:, :, high[1]:]], axis=2)
    out = tf.concat([images[:, :low[0]], pasted, images[:, high[0]:]], axis=1)
    out = tf.ensure_shape(out, images.shape)
    area = tf.cast((high[0] - low[0]) * (high[1] - low[1]), tf.float32)
    return out, 1.0 - area / (hw[0] * hw[1])
