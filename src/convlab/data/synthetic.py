"""A labelled image generator: a few visually distinct classes drawn procedurally.

For offline demos, smoke runs, tests and scaling benchmarks; never real data. Each class is a
shape family drawn at a random position, scale, rotation and colour over a noisy background.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from convlab.errors import ConvlabError

CLASSES = ("circle", "square", "triangle", "stripes", "cross", "ring")


def _polygon(cx, cy, r, sides, angle):
    return [(cx + r * math.cos(angle + 2 * math.pi * k / sides),
             cy + r * math.sin(angle + 2 * math.pi * k / sides)) for k in range(sides)]


def draw(label: str, size: int, rng: random.Random) -> Image.Image:
    """One size x size RGB image of class `label`."""
    if label not in CLASSES:
        raise ConvlabError(f"unknown synthetic class {label!r}; choose from {', '.join(CLASSES)}")
    bg = tuple(rng.randint(0, 110) for _ in range(3))
    fg = tuple(rng.randint(140, 255) for _ in range(3))
    noise = np.random.default_rng(rng.randrange(2**32)).normal(128, rng.uniform(10, 40),
                                                               (size, size))
    img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "L").convert("RGB")
    img = Image.blend(img, Image.new("RGB", (size, size), bg), 0.7)
    d = ImageDraw.Draw(img)
    cx, cy = (rng.uniform(0.35, 0.65) * size for _ in range(2))
    r = rng.uniform(0.2, 0.32) * size
    angle = rng.uniform(0, 2 * math.pi)
    width = max(1, round(size / 12))
    if label == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif label == "square":
        d.polygon(_polygon(cx, cy, r * 1.2, 4, angle), fill=fg)
    elif label == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.3, 3, angle), fill=fg)
    elif label == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=width)
    elif label == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fg, width=width)
    else:  # stripes
        step = max(3, round(size / rng.uniform(4, 7)))
        dx, dy = math.cos(angle), math.sin(angle)
        for k in range(-size * 2, size * 2, step):
            x0, y0 = size / 2 + k * -dy, size / 2 + k * dx
            d.line([x0 - dx * size * 2, y0 - dy * size * 2, x0 + dx * size * 2,
                    y0 + dy * size * 2], fill=fg, width=max(1, step // 2))
    return img.filter(ImageFilter.GaussianBlur(size / 160)) if size >= 64 else img


def make_folder(
    out: str | os.PathLike,
    *,
    num_classes: int = 5,
    per_class: int = 100,
    size: int = 64,
    seed: int = 0,
    image_format: str = "JPEG",
) -> Path:
    """Write a folder of class subfolders of synthetic images; returns the folder.

    Files already there are kept, so calling it again with the same arguments is cheap.
    """
    if not 2 <= num_classes <= len(CLASSES):
        raise ConvlabError(f"synthetic data has 2..{len(CLASSES)} classes, received: {num_classes}")
    out = Path(out)
    suffix = {"JPEG": "jpg", "PNG": "png"}[image_format]
    for c, label in enumerate(CLASSES[:num_classes]):
        (out / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = out / label / f"{label}_{i:05d}.{suffix}"
            if not path.exists():
                rng = random.Random(seed * 1_000_003 + c * 100_003 + i)
                draw(label, size, rng).save(path, image_format, quality=92)
    return out
