"""`convlab data bench`: images/s of the per-file path vs the TFRecord path, no model.

Every variant reads the same images (the inputs the manifest kept for the split), at the
same size and batch, for whole epochs. Variants alternate over several rounds and the median
is reported, so a noisy, shared machine affects them all alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from convlab.data.ingest import MANIFEST, read_manifest


@dataclass
class BenchRow:
    path: str  # "per-file" or "tfrecord"
    cache: str  # "none" or "memory (2nd epoch)"
    augment: bool
    images_per_s: float
    rounds: list[float]


def _epoch_rate(ds) -> float:
    start, n = time.perf_counter(), 0
    for images, _ in ds:
        n += int(images.shape[0])
    return n / (time.perf_counter() - start)


def bench(path: str, *, split: str = "train", batch_size: int = 64, rounds: int = 3,
          size: int = 128, progress: bool = True) -> tuple[list[BenchRow], dict]:
    """Benchmark input pipelines over a prepared folder (or a photo folder, prepared first).

    Returns:
        (rows, info): one row per variant and what was measured (images, size, split).
    """
    from convlab.data.pipeline import load, load_files, shard_files

    prepared = Path(path)
    tmp = None
    if not (prepared / MANIFEST).exists():
        from convlab.data.ingest import prepare

        tmp = tempfile.TemporaryDirectory(prefix="convlab-bench-")
        prepared = Path(tmp.name)
        prepare(str(path), prepared, size=size, progress=progress)
    manifest = read_manifest(prepared)
    files, counts, _ = shard_files(prepared, split)
    count = sum(counts)
    split_name = {s["split"] for s in manifest["shards"] if str(prepared / s["file"]) in files}
    inputs = [i for i in manifest["inputs"] if i["split"] in split_name]
    classes = {c: i for i, c in enumerate(manifest["classes"])}
    size = manifest["image_size"][0]
    common = {"batch_size": batch_size, "training": True, "repeat": False, "seed": 0}

    def variants():
        for augment in (False, True):
            yield "per-file", "none", augment, lambda a=augment: load_files(
                [i["path"] for i in inputs], [classes[i["class"]] for i in inputs],
                image_size=size, augment=a, cache=False, **common)
            yield "tfrecord", "none", augment, lambda a=augment: load(
                prepared, split, augment=a, cache=False, **common)
            yield "tfrecord", "memory (2nd epoch)", augment, lambda a=augment: load(
                prepared, split, augment=a, cache=True, **common)

    results: dict[tuple, list[float]] = {}
    try:
        for _ in range(rounds):
            for kind, cache, augment, make in variants():
                ds = make()
                if cache != "none":
                    _epoch_rate(ds)  # fill the cache
                results.setdefault((kind, cache, augment), []).append(_epoch_rate(ds))
    finally:
        if tmp is not None:
            tmp.cleanup()
    rows = [BenchRow(k, c, a, statistics.median(v), v) for (k, c, a), v in results.items()]
    info = {"images": count, "size": size, "split": split, "batch_size": batch_size,
            "rounds": rounds, "source": manifest["source"]}
    return rows, info
