"""Are the pretrained EfficientNet-Lite0 weights right, and what does blur do to them?

    .venv/bin/python benchmarks/pretrained_check.py [PREPARED] [--size 224]

Runs the converted ImageNet classifier (1000 classes, `imagenet_head=True`) on
(1) scikit-learn's two sample photos (china.jpg: a temple, ImageNet 698 "palace";
flower.jpg: a flower, 985 "daisy" is the nearest class), sharp and after shrinking them to
128/64/32 px and enlarging again, and (2) with PREPARED (a `convlab data prepare` folder of
the flowers), the validation photos: mean top-1 probability, and how often the daisy photos
come out as ImageNet's "daisy". Prints top-3 classes with probabilities. Also measures how
much detail the photos hold: the RMS change (in 1/255 steps) when 128 px images are shrunk
to 64 or 32 px (antialiased) and enlarged back (bicubic), for the validation photos and for
the two sample photos at 128 px. Little change means little detail above that size.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402

from convlab.data import load, read_manifest  # noqa: E402
from convlab.models import create_model  # noqa: E402

DAISY = 985


def detail_loss(images: tf.Tensor, side: int) -> float:
    """RMS change, in 1/255 steps, of 128 px images shrunk to `side` px and enlarged back."""
    small = tf.image.resize(images, [side, side], antialias=True)
    back = tf.clip_by_value(tf.image.resize(small, images.shape[1:3], method="bicubic"), 0, 1)
    return float(tf.sqrt(tf.reduce_mean(tf.square(back - images)))) * 255


def top3(probs: np.ndarray) -> str:
    return ", ".join(f"{i} ({probs[i]:.2f})" for i in np.argsort(-probs)[:3])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prepared", nargs="?")
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    model = create_model("efficientnet_lite0", 1000, args.size, imagenet_head=True)
    samples = []
    for name in ("china.jpg", "flower.jpg"):
        image = load_sample_image(name).astype("float32") / 255.0
        h, w, _ = image.shape
        side = min(h, w)
        image = image[None, (h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
        samples.append(tf.image.resize(image, [128, 128], antialias=True))
        for detail in (None, 128, 64, 32):
            x = image if detail is None else tf.image.resize(image, [detail, detail],
                                                             antialias=True)
            x = tf.image.resize(x, [args.size, args.size], antialias=detail is None)
            probs = model(x, training=False).numpy()[0]
            label = "sharp" if detail is None else f"{detail} px of detail"
            print(f"{name:10} {label:16} top-3: {top3(probs)}")
    samples = tf.concat(samples, 0)
    for side in (64, 32):
        print(f"128 -> {side} -> 128 px, RMS change: sample photos {detail_loss(samples, side):.2f}"
              "/255", end="")
        if args.prepared:
            photos = tf.concat([x for x, _ in load(args.prepared, "validation", training=False,
                                                   batch_size=64, image_size=128,
                                                   cache=False)], 0)
            print(f", {args.prepared} validation photos {detail_loss(photos, side):.2f}/255",
                  end="")
        print()
    if args.prepared:
        daisy = read_manifest(args.prepared)["classes"].index("daisy")
        probs, labels = [], []
        for x, y in load(args.prepared, "validation", training=False, batch_size=64,
                         image_size=args.size, cache=False):
            probs.append(model(x, training=False).numpy())
            labels.append(y.numpy())
        probs, labels = np.concatenate(probs), np.concatenate(labels)
        top = probs.argmax(1)
        print(f"{len(labels)} validation photos: mean top-1 probability "
              f"{probs.max(1).mean():.2f}; daisy photos classified as ImageNet 'daisy': "
              f"{(top[labels == daisy] == DAISY).mean():.0%}; other photos: "
              f"{(top[labels != daisy] == DAISY).mean():.0%}")
