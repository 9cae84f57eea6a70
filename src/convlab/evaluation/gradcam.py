"""Grad-CAM heat maps: where in the photo the model looked for a class.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the last convolutional feature map
by the mean gradient of the class score over it, sums the weighted channels and keeps the
positive part. Every convlab convnet ends with global average pooling and one linear layer
("avg_pool" -> dropout -> "predictions", `convlab.models.layers.classifier_head`), and for
such a head the gradient of class c's score is the layer's weight column W[:, c] / (H * W)
at every position: Grad-CAM is then exactly the class activation map of Zhou et al. (2016),
relu(sum_k W[k, c] A_k), up to a constant. So the maps come out of the same forward pass as
the probabilities, with no backward pass; `tests/test_serve.py`
(`test_grad_cam_equals_gradient_taped_grad_cam`) holds the two equal to gradient-taped
Grad-CAM.

The dense baseline has no feature map (it flattens the pixels): it has no heat map.
"""

from __future__ import annotations

import numpy as np

from convlab.errors import ConvlabError


class HeatMaps:
    """A model with a second output, its last feature map: probabilities and Grad-CAM maps
    from one forward pass. Built once per model; thread-safe to call under the caller's lock.
    """

    def __init__(self, model):
        import keras

        try:
            pool, head = model.get_layer("avg_pool"), model.get_layer("predictions")
        except ValueError:
            raise ConvlabError(f"model {model.name!r} has no pooled convolutional feature map "
                               "('avg_pool' -> 'predictions'), so no heat map: Grad-CAM needs a "
                               "convnet (every convlab model but the dense baseline has one)"
                               ) from None
        self.model = keras.Model(model.inputs, [pool.input, model.output],
                                 name=f"{model.name}_with_features")
        kernel, _ = head.get_weights()
        self.kernel = np.asarray(kernel, np.float32)  # (channels, classes)

    def __call__(self, images: np.ndarray, classes=None) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, classes) and maps (N, h, w) in [0, 1] for a float [0, 1] batch.

        Args:
            images: (N, S, S, 3) float32 in [0, 1], as the model takes them.
            classes: the class index to explain for each image (default: the top class).
        """
        features, probs = self.outputs(images)
        explain = probs.argmax(1) if classes is None else np.asarray(classes).reshape(-1)
        return probs, self.maps(features, explain)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the last feature maps (N, h, w, channels), probabilities (N, classes)) of a float
        [0, 1] batch: one forward pass. Their mean over h and w is the pooled features."""
        features, probs = self.model.predict_on_batch(images)
        return np.asarray(features, np.float32), np.asarray(probs, np.float32)

    def maps(self, features: np.ndarray, explain: np.ndarray) -> np.ndarray:
        """Heat maps (N, h, w) in [0, 1] of the classes `explain` (one index per image)."""
        return normalise(np.einsum("nhwk,kn->nhw", features, self.kernel[:, explain]))


def normalise(maps: np.ndarray) -> np.ndarray:
    """relu, then each map scaled to a peak of 1 (a map with no positive evidence stays 0)."""
    maps = np.maximum(maps, 0.0)
    peak = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The photo (uint8 H, W, 3) with a heat map ((h, w) in [0, 1]) laid over it in the
    'jet' colours (red: where the evidence for the class is strongest)."""
    from matplotlib import colormaps
    from PIL import Image

    height, width = image.shape[:2]
    # Bicubic upsampling of the coarse map (e.g. 10 x 10 for 300 px photos), as in the paper.
    smooth = Image.fromarray(heat.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BICUBIC)
    colours = colormaps["jet"](np.clip(np.asarray(smooth), 0.0, 1.0))[..., :3]
    blended = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colours
    return (np.clip(blended, 0.0, 1.0) * 255).round().astype(np.uint8)
