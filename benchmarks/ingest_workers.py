"""Ingest decoding: serial vs worker threads vs worker processes, on the same images.

    .venv/bin/python benchmarks/ingest_workers.py [--images 800] [--source-size 400] [--size 192]

Writes synthetic JPEGs at --source-size, then times `convlab data prepare`'s per-image work
(read, decode, resize + crop, re-encode) serially, with one thread per core (what prepare
uses) and with one spawned process per core (warm pool: a first pass is not timed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from convlab.data import ingest
from convlab.data.synthetic import make_folder


def rate(pool, paths: list[str], size: int) -> float:
    start = time.perf_counter()
    if pool is None:
        for p in paths:
            ingest._decode(p, size, 90)
    else:
        list(pool.map(ingest._decode, paths, [size] * len(paths), [90] * len(paths),
                      chunksize=16))
    return len(paths) / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--source-size", type=int, default=400)
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        src = make_folder(Path(tmp), num_classes=2, per_class=args.images // 2,
                          size=args.source_size)
        paths = sorted(str(p) for p in src.rglob("*.jpg"))
        print(f"{len(paths)} JPEGs {args.source_size} px -> {args.size} px, {workers} cores")
        print(f"serial:            {rate(None, paths, args.size):7.0f} images/s")
        with ThreadPoolExecutor(workers) as pool:
            print(f"{workers} threads:         {rate(pool, paths, args.size):7.0f} images/s")
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            rate(pool, paths[:64], args.size)  # start the workers
            print(f"{workers} processes:       {rate(pool, paths, args.size):7.0f} images/s")
