"""Input pipeline benchmark: per-file JPEG loading vs convlab's TFRecord pipeline.

    .venv/bin/python benchmarks/data_pipeline.py [PHOTOS] [--size 128] [--rounds 5]
        [--latency-ms 0,20,50]

Prepares PHOTOS (default ../shared/data/flower_photos) into a temporary folder, then runs
`convlab data bench` on it once per simulated storage latency: every variant reads the same
training images for whole epochs, alternating over several rounds, median reported, with a
reference row decoding the same JPEG bytes from memory. No model: this measures the input
only. With a latency, each file opened first waits that long (one request to cloud storage:
one per image per-file, one per shard file for TFRecords).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from convlab.cli import main

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "flower_photos"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="?", default=str(DEFAULT))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latency-ms", default="0,20,50",
                        help="comma-separated simulated latencies per file opened")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} on {platform.machine()}, "
          f"{Path('/proc/cpuinfo').read_text().count('processor')} cores")
    with tempfile.TemporaryDirectory() as tmp:
        main(["data", "prepare", args.photos, tmp, "--size", str(args.size), "--quiet"])
        for latency in args.latency_ms.split(","):
            main(["data", "bench", tmp, "--rounds", str(args.rounds),
                  "--batch-size", str(args.batch_size), "--latency-ms", latency])
