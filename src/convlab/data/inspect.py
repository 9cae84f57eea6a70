"""`convlab data inspect`: counts per class and split, and a PNG grid of labelled samples."""

from __future__ import annotations

import os
from pathlib import Path

from convlab.data.manifest import is_prepared, read_manifest
from convlab.errors import ConvlabError, check_at_least
from convlab.files import figure, literal


def counts(path: str | os.PathLike) -> dict:
    """{"classes": [...], "per_class": {class: {split: n}}, "splits": [...]} for a prepared
    folder (from its manifest) or a photo folder (candidate files, not yet validated)."""
    path = Path(path)
    if is_prepared(path):
        manifest = read_manifest(path)
        return {"classes": list(manifest.classes), "per_class": manifest.per_class,
                "splits": list(manifest.per_split), "prepared": True,
                "skipped": len(manifest.skipped), "ignored": len(manifest.ignored)}
    from convlab.data.sources import scan_folder

    scan = scan_folder(path)
    # a folder of split folders: its classes' files per given split
    splits = [s for s in ("train", "validation", "test") if s in scan.given_splits] or ["files"]
    per_class = {label: dict.fromkeys(splits, 0) for label in scan.labels}
    for c in scan.candidates:
        per_class[c.label][c.split or "files"] += 1
    return {"classes": scan.labels, "per_class": per_class, "splits": splits,
            "prepared": False, "skipped": len(scan.skipped), "ignored": len(scan.ignored)}


def _samples(path: Path, split: str, n: int, size: int | None):
    """Up to n (uint8 image, class name) pairs, spread over the classes."""
    if is_prepared(path):
        from convlab.data.pipeline import load

        ds = load(path, split, batch_size=n, training=False, cache=False, image_size=size)
        manifest = read_manifest(path)
        images, labels = next(iter(ds))
        return [((img * 255).astype("uint8"), manifest.classes[lab])
                for img, lab in zip(images.numpy(), labels.numpy(), strict=True)]
    import io

    import numpy as np
    from PIL import Image

    from convlab.data.decode import SkipImage, decode_and_resize
    from convlab.data.sources import scan_folder

    scan = scan_folder(path)
    by_class = {label: [c for c in scan.candidates if c.label == label] for label in scan.labels}
    picked, i = [], 0
    while len(picked) < n and any(i < len(v) for v in by_class.values()):
        picked += [v[i] for v in by_class.values() if i < len(v)]
        i += 1
    out = []
    for c in picked[:n]:
        try:
            jpeg = decode_and_resize(Path(c.path).read_bytes(), size or 128).jpeg
        except SkipImage:
            continue
        out.append((np.asarray(Image.open(io.BytesIO(jpeg))), c.label))
    return out


def sample_grid(path: str | os.PathLike, out_png: str | os.PathLike, *, split: str = "train",
                count: int = 25, image_size: int | None = None) -> Path:
    """Write a grid of sample images with their class names to `out_png`."""
    check_at_least("count", count, 1)
    samples = _samples(Path(path), split, count, image_size)
    if not samples:
        raise ConvlabError(f"no decodable images found in '{path}'")
    cols = min(len(samples), 5)
    rows = -(-len(samples) // cols)
    fig = figure(figsize=(2.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, label) in zip(axes.flat, samples, strict=False):
        ax.imshow(image)
        ax.set_title(literal(label), fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    return out_png
