"""`convlab data bench`: images/s of the per-file path vs the TFRecord path, no model.

Every variant reads the same images (the inputs the manifest kept for the split), at the
same size and batch, for whole epochs. Variants alternate over several rounds and the median
is reported, so a noisy, shared machine affects them all alike. A reference row decodes the
same JPEG bytes from memory (no reading, parsing or batching): the CPU's decoding speed.

`latency_ms` simulates storage where each file opened costs a request (cloud storage: tens of
ms): every file open in the pipelines (one per image per-file, one per shard for TFRecords)
first waits that long. Waits overlap as far as each pipeline reads files in parallel.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from convlab.data.manifest import is_prepared, read_manifest
from convlab.errors import check_at_least
from convlab.progress import progress_bar


@dataclass
class BenchRow:
    path: str  # "per-file", "tfrecord" or "decode only"
    cache: str  # "none" or "memory (2nd epoch)"
    augment: bool
    images_per_s: float
    rounds: list[float]


def _epoch_rate(ds) -> float:
    start, n = time.perf_counter(), 0
    for images, _ in ds:
        n += int(images.shape[0])
    return n / (time.perf_counter() - start)


def _decode_rate(jpegs: list[bytes], batch_size: int) -> float:
    """Images/s decoding JPEG bytes held in memory, in parallel (the reference)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(jpegs).map(
        lambda b: tf.io.decode_jpeg(b, channels=3), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False)
    start = time.perf_counter()
    for _ in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE):
        pass
    return len(jpegs) / (time.perf_counter() - start)


def bench(path: str, *, split: str = "train", batch_size: int = 64, rounds: int = 3,
          size: int = 128, latency_ms: float = 0.0,
          progress: bool = True) -> tuple[list[BenchRow], dict]:
    """Benchmark input pipelines over a prepared folder (or a photo folder, prepared first).

    Returns:
        (rows, info): one row per variant and what was measured (images, size, split).
    """
    check_at_least("batch-size", batch_size, 1)
    check_at_least("rounds", rounds, 1)
    check_at_least("size", size, 1)
    import tensorflow as tf

    from convlab.data.pipeline import shard_files
    from convlab.data.tfrecord import IMAGE_AND_CLASS, parse_example

    prepared, tmp = _prepared(path, size, progress)
    manifest = read_manifest(prepared)
    files, counts, _ = shard_files(prepared, split)
    count = sum(counts)
    size = manifest.stored_size
    common = {"batch_size": batch_size, "training": True, "repeat": False, "seed": 0,
              "open_latency": latency_ms / 1000}
    jpegs = [parse_example(record, IMAGE_AND_CLASS)["image"].numpy()
             for record in tf.data.TFRecordDataset(files)]
    variants = _variants(prepared, split, manifest, files, common, latency_ms)
    try:
        results = _measure(jpegs, batch_size, variants, rounds, progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
    rows = [BenchRow(k, c, a, statistics.median(v), v) for (k, c, a), v in results.items()]
    info = {"images": count, "size": size, "split": split, "batch_size": batch_size,
            "rounds": rounds, "source": manifest.source, "latency_ms": latency_ms}
    return rows, info


def _prepared(path: str, size: int,
              progress: bool) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """(the prepared folder, None), or for a photo folder (a temporary folder it is prepared
    into at `size` px, its `TemporaryDirectory` to clean up)."""
    if is_prepared(Path(path)):
        return Path(path), None
    from convlab.data.ingest import prepare

    tmp = tempfile.TemporaryDirectory(prefix="convlab-bench-")
    prepare(str(path), Path(tmp.name), size=size, progress=progress)
    return Path(tmp.name), tmp


def _variants(prepared: Path, split: str, manifest, files: list[str], common: dict,
              latency_ms: float) -> list[tuple]:
    """(path, cache, augment, make a dataset) of each variant measured: per-file and
    TFRecord, each with and without augmentation, TFRecord also cached in memory."""
    from convlab.data.pipeline import load, load_files

    split_name = {s.split for s in manifest.shards if str(prepared / s.file) in files}
    inputs = [i for i in manifest.inputs if i["split"] in split_name]
    classes = {c: i for i, c in enumerate(manifest.classes)}
    variants = []
    for augment in (False, True):
        variants.append(("per-file", "none", augment, lambda a=augment: load_files(
            [i["path"] for i in inputs], [classes[i["class"]] for i in inputs],
            image_size=manifest.stored_size, augment=a, cache=False, **common)))
        variants.append(("tfrecord", "none", augment, lambda a=augment: load(
            prepared, split, augment=a, cache=False, **common)))
        if not latency_ms:  # a cached epoch opens no files
            variants.append(("tfrecord", "memory (2nd epoch)", augment, lambda a=augment: load(
                prepared, split, augment=a, cache=True, **common)))
    return variants


def _measure(jpegs: list[bytes], batch_size: int, variants: list[tuple], rounds: int,
             progress: bool) -> dict[tuple, list[float]]:
    """{(path, cache, augment): images/s of each round}, the variants alternating round by
    round after the reference (decoding `jpegs` from memory)."""
    results: dict[tuple, list[float]] = {}
    steps = rounds * (1 + len(variants))
    with progress_bar(progress, steps, "decode only") as advance:
        for r in range(rounds):
            results.setdefault(("decode only", "bytes in memory", False), []).append(
                _decode_rate(jpegs, batch_size))
            for kind, cache, augment, make in variants:
                advance(description=f"round {r + 1}/{rounds}: {kind}, cache {cache}"
                                    f"{', augmented' if augment else ''}")
                ds = make()
                if cache != "none":
                    _epoch_rate(ds)  # fill the cache
                results.setdefault((kind, cache, augment), []).append(_epoch_rate(ds))
            advance(description=f"round {r + 2}/{rounds}: decode only"
                    if r + 1 < rounds else "done")
    return results
